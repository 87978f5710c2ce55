"""Shared helpers for tests that plan against the oracle's model skeletons (header-only sparse GGUFs)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GGUF_RECIPE_SHARED", REPO.parent / "shared"))
ORACLE = SHARED / "oracle"
MODELS = ORACLE / "models"

# oracle_skeleton's signature; tests get it as the ``oracle_skeleton`` fixture (conftest.py)
SkeletonFactory = Callable[[str], Path]


def model_names() -> list[str]:
    return sorted(p.name.removesuffix(".model.json") for p in MODELS.glob("*.model.json"))


def load_plans(name: str) -> list[dict[str, Any]]:
    text = (MODELS / f"{name}.plans.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert isinstance(data, list)
    return data


def plan_id(plan: dict[str, Any]) -> str:
    parts = [plan["ftype"]]
    if plan["imatrix"]:
        parts.append("imatrix")
    if plan["options"]:
        parts.append(" ".join(plan["options"]))
    return "-".join(parts)


_SKELETON_DIR: Path | None = None


def skeleton_dir() -> Path:
    """One temporary folder per test session for the header-only skeletons (sparse files)."""
    global _SKELETON_DIR
    if _SKELETON_DIR is None:
        import atexit
        import shutil
        import tempfile

        _SKELETON_DIR = Path(tempfile.mkdtemp(prefix="gguf-recipe-skeletons-"))
        atexit.register(shutil.rmtree, _SKELETON_DIR, True)
    return _SKELETON_DIR


_SKELETONS: dict[str, Path] = {}


def oracle_skeleton(name: str) -> Path:
    """The header-only GGUF of an oracle model, built once per session."""
    if name not in _SKELETONS:
        from gguf_recipe.model.skeleton import skeleton_from_json

        _SKELETONS[name] = skeleton_from_json(MODELS / f"{name}.model.json", skeleton_dir())
    return _SKELETONS[name]
