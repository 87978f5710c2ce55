from __future__ import annotations

import os
from pathlib import Path

import pytest

from _oracle_models import SkeletonFactory

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GGUF_RECIPE_SHARED", REPO.parent / "shared"))
ORACLE = SHARED / "oracle"


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    if not ORACLE.is_dir():
        pytest.fail(f"oracle data not found at {ORACLE} (set GGUF_RECIPE_SHARED)")
    return ORACLE


@pytest.fixture(scope="session")
def oracle_skeleton() -> SkeletonFactory:
    """``oracle_skeleton(name)``: the header-only GGUF of an oracle model, built once per session and
    shared by every test that asks for it."""
    from _oracle_models import oracle_skeleton as build

    return build
