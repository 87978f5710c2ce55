"""``recipe diff``: the tensor-by-tensor comparison table quant publishers put on model cards.

One row per tensor family and set of layers on which every input agrees with itself
(``blk.{3..60}.ffn_down_exps.weight``), one column per input (a GGUF file or split, a plan JSON, or a
recipe planned against a model), rows where the inputs differ marked, and per-column totals: size,
bits per weight and tensors per type. Inputs made from the same model (the same tensor names and shapes)
also get "what moved": which type changes, how many tensors and how many bytes, against the first input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import llamacpp as llama
from ..recipe.selectors import format_layers
from ..recipe.typenames import ggml_type_info, parse_type_name
from .views import QuantView, family_of

__all__ = ["DiffResult", "DiffRow", "Move", "Moved", "diff_views", "render_diff", "type_bpw"]

MIB = 1024 * 1024


def type_bpw(name: str) -> float:
    """Bits per weight of a ggml type name (0 for an unknown one)."""
    try:
        t = parse_type_name(name)
    except ValueError:
        return 0.0
    return ggml_type_info(t).bpw if t is not None else 0.0


@dataclass
class DiffRow:
    family: str  # 'blk.*.ffn_down.weight', or the name of a tensor outside the blocks
    layers: list[int]  # the blocks of this row (empty outside the blocks)
    names: list[str]
    types: list[str | None]  # per input; None: the input has no such tensor
    fallback: list[bool]  # per input: a row-size fallback chose the type (plans and recipes only)
    nbytes: list[int]  # per input: bytes of this row's tensors

    @property
    def different(self) -> bool:
        return len(set(self.types)) > 1

    @property
    def label(self) -> str:
        if not self.layers:
            return self.family
        if len(self.layers) == 1:
            return self.family.replace("blk.*.", f"blk.{self.layers[0]}.", 1)
        return self.family.replace("blk.*.", "blk.{" + format_layers(self.layers) + "}.", 1)


@dataclass
class Move:
    src: str
    dst: str
    tensors: int
    bytes_delta: int


@dataclass
class Moved:
    """What changed from input ``base`` to input ``other`` (same model): type pairs, tensors, bytes."""

    base: int
    other: int
    moves: list[Move]

    @property
    def bytes_delta(self) -> int:
        return sum(m.bytes_delta for m in self.moves)

    @property
    def tensors(self) -> int:
        return sum(m.tensors for m in self.moves)


@dataclass
class DiffResult:
    views: list[QuantView]
    labels: list[str]
    rows: list[DiffRow]
    moved: list[Moved] = field(default_factory=list)

    @property
    def n_different(self) -> int:
        return sum(len(r.names) for r in self.rows if r.different)

    def to_json(self) -> dict[str, Any]:
        inputs = []
        for label, v in zip(self.labels, self.views, strict=True):
            inputs.append(
                {
                    "label": label,
                    "kind": v.kind,
                    "path": v.path,
                    "tensors": len(v.tensors),
                    "bytes": v.total_bytes,
                    "bpw": round(v.bpw, 4),
                    "by_type": {t: {"tensors": n, "bytes": b} for t, (n, b) in sorted(v.by_type().items())},
                }
            )
        return {
            "inputs": inputs,
            "rows": [
                {
                    "tensor": r.label,
                    "family": r.family,
                    "layers": r.layers,
                    "n": len(r.names),
                    "types": r.types,
                    "fallback": r.fallback,
                    "bytes": r.nbytes,
                    "different": r.different,
                }
                for r in self.rows
            ],
            "different_tensors": self.n_different,
            "moved": [
                {
                    "from": self.labels[m.base],
                    "to": self.labels[m.other],
                    "tensors": m.tensors,
                    "bytes_delta": m.bytes_delta,
                    "moves": [
                        {"from": x.src, "to": x.dst, "tensors": x.tensors, "bytes_delta": x.bytes_delta}
                        for x in m.moves
                    ],
                }
                for m in self.moved
            ],
        }


def _labels(views: Sequence[QuantView]) -> list[str]:
    out: list[str] = []
    for i, v in enumerate(views):
        label = v.label
        if label in out or sum(1 for w in views if w.label == label) > 1:
            label = f"{label} ({i + 1})"
        out.append(label)
    return out


def _same_model(a: QuantView, b: QuantView) -> bool:
    return len(a.tensors) == len(b.tensors) and all(
        (x.name, x.shape) == (y.name, y.shape) for x, y in zip(a.tensors, b.tensors, strict=True)
    )


def _moved(views: Sequence[QuantView], base: int, other: int) -> Moved:
    a, b = views[base], views[other]
    pairs: dict[tuple[str, str], Move] = {}
    for x in a.tensors:
        y = b.get(x.name)
        if y is None or x.type == y.type:
            continue
        m = pairs.setdefault((x.type, y.type), Move(x.type, y.type, 0, 0))
        m.tensors += 1
        m.bytes_delta += y.nbytes - x.nbytes
    moves = sorted(pairs.values(), key=lambda m: (-abs(m.bytes_delta), m.src, m.dst))
    return Moved(base, other, moves)


def diff_views(views: Sequence[QuantView]) -> DiffResult:
    """Compare the tensor types of two or more inputs (see the module docstring)."""
    views = list(views)
    names: dict[str, None] = {}
    for v in views:
        for tensor in v.tensors:
            names.setdefault(tensor.name, None)
    ordered = sorted(names, key=llama.processing_key)
    fam_order: dict[str, int] = {}
    for n in ordered:
        fam_order.setdefault(family_of(n), len(fam_order))
    groups: dict[tuple[str, tuple[str | None, ...], tuple[bool, ...]], DiffRow] = {}
    for n in ordered:
        tts = [v.get(n) for v in views]
        types = tuple(t.type if t is not None else None for t in tts)
        fbs = tuple(bool(t is not None and t.fallback_from) for t in tts)
        fam = family_of(n)
        key = (fam, types, fbs)
        row = groups.get(key)
        if row is None:
            row = groups[key] = DiffRow(fam, [], [], list(types), list(fbs), [0] * len(views))
        b = llama.block_number(n)
        if b is not None:
            row.layers.append(b)
        row.names.append(n)
        for i, t in enumerate(tts):
            if t is not None:
                row.nbytes[i] += t.nbytes
    rows = sorted(groups.values(), key=lambda r: (fam_order[r.family], r.layers[:1], r.names[0]))
    moved = [_moved(views, 0, k) for k in range(1, len(views)) if _same_model(views[0], views[k])]
    return DiffResult(views, _labels(views), rows, moved)


# --- rendering ---------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:,.2f}"


def _signed_mib(n: int) -> str:
    return ("+" if n > 0 else "") + f"{n / MIB:,.2f}"


def _cell(row: DiffRow, i: int) -> str:
    t = row.types[i]
    if t is None:
        return "-"
    return t + ("*" if row.fallback[i] else "")


def _total_rows(result: DiffResult) -> list[list[str]]:
    views = result.views
    out = [
        ["size (MiB)", *[_mib(v.total_bytes) for v in views]],
        ["bpw", *[f"{v.bpw:.2f}" for v in views]],
        ["tensors", *[str(len(v.tensors)) for v in views]],
    ]
    all_types = sorted({t for v in views for t in v.by_type()}, key=lambda t: (-type_bpw(t), t))
    for t in all_types:
        cells = []
        for v in views:
            n, _ = v.by_type().get(t, (0, 0))
            cells.append(str(n) if n else "-")
        out.append([f"{t} tensors", *cells])
    return out


def _moved_lines(result: DiffResult) -> list[str]:
    lines: list[str] = []
    for m in result.moved:
        a, b = result.labels[m.base], result.labels[m.other]
        if not m.moves:
            lines.append(f"{a} -> {b}: no tensor changes type")
            continue
        lines.append(f"{a} -> {b}: {m.tensors} tensor(s) change type, {_signed_mib(m.bytes_delta)} MiB")
        for x in m.moves:
            lines.append(f"  {x.src} -> {x.dst}: {x.tensors} tensor(s), {_signed_mib(x.bytes_delta)} MiB")
    return lines


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def render_table(result: DiffResult, *, only_different: bool = False) -> str:
    labels = result.labels
    rows = [r for r in result.rows if r.different or not only_different]
    body = [
        ["*" if r.different else "", r.label, str(len(r.names)), *[_cell(r, i) for i in range(len(labels))]]
        for r in rows
    ]
    lines = _table(["", "tensor", "n", *labels], body, {2})
    n_tensors = sum(len(r.names) for r in result.rows)
    lines += ["", f"{result.n_different} of {n_tensors} tensor(s) differ (rows marked *)"]
    if any(any(r.fallback) for r in result.rows):
        lines.append("a type followed by * was a row-size fallback")
    lines.append("")
    lines += _table(["total", *labels], _total_rows(result), set(range(1, len(labels) + 1)))
    moved = _moved_lines(result)
    if moved:
        lines += ["", "moved (same model):", *("  " + x for x in moved)]
    return "\n".join(lines) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def render_markdown(result: DiffResult, *, only_different: bool = False) -> str:
    labels = result.labels
    lines = [
        "| tensor | n | " + " | ".join(_md(x) for x in labels) + " |",
        "|---|---:|" + "---|" * len(labels),
    ]
    for r in result.rows:
        if only_different and not r.different:
            continue
        cells = [f"`{_cell(r, i)}`" if r.types[i] else "-" for i in range(len(labels))]
        if r.different:
            cells = [f"**{c}**" for c in cells]
        lines.append(f"| `{r.label}` | {len(r.names)} | " + " | ".join(cells) + " |")
    for label, *cells in _total_rows(result):
        lines.append(f"| **{_md(label)}** | | " + " | ".join(cells) + " |")
    lines += ["", f"{result.n_different} tensor(s) differ (in bold)."]
    moved = _moved_lines(result)
    if moved:
        lines += ["", "What moved:", ""]
        lines += [f"- {_md(x.strip())}" if not x.startswith("  ") else f"  - {_md(x.strip())}" for x in moved]
    return "\n".join(lines) + "\n"


def render_diff(result: DiffResult, fmt: str = "table", *, only_different: bool = False) -> str:
    """``table`` (plain text), ``markdown`` (model cards) or ``json``."""
    if fmt == "json":
        import json

        data = result.to_json()
        if only_different:
            data["rows"] = [r for r in data["rows"] if r["different"]]
        return json.dumps(data, indent=2) + "\n"
    if fmt == "markdown":
        return render_markdown(result, only_different=only_different)
    if fmt == "table":
        return render_table(result, only_different=only_different)
    raise ValueError(f"unknown format '{fmt}', expected table, markdown or json")
