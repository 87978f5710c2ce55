"""Model access: a header-only GGUF reader and header-only skeleton builder."""

from __future__ import annotations

from .reader import GGUFReadError, ModelInfo, TensorInfo, model_size_class, read_model, split_paths

__all__ = [
    "GGUFReadError",
    "ModelInfo",
    "TensorInfo",
    "model_size_class",
    "read_model",
    "split_paths",
]
