"""llama-quantize command lines <-> recipes.

``import_llama_quantize(argv)`` parses llama-quantize's options exactly as tools/quantize/quantize.cpp
does (options first, each starting with ``--``; ``--tensor-type`` patterns lower-cased; type names
case-insensitive; ``--tensor-type-file`` holds ``pattern=type`` words separated by spaces or newlines)
and returns the text of an equivalent recipe. ``export_llama_quantize(recipe)`` goes the other way for
recipes that llama-quantize can express.

ik_llama.cpp's ``--custom-q regex=type,regex=type`` is accepted too (patterns keep their case there).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gguf import GGMLQuantizationType

from .diagnostics import RecipeError
from .errors import GGUFRecipeError
from .llamacpp import FTYPE_ALIASES, FTYPE_BASE_TYPE, FTYPE_NAMES, QUANTIZE_OPTIONS
from .recipe.model import Recipe, Rule
from .recipe.selectors import parse_selector
from .recipe.typenames import IK_LLAMA_ALTERNATIVES, ggml_name, parse_type_name

__all__ = [
    "Export",
    "ExportFormat",
    "InteropError",
    "QuantizeArgs",
    "export_llama_quantize",
    "export_llama_quantize_notes",
    "export_recipe",
    "import_llama_quantize",
    "parse_llama_quantize_args",
]


class InteropError(GGUFRecipeError, ValueError):
    """A command line or a recipe that cannot be translated; the message says why."""


_GGML_TYPES: dict[str, GGMLQuantizationType] = {t.name.lower(): t for t in GGMLQuantizationType}


@dataclass
class TensorType:
    pattern: str
    type: str  # ggml spelling
    source: str  # the option text as given, for comments


@dataclass
class QuantizeArgs:
    """llama-quantize's options, as parsed by quantize.cpp."""

    ftype: str = ""  # canonical mix name, e.g. Q4_K_M
    ftype_arg: str = ""  # as written
    leave_output_tensor: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    tensor_types: list[TensorType] = field(default_factory=list)
    prune_layers: list[int] = field(default_factory=list)
    kv_overrides: list[tuple[str, str, str | int | float | bool]] = field(default_factory=list)
    pure: bool = False
    imatrix: str | None = None
    include_weights: list[str] = field(default_factory=list)
    exclude_weights: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    ik_replacements: list[tuple[str, str]] = field(default_factory=list)


def try_parse_ftype(text: str) -> str | None:
    """quantize.cpp try_parse_ftype: a name (case-insensitive) or an ftype number -> canonical mix name."""
    up = text.upper()
    if up in QUANTIZE_OPTIONS:
        return FTYPE_ALIASES.get(up, up)
    try:
        n = int(text.strip())  # std::stoi accepts leading whitespace and trailing junk; be strict on junk
    except ValueError:
        m = re.match(r"^\s*([+-]?\d+)", text)
        if not m:
            return None
        n = int(m.group(1))
    return FTYPE_NAMES.get(n)


def _parse_ggml_type(arg: str, *, ik_to_mainline: bool, args: QuantizeArgs) -> str:
    """quantize.cpp parse_ggml_type: any ggml type name, case-insensitive."""
    t = _GGML_TYPES.get(arg.lower())
    if t is None:
        base = re.sub(r"_r(4|8|16)$", "", arg.lower())
        if base in IK_LLAMA_ALTERNATIVES or (base != arg.lower() and base in _GGML_TYPES):
            if ik_to_mainline:
                repl = (
                    IK_LLAMA_ALTERNATIVES[base][0]
                    if base in IK_LLAMA_ALTERNATIVES
                    else ggml_name(_GGML_TYPES[base])
                )
                args.ik_replacements.append((arg, repl))
                return repl
            alts = IK_LLAMA_ALTERNATIVES.get(base) or (ggml_name(_GGML_TYPES[base]),)
            raise InteropError(
                f"'{arg}' is an ik_llama.cpp type; llama.cpp (and gguf-recipe) cannot write it; "
                f"use a mainline type such as {', '.join(repr(a) for a in alts)} "
                "(or pass --ik-to-mainline to replace ik_llama.cpp types automatically)"
            )
        raise InteropError(f"invalid ggml_type '{arg}'")
    return ggml_name(t)


