"""IQ1_S / IQ1_M grid tables: ggml's ``iq2xs_init_impl(GGML_TYPE_IQ1_S)`` (shared by IQ1_M).

The grid is ``kgrid_1bit_2048`` from ggml-quants.c: 2048 compact 16-bit codes, coordinate ``k`` of
point ``j`` being the level ``(code >> 2*k) & 3`` in {0, 1, 2}. ``kmap``/neighbour lists come from the
generic builder in :mod:`._iq2_tables` with ``nwant = 3`` as in ggml.
"""

from __future__ import annotations

import threading

from ._iq2_tables import GridTables, build_grid_tables, cached, load_grid

__all__ = ["KGRID_IQ1S", "NGRID_IQ1S", "iq1_tables"]

NGRID_IQ1S = 2048
_NWANT_IQ1 = 3
# kgrid_1bit_2048 (ggml-quants.c, iq2xs_init_impl), the compact form of iq1s_grid in ggml-common.h.
KGRID_IQ1S = load_grid("kgrid_1bit_2048")

_CACHE: dict[int, GridTables] = {}
_LOCK = threading.Lock()


def iq1_tables() -> GridTables:
    """The IQ1 grid tables (kmap, neighbour lists), built on first use and cached."""
    return cached(_CACHE, _LOCK, NGRID_IQ1S, lambda: build_grid_tables(KGRID_IQ1S, _NWANT_IQ1))
