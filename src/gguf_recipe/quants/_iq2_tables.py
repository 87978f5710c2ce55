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
:func:`iq2_tables` builds the tables of one IQ2 type once, lazily, and caches them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

I8Array = npt.NDArray[np.int8]
I32Array = npt.NDArray[np.int32]
U8Array = npt.NDArray[np.uint8]
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
    "iq2_tables",
    "keven_signs",
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
        nwant=nwant,
    )


# ksigns_iq2xs: 7 stored sign bits -> 8 bits, bit 7 making the number of set bits even.
KSIGNS_IQ2XS: U8Array = np.array([i | ((bin(i).count("1") & 1) << 7) for i in range(128)], dtype=np.uint8)
KMASK_IQ2XS: U8Array = (1 << np.arange(8)).astype(np.uint8)


def keven_signs() -> I8Array:
    """``keven_signs_q2xs`` as (128, 8) int8 of +-1: entry i is the sign pattern ``KSIGNS_IQ2XS[i]``."""
    bits = (KSIGNS_IQ2XS[:, None] & KMASK_IQ2XS[None, :]) != 0
    return np.where(bits, -1, 1).astype(np.int8)


_IQ2_NWANT = {"IQ2_XXS": 2, "IQ2_XS": 2, "IQ2_S": 1}
_CACHE: dict[str, GridTables] = {}
_LOCK = threading.Lock()


def iq2_tables(name: str) -> GridTables:
    """The tables of ``"IQ2_XXS"``, ``"IQ2_XS"`` or ``"IQ2_S"``, built on first use and cached."""
    tables = _CACHE.get(name)
    if tables is None:
        with _LOCK:
            tables = _CACHE.get(name)
            if tables is None:
                grid = {"IQ2_XXS": KGRID_IQ2XXS, "IQ2_XS": KGRID_IQ2XS, "IQ2_S": KGRID_IQ2S}[name]
                tables = build_grid_tables(grid, _IQ2_NWANT[name])
                _CACHE[name] = tables
    return tables


# ---------------------------------------------------------------------------------------------------
# Grid data: kgrid_2bit_256 / kgrid_2bit_512 / kgrid_2bit_1024 from ggml-quants.c (iq2xs_init_impl),
# the compact form of iq2xxs_grid / iq2xs_grid / iq2s_grid in ggml-common.h.
# fmt: off

KGRID_IQ2XXS: tuple[int, ...] = (
    0, 2, 5, 8, 10, 17, 20, 32, 34, 40, 42, 65, 68, 80, 88, 97,
    100, 128, 130, 138, 162, 257, 260, 272, 277, 320, 388, 408, 512, 514, 546, 642,
    1025, 1028, 1040, 1057, 1060, 1088, 1090, 1096, 1120, 1153, 1156, 1168, 1188, 1280, 1282, 1288,
    1312, 1350, 1385, 1408, 1425, 1545, 1552, 1600, 1668, 1700, 2048, 2053, 2056, 2068, 2088, 2113,
    2116, 2128, 2130, 2184, 2308, 2368, 2562, 2580, 4097, 4100, 4112, 4129, 4160, 4192, 4228, 4240,
    4245, 4352, 4360, 4384, 4432, 4442, 4480, 4644, 4677, 5120, 5128, 5152, 5157, 5193, 5248, 5400,
    5474, 5632, 5654, 6145, 6148, 6160, 6208, 6273, 6400, 6405, 6560, 6737, 8192, 8194, 8202, 8260,
    8289, 8320, 8322, 8489, 8520, 8704, 8706, 9217, 9220, 9232, 9280, 9302, 9472, 9537, 9572, 9872,
    10248, 10272, 10388, 10820, 16385, 16388, 16400, 16408, 16417, 16420, 16448, 16456, 16470, 16480, 16513, 16516,
    16528, 16640, 16672, 16737, 16768, 16773, 16897, 16912, 16968, 16982, 17000, 17408, 17416, 17440, 17536, 17561,
    17682, 17700, 17920, 18433, 18436, 18448, 18496, 18501, 18688, 18776, 18785, 18818, 19013, 19088, 20480, 20488,
    20497, 20505, 20512, 20608, 20616, 20740, 20802, 20900, 21137, 21648, 21650, 21770, 22017, 22100, 22528, 22545,
    22553, 22628, 22848, 23048, 24580, 24592, 24640, 24680, 24832, 24917, 25112, 25184, 25600, 25605, 25872, 25874,
    25988, 26690, 32768, 32770, 32778, 32833, 32898, 33028, 33048, 33088, 33297, 33793, 33796, 33808, 33813, 33856,
    33888, 34048, 34118, 34196, 34313, 34368, 34400, 34818, 35076, 35345, 36868, 36880, 36900, 36928, 37025, 37142,
    37248, 37445, 37888, 37922, 37956, 38225, 39041, 39200, 40962, 41040, 41093, 41225, 41472, 42008, 43088, 43268,
)

