"""A mix at a glance: layer × tensor family → type, one panel per input, colours ordered by bits per
weight, row-size fallbacks hatched. SVG or PNG (from the file name).

matplotlib is an optional dependency: ``pip install 'gguf-recipe[plot]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import llamacpp as llama
from ..errors import GGUFRecipeError
from .diff import type_bpw
from .views import QuantView, family_of

__all__ = ["HeatmapGrid", "HeatmapUnavailableError", "check_heatmap_path", "draw_heatmap", "heatmap_grid"]

INSTALL_HINT = "pip install 'gguf-recipe[plot]'  (or: pip install matplotlib)"
FORMATS = (".svg", ".png")
MODEL_ROW = "model"  # the row of tensors outside the blocks (token_embd, output, ...)


class HeatmapUnavailableError(GGUFRecipeError, RuntimeError):
    """matplotlib is not installed (the message says what to install), or the file type is unknown."""


@dataclass
class HeatmapGrid:
    """Rows: ``model`` then block 0..n-1; columns: tensor families with 2-D+ tensors."""

    families: list[str]  # short names: 'ffn_down', 'token_embd', ...
    rows: list[str]
    cells: dict[tuple[int, int], tuple[str, bool]]  # (row, column) -> (type, fallback)


def _short(family: str) -> str:
    return family.removeprefix("blk.*.").removesuffix(".weight")


def heatmap_grid(
    view: QuantView, families: Sequence[str] | None = None, n_layer: int | None = None
) -> HeatmapGrid:
    """The grid of one input (``families``: the full family names to show, in order; default: its own)."""
    if families is None:
        families = _families([view])
    n = view.n_layer if n_layer is None else n_layer
    col = {f: i for i, f in enumerate(families)}
    cells: dict[tuple[int, int], tuple[str, bool]] = {}
    for t in view.tensors:
        c = col.get(t.family)
        if c is None:
            continue
        b = t.block
        r = 0 if b is None else b + 1
        cells[(r, c)] = (t.type, t.fallback_from is not None)
    return HeatmapGrid([_short(f) for f in families], [MODEL_ROW, *[str(i) for i in range(n)]], cells)


def _families(views: Sequence[QuantView]) -> list[str]:
    """Families of 2-D+ tensors (norms and biases left out), tensors outside the blocks first."""
    seen: dict[str, tuple[int, bytes]] = {}
    for v in views:
        for t in v.tensors:
            if t.n_dims < 2:
                continue
            f = family_of(t.name)
            key = llama.processing_key(t.name)
            if f not in seen or key < seen[f]:
                seen[f] = key
    outside = [f for f in seen if not f.startswith("blk.*.")]
    inside = [f for f in seen if f.startswith("blk.*.")]
    return sorted(outside, key=lambda f: seen[f]) + sorted(inside, key=_short)


def check_heatmap_path(path: str | Path) -> None:
    """Fail early (before any work) when a heatmap cannot be written: no matplotlib, or not .svg/.png."""
    if Path(path).suffix.lower() not in FORMATS:
        raise HeatmapUnavailableError(f"{path}: a heatmap is written as .svg or .png")
    _matplotlib()


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise HeatmapUnavailableError(f"drawing a heatmap needs matplotlib: {INSTALL_HINT}") from None
    _ = matplotlib
    return Figure


def draw_heatmap(
    views: Sequence[QuantView],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw one panel per view into ``path`` (.svg or .png); returns the path."""
    path = Path(path)
    check_heatmap_path(path)
    figure_cls = _matplotlib()
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    views = list(views)
    labels = list(labels) if labels is not None else [v.label for v in views]
    families = _families(views)
    n = max((v.n_layer for v in views), default=0)
    grids = [heatmap_grid(v, families, n) for v in views]
    types = sorted({t for g in grids for t, _ in g.cells.values()}, key=lambda t: (type_bpw(t), t))
    rank = {t: i for i, t in enumerate(types)}
    cmap = colormaps["viridis"]
    colours = [cmap(0.08 + 0.84 * i / max(1, len(types) - 1)) for i in range(len(types))]
    listed = ListedColormap(colours) if colours else ListedColormap(["#ffffff"])

    n_cols, n_rows = len(families), n + 1
    width = min(40.0, 1.6 + len(views) * (0.32 * n_cols + 0.9) + 2.2)
    height = min(40.0, 1.6 + 0.2 * n_rows)
    fig = figure_cls(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, len(views), sharey=True, squeeze=False)[0]
    import numpy as np

    for ax, grid, label in zip(axes, grids, labels, strict=True):
        data = np.full((n_rows, n_cols), np.nan)
        for (r, c), (t, _) in grid.cells.items():
            data[r, c] = rank[t]
        ax.imshow(
            np.ma.masked_invalid(data), cmap=listed, vmin=-0.5, vmax=max(0, len(types) - 1) + 0.5,
            aspect="auto", interpolation="nearest",
        )  # fmt: skip
        ax.set_facecolor("#f2f2f2")
        for (r, c), (_, fb) in grid.cells.items():
            if fb:
                ax.add_patch(
                    Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="////", edgecolor="white", lw=0)
                )
        ax.set_xticks(range(n_cols), grid.families, rotation=90, fontsize=7)
        step = max(1, n_rows // 40)
        ticks = [0, *range(1, n_rows, step)]
        ax.set_yticks(ticks, [grid.rows[i] for i in ticks], fontsize=7)
        ax.axhline(0.5, color="white", lw=2)
        ax.set_title(label, fontsize=9)
        ax.tick_params(length=0)
    axes[0].set_ylabel("layer")
    handles = [
        Patch(facecolor=colours[rank[t]], label=f"{t} ({type_bpw(t):.2f} bpw)") for t in reversed(types)
    ]
    if any(fb for g in grids for _, fb in g.cells.values()):
        handles.append(Patch(facecolor="#777777", hatch="////", edgecolor="white", label="row-size fallback"))
    fig.legend(
        handles=handles, loc="outside right center", fontsize=7, frameon=False, title="type", title_fontsize=8
    )
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Date": None} if path.suffix.lower() == ".svg" else None)
    return path
