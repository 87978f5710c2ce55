"""Recipe + model header -> Plan, with llama-quantize's semantics for everything a recipe leaves open."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from .. import llamacpp as llama
from ..diagnostics import Diagnostic, RecipeError
from ..model.header import row_nbytes
from ..model.reader import ModelInfo, TensorInfo
from ..plan import Decision, Fallback, Fingerprints, Plan, PlannedTensor, PlanTotals, RecipeSource
from ..quants.registry import SPECS
from ..recipe.model import Condition, MetadataValue, Recipe, Rule
from ..recipe.patterns import BoundedPattern, PatternTimeout, compile_pattern
from ..recipe.selectors import LayerSet, SelectorError, parse_layers
from ..recipe.typenames import TypeNameError, ggml_name, parse_type_name

T = GGMLQuantizationType
INF_DEPTH = 1 << 30


@dataclass
class LoadedRecipe:
    """One recipe file of an ``extends`` chain."""

    recipe: Recipe
    text: str
    source: str  # file path or built-in name, for messages
    locate: Callable[[tuple[str | int, ...]], tuple[int | None, int | None]] | None = None


@dataclass
class ResolvedRule:
    rule: Rule
    index: int  # 1-based index in the resolved rule list
    depth: int  # 0 = the root recipe, 1 = what it extends, ...
    source: str
    local_index: int  # 0-based index inside its own recipe
    regex: BoundedPattern | None
    layers: LayerSet | None
    type: GGMLQuantizationType | None  # None = keep
    categories: frozenset[str] | None
    pseudo: str | None = None  # "output (tied token_embd)"

    def describe(self) -> str:
        if self.pseudo:
            return self.pseudo
        r = self.rule
        parts: list[str] = []
        if (cats := r.categories) is not None:
            parts.append("category " + "|".join(cats))
        if r.match is not None:
            parts.append(f"match '{r.match}'")
        if (ls := r.layer_selectors) is not None:
            parts.append(
                ("positions " if r.layers_by == "position" else "layers ") + ", ".join(str(x) for x in ls)
            )
        if r.when is not None:
            parts.append("when " + _describe_condition(r.when))
        tname = "keep" if self.type is None else ggml_name(self.type)
        origin = f" [{self.source} #{self.local_index + 1}]" if self.depth > 0 else ""
        return f"rule {self.index}{origin}: {', '.join(parts)} -> {tname}"


def _describe_condition(c: Condition) -> str:
    """Compact text of a condition: ``arch=falcon experts>1 any(gqa>=4 | experts>=4) not(imatrix)``."""
    bits: list[str] = []
    for key in (
        "arch",
        "layers",
        "experts",
        "gqa",
        "size",
        "tied_embeddings",
        "imatrix",
        "row_multiple_of",
        "dims",
    ):
        v = getattr(c, key)
        if v is None:
            continue
        if isinstance(v, bool):
            bits.append(key if v else f"not {key}")
        elif isinstance(v, list):
            bits.append(f"{key}={'|'.join(str(x) for x in v)}")
        elif isinstance(v, str) and v.strip()[:1] in "<>=!":
            bits.append(f"{key}{v.replace(' ', '')}")
        else:
            bits.append(f"{key}={v}")
    if c.any is not None:
        bits.append("any(" + " | ".join(_describe_condition(x) for x in c.any) + ")")
    if c.not_ is not None:
        bits.append("not(" + _describe_condition(c.not_) + ")")
    return " ".join(bits)


@dataclass
class Effective:
    """The recipe after resolving ``extends``: scalar fields from the nearest recipe that sets them."""

    chain: list[LoadedRecipe]
    base: GGMLQuantizationType
    ftype: str | None
    token_embedding: str | None
    token_embedding_depth: int
    output: str | None
    output_depth: int
    counters: str
    fallbacks: str
    imatrix_required: bool
    imatrix_include: list[str]
    imatrix_exclude: list[str]
    prune_layers: list[int]
    metadata: dict[str, MetadataValue]
    name: str


def merged_metadata(recipes: Sequence[Recipe]) -> dict[str, MetadataValue]:
    """The metadata overrides of a chain (child first), key by key: a child's value wins."""
    metadata: dict[str, MetadataValue] = {}
    for r in reversed(recipes):
        metadata.update(r.metadata)
    return metadata