KGRID_IQ2XS: tuple[int, ...] = (
    0, 2, 5, 8, 10, 17, 20, 22, 25, 32, 34, 37, 40, 65, 68, 70,
    73, 80, 82, 85, 88, 97, 100, 128, 130, 133, 136, 145, 148, 153, 160, 257,
    260, 262, 265, 272, 274, 277, 280, 282, 289, 292, 320, 322, 325, 328, 337, 340,
    352, 360, 385, 388, 400, 512, 514, 517, 520, 529, 532, 544, 577, 580, 592, 597,
    640, 650, 1025, 1028, 1030, 1033, 1040, 1042, 1045, 1048, 1057, 1060, 1088, 1090, 1093, 1096,
    1105, 1108, 1110, 1120, 1153, 1156, 1168, 1280, 1282, 1285, 1288, 1297, 1300, 1312, 1345, 1348,
    1360, 1377, 1408, 1537, 1540, 1552, 1574, 1600, 1602, 1668, 2048, 2050, 2053, 2056, 2058, 2065,
    2068, 2080, 2085, 2113, 2116, 2128, 2136, 2176, 2208, 2218, 2305, 2308, 2320, 2368, 2433, 2441,
    2560, 2592, 2600, 2710, 2720, 4097, 4100, 4102, 4105, 4112, 4114, 4117, 4120, 4129, 4132, 4160,
    4162, 4165, 4168, 4177, 4180, 4192, 4202, 4225, 4228, 4240, 4352, 4354, 4357, 4360, 4369, 4372,
    4384, 4417, 4420, 4432, 4480, 4500, 4502, 4609, 4612, 4614, 4624, 4672, 4704, 5120, 5122, 5125,
    5128, 5137, 5140, 5152, 5185, 5188, 5193, 5200, 5220, 5248, 5377, 5380, 5392, 5440, 5632, 5652,
    5705, 6145, 6148, 6160, 6162, 6208, 6228, 6278, 6400, 6405, 6502, 6737, 6825, 8192, 8194, 8197,
    8200, 8202, 8209, 8212, 8224, 8257, 8260, 8272, 8320, 8352, 8449, 8452, 8464, 8512, 8520, 8549,
    8704, 8738, 8832, 8872, 9217, 9220, 9232, 9257, 9280, 9472, 9537, 9554, 9625, 9729, 9754, 9894,
    10240, 10248, 10250, 10272, 10325, 10376, 10402, 10600, 10640, 10760, 10784, 10882, 10888, 10890, 16385, 16388,
    16390, 16393, 16400, 16402, 16405, 16408, 16417, 16420, 16448, 16450, 16453, 16456, 16458, 16465, 16468, 16480,
    16485, 16513, 16516, 16528, 16640, 16642, 16645, 16648, 16657, 16660, 16672, 16705, 16708, 16720, 16768, 16773,
    16802, 16897, 16900, 16912, 16914, 16937, 16960, 17408, 17410, 17413, 17416, 17425, 17428, 17433, 17440, 17473,
    17476, 17488, 17536, 17556, 17665, 17668, 17680, 17700, 17728, 17818, 17920, 17930, 17988, 18000, 18433, 18436,
    18448, 18496, 18501, 18516, 18530, 18688, 18705, 18756, 18768, 18793, 18948, 20480, 20482, 20485, 20488, 20497,
    20500, 20512, 20520, 20545, 20548, 20560, 20608, 20737, 20740, 20752, 20757, 20800, 20802, 20992, 21060, 21162,
    21505, 21508, 21520, 21537, 21568, 21600, 21633, 21665, 21760, 21768, 21888, 21896, 22049, 22120, 22177, 22528,
    22548, 22593, 22608, 22681, 22810, 22848, 22850, 23173, 24577, 24580, 24592, 24640, 24660, 24674, 24710, 24745,
    24832, 25124, 25162, 25234, 25600, 25622, 25872, 25920, 25925, 26020, 26625, 26730, 26917, 27142, 27220, 27234,
    32768, 32770, 32773, 32776, 32785, 32788, 32800, 32810, 32833, 32836, 32848, 32896, 32898, 32936, 32938, 33025,
    33028, 33030, 33040, 33088, 33105, 33113, 33280, 33312, 33408, 33410, 33440, 33448, 33793, 33796, 33808, 33810,
    33813, 33856, 33888, 33929, 34048, 34116, 34213, 34328, 34410, 34816, 34824, 34853, 34906, 34944, 34946, 34984,
    35078, 35362, 35456, 35464, 35478, 35496, 36865, 36868, 36880, 36928, 36950, 36996, 37120, 37154, 37220, 37462,
    37513, 37888, 37893, 37956, 37968, 37976, 38185, 38288, 38290, 38465, 38993, 39078, 39241, 39445, 39520, 40960,
    40962, 40968, 40970, 40992, 41002, 41120, 41297, 41305, 41382, 41472, 41474, 41480, 41514, 41600, 41632, 42048,
    42133, 42597, 42648, 43018, 43040, 43042, 43048, 43168, 43176, 43268, 43396, 43398, 43560, 43562, 43665, 43690,
)

