"""llama-quantize's command line, parsed exactly as tools/quantize/quantize.cpp does: options first,
each starting with ``--``; ``--tensor-type`` patterns lower-cased; type names case-insensitive;
``--tensor-type-file`` holds ``pattern=type`` words separated by spaces or newlines. ik_llama.cpp's
``--custom-q regex=type,regex=type`` is accepted too (patterns keep their case there)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGMLQuantizationType

from ..llamacpp import FTYPE_ALIASES, FTYPE_NAMES, QUANTIZE_OPTIONS
from ..recipe.typenames import IK_LLAMA_ALTERNATIVES, ggml_name
from .errors import InteropError

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
    from ..diagnostics import did_you_mean

    dym = did_you_mean(text.upper(), [n for n in QUANTIZE_OPTIONS if n != "COPY"])
    return f"; {dym}" if dym else ""
