"""Human-readable views of a :class:`~gguf_recipe.plan.Plan`: a grouped table and markdown (model cards).

Tensors that differ only in their block number and got the same decision are one row:
``blk.{0..3, 28..31}.ffn_down.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .plan import Plan, PlannedTensor
from .recipe.selectors import format_layers

__all__ = ["PlanGroup", "group_plan", "render_markdown", "render_plan", "render_table"]

_BLK = re.compile(r"^blk\.(\d+)\.")
MIB = 1024 * 1024


@dataclass
class PlanGroup:
    family: str  # name with blk.N. replaced by blk.*.
    source_type: str
    type: str
    rule: str
    action: str
    shape: list[int]
    layers: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    source_bytes: int = 0
    target_bytes: int = 0

    @property
    def label(self) -> str:
        if not self.layers:
            return self.family
        return (
            self.family.replace("blk.*.", "blk.{" + format_layers(self.layers) + "}.", 1)
            if len(self.layers) > 1
            else self.names[0]
        )


def group_plan(tensors: Sequence[PlannedTensor]) -> list[PlanGroup]:
    groups: dict[tuple[str, str, str, str, str, tuple[int, ...]], PlanGroup] = {}
    for t in tensors:
        m = _BLK.match(t.name)
        family = _BLK.sub("blk.*.", t.name, count=1) if m else t.name
        rule = re.sub(r"\bblk\.\d+\.", "blk.*.", t.rule) if m else t.rule
        key = (family, t.source_type, t.type, rule, t.action, tuple(t.shape))
        g = groups.get(key)
        if g is None:
            g = groups[key] = PlanGroup(family, t.source_type, t.type, rule, t.action, list(t.shape))
        if m:
            g.layers.append(int(m.group(1)))
        g.names.append(t.name)
        g.source_bytes += t.source_bytes
        g.target_bytes += t.target_bytes
    return sorted(groups.values(), key=_reading_order)


def _reading_order(g: PlanGroup) -> tuple[int, str, int]:
    """Tensors outside blocks first (stable: in plan order), then block tensors by family and first
    layer, so the rows of one family sit together in layer order."""
    if not g.layers:
        return (0, "", 0)
    return (1, g.family, min(g.layers))


def _split_rule(text: str) -> tuple[str, str | None]:
    """A recipe rule's decision as its short name for the table (``rule 7; fallback from q6_K``) and its
    full text for the legend below it (``rule 7: category attn_v, ... -> q6_K``); other decisions
    (``base``, ``not quantizable: ...``) stay whole."""
    if not text.startswith("rule ") or ": " not in text:
        return text, None
    head, _, rest = text.partition(": ")
    desc, sep, got = rest.rpartition("; fallback from ")
    if not sep:
        return head, f"{head}: {rest}"
    return f"{head}; fallback from {got}", f"{head}: {desc}"


def _mib(n: int) -> str:
    return f"{n / MIB:,.2f}"


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(x) for x in shape)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in rows]
    return lines


def _type_rows(plan: Plan) -> list[list[str]]:
    counts: dict[str, int] = {}
    elems: dict[str, int] = {}
    for t in plan.tensors:
        if t.action == "prune":
            continue
        counts[t.type] = counts.get(t.type, 0) + 1
        n = 1
        for d in t.shape:
            n *= d
        elems[t.type] = elems.get(t.type, 0) + n
    total = plan.totals.target_bytes or 1
    rows = []
    for ty, b in sorted(plan.totals.by_type.items(), key=lambda kv: -kv[1]):
        bpw = b * 8 / elems[ty] if elems.get(ty) else 0.0
        rows.append([ty, str(counts.get(ty, 0)), _mib(b), f"{bpw:.2f}", f"{100 * b / total:.1f}%"])
    return rows


def render_table(plan: Plan) -> str:
    """The plan as a grouped plain-text table with per-type totals and the final size."""
    tot = plan.totals
    lines = [f"plan: {plan.recipe_name}  ->  {plan.model_path}", ""]
    groups = group_plan(plan.tensors)
    rows = []
    legend: dict[str, str] = {}
    for g in groups:
        arrow = g.type if g.action == "quantize" else ("pruned" if g.action == "prune" else "= " + g.type)
        decided, full = _split_rule(g.rule)
        if full is not None:
            legend.setdefault(full.partition(":")[0], full)
        rows.append(
            [g.label, str(len(g.names)), _shape(g.shape), g.source_type, arrow, _mib(g.target_bytes), decided]
        )
    lines += _table(["tensor", "n", "shape", "from", "to", "MiB", "decided by"], rows, {1, 5})
    if legend:
        lines += ["", "rules that decided:"]
        lines += [f"  {legend[k]}" for k in sorted(legend, key=_rule_number)]
    fallbacks = [t for t in plan.tensors if t.fallback is not None]
    if fallbacks:
        lines += ["", f"fallbacks ({len(fallbacks)}): the row length does not fit the wanted type"]
        fgroups: dict[tuple[str, str, str], list[str]] = {}
        for t in fallbacks:
            assert t.fallback is not None
            fgroups.setdefault((t.fallback.wanted, t.fallback.got, t.fallback.reason), []).append(t.name)
        for (wanted, got, reason), names in fgroups.items():
            sample = ", ".join(names[:3]) + (f", ... ({len(names)} tensors)" if len(names) > 3 else "")
            lines.append(f"  {wanted} -> {got}: {reason}: {sample}")
    lines += [""]
    lines += _table(["type", "tensors", "MiB", "bpw", "share"], _type_rows(plan), {1, 2, 3, 4})
    src_bpw = tot.source_bytes * 8 / tot.n_elements if tot.n_elements else 0.0
    lines += [
        "",
        f"total: {_mib(tot.target_bytes)} MiB of tensor data ({tot.bpw:.2f} bpw) from {_mib(tot.source_bytes)} MiB "
        f"({src_bpw:.2f} bpw), {tot.n_tensors} tensors, {tot.n_fallbacks} fallback(s)",
    ]
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines) + "\n"


def _rule_number(head: str) -> tuple[int, str]:
    number = head.removeprefix("rule ").split(" ", 1)[0]
    return (int(number), head) if number.isdigit() else (0, head)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def render_markdown(plan: Plan) -> str:
    """The plan as markdown (for model cards)."""
    tot = plan.totals
    lines = [
        f"### Quantization plan: {_md_escape(plan.recipe_name)}",
        "",
        f"{tot.n_tensors} tensors, **{_mib(tot.target_bytes)} MiB ({tot.bpw:.2f} bpw)**, "
        f"{tot.n_fallbacks} fallback(s). Made with gguf-recipe {plan.tool_version}.",
        "",
        "| type | tensors | MiB | bpw | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in _type_rows(plan):
        lines.append("| " + " | ".join([f"`{r[0]}`", *r[1:]]) + " |")
    lines += ["", "| tensor | n | shape | from | to | decided by |", "|---|---:|---|---|---|---|"]
    for g in group_plan(plan.tensors):
        to = g.type if g.action != "prune" else "pruned"
        lines.append(
            f"| `{g.label}` | {len(g.names)} | {_shape(g.shape)} | `{g.source_type}` | `{to}` | {_md_escape(g.rule)} |"
        )
    if plan.warnings:
        lines.append("")
        for w in plan.warnings:
            lines.append(f"> warning: {_md_escape(w)}")
    return "\n".join(lines) + "\n"


def render_plan(plan: Plan, fmt: str = "table") -> str:
    if fmt == "json":
        return plan.to_json() + "\n"
    if fmt == "markdown":
        return render_markdown(plan)
    if fmt == "table":
        return render_table(plan)
    raise ValueError(f"unknown format '{fmt}', expected table, json or markdown")
