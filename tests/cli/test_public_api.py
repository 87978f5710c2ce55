"""The public API is what ``gguf_recipe.__all__`` lists: pinned here, so a change to it is deliberate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gguf_recipe
from gguf_recipe.cli import app
from helpers.executor import write_wide_model

PUBLIC = [
    "ApplyInterrupted", "ApplyResult", "CompileResult", "Diagnostic", "EvalError", "EvalResult",
    "ExecutorError", "GGUFRecipeError", "InferResult", "MeasureError", "Measurement", "ModelInfo", "Plan",
    "Recipe", "RecipeError", "StalePlanError", "TuneError", "TuneResult", "__version__", "apply_plan",
    "builtin_names", "check_recipe", "compile_plan", "diff_views", "evaluate", "export_recipe",
    "import_llama_quantize", "infer_recipe", "load_recipe", "load_view", "measure_model", "quantize",
    "read_model", "tune_model",
]  # fmt: skip


def test_the_public_names_are_pinned() -> None:
    assert sorted(gguf_recipe.__all__) == sorted(PUBLIC)
    assert sorted(gguf_recipe._EXPORTS) == sorted(n for n in PUBLIC if n != "__version__")


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(gguf_recipe, name) is not None
    assert name in dir(gguf_recipe)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gguf_recipe.nope  # noqa: B018


def test_every_error_derives_from_the_root() -> None:
    errors = [getattr(gguf_recipe, n) for n in PUBLIC if n.endswith(("Error", "Interrupted"))]
    assert all(issubclass(e, gguf_recipe.GGUFRecipeError) for e in errors), errors


def test_importing_the_package_imports_no_stage() -> None:
    code = "import sys, gguf_recipe; print(sorted(m for m in sys.modules if m.startswith('gguf_recipe.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_and_the_api_compile_the_same_plan(tmp_path: Path) -> None:
    model = write_wide_model(tmp_path / "m.gguf", 3)
    api = gguf_recipe.compile_plan("llama.cpp/Q4_K_M", model).plan
    r = CliRunner().invoke(app, ["plan", "llama.cpp/Q4_K_M", str(model), "-f", "json"])
    assert r.exit_code == 0
    assert gguf_recipe.Plan.from_json(r.stdout) == api
