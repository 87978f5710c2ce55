"""llama-quantize options -> the text of an equivalent recipe."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..llamacpp import FTYPE_BASE_TYPE
from ..recipe.typenames import parse_type_name
from .command_line import parse_llama_quantize_args
from .errors import InteropError


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
    from ..recipe.patterns import pattern_problems

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
