"""Parity with llama-quantize: every recorded ``llama-quantize --dry-run`` plan of the oracle reproduces.

Plain mixes compile ``llama.cpp/<FTYPE>``; runs with options go through ``recipe import``'s function
(:func:`gguf_recipe.interop.import_llama_quantize`) and compile the recipe text it writes. Each case
compares every tensor's type and the processing order, the fallbacks and the exact total size.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from gguf_recipe.compiler import compile_model
from gguf_recipe.interop import import_llama_quantize
from gguf_recipe.model import ModelInfo, read_model
from helpers.oracle_models import MODELS, SkeletonFactory, load_plans, model_names, plan_id

CASES: list[Any] = []
if MODELS.is_dir():
    for _name in model_names():
        for _i, _plan in enumerate(load_plans(_name)):
            CASES.append(pytest.param(_name, _i, id=f"{_name}-{plan_id(_plan)}"))


@cache
def _model(name: str, oracle_skeleton: SkeletonFactory) -> ModelInfo:
    return read_model(oracle_skeleton(name))


@cache
def _plans(name: str) -> list[dict[str, Any]]:
    return load_plans(name)


def test_oracle_has_427_plans() -> None:
    if not MODELS.is_dir():
        pytest.fail(f"oracle data not found at {MODELS} (set GGUF_RECIPE_SHARED)")
    assert len(CASES) == 427


@pytest.mark.parametrize(("model_name", "index"), CASES)
def test_parity(model_name: str, index: int, oracle_skeleton: SkeletonFactory) -> None:
    expected = _plans(model_name)[index]
    model = _model(model_name, oracle_skeleton)
    if expected["options"]:
        source: str = import_llama_quantize([*expected["options"], expected["ftype"]])
    else:
        source = f"llama.cpp/{expected['ftype']}"
    result = compile_model(source, model, imatrix=bool(expected["imatrix"]), lint=False)
    plan = result.plan
    live = [t for t in plan.tensors if t.action != "prune"]
    got = {t.name: t.type for t in live}

    wrong = {n: (want, got.get(n)) for n, want in expected["tensors"].items() if got.get(n) != want}
    assert not wrong, (
        f"{len(wrong)} tensor(s) differ (name: (llama-quantize, ours)): {dict(list(wrong.items())[:10])}"
    )
    assert [t.name for t in live] == list(expected["tensors"]), "processing order differs"

    want_fb = sorted((f["tensor"], f["wanted"], f["got"]) for f in expected["fallbacks"])
    got_fb = sorted((t.name, t.fallback.wanted, t.fallback.got) for t in live if t.fallback is not None)
    assert got_fb == want_fb
    assert plan.totals.n_fallbacks == expected["n_fallback_printed"]

    assert plan.totals.target_bytes == expected["total_size_bytes"]
    assert plan.totals.source_bytes == expected["model_size_bytes"]
    assert (
        f"{plan.totals.target_bytes * 8 / plan.totals.n_elements:.2f}"
        == f"{expected['quant_bpw_printed']:.2f}"
    )