KGRID_IQ2S: tuple[int, ...] = (
    0, 2, 5, 8, 10, 17, 20, 22, 25, 32, 34, 37, 40, 65, 68, 70,
    73, 80, 82, 85, 88, 97, 100, 102, 105, 128, 130, 133, 136, 145, 148, 160,
    165, 170, 257, 260, 262, 265, 272, 274, 277, 280, 289, 292, 320, 322, 325, 328,
    337, 340, 342, 345, 352, 357, 360, 385, 388, 400, 402, 405, 417, 420, 512, 514,
    517, 520, 529, 532, 544, 554, 577, 580, 582, 585, 592, 597, 640, 645, 650, 660,
    674, 1025, 1028, 1030, 1033, 1040, 1042, 1045, 1048, 1057, 1060, 1062, 1065, 1088, 1090, 1093,
    1096, 1098, 1105, 1108, 1110, 1113, 1120, 1122, 1125, 1153, 1156, 1158, 1161, 1168, 1173, 1176,
    1185, 1188, 1280, 1282, 1285, 1288, 1290, 1297, 1300, 1302, 1305, 1312, 1317, 1320, 1345, 1348,
    1350, 1353, 1360, 1362, 1365, 1368, 1377, 1380, 1408, 1410, 1413, 1416, 1425, 1428, 1440, 1537,
    1540, 1542, 1545, 1552, 1557, 1600, 1605, 1608, 1617, 1620, 1632, 1665, 1668, 1680, 2048, 2050,
    2053, 2056, 2065, 2068, 2070, 2073, 2080, 2085, 2090, 2113, 2116, 2118, 2121, 2128, 2130, 2133,
    2136, 2145, 2148, 2176, 2181, 2196, 2218, 2305, 2308, 2320, 2322, 2325, 2328, 2337, 2368, 2373,
    2376, 2385, 2388, 2400, 2433, 2448, 2560, 2577, 2580, 2594, 2600, 2602, 2640, 2713, 4097, 4100,
    4102, 4105, 4112, 4114, 4117, 4120, 4129, 4132, 4134, 4160, 4162, 4165, 4168, 4177, 4180, 4182,
    4185, 4192, 4194, 4197, 4200, 4225, 4228, 4230, 4240, 4245, 4248, 4257, 4260, 4352, 4354, 4357,
    4360, 4362, 4369, 4372, 4374, 4377, 4384, 4386, 4389, 4392, 4417, 4420, 4422, 4425, 4432, 4434,
    4437, 4440, 4449, 4452, 4480, 4482, 4485, 4488, 4497, 4500, 4609, 4612, 4617, 4624, 4629, 4641,
    4644, 4672, 4677, 4689, 4692, 4737, 4740, 4752, 5120, 5122, 5125, 5128, 5137, 5140, 5142, 5145,
    5152, 5157, 5160, 5185, 5188, 5190, 5193, 5200, 5202, 5205, 5208, 5217, 5220, 5248, 5250, 5253,
    5256, 5265, 5268, 5280, 5377, 5380, 5382, 5385, 5392, 5394, 5397, 5400, 5409, 5412, 5440, 5442,
    5445, 5448, 5457, 5460, 5472, 5505, 5508, 5520, 5632, 5637, 5640, 5649, 5652, 5664, 5697, 5700,
    5712, 5760, 5802, 6145, 6148, 6150, 6153, 6160, 6165, 6168, 6177, 6208, 6210, 6213, 6216, 6225,
    6228, 6240, 6273, 6276, 6400, 6402, 6405, 6408, 6417, 6420, 6432, 6465, 6468, 6480, 6505, 6562,
    6660, 6672, 6720, 6742, 8192, 8194, 8197, 8200, 8209, 8212, 8214, 8217, 8224, 8229, 8234, 8257,
    8260, 8272, 8274, 8277, 8292, 8320, 8330, 8340, 8362, 8449, 8452, 8464, 8466, 8469, 8481, 8512,
    8514, 8517, 8529, 8532, 8544, 8577, 8580, 8592, 8704, 8714, 8738, 8744, 8746, 8772, 8784, 8840,
    8842, 8872, 9217, 9220, 9222, 9225, 9232, 9237, 9240, 9249, 9252, 9280, 9282, 9285, 9288, 9297,
    9300, 9312, 9345, 9348, 9360, 9472, 9477, 9480, 9489, 9492, 9504, 9537, 9540, 9552, 9574, 9600,
    9729, 9732, 9744, 9792, 9817, 10240, 10245, 10257, 10260, 10305, 10308, 10320, 10378, 10410, 10497, 10500,
    10512, 10645, 10762, 10786, 10852, 10888, 10890, 16385, 16388, 16390, 16393, 16400, 16402, 16405, 16408, 16410,
    16417, 16420, 16422, 16448, 16450, 16453, 16456, 16458, 16465, 16468, 16470, 16473, 16480, 16482, 16485, 16513,
    16516, 16528, 16533, 16536, 16545, 16548, 16640, 16642, 16645, 16648, 16657, 16660, 16662, 16665, 16672, 16674,
    16677, 16705, 16708, 16710, 16713, 16720, 16722, 16725, 16728, 16737, 16740, 16768, 16770, 16773, 16776, 16785,
    16788, 16800, 16897, 16900, 16912, 16914, 16917, 16920, 16932, 16960, 16965, 16968, 16977, 16980, 16992, 17025,
    17028, 17408, 17410, 17413, 17416, 17418, 17425, 17428, 17430, 17433, 17440, 17442, 17445, 17448, 17473, 17476,
    17478, 17481, 17488, 17490, 17493, 17496, 17505, 17508, 17536, 17538, 17541, 17544, 17553, 17556, 17568, 17665,
    17668, 17670, 17673, 17680, 17682, 17685, 17688, 17697, 17700, 17728, 17730, 17733, 17736, 17745, 17748, 17760,
    17770, 17793, 17796, 17808, 17920, 17922, 17925, 17928, 17937, 17940, 17952, 17985, 17988, 18000, 18048, 18085,
    18433, 18436, 18441, 18448, 18450, 18453, 18456, 18465, 18468, 18496, 18498, 18501, 18504, 18513, 18516, 18528,
    18564, 18576, 18688, 18690, 18693, 18696, 18705, 18708, 18720, 18753, 18756, 18768, 18816, 18838, 18945, 18948,
    18960, 19008, 20480, 20482, 20485, 20488, 20497, 20500, 20502, 20505, 20512, 20514, 20517, 20520, 20545, 20548,
    20550, 20553, 20560, 20562, 20565, 20568, 20577, 20580, 20608, 20610, 20613, 20616, 20625, 20628, 20737, 20740,
    20742, 20745, 20752, 20754, 20757, 20760, 20769, 20772, 20800, 20802, 20805, 20808, 20817, 20820, 20832, 20865,
    20868, 20880, 20992, 20997, 21000, 21009, 21012, 21024, 21057, 21060, 21072, 21097, 21120, 21505, 21508, 21510,
    21513, 21520, 21522, 21525, 21528, 21537, 21540, 21568, 21570, 21573, 21576, 21585, 21588, 21600, 21633, 21636,
    21648, 21760, 21762, 21765, 21768, 21777, 21780, 21792, 21825, 21828, 21840, 21888, 22017, 22020, 22032, 22054,
    22080, 22528, 22530, 22533, 22536, 22545, 22548, 22560, 22593, 22596, 22608, 22618, 22656, 22785, 22788, 22800,
    22848, 23040, 23065, 23173, 23208, 24577, 24580, 24582, 24592, 24594, 24597, 24600, 24609, 24612, 24640, 24645,
    24648, 24657, 24660, 24672, 24708, 24720, 24832, 24834, 24837, 24840, 24849, 24852, 24864, 24897, 24900, 24912,
    24960, 24985, 25092, 25104, 25152, 25174, 25249, 25600, 25605, 25608, 25617, 25620, 25632, 25665, 25668, 25680,
    25728, 25857, 25860, 25872, 25920, 25930, 25960, 26002, 26112, 26260, 26625, 26628, 26640, 26725, 26776, 26880,
    26922, 27202, 27297, 32768, 32770, 32773, 32776, 32785, 32788, 32793, 32800, 32805, 32833, 32836, 32848, 32850,
    32853, 32856, 32865, 32896, 32901, 32913, 32916, 33025, 33028, 33033, 33040, 33042, 33045, 33048, 33057, 33060,
    33088, 33090, 33093, 33096, 33105, 33108, 33153, 33156, 33168, 33193, 33280, 33285, 33290, 33297, 33300, 33345,
    33348, 33360, 33793, 33796, 33798, 33801, 33808, 33810, 33813, 33816, 33825, 33856, 33858, 33861, 33864, 33873,
    33876, 33888, 33921, 33924, 33936, 34048, 34050, 34053, 34056, 34065, 34068, 34080, 34113, 34116, 34128, 34176,
    34186, 34305, 34308, 34320, 34345, 34368, 34816, 34821, 34833, 34836, 34881, 34884, 34896, 34978, 35073, 35076,
    35136, 35173, 35362, 35416, 35418, 35458, 35490, 36865, 36868, 36873, 36880, 36882, 36885, 36888, 36900, 36928,
    36930, 36933, 36936, 36945, 36948, 36960, 36993, 36996, 37008, 37120, 37125, 37137, 37140, 37185, 37188, 37200,
    37210, 37377, 37380, 37392, 37440, 37542, 37888, 37890, 37893, 37896, 37905, 37908, 37920, 37953, 37956, 37968,
    38016, 38038, 38145, 38148, 38160, 38208, 38296, 38305, 38400, 38470, 38500, 38913, 38916, 38928, 38950, 38976,
    39081, 39168, 39241, 39250, 39568, 40960, 40965, 40970, 40980, 40994, 41002, 41025, 41028, 41040, 41122, 41130,
    41280, 41317, 41474, 41482, 41506, 41512, 41514, 41602, 41608, 41610, 41640, 41985, 41988, 42000, 42048, 42121,
    42148, 42240, 42265, 42577, 43018, 43048, 43170, 43348, 43398, 43528, 43530, 43552, 43554, 43560, 43656, 43690,
)
# fmt: on
