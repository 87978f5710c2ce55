"""``recipe infer``: the shortest readable recipe that reproduces the types of a quantized GGUF.

From the header alone: the built-in mix ``general.file_type`` names (or, without one, the closest
mix) is planned against the file's own tensor list, with an importance matrix when the file carries
llama-quantize's ``quantize.imatrix.*`` keys. What the mix does not explain becomes ``token_embedding``
/ ``output`` and rules with layer ranges (first/last N, strides, unions; families that share a type and
layers share a rule). ``counters: llama-quantize`` is chosen where llama-quantize's counter shift (a
``--tensor-type`` run) explains the file with fewer rules. The result is planned again and returned only
when every tensor gets exactly the type it has in the file.

With a source model (``--source``) the recipe is planned against the source instead, and layers the
quantized file lacks become ``prune_layers``.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gguf import GGMLQuantizationType

from .. import llamacpp as llama
from ..compiler.engine import LoadedRecipe, compile_chain
from ..diagnostics import RecipeError
from ..errors import GGUFRecipeError
from ..model.reader import ModelInfo, read_model
from ..recipe.model import ImatrixSettings, Recipe, Rule
from ..recipe.typenames import ggml_name, parse_type_name
from ..recipes import is_builtin_name
from .views import family_of

__all__ = [
    "MAX_COMPACT_RULES",
    "InferError",
    "InferResult",
    "imatrix_used",
    "infer_recipe",
    "mix_of_file_type",
]

T = GGMLQuantizationType
IMATRIX_PREFIX = "quantize.imatrix."
FTYPE_GUESSED = 1024  # llama_ftype's LLAMA_FTYPE_GUESSED bit
MAX_COMPACT_RULES = 12  # above this, every built-in mix is tried as the base
_FLOATS = ("f32", "f16", "bf16")
_COUNTER_CATEGORIES = frozenset(llama.COUNTER_GROUP)


class InferError(GGUFRecipeError, ValueError):
    """No recipe reproduces the file (``mismatches``: tensor -> (type in the file, type planned))."""

    def __init__(self, message: str, mismatches: dict[str, tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.mismatches = mismatches or {}


@dataclass
class InferResult:
    text: str  # the recipe (YAML)
    base: str  # 'llama.cpp/Q4_K_M' or 'base q4_K'
    n_rules: int
    counters: str
    imatrix: bool
    n_tensors: int  # tensors checked: every one gets its type
    prune_layers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def imatrix_used(model: ModelInfo) -> bool:
    """llama-quantize writes ``quantize.imatrix.*`` keys exactly when it was given an importance matrix."""
    return any(k.startswith(IMATRIX_PREFIX) for k in model.metadata_types)


def mix_of_file_type(model: ModelInfo) -> str | None:
    """The llama.cpp mix ``general.file_type`` names (e.g. ``Q4_K_M``), or None."""
    v = model.metadata.get("general.file_type")
    if not isinstance(v, int) or isinstance(v, bool):
        return None
    v &= ~FTYPE_GUESSED
    for name, value in llama.LLAMA_FTYPES.items():
        if value == v and is_builtin_name(f"llama.cpp/{name}"):
            return name
    return None


# --- the recipe being built -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    match: str
    layers: tuple[str, ...] | None
    type: str


@dataclass
class _Spec:
    extends: str | None  # 'llama.cpp/Q4_K_M', or None with `base`
    base: str | None
    ftype: str | None
    imatrix: bool
    prune: tuple[int, ...] = ()
    token_embedding: str | None = None
    output: str | None = None
    counters: str = "stable"
    rules: list[_Rule] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.extends or f"base {self.base}"

    def recipe(self, name: str) -> Recipe:
        data: dict[str, object] = {"recipe": 1, "name": name}
        if self.extends is not None:
            data["extends"] = self.extends
        else:
            data["base"] = self.base
            data["ftype"] = self.ftype
        if self.token_embedding is not None:
            data["token_embedding"] = self.token_embedding
        if self.output is not None:
            data["output"] = self.output
        if self.counters != "stable":
            data["counters"] = self.counters
        if self.imatrix:
            data["imatrix"] = ImatrixSettings(required=True)
        if self.prune:
            data["prune_layers"] = list(self.prune)
        data["rules"] = [
            Rule(match=r.match, layers=list(r.layers) if r.layers is not None else None, type=r.type)
            for r in self.rules
        ]
        return Recipe.model_validate(data)


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _render(spec: _Spec, name: str, header: Sequence[str]) -> str:
    lines = [f"# {h}" if h else "#" for h in header]
    lines += ["recipe: 1", f"name: {_q(name)}"]
    if spec.extends is not None:
        lines.append(f"extends: {spec.extends}")
    else:
        lines.append(f"base: {spec.base}")
        if spec.ftype:
            lines.append(f"ftype: {spec.ftype}")
    if spec.token_embedding is not None:
        lines.append(f"token_embedding: {spec.token_embedding}")
    if spec.output is not None:
        lines.append(f"output: {spec.output}")
    if spec.counters != "stable":
        lines.append(
            f"counters: {spec.counters}    # the rules move the mix's position-based choices, as --tensor-type does"
        )
    if spec.imatrix:
        lines += ["imatrix:", "  required: true    # the file was made with an importance matrix"]
    if spec.prune:
        lines.append("prune_layers: [" + ", ".join(str(x) for x in spec.prune) + "]")
    if spec.rules:
        lines.append("rules:")
        for r in spec.rules:
            lines.append(f"  - match: {_q(r.match)}")
            if r.layers is not None:
                lines.append("    layers: [" + ", ".join(_q(x) if ".." in x else x for x in r.layers) + "]")
            lines.append(f"    type: {r.type}")
    else:
        lines.append("rules: []")
    return "\n".join(lines) + "\n"


# --- what the file says and how it is planned --------------------------------------------------------


@dataclass
class _Context:
    plan_model: ModelInfo  # what the recipe is planned against (the file itself, or --source)
    target: dict[str, str]  # planned (output) name -> type in the file
    shapes: dict[str, tuple[int, ...]]
    source_types: dict[str, str]  # planned name -> type in plan_model
    n_layer: int  # the planning model's block count (what layer selectors resolve against)
    imatrix: bool
    prune: tuple[int, ...]
    name: str

    def plan_types(self, spec: _Spec) -> dict[str, str]:
        """The type each live tensor gets when ``spec`` is planned against the planning model."""
        from ..compiler.engine import load_chain

        recipe = spec.recipe(self.name)
        chain = [LoadedRecipe(recipe=recipe, text="", source="<inferred>")]
        if recipe.extends is not None:
            from ..compiler import _loader

            chain += load_chain(recipe.extends, _loader)
        try:
            plan = compile_chain(chain, self.plan_model, imatrix=self.imatrix).plan
        except RecipeError:
            return {}
        return {t.name: t.type for t in plan.tensors if t.action != "prune"}


def _mismatches(ctx: _Context, got: dict[str, str]) -> dict[str, tuple[str, str]]:
    out = {n: (want, got.get(n, "-")) for n, want in ctx.target.items() if got.get(n) != want}
    for n in got:
        if n not in ctx.target:
            out[n] = ("-", got[n])
    return out


def _keep_or(ctx: _Context, name: str, t: str) -> str:
    """``keep`` where the file left the tensor as the source has it (a float type), else the type."""
    return "keep" if t in _FLOATS and ctx.source_types.get(name) == t else t


def _result_of(rule_type: str, ne0: int) -> str:
    """The type a rule asking for ``rule_type`` gives a tensor with rows of ``ne0`` (row-size fallback)."""
    t = parse_type_name(rule_type)
    assert t is not None
    if not llama.is_quantized(t):
        return ggml_name(t)
    try:
        fb = llama.fallback_type(t, ne0)
    except llama.NoFallbackError:
        return "?"
    return ggml_name(t if fb is None else fb)


# --- layer selectors --------------------------------------------------------------------------------


def _span_text(lo: int, hi: int, n: int) -> str:
    if lo == hi:
        return str(lo)
    if lo == 0:
        return f"..{hi}"
    if hi == n - 1:
        return f"{lo}.."
    return f"{lo}..{hi}"


def _intervals(need: set[int], allowed: set[int], n: int) -> list[tuple[int, int]]:
    """The fewest ranges inside ``allowed`` that cover ``need``; a range stretches to layer 0 or to the
    last layer when every layer on the way is allowed (an open end reads better)."""
    out: list[tuple[int, int]] = []
    xs = sorted(need)
    i = 0
    while i < len(xs):
        lo = hi = xs[i]
        while i + 1 < len(xs) and all(k in allowed for k in range(hi + 1, xs[i + 1] + 1)):
            i += 1
            hi = xs[i]
        if all(k in allowed for k in range(lo)):
            lo = 0
        if all(k in allowed for k in range(hi + 1, n)):
            hi = n - 1
        out.append((lo, hi))
        i += 1
    return out


def _stride_text(a: int, last: int, s: int, n: int) -> str:
    return f"{a}.. step {s}" if last + s >= n else f"{a}..{last} step {s}"


def _selectors(need: set[int], allowed: set[int], n: int) -> list[str] | None:
    """Compact layer selectors S with need ⊆ S ⊆ allowed (None: every layer).

    Either ranges alone, or a greedy cover by strides ("a..b step s", as long as they stay inside
    ``allowed``) and ranges, whichever has fewer items."""
    if all(i in allowed for i in range(n)):
        return None
    best = [_span_text(lo, hi, n) for lo, hi in _intervals(need, allowed, n)]
    strides: list[tuple[int, int, list[int]]] = []
    for s in range(2, max(2, n // 2) + 1):
        for a in sorted(need):
            members = []
            k = a
            while k < n and k in allowed:
                members.append(k)
                k += s
            if len(need.intersection(members)) >= 3:
                strides.append((a, s, members))
    left = set(need)
    chosen: list[str] = []
    while left and strides:
        a, s, members = max(strides, key=lambda x: (len(left.intersection(x[2])), -x[1], -x[0]))
        gain = left.intersection(members)
        if len(gain) < 3:
            break
        chosen.append(_stride_text(a, members[-1], s, n))
        left -= gain
        rest = [_span_text(lo, hi, n) for lo, hi in _intervals(left, allowed, n)]
        if len(chosen) + len(rest) < len(best):
            best = chosen + rest
    return best


# --- rules ------------------------------------------------------------------------------------------


def _alternation(items: Sequence[str]) -> str:
    """``attn_(k|output|q)\\.weight`` for attn_k.weight, attn_output.weight, attn_q.weight (escaped)."""
    items = sorted(set(items))
    if len(items) == 1:
        return re.escape(items[0])
    pre = items[0]
    for s in items[1:]:
        while not s.startswith(pre):
            pre = pre[:-1]
    suf = items[0]
    for s in items[1:]:
        while not s.endswith(suf):
            suf = suf[1:]

    # do not split a name part: the common prefix / suffix end at a separator
    def cut_after(p: str) -> bool:
        return p[-1] in "._" or all(len(x) == len(p) or x[len(p)] in "._" for x in items)

    def cut_before(q: str) -> bool:
        return q[0] in "._" or all(len(x) == len(q) or x[-len(q) - 1] in "._" for x in items)

    while pre and not cut_after(pre):
        pre = pre[:-1]
    while suf and not cut_before(suf):
        suf = suf[1:]
    if len(pre) + len(suf) > min(len(s) for s in items):
        suf = suf[len(pre) + len(suf) - min(len(s) for s in items) :]
    mids = [s[len(pre) : len(s) - len(suf)] for s in items]
    empty = [m for m in mids if not m]
    if len(empty) == 1 and len(mids) > 1:
        rest = [m for m in mids if m]
        inner = rest[0] if len(rest) == 1 else "(" + "|".join(re.escape(m) for m in rest) + ")"
        if len(rest) == 1:
            inner = "(" + re.escape(rest[0]) + ")"
        return re.escape(pre) + inner + "?" + re.escape(suf)
    if empty:
        pre, suf, mids = "", "", list(items)
    return re.escape(pre) + "(" + "|".join(re.escape(m) for m in mids) + ")" + re.escape(suf)


@dataclass
class _Group:
    type: str
    families: list[str]  # block families ('blk.*.x.weight')
    need: set[int]
    allowed: dict[str, set[int]]  # per family: layers where this type is right (or the family is absent)

    def common_allowed(self) -> set[int]:
        sets = list(self.allowed.values())
        out = set(sets[0])
        for x in sets[1:]:
            out &= x
        return out


def _synthesize(
    ctx: _Context, diff: Iterable[str], *, merge: bool = True, anchored: bool = False
) -> list[_Rule]:
    """Rules that give every tensor in ``diff`` its type and change no other tensor's type.

    Per family and type: the layers that need it, widened where the type is right anyway; families with
    the same type whose layers agree share a rule. Rules for the same family are ordered so that the
    narrower comes first: a later rule may then also cover the layers the earlier one took."""
    n = ctx.n_layer
    fam_members: dict[str, list[str]] = {}
    for name in ctx.target:
        fam_members.setdefault(family_of(name), []).append(name)
    wanted: dict[tuple[str, str], set[int]] = {}
    single: dict[str, list[str]] = {}
    for name in diff:
        t = ctx.target[name]
        ne0 = ctx.shapes[name][0]
        if _result_of(t, ne0) != t:
            raise InferError(
                f"{name}: the file has {t}, which rows of {ne0} cannot hold; no rule gives it "
                "(only --token-embedding-type / --output-tensor-type skip the row-size fallback)"
            )
        blk = llama.block_number(name)
        if blk is None:
            single.setdefault(t, []).append(name)
        else:
            wanted.setdefault((family_of(name), t), set()).add(blk)

    def allowed_for(fam: str, t: str) -> set[int]:
        present = {b for m in fam_members[fam] if (b := llama.block_number(m)) is not None}
        ok = {i for i in range(n) if i not in present}
        ok |= {
            b
            for m in fam_members[fam]
            if (b := llama.block_number(m)) is not None
            and ctx.target[m] == t
            and _result_of(t, ctx.shapes[m][0]) == t
        }
        return ok

    groups: list[_Group] = []
    # narrow needs first, so that the shadowing below can widen the broad ones
    for (fam, t), need in sorted(wanted.items(), key=lambda kv: (len(kv[1]), kv[0][1], kv[0][0])):
        allowed = allowed_for(fam, t)
        for other in groups if merge else []:
            if other.type == t and (other.need | need) <= (other.common_allowed() & allowed):
                other.families.append(fam)
                other.need |= need
                other.allowed[fam] = allowed
                break
        else:
            groups.append(_Group(t, [fam], set(need), {fam: allowed}))
    order: dict[str, int] = {}  # each family at its first tensor in llama-quantize's order
    for name in sorted(ctx.target, key=llama.processing_key):
        order.setdefault(family_of(name), len(order))
    rules: list[_Rule] = []
    taken: dict[str, set[int]] = {}  # per family: layers earlier rules already decide
    all_names = list(ctx.target)
    for g in groups:
        allowed = set(range(n))
        for fam in g.families:
            allowed &= g.allowed[fam] | taken.get(fam, set())
        sel = _selectors(g.need, allowed, n)
        covered = set(range(n)) if sel is None else _resolve(sel, n)
        for fam in g.families:
            taken.setdefault(fam, set()).update(covered)
        suffixes = [f.removeprefix("blk.*.") for f in g.families]
        alt = _alternation(suffixes)
        pattern = alt + "$"
        if anchored or not _only_families(pattern, all_names, set(g.families), sel is None):
            pattern = r"^blk\.\d+\." + alt + "$"
        rules.append(_Rule(pattern, tuple(sel) if sel is not None else None, g.type))
    # rules that share a family (directly or through others) keep their order (narrow first, as the
    # widening above assumed); otherwise the model's order
    component = list(range(len(groups)))

    def root(k: int) -> int:
        while component[k] != k:
            k = component[k]
        return k

    for j in range(len(groups)):
        for k in range(j):
            if set(groups[j].families) & set(groups[k].families):
                component[root(j)] = root(k)
    first: dict[int, int] = {}
    for k, g in enumerate(groups):
        r = root(k)
        first[r] = min(first.get(r, len(order)), *(order[f] for f in g.families))
    ranked = sorted(range(len(rules)), key=lambda k: (first[root(k)], k))
    rules = [rules[k] for k in ranked]
    for t, names in sorted(single.items()):
        rules.append(_Rule("^" + _alternation(names) + "$", None, t))
    return rules


def _resolve(selectors: Sequence[str], n: int) -> set[int]:
    from ..recipe.selectors import parse_layers

    return set(parse_layers(list(selectors)).layers(n))


def _only_families(pattern: str, names: Iterable[str], families: set[str], no_layers: bool) -> bool:
    rx = re.compile(pattern)
    for name in names:
        if not rx.search(name):
            continue
        if llama.block_number(name) is None:
            if no_layers:
                return False
            continue
        if family_of(name) not in families:
            return False
    return True


# --- one base: stable counters, and llama-quantize's counters ---------------------------------------


def _scalars(ctx: _Context, spec: _Spec) -> dict[str, str]:
    """Set token_embedding / output where the base does not give the file's type; the new plan."""
    got = ctx.plan_types(spec)
    changed = False
    for name, attr in (("token_embd.weight", "token_embedding"), ("output.weight", "output")):
        want = ctx.target.get(name)
        if want is not None and got.get(name) != want:
            setattr(spec, attr, _keep_or(ctx, name, want))
            changed = True
    return ctx.plan_types(spec) if changed else got