def merged_recipe(recipes: Sequence[Recipe]) -> Recipe:
    """A chain (child first) as one recipe, as the compiler reads it: each field from the nearest
    recipe that sets it, metadata merged key by key, rules child first, ``extends`` of the last."""
    fields: dict[str, Any] = {}
    for name in Recipe.model_fields:
        if name in ("recipe", "extends", "rules", "metadata"):
            continue
        for r in recipes:
            if name in r.model_fields_set and getattr(r, name) is not None:
                fields[name] = getattr(r, name)
                break
    rules = [rule for r in recipes for rule in r.rules]
    merged: Recipe = recipes[-1].model_copy(
        update={**fields, "metadata": merged_metadata(recipes), "rules": rules}
    )
    return merged


def _quantizer_needs_imatrix(t: GGMLQuantizationType) -> bool:
    spec = SPECS.get(t)
    return spec is not None and spec.requires_imatrix


def _effective(chain: list[LoadedRecipe]) -> Effective:
    def first(attr: str) -> tuple[Any, int]:
        for depth, lr in enumerate(chain):
            if attr in lr.recipe.model_fields_set and getattr(lr.recipe, attr) is not None:
                return getattr(lr.recipe, attr), depth
        return None, INF_DEPTH

    base_name, _ = first("base")
    base = parse_type_name(str(base_name))
    assert base is not None
    ftype, _ = first("ftype")
    te, te_d = first("token_embedding")
    out, out_d = first("output")
    counters, _ = first("counters")
    fallbacks, _ = first("fallbacks")
    im, _ = first("imatrix")
    prune, _ = first("prune_layers")
    metadata = merged_metadata([lr.recipe for lr in chain])
    name, _ = first("name")
    return Effective(
        chain=chain,
        base=base,
        ftype=ftype,
        token_embedding=te,
        token_embedding_depth=te_d,
        output=out,
        output_depth=out_d,
        counters=counters or "stable",
        fallbacks=fallbacks or "allow",
        imatrix_required=bool(im.required) if im else False,
        imatrix_include=list(im.include) if im else [],
        imatrix_exclude=list(im.exclude) if im else [],
        prune_layers=sorted(set(prune or [])),
        metadata=metadata,
        name=str(name or chain[0].source),
    )


@dataclass
class Facts:
    arch: str
    layers: int
    experts: int
    gqa: int
    size: str
    tied_embeddings: bool
    imatrix: bool

    @classmethod
    def of(cls, model: ModelInfo, imatrix: bool) -> Facts:
        """What a rule's ``when`` can test about ``model``."""
        return cls(
            arch=model.arch,
            layers=model.n_layer,
            experts=model.n_expert,
            gqa=model.n_gqa,
            size=model.size_class,
            tied_embeddings=model.tied_embeddings,
            imatrix=imatrix,
        )


_COMPARISON = re.compile(r"\s*(>=|<=|==|!=|>|<|=)?\s*(-?\d+)\s*")


@functools.lru_cache(maxsize=256)
def _comparison(cond: str) -> tuple[str, int]:
    """A numeric condition such as ``'>= 4'``: (operator, number)."""
    m = _COMPARISON.fullmatch(cond)
    if not m:
        raise ValueError(
            f"bad numeric condition {cond!r}: expected an integer or a comparison such as '>= 4'"
        )
    return m.group(1) or "==", int(m.group(2))


def _cmp(value: int, cond: int | str) -> bool:
    if isinstance(cond, bool):
        return bool(value) == cond
    if isinstance(cond, int):
        return value == cond
    op, num = _comparison(cond)
    return {
        ">=": value >= num,
        "<=": value <= num,
        "==": value == num,
        "=": value == num,
        "!=": value != num,
        ">": value > num,
        "<": value < num,
    }[op]


