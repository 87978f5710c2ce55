"""Grid tables for the 2-bit (and 1-bit) i-quants: ggml's ``iq2xs_init_impl`` in numpy.

ggml stores each grid as compact 16-bit codes: coordinate ``k`` of grid point ``j`` is the level
``l = (code[j] >> 2*k) & 3`` and sits at position ``2*l + 1``. ``iq2xs_init_impl`` derives from a grid

* ``kgrid_q2xs``: the positions (``grid_levels`` here holds the levels ``l``),
* ``kmap_q2xs``: code -> grid index, negative for codes that are not grid points,
* ``kneighbors_q2xs``: for every code not on the grid, the grid points at the ``nwant`` smallest
  distinct squared distances, ordered by (distance, grid index).

:func:`build_grid_tables` does the same for any grid (IQ2_XXS, IQ2_XS, IQ2_S here; IQ1_S/IQ1_M use it
with their own grid and ``nwant=3``). The neighbour lists have variable length; they are returned both
as a flat CSR layout (for segmented searches) and as a rectangular array padded with a mask.
:func:`iq2_tables` builds the tables of one IQ2 type once, lazily, and caches them (:func:`cached`, also
used by the IQ1/IQ3 tables). The compact grids are stored in ``data/kgrid_*.npy`` (:func:`load_grid`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

I8Array = npt.NDArray[np.int8]
I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]
F32Array = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]
U16Array = npt.NDArray[np.uint16]
BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "KGRID_IQ2S",
    "KGRID_IQ2XS",
    "KGRID_IQ2XXS",
    "KMAP_SIZE",
    "KMASK_IQ2XS",
    "KSIGNS_IQ2XS",
    "GridTables",
    "build_grid_tables",
    "cached",
    "first_min",
    "iq2_tables",
    "keven_signs",
    "load_grid",
]

# iq2xs_init_impl: codes whose 8 levels are all <= 2 are < 0xAAAA + 2 = 43692.
KMAP_SIZE = 43692


@dataclass(frozen=True)
class GridTables:
    """The lookup tables ``iq2xs_init_impl`` builds for one grid (see module docstring).

    Codes are the 16-bit ``u = sum(l[k] << 2*k)`` of 8 levels. For a code ``u`` not on the grid
    with neighbours computed, ``nb_row[u] = r >= 0`` and its neighbours (grid indices, in ggml's
    order) are ``nb_flat[nb_start[r] : nb_start[r] + nb_count[r]]`` == ``nb_padded[r, :nb_count[r]]``.
    """

    grid_codes: npt.NDArray[np.uint16]  # (n_grid,) compact codes as stored in ggml
    grid_levels: I8Array  # (n_grid, 8) levels 0..3 of every grid point
    kmap: I32Array  # (kmap_size,) grid index of code u, -1 when u is not a grid point
    nb_row: I32Array  # (kmap_size,) row of u in the neighbour tables, -1 when none
    nb_codes: I32Array  # (n_rows,) the code u of each neighbour-table row
    nb_start: I32Array  # (n_rows,) offset of the row's list in nb_flat
    nb_count: I32Array  # (n_rows,) length of the row's list (>= 1)
    nb_flat: I32Array  # (sum(nb_count),) all lists back to back
    nb_padded: I32Array  # (n_rows, max(nb_count)) lists padded with their own first entry
    nb_valid: BoolArray  # (n_rows, max(nb_count)) True where nb_padded holds a real entry
    nb_lo3: I32Array  # (sum(nb_count),) base-3 code of levels 0..3 of each nb_flat entry
    nb_hi3: I32Array  # (sum(nb_count),) base-3 code of levels 4..7 (both need levels <= 2)
    nwant: int

    @property
    def grid_size(self) -> int:
        return int(self.grid_codes.shape[0])


def _code_levels(codes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (codes[:, None] >> (2 * np.arange(8, dtype=np.int64))) & 3


def build_grid_tables(
    kgrid: npt.ArrayLike,
    nwant: int,
    *,
    kmap_size: int = KMAP_SIZE,
    max_level: int = 2,
) -> GridTables:
    """ggml's ``iq2xs_init_impl`` for an arbitrary grid.

    ``kgrid``: the compact uint16 grid codes exactly as in ggml (``kgrid_2bit_256``, ``kgrid_2bit_512``,
    ``kgrid_2bit_1024``, ``kgrid_1bit_2048``). ``nwant``: how many distinct squared distances each
    neighbour list spans (ggml: 2 for IQ2_XXS/IQ2_XS, 1 for IQ2_S, 3 for IQ1_S/IQ1_M).

    ggml computes neighbour lists for every code ``< kmap_size`` that is not on the grid. The quantizers
    only ever look up codes whose levels are all ``<= 2`` (they clamp to ``kMaxQ - 1 = 2``), so by default
    (``max_level=2``) only those 3^8 codes get lists; ``max_level=3`` computes all of them like ggml does.
    Every list equals ggml's: grid points at the ``nwant`` smallest distinct squared distances between
    positions ``2*l + 1``, sorted by (distance, grid index) -- the order ``qsort`` with
    ``iq2_compare_func`` gives, which is what ``iq2_find_best_neighbour``'s first-wins ``<`` sees.
    """
    codes = np.asarray(kgrid, dtype=np.int64).reshape(-1)
    if codes.size == 0 or codes.min() < 0 or codes.max() >= kmap_size:
        raise ValueError("grid codes must be non-empty and lie in [0, kmap_size)")
    if nwant < 1:
        raise ValueError("nwant must be >= 1")
    levels = _code_levels(codes)
    kmap = np.full(kmap_size, -1, dtype=np.int32)
    kmap[codes] = np.arange(codes.size, dtype=np.int32)  # later duplicates win, as in ggml's loop

    all_codes = np.arange(kmap_size, dtype=np.int64)
    candidates = (kmap < 0) & (_code_levels(all_codes) <= max_level).all(axis=1)
    pts = all_codes[candidates]
    n_pts = pts.size
    grid_pos = (2 * levels + 1).astype(np.int32)  # (n_grid, 8)
    pt_pos = (2 * _code_levels(pts) + 1).astype(np.int32)  # (n_pts, 8)

    rows_l: list[npt.NDArray[np.int64]] = []
    cols_l: list[npt.NDArray[np.int64]] = []
    d2_l: list[npt.NDArray[np.int32]] = []
    step = max(1, (1 << 22) // codes.size)
    for a in range(0, n_pts, step):
        p = pt_pos[a : a + step]
        d2 = np.zeros((p.shape[0], codes.size), dtype=np.int32)
        for k in range(8):
            diff = grid_pos[None, :, k] - p[:, k, None]
            d2 += diff * diff
        # the nwant-th smallest distinct distance of every row
        thr = d2.min(axis=1)
        big = np.iinfo(np.int32).max
        for _ in range(nwant - 1):
            nxt = np.where(d2 > thr[:, None], d2, big).min(axis=1)
            thr = np.where(nxt == big, thr, nxt)
        r, c = np.nonzero(d2 <= thr[:, None])
        rows_l.append(r + a)
        cols_l.append(c)
        d2_l.append(d2[r, c])
    rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
    cols = np.concatenate(cols_l) if cols_l else np.zeros(0, np.int64)
    dist = np.concatenate(d2_l) if d2_l else np.zeros(0, np.int32)
    order = np.lexsort((cols, dist, rows))
    rows, cols = rows[order], cols[order]

    nb_count = np.bincount(rows, minlength=n_pts).astype(np.int32)
    nb_start = (np.cumsum(nb_count) - nb_count).astype(np.int32)
    nb_flat = cols.astype(np.int32)
    width = int(nb_count.max()) if n_pts else 1
    slot = np.arange(width, dtype=np.int32)
    nb_valid = slot[None, :] < nb_count[:, None]
    take = nb_start[:, None] + np.where(nb_valid, slot[None, :], 0)
    nb_padded = nb_flat[take] if nb_flat.size else np.zeros((n_pts, width), np.int32)

    nb_row = np.full(kmap_size, -1, dtype=np.int32)
    nb_row[pts] = np.arange(n_pts, dtype=np.int32)
    nb_lev = levels[nb_flat]
    pow3 = np.array([1, 3, 9, 27], dtype=np.int64)
    return GridTables(
        grid_codes=codes.astype(np.uint16),
        grid_levels=levels.astype(np.int8),
        kmap=kmap,
        nb_row=nb_row,
        nb_codes=pts.astype(np.int32),
        nb_start=nb_start,
        nb_count=nb_count,
        nb_flat=nb_flat,
        nb_padded=np.ascontiguousarray(nb_padded, dtype=np.int32),
        nb_valid=nb_valid,
        nb_lo3=(nb_lev[:, :4] @ pow3).astype(np.int32),
        nb_hi3=(nb_lev[:, 4:] @ pow3).astype(np.int32),
        nwant=nwant,
    )


def first_min(d2: F32Array, seg: I64Array) -> I64Array:
    """Flat position of the first minimum of each segment ``d2[seg[k]:seg[k+1]]`` (strict ``<`` scan)."""
    b = d2.view(np.int32)
    order_key = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))  # float order as signed ints
    key = (order_key.astype(np.int64) << 32) | np.arange(d2.shape[0], dtype=np.int64)
    pos: I64Array = np.minimum.reduceat(key, seg) & 0xFFFFFFFF
    return pos


# ksigns_iq2xs: 7 stored sign bits -> 8 bits, bit 7 making the number of set bits even.
KSIGNS_IQ2XS: U8Array = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)
KMASK_IQ2XS: U8Array = (1 << np.arange(8)).astype(np.uint8)


def keven_signs() -> I8Array:
    """``keven_signs_q2xs`` as (128, 8) int8 of +-1: entry i is the sign pattern ``KSIGNS_IQ2XS[i]``."""
    bits = (KSIGNS_IQ2XS[:, None] & KMASK_IQ2XS[None, :]) != 0
    return np.where(bits, -1, 1).astype(np.int8)


_DATA = Path(__file__).resolve().parent / "data"


def load_grid(name: str) -> U16Array:
    """A compact grid (``kgrid_2bit_256`` ...) of ggml-quants.c, stored in ``data/<name>.npy``."""
    grid: U16Array = np.load(_DATA / f"{name}.npy").astype(np.uint16)
    return grid


_T = TypeVar("_T")
_K = TypeVar("_K")


def cached(cache: dict[_K, _T], lock: threading.Lock, key: _K, build: Callable[[], _T]) -> _T:
    """``cache[key]``, built by ``build()`` on first use (once, also when threads race)."""
    value = cache.get(key)
    if value is None:
        with lock:
            value = cache.get(key)
            if value is None:
                value = build()
                cache[key] = value
    return value


# kgrid_2bit_256 / kgrid_2bit_512 / kgrid_2bit_1024 from ggml-quants.c (iq2xs_init_impl), the compact
# form of iq2xxs_grid / iq2xs_grid / iq2s_grid in ggml-common.h.
KGRID_IQ2XXS = load_grid("kgrid_2bit_256")
KGRID_IQ2XS = load_grid("kgrid_2bit_512")
KGRID_IQ2S = load_grid("kgrid_2bit_1024")
_IQ2_GRIDS = {"IQ2_XXS": (KGRID_IQ2XXS, 2), "IQ2_XS": (KGRID_IQ2XS, 2), "IQ2_S": (KGRID_IQ2S, 1)}
_CACHE: dict[str, GridTables] = {}
_LOCK = threading.Lock()


def iq2_tables(name: str) -> GridTables:
    """The tables of ``"IQ2_XXS"``, ``"IQ2_XS"`` or ``"IQ2_S"``, built on first use and cached."""
    return cached(_CACHE, _LOCK, name, lambda: build_grid_tables(*_IQ2_GRIDS[name]))