def _parse_tensor_type(
    data: str, out: list[TensorType], *, lower: bool, ik_to_mainline: bool, args: QuantizeArgs
) -> None:
    """quantize.cpp parse_tensor_type: ``name=type``; the name is lower-cased (llama-quantize does)."""
    sep = data.find("=")
    if sep < 0:
        raise InteropError(f"malformed tensor type '{data}' (expected pattern=type)")
    if sep == 0:
        raise InteropError(f"missing tensor name in '{data}'")
    if sep == len(data) - 1:
        raise InteropError(f"missing quantization type in '{data}'")
    name = data[:sep]
    if lower:
        name = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)  # C tolower, ASCII only
    type_text = data[sep + 1 :]
    try:
        qtype = _parse_ggml_type(type_text, ik_to_mainline=ik_to_mainline, args=args)
    except InteropError as exc:
        if "ik_llama" in str(exc):
            raise
        raise InteropError(f"invalid quantization type '{type_text}' in '{data}'") from None
    out.append(TensorType(name, qtype, data))


def _parse_layer_prune(data: str) -> list[int]:
    ids: list[int] = []
    for part in data.split(","):
        m = re.match(r"^\s*([+-]?\d+)", part)
        v = int(m.group(1)) if m else -1
        if v < 0:
            raise InteropError(f"invalid layer id '{part}' in --prune-layers")
        ids.append(v)
    return sorted(set(ids))


def _parse_kv_override(data: str) -> tuple[str, str, str | int | float | bool]:
    """common.cpp string_parse_kv_override: ``KEY=TYPE:VALUE`` with TYPE int, float, bool or str."""
    sep = data.find("=")
    if sep < 0 or sep >= 128:
        raise InteropError(f"malformed KV override '{data}' (expected KEY=TYPE:VALUE)")
    key, rest = data[:sep], data[sep + 1 :]
    if rest.startswith("int:"):
        m = re.match(r"^\s*([+-]?\d+)", rest[4:])
        return key, "int", int(m.group(1)) if m else 0
    if rest.startswith("float:"):
        m = re.match(r"^\s*([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)", rest[6:])
        return key, "float", float(m.group(1)) if m else 0.0
    if rest.startswith("bool:"):
        v = rest[5:]
        if v not in ("true", "false"):
            raise InteropError(f"invalid boolean value for KV override '{data}' (expected true or false)")
        return key, "bool", v == "true"
    if rest.startswith("str:"):
        v = rest[4:]
        if len(v) > 127:
            raise InteropError(f"malformed KV override '{data}', value cannot exceed 127 chars")
        return key, "str", v
    raise InteropError(f"invalid type for KV override '{data}' (expected int:, float:, bool: or str:)")


