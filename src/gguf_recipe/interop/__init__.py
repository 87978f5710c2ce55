"""llama-quantize command lines <-> recipes.

``import_llama_quantize(argv)`` parses llama-quantize's options exactly as tools/quantize/quantize.cpp
does (:mod:`.command_line`) and returns the text of an equivalent recipe (:mod:`.importer`).
``export_recipe(recipe)`` goes the other way for recipes that llama-quantize (or ik_llama.cpp's
``--custom-q``) can express (:mod:`.exporter`).
"""

from __future__ import annotations

from .command_line import QuantizeArgs, parse_llama_quantize_args, try_parse_ftype
from .errors import InteropError
from .exporter import Export, ExportFormat, export_llama_quantize, export_llama_quantize_notes, export_recipe
from .importer import import_llama_quantize

__all__ = [
    "Export",
    "ExportFormat",
    "InteropError",
    "QuantizeArgs",
    "export_llama_quantize",
    "export_llama_quantize_notes",
    "export_recipe",
    "import_llama_quantize",
    "parse_llama_quantize_args",
    "try_parse_ftype",
]
