"""A recipe -> llama-quantize's terms: mainline options, its ``--tensor-type-file``, or ik_llama.cpp's
``--custom-q``, for recipes those can express."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..diagnostics import RecipeError
from ..llamacpp import FTYPE_BASE_TYPE, FTYPE_NAMES
from ..recipe.model import Recipe, Rule
from ..recipe.selectors import parse_selector
from ..recipe.typenames import ggml_name, parse_type_name
from .command_line import try_parse_ftype
from .errors import InteropError


def _flatten(recipe: Recipe, base_dir: Path | None) -> tuple[Recipe, list[Rule], str | None]:
    """(the recipe merged with what it extends, as the compiler reads the chain, down to a llama.cpp
    built-in mix; all rules child first; that mix's ftype name, or None for a chain ending in a base)."""
    from ..compiler import load_recipe_chain, merged_recipe

    chain = [recipe]
    mix = None
    if recipe.extends is not None:
        from .. import recipes

        try:
            parent = recipes.resolve(recipe.extends, relative_to=(base_dir / "x") if base_dir else None)
            parents = load_recipe_chain(parent)
        except (FileNotFoundError, RecipeError) as exc:
            raise InteropError(str(exc)) from None
        for lr in parents:
            m = re.fullmatch(r"llama\.cpp/([A-Za-z0-9_]+)", lr.source)
            if m and try_parse_ftype(m.group(1)) is not None:
                mix = try_parse_ftype(m.group(1))
                break
            chain.append(lr.recipe)
    merged = merged_recipe(chain)
    return merged, list(merged.rules), mix


def _layer_regex(rule: Rule, n_layers: int | None, problems: list[str], where: str) -> str | None:
    items = rule.layer_selectors
    if items is None:
        return None
    layers: set[int] = set()
    for s in items:
        sel = parse_selector(s)
        if n_layers is None:
            lo, hi = sel.lo, sel.hi
            literal = all(b is None or (not b.is_fraction and not b.negative) for b in (lo, hi))
            if not literal or (not sel.single and hi is None):
                problems.append(
                    f"{where}: layer selector '{sel.text}' depends on the model's layer count (pass the layer count)"
                )
                return None
            n = (hi.resolve(0) + 1) if hi is not None else (lo.resolve(0) + 1 if lo is not None else 0)
            layers.update(sel.layers(n))
        else:
            layers.update(sel.layers(n_layers))
    if not layers:
        problems.append(f"{where}: its layer selectors select no layer")
        return None
    return "|".join(str(x) for x in sorted(layers))


# tensor_get_category (llama-quant.cpp) as llama-quantize regexes: a name is in the category when it holds
# the category's text (and none of the texts tested before it, which no real tensor name does).
_CATEGORY_REGEX: dict[str, str] = {
    "token_embd": r"^(token_embd|per_layer_token_embd)\.weight$",
    "output": r"^output\.weight$",
    "attn_qkv": r"attn_qkv\.weight",
    "attn_kv_b": r"attn_kv_b\.weight",
    "attn_v": r"attn_v\.weight",
    "attn_k": r"attn_k\.weight",
    "attn_q": r"attn_q\.weight",
    "attn_output": r"attn_output\.weight",
    "ffn_up": "ffn_up",
    "ffn_gate": "ffn_gate",
    "ffn_down": "ffn_down",
}

ExportFormat = Literal["llama-quantize", "tensor-type-file", "custom-q"]


@dataclass
class Export:
    """A recipe as llama-quantize says it: the ftype, the options other than the tensor-type rules, the
    rules (``pattern``, ``type``) in order, and caveats about the translation."""

    ftype: str
    options: list[str]
    tensor_types: list[tuple[str, str]]
    notes: list[str]
    target: ExportFormat = "llama-quantize"

    def argv(
        self, model: str = "MODEL.gguf", output: str = "OUTPUT.gguf", *, rules_file: str | None = None
    ) -> list[str]:
        """The command line: rules as ``--tensor-type`` options, or ``--tensor-type-file`` / ``--custom-q``."""
        opts = list(self.options)
        if self.tensor_types:
            if self.target == "custom-q":
                opts += ["--custom-q", self.custom_q()]
            elif rules_file is not None:
                opts += ["--tensor-type-file", rules_file]
            else:
                for pattern, t in self.tensor_types:
                    opts += ["--tensor-type", f"{pattern}={t}"]
        return ["llama-quantize", *opts, model, output, self.ftype]

    def tensor_type_file(self) -> str:
        """mainline's ``--tensor-type-file``: whitespace-separated ``regex=type`` words, one per line."""
        return "".join(f"{p}={t}\n" for p, t in self.tensor_types)

    def custom_q(self) -> str:
        """ik_llama.cpp's ``--custom-q``: ``regex=type`` joined by commas."""
        return ",".join(f"{p}={t}" for p, t in self.tensor_types)


def _rule_pattern(rule: Rule) -> tuple[str | None, str | None]:
    """(regex, None) for a rule's match/category, or (None, why it cannot be one regex)."""
    cat_re = None
    if (cats := rule.categories) is not None:
        bad = [c for c in cats if c not in _CATEGORY_REGEX]
        if bad:
            return None, (
                f"category {bad[0]} ('everything else') has no llama-quantize regex: name the tensors with 'match'"
            )
        parts = [_CATEGORY_REGEX[c] for c in cats]
        cat_re = parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"
    if cat_re is not None and rule.match is not None:
        return None, (
            "category and match together would need a look-ahead, and llama-quantize ends a pattern at its "
            "first '=': write one regex in 'match'"
        )
    return (rule.match if rule.match is not None else cat_re), None


def export_recipe(
    recipe: Recipe,
    *,
    base_dir: str | Path | None = None,
    n_layers: int | None = None,
    target: ExportFormat = "llama-quantize",
) -> Export:
    """The recipe in llama-quantize's terms (mainline options, its ``--tensor-type-file``, or
    ik_llama.cpp's ``--custom-q``). A recipe that extends a built-in mix exports as that ftype plus its
    own overrides. Raises :class:`InteropError` naming every rule (or field) the target cannot say, and why.
    """
    bd = Path(base_dir) if base_dir is not None else None
    merged, rules, mix = _flatten(recipe, bd)
    problems: list[str] = []
    notes: list[str] = []
    opts: list[str] = []
    if mix is None:
        assert merged.base is not None
        t = parse_type_name(merged.base)
        assert t is not None
        base = ggml_name(t)
        ftype = merged.ftype.upper() if merged.ftype else None
        if ftype is None or FTYPE_BASE_TYPE.get(ftype) != base:
            cands = [f for f, b in FTYPE_BASE_TYPE.items() if b == base and f in FTYPE_NAMES.values()]
            if not cands:
                problems.append(f"base type {base} is not the base type of any llama-quantize ftype")
                ftype = "?"
            else:
                ftype = cands[0]
        opts.append("--pure")
    else:
        ftype = mix
        if merged.ftype and merged.ftype.upper() != mix:
            notes.append(
                f"ftype {merged.ftype} is ignored: llama-quantize writes the ftype of the mix ({mix})"
            )
    if merged.prune_layers:
        opts += ["--prune-layers", ",".join(str(x) for x in merged.prune_layers)]
    if merged.token_embedding is not None and merged.token_embedding.lower() != "keep":
        t = parse_type_name(merged.token_embedding)
        assert t is not None
        opts += ["--token-embedding-type", ggml_name(t)]
    elif merged.token_embedding is not None:
        problems.append("token_embedding: keep: llama-quantize has no option to leave token_embd as it is")
    if merged.output is not None:
        if merged.output.lower() == "keep":
            opts.append("--leave-output-tensor")
        else:
            t = parse_type_name(merged.output)
            assert t is not None
            opts += ["--output-tensor-type", ggml_name(t)]
    if merged.imatrix is not None:
        if merged.imatrix.required:
            opts += ["--imatrix", "IMATRIX.gguf"]
        for flag, pats in (
            ("--include-weights", merged.imatrix.include),
            ("--exclude-weights", merged.imatrix.exclude),
        ):
            for p in pats:
                lit = _unescape_literal(p)
                if lit is None:
                    problems.append(
                        f"imatrix pattern '{p}' is a regex; llama-quantize {flag} takes a plain substring"
                    )
                else:
                    opts += [flag, lit]
    for key, mv in merged.metadata.items():
        v = mv.value
        sval = ("true" if v else "false") if isinstance(v, bool) else str(v)
        opts += ["--override-kv", f"{key}={mv.type}:{sval}"]
    own = len(recipe.rules)
    lowers = target != "custom-q"  # mainline lower-cases --tensor-type patterns; ik's --custom-q does not
    tensor_types: list[tuple[str, str]] = []
    for k, rule in enumerate(rules):
        where = f"rule {k + 1}" if k < own else f"rule {k + 1} (inherited)"
        bad = []
        if rule.when is not None:
            bad.append("when (llama-quantize has no conditions on model facts)")
        if rule.layers_by != "block":
            bad.append("layers_by: position (--tensor-type cannot count a tensor's position among its kind)")
        if rule.imatrix is not None:
            bad.append("imatrix (no per-rule switch; use --include-weights / --exclude-weights)")
        if rule.type.lower() == "keep":
            bad.append("type: keep (a matched tensor is always quantized to the given type)")
        if bad:
            problems.append(f"{where}: llama-quantize cannot express {'; '.join(bad)}")
            continue
        base_pattern, why = _rule_pattern(rule)
        if why is not None:
            problems.append(f"{where}: {why}")
            continue
        pattern = base_pattern or ("" if rule.layers is not None else ".")
        layer_alt = _layer_regex(rule, n_layers, problems, where)
        if rule.layers is not None and layer_alt is None:
            continue
        if layer_alt is not None:
            if pattern.startswith("^") or "blk" in pattern:
                problems.append(
                    f"{where}: pattern '{pattern}' cannot be combined with its layers into one regex "
                    "(it refers to the block prefix)"
                )
                continue
            # no look-ahead: llama-quantize splits --tensor-type at the first '='
            pattern = f"^blk\\.(?:{layer_alt})\\." + (f".*(?:{pattern})" if pattern else "")
        if "=" in pattern:
            problems.append(f"{where}: pattern '{pattern}' contains '=', which ends a llama-quantize pattern")
            continue
        if lowers and pattern != pattern.lower():
            problems.append(
                f"{where}: pattern '{rule.match}' has upper-case letters; llama-quantize lower-cases --tensor-type patterns"
            )
            continue
        if target == "tensor-type-file" and any(c.isspace() for c in pattern):
            problems.append(
                f"{where}: pattern '{pattern}' has white space, which separates --tensor-type-file words"
            )
            continue
        if target == "custom-q" and "," in pattern:
            problems.append(f"{where}: pattern '{pattern}' has a comma, which separates --custom-q rules")
            continue
        t = parse_type_name(rule.type)
        assert t is not None
        tensor_types.append((pattern, ggml_name(t)))
    if mix is not None and rules and recipe.counters == "stable":
        notes.append(
            "counters: stable: llama-quantize's --tensor-type moves the mix's position-based choices "
            "(e.g. which attn_v/ffn_down layers get more bits); plans can differ where a rule hits those tensors"
        )
    if problems:
        what = {
            "llama-quantize": "llama-quantize",
            "tensor-type-file": "a --tensor-type-file",
            "custom-q": "--custom-q",
        }
        raise InteropError(f"cannot export to {what[target]}:\n" + "\n".join(f"  - {p}" for p in problems))
    return Export(ftype or "?", opts, tensor_types, notes, target)


def export_llama_quantize_notes(
    recipe: Recipe,
    *,
    base_dir: str | Path | None = None,
    n_layers: int | None = None,
    model: str = "MODEL.gguf",
    output: str = "OUTPUT.gguf",
) -> tuple[list[str], list[str]]:
    """(argv, notes): the llama-quantize command line for a recipe, and caveats about the translation.

    Raises :class:`InteropError` listing every part of the recipe llama-quantize cannot express.
    """
    exp = export_recipe(recipe, base_dir=base_dir, n_layers=n_layers)
    return exp.argv(model, output), exp.notes


def export_llama_quantize(
    recipe: Recipe, *, base_dir: str | Path | None = None, n_layers: int | None = None
) -> list[str]:
    """The llama-quantize command line (argv) equivalent to a recipe; see :func:`export_llama_quantize_notes`."""
    return export_llama_quantize_notes(recipe, base_dir=base_dir, n_layers=n_layers)[0]


def _unescape_literal(pattern: str) -> str | None:
    """The literal a regex matches when it is just an escaped string, else None."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and not pattern[i + 1].isalnum():
            out.append(pattern[i + 1])
            i += 2
            continue
        if c in ".^$*+?{}[]|()\\":
            return None
        out.append(c)
        i += 1
    return "".join(out)
