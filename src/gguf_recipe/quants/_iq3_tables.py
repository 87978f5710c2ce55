"""Grid tables for IQ3_XXS / IQ3_S: ggml's ``iq3xs_init_impl`` in numpy.

A grid point has 4 coordinates, each a level ``l`` in 0..7 at position ``2*l + 1``; its 12-bit code is
``u = sum(l[i] << 3*i)``. The grids come from ``iq3xxs_grid`` (256 points) and ``iq3s_grid`` (512 points)
of ggml-common.h, stored in ``data/*.npy`` as the dequantization tables ggml ships (4 bytes per point). From
a grid ``iq3xs_init_impl`` derives

* ``kmap_q3xs``: code -> grid index, negative for codes that are not grid points;
* ``kneighbors_q3xs``: for every code not on the grid, the grid points at the ``nwant`` smallest distinct
  squared distances (2 for the 256 grid, 3 for the 512 grid), ordered by (distance, grid index).

The neighbour lists have variable length (2..38); here they are padded into rectangular arrays with their
lengths alongside. Tables are built once per grid, lazily, and cached.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._iq2_tables import cached

__all__ = ["KMAP_SIZE", "Iq3Tables", "build_iq3_tables", "iq3_tables"]

I32Array = npt.NDArray[np.int32]
U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]

KMAP_SIZE = 4096
_DATA = Path(__file__).resolve().parent / "data"
# Byte value stored in iq3xxs_grid for each level (iq3s_grid stores 2*l + 1 directly).
_IQ3XXS_BYTES = np.array([0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3E], dtype=np.uint8)


@dataclass(frozen=True)
class Iq3Tables:
    """Lookup tables of one IQ3 grid.

    ``nb_row[u] = r >= 0`` for a code ``u`` off the grid; its neighbours, in ggml's order, are grid
    indices ``nb_index[r, :nb_count[r]]`` with positions ``nb_pos[r, :nb_count[r]]``.
    """

    grid_size: int
    grid_levels: U8Array  # (grid_size, 4) levels 0..7
    grid_codes: I32Array  # (grid_size,)
    kmap: I32Array  # (4096,) grid index of code u, -1 off the grid
    nb_row: I32Array  # (4096,) row of u in the neighbour tables, -1 on the grid
    nb_count: I32Array  # (n_rows,)
    nb_count_u8: U8Array  # (n_rows,) the same as uint8 (fast sorting keys)
    nb_index: I32Array  # (n_rows, max_count) grid indices, padded with 0
    nb_pos: F32Array  # (n_rows, max_count, 4) neighbour positions 2*l+1 as float32, padded with 0
    nb_pos_t: F32Array  # (4, max_count, n_rows) the same, coordinate-major


def _grid_levels(grid_size: int) -> U8Array:
    if grid_size == 256:
        raw = np.load(_DATA / "iq3xxs_grid.npy").astype("<u4").view(np.uint8).reshape(-1, 4)
        levels: U8Array = np.searchsorted(_IQ3XXS_BYTES, raw).astype(np.uint8)
        ok = bool(np.array_equal(_IQ3XXS_BYTES[levels.clip(0, 7)], raw))
    elif grid_size == 512:
        raw = np.load(_DATA / "iq3s_grid.npy").astype("<u4").view(np.uint8).reshape(-1, 4)
        levels = ((raw.astype(np.int32) - 1) // 2).astype(np.uint8)
        ok = bool(np.array_equal(2 * levels.astype(np.int32) + 1, raw))
    else:
        raise ValueError(f"IQ3 grids have 256 or 512 points, not {grid_size}")
    if not ok or levels.shape != (grid_size, 4):
        raise RuntimeError(f"corrupt IQ3 grid data for grid size {grid_size}")
    return levels


def build_iq3_tables(grid_size: int) -> Iq3Tables:
    levels = _grid_levels(grid_size)
    nwant = 2 if grid_size == 256 else 3
    shifts = np.array([0, 3, 6, 9], dtype=np.int32)
    codes = (levels.astype(np.int32) << shifts).sum(axis=1).astype(np.int32)
    kmap = np.full(KMAP_SIZE, -1, dtype=np.int32)
    kmap[codes] = np.arange(grid_size, dtype=np.int32)

    off = np.flatnonzero(kmap < 0).astype(np.int32)
    pos = ((off[:, None] >> shifts) & 7) * 2 + 1  # (n_off, 4)
    gpos = levels.astype(np.int32) * 2 + 1  # (grid, 4)
    dist2 = ((gpos[None, :, :] - pos[:, None, :]) ** 2).sum(axis=2)  # (n_off, grid)
    # qsort with iq3_compare_func: by distance, then grid index (a total order).
    order = np.argsort(dist2 * grid_size + np.arange(grid_size), axis=1)
    sorted_d2 = np.take_along_axis(dist2, order, axis=1)
    level_no = np.concatenate(
        [np.zeros((len(off), 1), dtype=np.int32), np.cumsum(np.diff(sorted_d2, axis=1) > 0, axis=1)], axis=1
    )
    keep = level_no < nwant  # a prefix of every row
    count = keep.sum(axis=1).astype(np.int32)
    width = int(count.max())
    nb_index = np.where(keep[:, :width], order[:, :width], 0).astype(np.int32)
    nb_pos = np.where(keep[:, :width, None], gpos[nb_index], 0).astype(np.float32)

    nb_row = np.full(KMAP_SIZE, -1, dtype=np.int32)
    nb_row[off] = np.arange(len(off), dtype=np.int32)
    return Iq3Tables(
        grid_size=grid_size,
        grid_levels=levels,
        grid_codes=codes,
        kmap=kmap,
        nb_row=nb_row,
        nb_count=count,
        nb_count_u8=count.astype(np.uint8),
        nb_index=np.ascontiguousarray(nb_index),
        nb_pos=np.ascontiguousarray(nb_pos),
        nb_pos_t=np.ascontiguousarray(nb_pos.transpose(2, 1, 0)),
    )


_CACHE: dict[int, Iq3Tables] = {}
_LOCK = threading.Lock()


def iq3_tables(grid_size: int) -> Iq3Tables:
    """The tables of the 256-point (IQ3_XXS) or 512-point (IQ3_S) grid, built on first use."""
    return cached(_CACHE, _LOCK, grid_size, lambda: build_iq3_tables(grid_size))