def _holds(c: Condition, f: Facts, t: TensorInfo, base: GGMLQuantizationType) -> bool:
    if (archs := c.archs) is not None and f.arch not in archs:
        return False
    if c.layers is not None and not _cmp(f.layers, c.layers):
        return False
    if c.experts is not None and not _cmp(f.experts, c.experts):
        return False
    if c.gqa is not None and not _cmp(f.gqa, c.gqa):
        return False
    if (sizes := c.sizes) is not None and f.size.upper() not in [s.upper() for s in sizes]:
        return False
    if c.tied_embeddings is not None and f.tied_embeddings != c.tied_embeddings:
        return False
    if c.imatrix is not None and f.imatrix != c.imatrix:
        return False
    if c.row_multiple_of is not None:
        rm = c.row_multiple_of
        if isinstance(rm, str):
            if rm.strip().lower() == "base":
                k = llama.block_size(base)
            elif rm.strip().lstrip("-").isdigit():
                k = int(rm)
            else:
                tt = parse_type_name(rm)
                assert tt is not None
                k = llama.block_size(tt)
        else:
            k = rm
        if k <= 0 or t.shape[0] % k != 0:
            return False
    if c.dims is not None and not _cmp(t.n_dims, c.dims):
        return False
    if c.any is not None and not any(_holds(s, f, t, base) for s in c.any):
        return False
    return not (c.not_ is not None and _holds(c.not_, f, t, base))


@dataclass
class CompileResult:
    plan: Plan
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


def _type_or_keep(
    value: str, where: str, diags: list[Diagnostic], source: str
) -> GGMLQuantizationType | None:
    try:
        return parse_type_name(value, allow_keep=True)
    except TypeNameError as e:
        diags.append(Diagnostic(f"{where}: {e.message}", "error", source, hint=e.hint, code="R104"))
        raise RecipeError(diags) from None


def _resolve_rules(eff: Effective, diags: list[Diagnostic]) -> list[ResolvedRule]:
    out: list[ResolvedRule] = []
    for depth, lr in enumerate(eff.chain):
        for k, rule in enumerate(lr.recipe.rules):
            regex = None
            if rule.match is not None:
                try:
                    regex = compile_pattern(rule.match)
                except re.error as e:
                    line, col = lr.locate(("rules", k, "match")) if lr.locate else (None, None)
                    diags.append(
                        Diagnostic(
                            f"rule {k + 1}: the regex '{rule.match}' does not compile: {e.msg} at position {e.pos}",
                            "error",
                            lr.source,
                            line,
                            col,
                            code="R105",
                        )
                    )
                    raise RecipeError(diags) from None
            layers = None
            if (selectors := rule.layer_selectors) is not None:
                try:
                    layers = parse_layers(selectors)
                except SelectorError as e:
                    line, col = lr.locate(("rules", k, "layers")) if lr.locate else (None, None)
                    diags.append(
                        Diagnostic(
                            f"rule {k + 1}: {e.message}", "error", lr.source, line, col, e.hint, code="R107"
                        )
                    )
                    raise RecipeError(diags) from None
            ttype = _type_or_keep(rule.type, f"rule {k + 1}", diags, lr.source)
            cats = None
            if (categories := rule.categories) is not None:
                cats = frozenset(categories)
            out.append(ResolvedRule(rule, len(out) + 1, depth, lr.source, k, regex, layers, ttype, cats))
        if eff.output is not None and depth == eff.output_depth and eff.output.strip().lower() != "keep":
            # llama-quantize applies --output-tensor-type to a tied token_embd inside the mix logic, after
            # the --tensor-type rules: here, after the rules of the recipe that sets `output`.
            otype = _type_or_keep(eff.output, "output", diags, lr.source)
            pseudo_rule = Rule(category=["token_embd"], when=Condition(tied_embeddings=True), type=eff.output)
            out.append(
                ResolvedRule(
                    pseudo_rule,
                    len(out) + 1,
                    depth,
                    lr.source,
                    -1,
                    None,
                    None,
                    otype,
                    frozenset(["token_embd"]),
                    pseudo="output (tied token_embd)",
                )
            )
    return out


