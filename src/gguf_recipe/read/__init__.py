"""Reading what others publish: infer the recipe behind a quantized GGUF (:mod:`.infer`), compare files,
plans and recipes tensor by tensor (:mod:`.diff`) and draw a mix as a layer × tensor-family picture
(:mod:`.heatmap`). Everything works from GGUF headers alone; :mod:`.views` is the common view of "which
type does each tensor have" that all three read.
"""

from __future__ import annotations

from .diff import DiffResult, diff_views, render_diff
from .heatmap import HeatmapUnavailableError, draw_heatmap
from .infer import InferError, InferResult, infer_recipe
from .views import QuantView, TypedTensor, load_view, view_of_model, view_of_plan

__all__ = [
    "DiffResult",
    "HeatmapUnavailableError",
    "InferError",
    "InferResult",
    "QuantView",
    "TypedTensor",
    "diff_views",
    "draw_heatmap",
    "infer_recipe",
    "load_view",
    "render_diff",
    "view_of_model",
    "view_of_plan",
]