def _solve_stable(ctx: _Context, spec: _Spec, got: dict[str, str]) -> _Spec | None:
    diff = [n for n, t in ctx.target.items() if got.get(n) != t]
    if any(n not in ctx.target for n in got) or any(n not in got for n in ctx.target):
        return None
    for merge, anchored in ((True, False), (False, True)):
        cand = replace(spec, rules=_synthesize(ctx, diff, merge=merge, anchored=anchored))
        if not _mismatches(ctx, ctx.plan_types(cand)):
            return cand
    return None


def _solve_llama_quantize(ctx: _Context, spec: _Spec, got: dict[str, str]) -> _Spec | None:
    """Rules that llama-quantize's counters explain: start from the tensors whose type the mix never
    gives their family, then add what the counter shift leaves unexplained."""
    if spec.extends is None:
        return None
    by_family: dict[str, set[str]] = {}
    for n, t in got.items():
        by_family.setdefault(family_of(n), set()).add(t)
    diff = {n for n, t in ctx.target.items() if got.get(n) != t}
    if not any(llama.category(n) in _COUNTER_CATEGORIES for n in diff):
        return None
    start = {n for n in diff if llama.category(n) not in _COUNTER_CATEGORIES}
    start |= {n for n in diff if ctx.target[n] not in by_family.get(family_of(n), set())}
    best: _Spec | None = None
    for seed in (start, diff):
        need = set(seed)
        for _ in range(6):
            try:
                cand = replace(spec, counters="llama-quantize", rules=_synthesize(ctx, need))
            except InferError:
                break
            wrong = _mismatches(ctx, ctx.plan_types(cand))
            if not wrong:
                if best is None or len(cand.rules) < len(best.rules):
                    best = cand
                break
            if any(n not in ctx.target for n in wrong):
                break
            need |= set(wrong)
    return best


