"""gguf-recipe: declarative per-tensor quantization recipes for GGUF models."""

__version__ = "0.1.0"