def parse_llama_quantize_args(
    argv: Sequence[str], *, base_dir: str | Path | None = None, ik_to_mainline: bool = False
) -> QuantizeArgs:
    """Parse llama-quantize options (and ik_llama.cpp's --custom-q) the way quantize.cpp does.

    ``argv`` is ``[options...] TYPE`` or the full ``[llama-quantize] [options...] in.gguf [out.gguf] TYPE [nthreads]``.
    """
    args = QuantizeArgs()
    items = list(argv)
    if (
        items
        and Path(items[0]).name.startswith(("llama-quantize", "quantize"))
        and not items[0].startswith("--")
    ):
        items = items[1:]
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    i = 0

    def value(opt: str) -> str:
        nonlocal i
        if i + 1 >= len(items):
            raise InteropError(f"{opt} needs a value")
        i += 1
        return items[i]

    while i < len(items) and items[i].startswith("--"):
        opt = items[i]
        if opt == "--leave-output-tensor":
            args.leave_output_tensor = True
        elif opt == "--output-tensor-type":
            args.output_tensor_type = _parse_ggml_type(value(opt), ik_to_mainline=ik_to_mainline, args=args)
        elif opt == "--token-embedding-type":
            args.token_embedding_type = _parse_ggml_type(value(opt), ik_to_mainline=ik_to_mainline, args=args)
        elif opt == "--tensor-type":
            _parse_tensor_type(
                value(opt), args.tensor_types, lower=True, ik_to_mainline=ik_to_mainline, args=args
            )
        elif opt == "--tensor-type-file":
            fname = value(opt)
            path = Path(fname) if Path(fname).is_absolute() else base / fname
            try:
                words = path.read_text(encoding="utf-8").split()
            except OSError as exc:
                raise InteropError(f"failed to open file '{fname}': {exc.strerror or exc}") from None
            for w in words:
                _parse_tensor_type(w, args.tensor_types, lower=True, ik_to_mainline=ik_to_mainline, args=args)
        elif opt == "--custom-q":
            for part in value(opt).split(","):
                if part:
                    _parse_tensor_type(
                        part, args.tensor_types, lower=False, ik_to_mainline=ik_to_mainline, args=args
                    )
        elif opt == "--prune-layers":
            args.prune_layers = _parse_layer_prune(value(opt))
        elif opt == "--override-kv":
            args.kv_overrides.append(_parse_kv_override(value(opt)))
        elif opt in ("--dry-run", "--allow-requantize", "--keep-split"):
            args.ignored.append(opt)
        elif opt == "--max-buffer-size":
            v = value(opt)
            args.ignored.append(f"{opt} {v}")
        elif opt == "--pure":
            args.pure = True
        elif opt == "--imatrix":
            args.imatrix = value(opt)
        elif opt == "--include-weights":
            args.include_weights.append(value(opt))
        elif opt == "--exclude-weights":
            args.exclude_weights.append(value(opt))
        else:
            raise InteropError(f"unknown llama-quantize option '{opt}'")
        i += 1
    if args.include_weights and args.exclude_weights:
        raise InteropError("--include-weights and --exclude-weights cannot be used together")
    rest = items[i:]
    if not rest:
        raise InteropError("missing ftype (the quantization type, e.g. Q4_K_M) after the options")
    if len(rest) == 1:
        ftype_arg = rest[0]
        ftype = try_parse_ftype(ftype_arg)
        if ftype is None:
            raise InteropError(f"invalid ftype '{ftype_arg}'" + _ftype_hint(ftype_arg))
    else:
        # <input> <ftype> [nthreads]  or  <input> <output> <ftype> [nthreads]
        ftype = try_parse_ftype(rest[1])
        ftype_arg = rest[1]
        extra = rest[2:]
        if ftype is None:
            if len(rest) < 3:
                raise InteropError("missing ftype")
            ftype_arg = rest[2]
            ftype = try_parse_ftype(ftype_arg)
            if ftype is None:
                raise InteropError(f"invalid ftype '{ftype_arg}'" + _ftype_hint(ftype_arg))
            extra = rest[3:]
        if len(extra) > 1 or (extra and not re.match(r"^\s*[+-]?\d+", extra[0])):
            raise InteropError(f"unexpected arguments after the ftype: {' '.join(extra)}")
    if ftype == "COPY":
        raise InteropError("ftype COPY (copy every tensor unchanged) has no recipe equivalent")
    args.ftype = ftype
    args.ftype_arg = ftype_arg
    return args


def _ftype_hint(text: str) -> str:
    from .diagnostics import did_you_mean

    dym = did_you_mean(text.upper(), [n for n in QUANTIZE_OPTIONS if n != "COPY"])
    return f"; {dym}" if dym else ""


def _q(s: str) -> str:
    """A YAML single-quoted scalar."""
    return "'" + s.replace("'", "''") + "'"


def _yaml_scalar(v: str | int | float | bool) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return _q(v)