def _remap_prune(names: list[str], prune: list[int]) -> dict[str, str | None]:
    """remap_layer: renumber blocks after pruning (names in processing order); None = pruned."""
    out: dict[str, str | None] = {}
    if not prune:
        return {n: n for n in names}
    mapped: dict[int, str] = {}
    next_id = 0
    pat = re.compile(r"blk\.(\d+)\.")
    for name in names:
        m = pat.search(name)
        if not m:
            out[name] = name
            continue
        blk = int(m.group(1))
        if blk not in mapped:
            if blk in prune:
                mapped[blk] = ""
            elif blk < prune[0]:
                mapped[blk] = str(blk)
                next_id = blk + 1
            else:
                mapped[blk] = str(next_id)
                next_id += 1
        new = mapped[blk]
        out[name] = None if new == "" else name[: m.start(1)] + new + name[m.end(1) :]
    return out


def pattern_timeout_diagnostic(exc: PatternTimeout, chain: list[LoadedRecipe]) -> Diagnostic:
    """The error for a regex that ran out of time, at the rule (or imatrix pattern) that holds it."""
    for lr in chain:
        places: list[tuple[str | int, ...]] = [
            ("rules", k, "match") for k, r in enumerate(lr.recipe.rules) if r.match == exc.pattern
        ]
        im = lr.recipe.imatrix
        for key in ("include", "exclude"):
            pats: list[str] = getattr(im, key) if im is not None else []
            places += [("imatrix", key, j) for j, p in enumerate(pats) if p == exc.pattern]
        if places:
            line, col = lr.locate(places[0]) if lr.locate else (None, None)
            return Diagnostic(str(exc), "error", lr.source, line, col, code="C204")
    return Diagnostic(str(exc), "error", chain[0].source, code="C204")


def compile_chain(
    chain: list[LoadedRecipe],
    model: ModelInfo,
    *,
    imatrix: bool = False,
    imatrix_fingerprint: str | None = None,
    imatrix_names: set[str] | None = None,
    strict_fallbacks: bool = False,
) -> CompileResult:
    """The plan of ``chain`` (child first) for ``model``; raises :class:`RecipeError`."""
    try:
        return _compile_chain(
            chain,
            model,
            imatrix=imatrix,
            imatrix_fingerprint=imatrix_fingerprint,
            imatrix_names=imatrix_names,
            strict_fallbacks=strict_fallbacks,
        )
    except PatternTimeout as exc:
        raise RecipeError([pattern_timeout_diagnostic(exc, chain)]) from None