def _solve(ctx: _Context, spec: _Spec) -> _Spec | None:
    got = _scalars(ctx, spec)
    if not got:
        return None
    stable = _solve_stable(ctx, spec, got)
    lq = _solve_llama_quantize(ctx, spec, got)
    if lq is not None and (stable is None or len(lq.rules) < len(stable.rules)):
        return lq
    return stable


# --- pruned layers (with a source model) -------------------------------------------------------------


def _block_signature(model: ModelInfo, blk: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    pre = f"blk.{blk}."
    return tuple(
        sorted((t.name[len(pre) :], tuple(t.shape)) for t in model.tensors if t.name.startswith(pre))
    )


class _TensorBytes:
    """Reads the data of small unquantized tensors (one memory map per file, opened on first use)."""

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self.by_name = {t.name: t for t in model.tensors}
        self.maps: dict[int, mmap.mmap] = {}

    def get(self, name: str) -> bytes | None:
        t = self.by_name.get(name)
        if t is None or t.nbytes > 1 << 20:
            return None
        mm = self.maps.get(t.file_index)
        if mm is None:
            with open(self.model.files[t.file_index], "rb") as f:
                mm = self.maps[t.file_index] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start = self.model.data_offsets[t.file_index] + t.offset
        return bytes(mm[start : start + t.nbytes]) if start + t.nbytes <= len(mm) else None

    def close(self) -> None:
        for mm in self.maps.values():
            mm.close()
        self.maps.clear()


def _pruned_blocks(source: ModelInfo, quant: ModelInfo) -> tuple[list[int], str | None]:
    """Which source blocks the quantized file lacks: blocks are matched in order by their tensor names
    and shapes, then by the bytes of their unquantized 1-D tensors (norms are copied as they are)."""
    ns, nq = source.n_layer, quant.n_layer
    k = ns - nq
    sig_s = [_block_signature(source, i) for i in range(ns)]
    sig_q = [_block_signature(quant, i) for i in range(nq)]

    def data_key(reader: _TensorBytes, blk: int) -> bytes | None:
        pre = f"blk.{blk}."
        parts = []
        for name in sorted(reader.by_name):
            t = reader.by_name[name]
            if name.startswith(pre) and len(t.shape) == 1 and t.qtype == T.F32:
                b = reader.get(name)
                if b is None:
                    return None
                parts.append(b)
        return b"".join(parts) if parts else None

    def same(i: int, j: int) -> bool:
        return sig_s[i] == sig_q[j]

    # earliest alignment of the file's blocks onto the source's, in order
    rq, rs = _TensorBytes(quant), _TensorBytes(source)
    try:
        keys_q = [data_key(rq, j) for j in range(nq)]
        distinct = any(kq is not None and any(b != 0 for b in kq) for kq in keys_q)
        keys_s = [data_key(rs, i) for i in range(ns)] if distinct else [None] * ns
    finally:
        rq.close()
        rs.close()
    kept: list[int] = []
    i = 0
    for j in range(nq):
        while i < ns and not (same(i, j) and (not distinct or keys_s[i] == keys_q[j])):
            i += 1
        if i >= ns:
            raise InferError(
                f"block {j} of the file matches no remaining block of the source: "
                "is it the model the file was made from?"
            )
        kept.append(i)
        i += 1
    pruned = [b for b in range(ns) if b not in kept]
    note = None
    if not distinct and len(pruned) == k:
        note = (
            f"the headers cannot tell which {k} block(s) were removed (their tensors look alike and the "
            f"norms hold no data to compare); prune_layers lists one choice, which plans the same types"
        )
    return pruned, note


# --- entry point -------------------------------------------------------------------------------------


def _context(quant: ModelInfo, source: ModelInfo | None, name: str) -> tuple[_Context, list[str]]:
    notes: list[str] = []
    im = imatrix_used(quant)
    target = {t.name: ggml_name(t.qtype) for t in quant.tensors}
    if source is None:
        ctx = _Context(
            plan_model=quant,
            target=target,
            shapes={t.name: tuple(t.shape) for t in quant.tensors},
            source_types=dict(target),
            n_layer=quant.n_layer,
            imatrix=im,
            prune=(),
            name=name,
        )
        return ctx, notes
    prune: list[int] = []
    if source.n_layer > quant.n_layer:
        prune, note = _pruned_blocks(source, quant)
        if note:
            notes.append(note)
    from ..compiler.engine import _remap_prune

    ordered = sorted(source.tensors, key=lambda t: llama.processing_key(t.name))
    renamed = _remap_prune([t.name for t in ordered], prune)
    shapes: dict[str, tuple[int, ...]] = {}
    src_types: dict[str, str] = {}
    for t in ordered:
        new = renamed[t.name]
        if new is not None:
            shapes[new] = tuple(t.shape)
            src_types[new] = ggml_name(t.qtype)
    missing = sorted(set(target) - set(shapes))
    if missing:
        raise InferError(
            f"the source has no tensor {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": it is not the model the file was made from"
        )
    extra = sorted(set(shapes) - set(target))
    if extra:
        raise InferError(f"the file has no tensor {extra[0]} of the source ({len(extra)} missing)")
    ctx = _Context(
        plan_model=source,
        target=target,
        shapes=shapes,
        source_types=src_types,
        n_layer=source.n_layer,
        imatrix=im,
        prune=tuple(prune),
        name=name,
    )
    return ctx, notes


def _candidates(quant: ModelInfo, imatrix: bool, prune: tuple[int, ...], everything: bool) -> list[_Spec]:
    from ..recipes import builtin_names

    mix = mix_of_file_type(quant)
    out: list[_Spec] = []
    if not everything:
        if mix is not None:
            out.append(_Spec(f"llama.cpp/{mix}", None, None, imatrix, prune))
            base = llama.FTYPE_BASE_TYPE.get(mix)
            if base is not None and base not in _FLOATS:
                out.append(_Spec(None, base, mix, imatrix, prune))
        return out
    for b in builtin_names():
        if b.startswith("llama.cpp/"):
            out.append(_Spec(b, None, None, imatrix, prune))
    return out


def infer_recipe(
    quant: str | Path | ModelInfo,
    *,
    source: str | Path | ModelInfo | None = None,
    name: str | None = None,
) -> InferResult:
    """The recipe that reproduces ``quant``'s tensor types (see the module docstring).

    Raises :class:`InferError` when no recipe planned against the file (or ``source``) gives every tensor
    its type."""
    qm = quant if isinstance(quant, ModelInfo) else read_model(quant)
    sm = None if source is None else (source if isinstance(source, ModelInfo) else read_model(source))
    stem = Path(qm.files[0] if qm.files else qm.path).name
    stem = re.sub(r"(-\d{5}-of-\d{5})?\.gguf$", "", stem)
    rname = name or f"inferred-{stem}"
    ctx, notes = _context(qm, sm, rname)

    best: _Spec | None = None
    for everything in (False, True):
        cands = _candidates(qm, ctx.imatrix, ctx.prune, everything)
        if everything:
            # the closest mixes first: fewest tensors that differ before any rule
            scored = []
            for c in cands:
                got = ctx.plan_types(c)
                if got:
                    scored.append((sum(1 for n, t in ctx.target.items() if got.get(n) != t), c.label, c))
            cands = [c for _, _, c in sorted(scored, key=lambda x: (x[0], x[1]))[:4]]
        for cand in cands:
            solved = _solve(ctx, cand)
            if solved is not None and (best is None or _cost(solved) < _cost(best)):
                best = solved
        if best is not None and len(best.rules) <= MAX_COMPACT_RULES:
            break
    if best is None:
        mix = mix_of_file_type(qm)
        fallback = _Spec(f"llama.cpp/{mix or 'Q8_0'}", None, None, ctx.imatrix, ctx.prune)
        wrong = _mismatches(ctx, ctx.plan_types(fallback))
        raise InferError(
            f"no recipe reproduces {stem}: {len(wrong)} tensor(s) cannot be given their type", wrong
        )

    ftype_v = qm.metadata.get("general.file_type")
    mix = mix_of_file_type(qm)
    against = "the source model" if sm is not None else "the file's own tensor list"
    header = [
        f"Inferred by `recipe infer` from {stem}"
        + (f" (general.file_type {ftype_v} = {mix})" if mix else f" (general.file_type {ftype_v})"),
        f"Planned against {against}: all {len(ctx.target)} tensors get the type they have in the file.",
    ]
    if ctx.imatrix:
        file_ = qm.metadata.get("quantize.imatrix.file")
        chunks = qm.metadata.get("quantize.imatrix.chunks_count")
        extra = ", ".join(
            x for x in (f"file {file_}" if file_ else "", f"{chunks} chunks" if chunks else "") if x
        )
        header.append(
            "Made with an importance matrix" + (f" ({extra})" if extra else "") + ": plan with --imatrix."
        )
    header += [f"Note: {n}" for n in notes]
    text = _render(best, rname, header)
    # the final check goes through the text, exactly as `recipe plan` reads it
    from ..compiler import compile_model

    try:
        plan = compile_model(text, ctx.plan_model, imatrix=ctx.imatrix, lint=False).plan
    except RecipeError as exc:  # pragma: no cover - the spec compiled above
        raise InferError(f"the inferred recipe does not compile: {exc}") from None
    wrong = _mismatches(ctx, {t.name: t.type for t in plan.tensors if t.action != "prune"})
    if wrong:  # pragma: no cover - the spec was checked above
        raise InferError(f"the inferred recipe gives {len(wrong)} tensor(s) another type", wrong)
    return InferResult(
        text=text,
        base=best.label,
        n_rules=len(best.rules),
        counters=best.counters,
        imatrix=ctx.imatrix,
        n_tensors=len(ctx.target),
        prune_layers=list(ctx.prune),
        notes=notes,
    )


def _cost(spec: _Spec) -> tuple[int, bool, int, bool]:
    """Fewer rules, then the mix over a plain base, then fewer layer selectors and fields, then stable
    counters."""
    sels = sum(len(r.layers or ()) for r in spec.rules)
    scalars = (spec.token_embedding is not None) + (spec.output is not None)
    return (len(spec.rules), spec.extends is None, sels + scalars, spec.counters != "stable")