def import_llama_quantize(
    argv: list[str],
    *,
    base_dir: str | Path | None = None,
    ik_to_mainline: bool = False,
    name: str | None = None,
) -> str:
    """The text of a recipe equivalent to a llama-quantize command line (``[options...] TYPE``)."""
    a = parse_llama_quantize_args(argv, base_dir=base_dir, ik_to_mainline=ik_to_mainline)
    from .recipe.patterns import pattern_problems

    for tt in a.tensor_types:
        try:
            problems = pattern_problems(tt.pattern)  # also compiles it (without leaking re's warnings)
        except re.error as exc:
            raise InteropError(
                f"invalid regex '{tt.pattern}' in --tensor-type '{tt.source}': {exc.msg} at position {exc.pos}"
            ) from None
        for pr in problems:
            if pr.severity == "error":
                raise InteropError(f"--tensor-type '{tt.source}': {pr.message}")
    for t in [a.output_tensor_type, a.token_embedding_type, *(tt.type for tt in a.tensor_types)]:
        if t is not None:
            try:
                parse_type_name(t)
            except ValueError as exc:
                raise InteropError(str(exc)) from None
    base_type = FTYPE_BASE_TYPE[a.ftype]
    try:
        parse_type_name(base_type)
    except ValueError:
        raise InteropError(f"gguf-recipe cannot produce ftype {a.ftype} (type {base_type})") from None
    quantized_base = base_type not in ("f16", "bf16", "f32")
    lines: list[str] = []
    shown = " ".join(shlex.quote(x) for x in argv)
    lines.append(f"# Imported from: llama-quantize {shown}")
    if any(tt.pattern != tt.source.split("=", 1)[0] for tt in a.tensor_types):
        lines.append(
            "# llama-quantize lower-cases --tensor-type patterns; they are written here as it uses them."
        )
    for old, new in a.ik_replacements:
        lines.append(f"# ik_llama.cpp type {old} replaced by the mainline type {new}.")
    if a.ignored:
        lines.append(f"# Options without a recipe equivalent (ignored): {' '.join(a.ignored)}")
    rules = a.tensor_types
    if rules and not quantized_base:
        lines.append(
            f"# llama-quantize ignores --tensor-type for {a.ftype} (its base type is not quantized): dropped."
        )
        rules = []
    lines.append("recipe: 1")
    lines.append(f"name: {_q(name or ('imported-' + a.ftype + ('-pure' if a.pure else '')))}")
    if a.pure:
        lines.append(
            f"base: {base_type}                # --pure: every quantizable tensor gets the {a.ftype} base type"
        )
        lines.append(f"ftype: {a.ftype}")
    else:
        lines.append(f"extends: llama.cpp/{a.ftype}")
        if rules:
            lines.append(
                "counters: llama-quantize    # --tensor-type moves the mix's position-based choices, as here"
            )
    if a.token_embedding_type is not None:
        lines.append(f"token_embedding: {a.token_embedding_type}")
    if a.leave_output_tensor:
        lines.append("output: keep                  # --leave-output-tensor")
    elif a.output_tensor_type is not None:
        lines.append(f"output: {a.output_tensor_type}")
    if a.imatrix is not None or a.include_weights or a.exclude_weights:
        lines.append("imatrix:")
        if a.imatrix is not None:
            lines.append(f"  required: true               # --imatrix {a.imatrix}")
        if a.include_weights:
            lines.append("  include: [" + ", ".join(_q(re.escape(w)) for w in a.include_weights) + "]")
        if a.exclude_weights:
            lines.append("  exclude: [" + ", ".join(_q(re.escape(w)) for w in a.exclude_weights) + "]")
    if a.prune_layers:
        lines.append("prune_layers: [" + ", ".join(str(x) for x in a.prune_layers) + "]")
    if a.kv_overrides:
        lines.append("metadata:")
        for key, typ, val in a.kv_overrides:
            lines.append(f"  {_q(key)}: {{type: {typ}, value: {_yaml_scalar(val)}}}")
    if rules:
        lines.append("rules:")
        for tt in rules:
            lines.append(f"  - match: {_q(tt.pattern)}")
            lines.append(f"    type: {tt.type}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# export


def _flatten(recipe: Recipe, base_dir: Path | None) -> tuple[Recipe, list[Rule], str | None]:
    """(the recipe merged with what it extends, as the compiler reads the chain, down to a llama.cpp
    built-in mix; all rules child first; that mix's ftype name, or None for a chain ending in a base)."""
    from .compiler import load_recipe_chain, merged_recipe

    chain = [recipe]
    mix = None
    if recipe.extends is not None:
        from . import recipes

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