def _compile_chain(
    chain: list[LoadedRecipe],
    model: ModelInfo,
    *,
    imatrix: bool,
    imatrix_fingerprint: str | None,
    imatrix_names: set[str] | None,
    strict_fallbacks: bool,
) -> CompileResult:
    diags: list[Diagnostic] = []
    eff = _effective(chain)
    rules = _resolve_rules(eff, diags)
    root_source = chain[0].source

    te_type: GGMLQuantizationType | None = None
    te_set = eff.token_embedding is not None
    if te_set:
        assert eff.token_embedding is not None
        te_type = _type_or_keep(eff.token_embedding, "token_embedding", diags, root_source)
    out_set = eff.output is not None
    out_keep = out_set and str(eff.output).strip().lower() == "keep"
    out_type: GGMLQuantizationType | None = None
    if out_set and not out_keep:
        assert eff.output is not None
        out_type = _type_or_keep(eff.output, "output", diags, root_source)

    facts = Facts.of(model, imatrix)
    n_layer = model.n_layer
    for p in eff.prune_layers:
        if not 0 <= p < n_layer:
            diags.append(
                Diagnostic(
                    f"prune_layers: layer {p} is outside the model: it has {n_layer} layers (0..{n_layer - 1})",
                    "error",
                    root_source,
                    code="C205",
                )
            )
    if any(d.is_error for d in diags):
        raise RecipeError(diags)

    ordered = sorted(model.tensors, key=lambda t: llama.processing_key(t.name))
    renamed = _remap_prune([t.name for t in ordered], eff.prune_layers)
    kept = [(t, renamed[t.name]) for t in ordered if renamed[t.name] is not None]

    cats: dict[str, str] = {}
    group_total: dict[str, int] = {"attn_v": 0, "ffn_down": n_layer, "ffn_gate": n_layer, "ffn_up": n_layer}
    for _t, new_name in kept:
        assert new_name is not None
        c = llama.category(new_name)
        cats[new_name] = c
        if llama.COUNTER_GROUP.get(c) == "attn_v":
            group_total["attn_v"] += 1
    tied = facts.tied_embeddings
    # decide-depths of the tensors already counted, per counter group
    counted: dict[str, list[int]] = {"attn_v": [], "ffn_down": [], "ffn_gate": [], "ffn_up": []}
    stable = eff.counters == "stable"

    inc_re = [compile_pattern(p) for p in eff.imatrix_include]
    exc_re = [compile_pattern(p) for p in eff.imatrix_exclude]

    planned: list[PlannedTensor] = []
    rule_hits: dict[int, int] = {}
    fallback_count = 0
    needs_imatrix: list[str] = []

    descriptions: dict[int, str] = {}

    def describe(r: ResolvedRule) -> str:
        """The rule's text in the plan (the same for every tensor it decides)."""
        text = descriptions.get(r.index)
        if text is None:
            text = descriptions[r.index] = r.describe()
        return text

    def position(group: str, depth: int) -> int:
        lst = counted[group]
        if stable:
            return len(lst)
        return sum(1 for d in lst if d >= depth)

    def rule_applies(r: ResolvedRule, name: str, cat: str, t: TensorInfo, group: str | None) -> bool:
        """Whether rule ``r`` decides tensor ``name`` (first match wins): category, pattern, tied
        embeddings for the pseudo rule, ``when``, then its layers (block numbers or counter positions)."""
        if r.categories is not None and cat not in r.categories:
            return False
        if r.regex is not None and not r.regex.search(name):
            return False
        if r.pseudo is not None and not tied:
            return False
        if r.rule.when is not None and not _holds(r.rule.when, facts, t, eff.base):
            return False
        if r.layers is None:
            return True
        if r.rule.layers_by == "position":
            if group is None:
                return False
            i, n = position(group, r.depth), group_total[group]
        else:
            blk = llama.block_number(name)
            if blk is None:
                return False
            i, n = blk, n_layer
        return r.layers.contains(i, n)

    for t, new_name in kept:
        assert new_name is not None
        name = new_name
        cat = cats[name]
        group = llama.COUNTER_GROUP.get(cat)
        src = t.qtype
        why = llama.not_quantizable_reason(name, t.n_dims, model.arch, quantize_output=not out_keep)
        fb: Fallback | None = None
        use_imatrix_rule: bool | None = None
        rule_index: int | None = None
        if why is not None:
            target = src
            rule_text = f"not quantizable: {why}"
            decision: Decision = "not-quantizable"
            if out_keep and name == "output.weight":
                rule_text, decision = "output: keep", "output"
        elif (
            te_set
            and cat == "token_embd"
            and not (
                name == "per_layer_token_embd.weight"
                and any(
                    r.regex is not None and r.depth < INF_DEPTH and r.regex.search(name)
                    for r in rules
                    if r.depth == 0
                )
            )
        ):
            target = src if te_type is None else te_type
            rule_text, decision = "token-embedding", "token-embedding"
        elif out_type is not None and cat == "output":
            target = out_type
            rule_text, decision = "output", "output"
        else:
            chosen = next((r for r in rules if rule_applies(r, name, cat, t, group)), None)
            if chosen is not None:
                rule_hits[chosen.index] = rule_hits.get(chosen.index, 0) + 1
                want = src if chosen.type is None else chosen.type
                rule_text, decision, rule_index = describe(chosen), "rule", chosen.index
                use_imatrix_rule = chosen.rule.imatrix
                decide_depth = chosen.depth
            else:
                want = eff.base
                rule_text, decision = "base", "base"
                decide_depth = INF_DEPTH
            target = want
            if (chosen is None or chosen.type is not None) and llama.is_quantized(want):
                try:
                    got = llama.fallback_type(want, t.shape[0])
                except llama.NoFallbackError as e:
                    diags.append(Diagnostic(f"{name}: {e}", "error", root_source, code="C205"))
                    got = None
                if got is not None:
                    fallback_count += 1
                    reason = (
                        f"row length {t.shape[0]} is not a multiple of {llama.block_size(want)} "
                        f"(the block size of {ggml_name(want)})"
                    )
                    fb = Fallback(wanted=ggml_name(want), got=ggml_name(got), reason=reason)
                    target = got
                    rule_text = f"{rule_text}; fallback from {ggml_name(want)}"
                    if strict_fallbacks or eff.fallbacks == "error":
                        diags.append(
                            Diagnostic(
                                f"{name}: {ggml_name(want)} does not fit ({reason}); llama.cpp would use "
                                f"{ggml_name(got)}",
                                "error",
                                root_source,
                                hint="pick a type whose block size divides the row length, or allow fallbacks",
                                code="C202",
                            )
                        )
            if group is not None:
                counted[group].append(decide_depth)
        quantize = target != src
        tb = t.n_rows * row_nbytes(t.shape[0], target) if quantize else t.nbytes
        im = False
        if imatrix and quantize and llama.is_quantized(target):
            im = use_imatrix_rule is not False
            if im and inc_re:
                im = any(p.search(name) for p in inc_re)
            if im and exc_re:
                im = not any(p.search(name) for p in exc_re)
        llama_needs_im = (
            quantize and llama.is_quantized(target) and llama.requires_imatrix(name, target, eff.ftype)
        )
        if llama_needs_im and not im:
            needs_imatrix.append(f"{name}: {ggml_name(target)}")
        # apply refuses either: llama.cpp's rule, or a quantizer that cannot run without one (ggml
        # asserts, even for token_embd where llama.cpp's rule makes an exception)
        needs_im = llama_needs_im or (quantize and _quantizer_needs_imatrix(target))
        planned.append(
            PlannedTensor(
                name=name,
                source_name=t.name,
                shape=list(t.shape),
                source_type=ggml_name(src),
                type=ggml_name(target),
                action="quantize" if quantize else "copy",
                rule=rule_text,
                decision=decision,
                rule_index=rule_index,
                fallback=fb,
                imatrix=im,
                needs_imatrix=needs_im,
                source_bytes=t.nbytes,
                target_bytes=tb,
            )
        )

    pruned = [t for t in ordered if renamed[t.name] is None]
    for t in pruned:
        planned.append(
            PlannedTensor(
                name=t.name,
                source_name=t.name,
                shape=list(t.shape),
                source_type=ggml_name(t.qtype),
                type=ggml_name(t.qtype),
                action="prune",
                rule="pruned",
                decision="pruned",
                needs_imatrix=False,
                source_bytes=t.nbytes,
                target_bytes=0,
            )
        )

    live = [pt for pt in planned if pt.action != "prune"]
    totals = _totals(live, model.n_elements, fallback_count)
    warnings: list[str] = []
    if fallback_count:
        warnings.append(f"{fallback_count} of {len(live)} tensor(s) required fallback quantization")
    warnings += _imatrix_findings(live, eff, needs_imatrix, imatrix, imatrix_names, root_source, diags)
    metadata_overrides = _metadata_overrides(eff, model.arch, n_layer)

    recipe_fp = hashlib.sha256("\0".join(lr.text for lr in chain).encode()).hexdigest()
    ftype_val = llama.LLAMA_FTYPES.get(eff.ftype.upper()) if eff.ftype else None
    plan = Plan(
        recipe_name=eff.name,
        recipe_text=chain[0].text,
        recipe_chain=[RecipeSource(name=lr.source, text=lr.text) for lr in chain],
        model_path=str(model.path),
        ftype=ftype_val,
        fingerprints=Fingerprints(recipe=recipe_fp, model=model.header_sha256, imatrix=imatrix_fingerprint),
        tensors=planned,
        totals=totals,
        metadata_overrides=metadata_overrides,
        warnings=warnings,
    )
    return CompileResult(plan=plan, diagnostics=diags)


