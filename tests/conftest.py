from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GGUF_RECIPE_SHARED", REPO.parent / "shared"))
ORACLE = SHARED / "oracle"


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    if not ORACLE.is_dir():
        pytest.fail(f"oracle data not found at {ORACLE} (set GGUF_RECIPE_SHARED)")
    return ORACLE
