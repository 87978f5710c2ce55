"""Comparison tables of evaluated models: plain text, markdown (for model cards) and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..render import _md_escape, text_table
from .api import ComparisonRow, comparison_rows
from .result import EvalResult

__all__ = ["render_comparison", "results_json"]

HEADERS = ["model", "size", "bpw", "PPL", "ΔPPL", "mean KLD", "99% KLD", "same top"]


def _size(n: int) -> str:
    if n <= 0:
        return "?"
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.2f} GiB"
    return f"{n / (1 << 20):,.1f} MiB"


def _name(row: ComparisonRow) -> str:
    name = Path(row.model).name
    return f"{name} (reference)" if row.is_reference else name


def _cells(row: ComparisonRow) -> list[str]:
    bpw = "?" if row.bpw is None else f"{row.bpw:.2f}"
    ppl = f"{row.ppl:.3f} ± {row.ppl_err:.3f}"
    if row.is_reference or row.kld_mean is None:
        return [_name(row), _size(row.file_bytes), bpw, ppl, "", "", "", ""]
    assert row.ln_ppl_ratio is not None and row.kld_p99 is not None and row.same_top is not None
    dppl = f"{100 * math.expm1(row.ln_ppl_ratio):+.2f}%"
    kld = f"{row.kld_mean:.5f} ± {row.kld_err or 0.0:.5f}"
    top = f"{100 * row.same_top:.2f} ± {100 * (row.same_top_err or 0.0):.2f}%"
    return [_name(row), _size(row.file_bytes), bpw, ppl, dppl, kld, f"{row.kld_p99:.4f}", top]


def _caption(results: Sequence[EvalResult]) -> str:
    r = results[0]
    return (
        f"{r.n_chunks} chunk{'s' if r.n_chunks != 1 else ''} of {r.n_ctx} tokens, "
        f"{r.n_tokens} scored tokens; KL divergence against {Path(r.reference).name}"
    )


def render_comparison(results: Sequence[EvalResult], fmt: str = "table") -> str:
    """``results`` (all against the same reference and text) as a table: ``table`` (aligned plain text),
    ``markdown`` (for a model card) or ``json``. The reference comes first, then the models in order."""
    if fmt == "json":
        return results_json(results)
    if not results:
        return ""
    rows = [_cells(r) for r in comparison_rows(results)]
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADERS) + " |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for cells in rows:
            lines.append("| " + " | ".join([_md_escape(cells[0]), *cells[1:]]) + " |")
        lines += ["", f"_{_caption(results)}; measured with llama.cpp (gguf-recipe eval)._"]
        return "\n".join(lines) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (table, markdown or json)")
    lines = text_table(HEADERS, rows, {1, 2, 3, 4, 5, 6, 7})
    return "\n".join([*lines, "", _caption(results)]) + "\n"


def results_json(results: Sequence[EvalResult]) -> str:
    """``{"reference": ..., "n_ctx", "n_chunks", "n_tokens", "results": [EvalResult.to_dict(), ...]}``."""
    out: dict[str, Any] = {"results": [r.to_dict() for r in results]}
    if results:
        r = results[0]
        ref = comparison_rows(results)[0]
        out = {
            "reference": {
                "model": r.reference,
                "file_bytes": ref.file_bytes,
                "bpw": ref.bpw,
                "ppl": r.ref_ppl,
                "ppl_err": r.ref_ppl_err,
            },
            "n_ctx": r.n_ctx,
            "n_chunks": r.n_chunks,
            "n_tokens": r.n_tokens,
            **out,
        }
    return json.dumps(out, indent=2) + "\n"