def _totals(live: list[PlannedTensor], n_elements: int, n_fallbacks: int) -> PlanTotals:
    """The plan's sizes: tensor data in and out, bits per weight, bytes per type."""
    target_bytes = sum(pt.target_bytes for pt in live)
    by_type: dict[str, int] = {}
    for pt in live:
        by_type[pt.type] = by_type.get(pt.type, 0) + pt.target_bytes
    return PlanTotals(
        n_tensors=len(live),
        n_elements=n_elements,
        source_bytes=sum(pt.source_bytes for pt in live),
        target_bytes=target_bytes,
        bpw=round(target_bytes * 8 / n_elements, 4) if n_elements else 0.0,
        by_type=dict(sorted(by_type.items())),
        n_fallbacks=n_fallbacks,
    )


def _imatrix_findings(
    live: list[PlannedTensor],
    eff: Effective,
    needs_imatrix: list[str],
    imatrix: bool,
    imatrix_names: set[str] | None,
    root_source: str,
    diags: list[Diagnostic],
) -> list[str]:
    """What the plan says about importance matrices (types that need one, a recipe that requires one,
    entries the given one lacks): the plan's warnings; the diagnostics go to ``diags``."""
    warnings: list[str] = []
    if needs_imatrix:
        msg = (
            f"{len(needs_imatrix)} tensor(s) get a type that needs an importance matrix (e.g. {needs_imatrix[0]}); "
            "pass --imatrix"
        )
        warnings.append(msg)
        diags.append(
            Diagnostic(
                msg,
                "error" if not imatrix else "warning",
                root_source,
                hint="llama-quantize refuses these without --imatrix",
                code="C201",
            )
        )
    if eff.imatrix_required and not imatrix:
        diags.append(
            Diagnostic(
                "this recipe requires an importance matrix (imatrix.required: true)",
                "error",
                root_source,
                code="C201",
            )
        )
    if imatrix_names is not None:
        missing = [pt.source_name for pt in live if pt.imatrix and pt.source_name not in imatrix_names]
        if missing:
            shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
            msg = f"the imatrix has no entry for {len(missing)} tensor(s) that use one: {shown}"
            warnings.append(msg)
            diags.append(
                Diagnostic(
                    msg,
                    "warning",
                    root_source,
                    hint="they are quantized without importance weights",
                    code="C203",
                )
            )
    return warnings


