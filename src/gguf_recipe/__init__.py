"""gguf-recipe: declarative per-tensor quantization recipes for GGUF models.

The public API (pinned by ``tests/cli/test_public_api.py``; the ``recipe`` command is presentation
around these calls)::

    import gguf_recipe as gr

    diagnostics = gr.check_recipe("my.yaml")[1]                  # validate (no model needed)
    result = gr.compile_plan("llama.cpp/Q4_K_M", "model.gguf")   # the frozen plan + diagnostics
    gr.apply_plan(result.plan, "model.gguf", "out.gguf")          # executes exactly that plan
    m = gr.measure_model("model.gguf")                            # per-tensor error in every type
    t = gr.tune_model("model.gguf", target_size=4 * 2**30)        # the best mix for a size
    gr.evaluate("out.gguf", "model.gguf", text)                   # PPL / KLD by llama.cpp ([eval])
    gr.infer_recipe("published.gguf")                             # the recipe behind a file

Every error raised on purpose derives from :class:`GGUFRecipeError`. Names are imported on first
use, so ``import gguf_recipe`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # recipes
    "Recipe": "gguf_recipe.recipe.model",
    "load_recipe": "gguf_recipe.recipe.loader",
    "check_recipe": "gguf_recipe.recipe.loader",
    "builtin_names": "gguf_recipe.recipes",
    "Diagnostic": "gguf_recipe.diagnostics",
    "import_llama_quantize": "gguf_recipe.interop",
    "export_recipe": "gguf_recipe.interop",
    # compile
    "compile_plan": "gguf_recipe.compiler",
    "CompileResult": "gguf_recipe.compiler",
    "Plan": "gguf_recipe.plan",
    "read_model": "gguf_recipe.model",
    "ModelInfo": "gguf_recipe.model",
    # apply
    "apply_plan": "gguf_recipe.executor",
    "ApplyResult": "gguf_recipe.executor",
    "quantize": "gguf_recipe.quants",
    # measure, tune, evaluate
    "measure_model": "gguf_recipe.measure",
    "Measurement": "gguf_recipe.measure",
    "tune_model": "gguf_recipe.tune",
    "TuneResult": "gguf_recipe.tune",
    "evaluate": "gguf_recipe.evaluate",
    "EvalResult": "gguf_recipe.evaluate",
    # read what others publish
    "infer_recipe": "gguf_recipe.read",
    "InferResult": "gguf_recipe.read",
    "load_view": "gguf_recipe.read",
    "diff_views": "gguf_recipe.read",
    # errors
    "GGUFRecipeError": "gguf_recipe.errors",
    "RecipeError": "gguf_recipe.diagnostics",
    "ExecutorError": "gguf_recipe.executor",
    "StalePlanError": "gguf_recipe.executor",
    "ApplyInterrupted": "gguf_recipe.executor",
    "MeasureError": "gguf_recipe.measure",
    "TuneError": "gguf_recipe.tune",
    "EvalError": "gguf_recipe.evaluate",
}

__all__ = [
    "ApplyInterrupted",
    "ApplyResult",
    "CompileResult",
    "Diagnostic",
    "EvalError",
    "EvalResult",
    "ExecutorError",
    "GGUFRecipeError",
    "InferResult",
    "MeasureError",
    "Measurement",
    "ModelInfo",
    "Plan",
    "Recipe",
    "RecipeError",
    "StalePlanError",
    "TuneError",
    "TuneResult",
    "__version__",
    "apply_plan",
    "builtin_names",
    "check_recipe",
    "compile_plan",
    "diff_views",
    "evaluate",
    "export_recipe",
    "import_llama_quantize",
    "infer_recipe",
    "load_recipe",
    "load_view",
    "measure_model",
    "quantize",
    "read_model",
    "tune_model",
]

if TYPE_CHECKING:  # what type checkers and editors see
    from .compiler import CompileResult, compile_plan
    from .diagnostics import Diagnostic, RecipeError
    from .errors import GGUFRecipeError
    from .evaluate import EvalError, EvalResult, evaluate
    from .executor import ApplyInterrupted, ApplyResult, ExecutorError, StalePlanError, apply_plan
    from .interop import export_recipe, import_llama_quantize
    from .measure import MeasureError, Measurement, measure_model
    from .model import ModelInfo, read_model
    from .plan import Plan
    from .quants import quantize
    from .read import InferResult, diff_views, infer_recipe, load_view
    from .recipe.loader import check_recipe, load_recipe
    from .recipe.model import Recipe
    from .recipes import builtin_names
    from .tune import TuneError, TuneResult, tune_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gguf_recipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
