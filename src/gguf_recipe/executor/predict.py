"""The exact output of a plan without writing it: every shard's header and size, as ``apply_plan``
would lay them out (same checks, same metadata, same alignment)."""

from __future__ import annotations

import os
from pathlib import Path

from ..plan import Plan
from .gguf_format import OutTensor
from .imatrix import Imatrix
from .preflight import assign_imatrix, build_metadata, check_structure, open_imatrix, plan_fingerprint
from .provenance import PlanCheck
from .source import SourceModel
from .writer import OutputLayout, plan_layout

__all__ = ["predict_file_size", "predict_layout"]


def predict_layout(
    plan: Plan,
    model_path: str | os.PathLike[str],
    *,
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
    out_path: str | os.PathLike[str] = "out.gguf",
    check: PlanCheck | None = None,
    max_shard_bytes: int | None = None,
    max_shard_tensors: int | None = None,
) -> OutputLayout:
    """The layout ``apply_plan(plan, model_path, out_path, imatrix=...)`` writes. The imatrix file name
    is embedded in the metadata as given, so spell it the way it will be given to apply. ``check``: what
    apply's decision check will find (default: the plan follows from its recipe, as a freshly compiled
    plan does)."""
    warn: list[str] = []
    with SourceModel(model_path) as src:
        im, im_name = open_imatrix(imatrix)
        jobs, _ = check_structure(plan, src, allow_requantize=True)
        assign_imatrix(jobs, im, warn)
        blobs = build_metadata(
            plan, src, jobs, im, im_name, plan_fingerprint(plan), warn, check or PlanCheck("verified")
        )
        tensors = [
            OutTensor(j.planned.name, tuple(j.planned.shape), j.target, j.planned.target_bytes) for j in jobs
        ]
        return plan_layout(
            Path(out_path),
            blobs,
            tensors,
            alignment=src.headers[0].alignment,
            max_shard_bytes=max_shard_bytes,
            max_shard_tensors=max_shard_tensors,
        )


def predict_file_size(
    plan: Plan,
    model_path: str | os.PathLike[str],
    *,
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
) -> int:
    """Bytes of the single-file output ``apply_plan`` writes for ``plan`` (what ``ls -l`` shows)."""
    return predict_layout(plan, model_path, imatrix=imatrix).total_size