def _metadata_overrides(eff: Effective, arch: str, n_layer: int) -> dict[str, object]:
    """The recipe chain's metadata, and the block count llama-quantize writes when layers are pruned."""
    overrides: dict[str, object] = {k: {"type": v.type, "value": v.value} for k, v in eff.metadata.items()}
    if eff.prune_layers:
        overrides.setdefault(f"{arch}.block_count", {"type": "int", "value": n_layer - len(eff.prune_layers)})
    return overrides


def load_chain(recipe_source: str | Path, loader: Callable[[Path], LoadedRecipe]) -> list[LoadedRecipe]:
    """Load a recipe and everything it extends (child first). A problem with what a recipe extends (not
    found, not a recipe, a loop) is one error at that recipe's ``extends``."""
    from ..recipes import resolve

    chain: list[LoadedRecipe] = []
    seen: set[Path] = set()
    path = resolve(recipe_source)
    while True:
        rp = path.resolve()
        if rp in seen:
            raise RecipeError([_at_extends(chain[-1], f"loops back to {path}")])
        seen.add(rp)
        if not chain:
            lr = loader(path)
        else:
            try:
                lr = loader(path)
            except RecipeError as exc:
                d = exc.diagnostics[0] if exc.diagnostics else None
                first = f"{d.location}: {d.message}" if d else "cannot load it"
                raise RecipeError(
                    [_at_extends(chain[-1], f"{path} is not a valid recipe ({first})")]
                ) from None
        chain.append(lr)
        ext = lr.recipe.extends
        if ext is None:
            return chain
        try:
            path = resolve(ext, relative_to=path)
        except FileNotFoundError as exc:
            raise RecipeError([_at_extends(lr, str(exc))]) from None


def _at_extends(lr: LoadedRecipe, problem: str) -> Diagnostic:
    line, col = lr.locate(("extends",)) if lr.locate else (None, None)
    return Diagnostic(f"extends '{lr.recipe.extends}': {problem}", "error", lr.source, line, col, code="R110")
