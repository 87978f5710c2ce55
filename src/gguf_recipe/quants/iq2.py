"""IQ2_XXS, IQ2_XS and IQ2_S: ggml's ``quantize_row_iq2_{xxs,xs,s}_impl`` vectorized over blocks.

Each 256-value super-block is split into sub-blocks (32 values for IQ2_XXS, 16 for IQ2_XS/IQ2_S) and
each sub-block into groups of 8. Signs are stored separately; the 8 magnitudes of a group are snapped
to a grid point (levels 0..2 at positions 1, 3, 5). A sub-block tries a fan of K scales; for each, every
group is rounded to levels and, when that point is off the grid, replaced by the best of its
precomputed grid neighbours (``iq2_find_best_neighbour``). The best scale maximizes sumqx^2/sumq2.

How the work is shared (everything over all sub-blocks of a chunk at once):

* the level codes of all K candidates are computed first (``_codes``); a group's code is monotone in
  the candidate scale, so it takes only ~2 distinct off-grid codes over the K candidates;
* the neighbour search (``_neighbours``) evaluates, for every off-grid (group, candidate), the distance
  of each neighbour up to a per-group constant as ``s*A_j - 2*B_j`` (A_j = sum waux*q^2, B_j = sum
  waux*x*q), with A and B read from small per-group tables (sums over parts of the coordinates; for
  IQ2_S, whose neighbours differ from their code by one level in 1-3 coordinates, the changes of
  one-level moves, so that most of its lists need one table entry per neighbour); the padded
  neighbour lists are gathered once per run of candidates with the same code, evaluated at the
  run's two ends, and only runs whose best neighbour changes go candidate by candidate. Only near ties
  (see ``_neighbours``) take C's exact float32 distance. The lists are laid out (width, runs): the
  minimum, the near-tie count and the winner's row are reductions over the outer axis, and padded slots
  read a +inf sentinel of the tables;
* a candidate whose grid points (and on-grid flags) equal the previous candidate's cannot change the
  outcome, so sumqx/sumq2 and the selection run only on the candidates that changed something;
* C's last rounding at the refined scale reuses the search's pick where that scale lies between two
  adjacent candidates with the same code and the same clearly decided winner (``_reuse_decided``);
  the other groups take the exact search.

Every take here (``ndarray.take``: ``np.take``'s Python wrapper costs ~1 us a call, and a chunk makes
thousands) has indices in range by construction and passes ``mode="clip"``: numpy then
skips its bounds check and, with ``out=``, the copy it otherwise makes first (measured: a gather of
the neighbour search ~20% faster).

Exactness notes: the arithmetic that decides bytes is float32 in C order (no FMA). C's sequential
``sum += ...`` loops are column-by-column adds, starting from ``+0.0`` like C.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from ._iq2_tables import KMAP_SIZE, GridTables, first_min, iq2_tables
from ._numeric import F32Array, U8Array, fp32_to_fp16_bits, nearest_int, seq_sum, take_flat

__all__ = ["quantize_iq2_s", "quantize_iq2_xs", "quantize_iq2_xxs"]

I32Array = npt.NDArray[np.int32]
IntpArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)
GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23, nearest_int's rounding constant
_TENTH = np.float32(0.1)
_INF = np.float32(np.inf)
_TWO = np.float32(2.0)
_FOUR = np.float32(4.0)
# |id*x| below this: the clamped nearest_int(0.5*(id*x - 1)) is (id*x > 2) + (id*x >= 4) (exact)
_Y_SAFE = np.float32(2.0**21)
# (l0 + l1<<8 + l2<<16 + l3<<24) * this has l0 + 4*l1 + 16*l2 + 64*l3 in its top byte (no carries)
_PACK4 = np.uint32(0x01041040)
# grids whose neighbour lists are shorter than this on average use 3-part tables (see _Grid.parts)
_PARTS3_BELOW = 24.0
# padded widths of the neighbour-list buckets grow by these factors (short lists, long lists; measured)
_WIDTH_GROWTH = (1.5, 2.0)
# most competing neighbours a run is evaluated on, candidate by candidate, for long lists (once per
# block, see _pick_lines); short lists (IQ2_S, IQ2_XXS) evaluate those runs on every neighbour: cheaper
# than gathering the members (measured with 4 and 8)
_MAX_LINES = 10
# near-tie margin of the neighbour search, relative to M = sum waux*(5s + |x|)^2 (see _margin_coefs)
_TIE_REL = np.float32(2.0**-16)
_TIE_ABS = np.float32(2.0**-130)
_BIG = np.float32(2.0**84)
_ROWS = np.arange(512, dtype=np.uint16)
# (A, 2B) = (+inf, 0) as one packed table entry, the last of every block's tables: padded neighbour
# slots (_PAD, clipped to it) evaluate to +inf, never a minimum
_SENTINEL = np.array([np.inf, 0.0], dtype=np.float32).view(np.uint64)[0]
_PAD = 1 << 40
# list entries per chunk of the exact search (measured: its passes stay in cache; 2x faster than one
# pass over 500k entries) and its coordinates summed ahead per group (levels 0..3: nb_lo3's code)
_EXACT_SLOTS = 1 << 16
_PREFIX = 4

if sys.byteorder != "little":  # pragma: no cover - the byte packing below assumes little-endian
    raise ImportError("gguf_recipe.quants.iq2 needs a little-endian machine")


@dataclass(frozen=True)
class _Grid:
    """Per-grid arrays derived once from :class:`GridTables` for the vectorized search."""

    tables: GridTables
    look: I32Array  # (KMAP_SIZE,) grid index of a code on the grid, -1 - (neighbour row) otherwise
    canon: I32Array  # (n_grid,) kmap of each grid point's code (what C stores)
    qpos: F32Array  # (8, n_grid) position q = 2*l + 1 of coordinate i of grid point j
    # Neighbour lists in buckets of padded widths: row r lives in bucket[r] at position slot[r]; there
    # nbp[b] (rows, W) holds its grid indices, padded with the row's first neighbour, and hcode[b]
    # (D, W, rows) the positions in a group's table of the D entries whose (A, 2B) sum to the
    # neighbour's (see part_mat); padded slots of part 0 hold _PAD: past every table, the clipped
    # gather reads the sentinel (A = +inf) at its end, so they never win nor tie.
    bucket: npt.NDArray[np.int8]
    slot: I32Array
    widths: tuple[int, ...]
    nbp: tuple[I32Array, ...]
    hcode: tuple[I32Array, ...]
    parts: int  # a group's table covers its coordinates in this many parts of ceil(8 / parts)
    # (2c, 2 * entries): [waux, waux*x] of c coordinates -> (A, 2B) of each table entry. Either every
    # base-3 code of the part's levels (the neighbour's A and 2B are the sum over its parts) or, where
    # every neighbour differs from its code by one level in a few coordinates (IQ2_S), the change of
    # (A, 2B) of each such one-level move: the neighbour's A and 2B up to the code's own, the same
    # for every neighbour of the list (see :func:`_move_codes`).
    part_mat: F32Array
    tcode_t: I32Array  # (8, total): i * 3 + level_i of the grid point at flat neighbour entry e
    block: int  # groups per neighbour-search block (measured: long lists want smaller blocks)
    max_lines: int  # see _MAX_LINES

    @property
    def stride(self) -> int:
        """Entries of a group's table."""
        return self.parts * int(self.part_mat.shape[1]) // 2


def _block_groups(mean_count: float) -> int:
    """Groups per neighbour-search block (measured): longer lists, more table per group, smaller blocks."""
    return 16384 if mean_count < 12 else 4096 if mean_count < 24 else 2048


def _first_width(mean_count: float) -> int:
    """Padded width of the narrowest neighbour-list bucket (measured): a bucket costs ~60 numpy calls per
    block, more than padding its few short lists to the next width costs where those lists are rare."""
    return 6 if mean_count < 12 else 9 if mean_count < 24 else 4


def _bucket_widths(cnt: I32Array, first: int, growth: float) -> list[int]:
    """Padded widths covering lists of lengths ``cnt``: ``first``, then growing by ``growth``."""
    widths: list[int] = []
    w = first
    while True:
        widths.append(min(w, int(cnt.max())))
        if w >= cnt.max():
            return widths
        w = max(w + 1, round(w * growth))


_ZERO_MOVE = 32  # a group's move table: 4 moves (0->1, 1->0, 1->2, 2->1) per coordinate, then 0


def _move_codes(t: GridTables, lv: I32Array) -> I32Array | None:
    """Where every neighbour differs from its list's code by one level in each coordinate it changes:
    (total, D) positions ``4*i + move`` of those changes in a group's move table, padded with the
    zero entry (D: most coordinates any neighbour changes). None for grids where that does not hold."""
    rowof = np.repeat(np.arange(t.nb_count.size), t.nb_count)
    ul = (t.nb_codes[rowof, None] >> (2 * np.arange(8))) & 3
    nl = lv[t.nb_flat]
    d = nl - ul
    if np.abs(d).max() > 1:
        return None
    ch = d != 0
    nch = ch.sum(axis=1)
    e, i = np.nonzero(ch)
    # move: 0 for 0->1, 1 for 1->0, 2 for 1->2, 3 for 2->1
    mv = 2 * np.minimum(ul[e, i], nl[e, i]) + (nl[e, i] < ul[e, i])
    moves = np.full((nch.size, int(nch.max())), _ZERO_MOVE, dtype=np.int64)
    moves[e, np.arange(e.size) - (np.cumsum(nch) - nch)[e]] = 4 * i + mv
    return moves


def _move_mat() -> F32Array:
    """``part_mat`` of the move tables: the change of A = sum waux*q^2 and 2B = 2*sum waux*x*q of each
    one-level move (q = 2*l + 1); the factors are powers of two, so each entry is waux or waux*x
    scaled exactly."""
    out = np.zeros((16, 2 * (_ZERO_MOVE + 1)), dtype=np.float32)
    for i in range(8):
        for mv, (da, db2) in enumerate(((8, 4), (-8, -4), (16, 4), (-16, -4))):
            out[i, 2 * (4 * i + mv)] = da
            out[8 + i, 2 * (4 * i + mv) + 1] = db2
    return out


@cache
def _grid(name: str) -> _Grid:
    t = iq2_tables(name)
    lv = t.grid_levels.astype(np.int32)
    look = np.zeros(KMAP_SIZE, dtype=np.int32)
    has = t.nb_row >= 0
    look[has] = -1 - t.nb_row[has]
    on = t.kmap >= 0
    look[on] = t.kmap[on]
    canon = t.kmap[t.grid_codes.astype(np.int64)].astype(np.int32)
    qpos = np.ascontiguousarray((2 * lv + 1).T, dtype=np.float32)
    cnt = t.nb_count
    short = float(cnt.mean()) < _PARTS3_BELOW
    growth = _WIDTH_GROWTH[0] if short else _WIDTH_GROWTH[1]
    first = _first_width(float(cnt.mean()))
    moves = _move_codes(t, lv)
    if moves is not None:
        # one table entry per changed coordinate; lists whose neighbours change one coordinate each
        # (most of IQ2_S's) get buckets of their own with one entry per neighbour
        parts = 1
        part_mat = _move_mat()
        pcodes = np.ascontiguousarray(moves.T)
        single = moves[t.nb_start, 1] == _ZERO_MOVE if moves.shape[1] > 1 else np.ones(cnt.size, np.bool_)
        classes = [(single, 1), (~single, moves.shape[1])]
    else:
        # short lists (IQ2_XXS): three parts (3, 3 and 2 coordinates) measured faster than four of 2
        # (a gather less per neighbour) or two of 4 (81-entry parts, a bigger table)
        parts = 3 if short else 2
        per = -(-8 // parts)
        n_codes = 3**per
        pow3 = 3 ** np.arange(per)
        lvp = np.zeros((t.nb_flat.size, parts * per), dtype=np.int32)
        lvp[:, :8] = lv[t.nb_flat]
        pcodes = (lvp.reshape(-1, parts, per) @ pow3).T + n_codes * np.arange(parts)[:, None]
        digits = (np.arange(n_codes)[:, None] // pow3[None, :]) % 3  # (n_codes, per)
        q = 2 * digits + 1
        part_mat = np.zeros((2 * per, 2 * n_codes), dtype=np.float32)
        for c in range(per):
            part_mat[c, 0::2] = q[:, c] * q[:, c]
            part_mat[per + c, 1::2] = 2 * q[:, c]
        classes = [(np.ones(cnt.size, np.bool_), parts)]
    widths: list[int] = []
    depth: list[int] = []
    bucket = np.zeros(cnt.size, dtype=np.int8)
    for member, d in classes:
        if not member.any():
            continue
        ws = _bucket_widths(cnt[member], first, growth)
        bucket[member] = len(widths) + np.searchsorted(np.array(ws), cnt[member])
        widths += ws
        depth += [d] * len(ws)
    slot = np.arange(t.nb_padded.shape[1])[None, :]
    flat_pad = t.nb_start[:, None] + np.where(slot < cnt[:, None], slot, 0)
    slot_of = np.zeros(cnt.size, dtype=np.int32)
    nbp_l: list[I32Array] = []
    hcode_l: list[I32Array] = []
    for bi, (w, d) in enumerate(zip(widths, depth, strict=True)):
        rows = np.flatnonzero(bucket == bi)
        slot_of[rows] = np.arange(rows.size)
        fp = flat_pad[rows, :w]
        nbp_l.append(np.ascontiguousarray(t.nb_flat[fp], dtype=np.int32))
        pc = pcodes[:d, fp].transpose(0, 2, 1)  # (d, w, rows)
        pc[0][(np.arange(w)[:, None] >= cnt[rows][None, :])] = _PAD
        hcode_l.append(np.ascontiguousarray(pc, dtype=np.intp))
    tcode = np.arange(8, dtype=np.int32)[:, None] * 3 + lv[t.nb_flat].T
    return _Grid(
        t,
        look,
        canon,
        qpos,
        bucket,
        slot_of,
        tuple(widths),
        tuple(nbp_l),
        tuple(hcode_l),
        parts,
        part_mat,
        np.ascontiguousarray(tcode, dtype=np.int32),
        _block_groups(float(cnt.mean())),
        2 if short else _MAX_LINES,
    )


def _level_bytes(y: F32Array, safe: bool | None = None, out: U8Array | None = None) -> U8Array:
    """C's ``MAX(0, MIN(2, nearest_int(0.5f*(y - 1))))`` as uint8, same shape as y (into ``out``).
    ``safe``: the caller knows every |y| < _Y_SAFE (no NaN); None checks."""
    if safe is None:
        safe = bool(y.size and y.min() > -_Y_SAFE and y.max() < _Y_SAFE)
    if safe:
        if out is None:
            out = np.empty(y.shape, dtype=np.uint8)
        np.greater(y, _TWO, out=out.view(np.bool_))
        out += np.greater_equal(y, _FOUR).view(np.uint8)
        return out
    # NaN or huge values: nearest_int's bit trick, exactly as C evaluates it
    return np.clip(nearest_int(_HALF * (y - _F1)), 0, 2).astype(np.uint8)


def _codes(lv: U8Array, out: I32Array | None = None) -> I32Array:
    """Grid codes u = sum(l[i] << 2*i) of (n, 8) contiguous uint8 levels (into ``out``, (n,))."""
    v = lv.reshape(-1, 8).view(np.uint32)  # (n, 2): levels 0..3 and 4..7, one byte each
    v = v * _PACK4
    # the top byte of each product is its half's code: the two top bytes, low half first, are u
    u = np.ascontiguousarray(v.view(np.uint8)[:, 3::4]).view(np.uint16)[:, 0]
    if out is None:
        return u.astype(np.int32)
    np.copyto(out, u)
    return out


def _d2_terms(g: _Grid, xval: F32Array, waux: F32Array, scale: F32Array) -> F32Array:
    """The 8 terms ``waux[i]*diff*diff`` of ``iq2_find_best_neighbour``'s d2 depend only on (group,
    coordinate, level): (n, 8, 3), each computed exactly as C does."""
    terms = np.empty((xval.shape[0], 8, 3), dtype=np.float32)
    for lvl in range(3):
        diff = scale[:, None] * np.float32(2 * lvl + 1) - xval
        terms[:, :, lvl] = (waux * diff) * diff
    return terms


def _prefix_sums(terms: F32Array, n_pre: int) -> F32Array:
    """C's running d2 after the first ``n_pre`` coordinates, for every combination of their levels:
    (3**n_pre, n) with row ``l0 + 3*l1 + 9*l2 + ...`` holding ``((0 + t0[l0]) + t1[l1]) + ...``, the
    same float32 adds in the same order as C's loop."""
    n = terms.shape[0]
    tt = np.ascontiguousarray(terms.transpose(1, 2, 0))  # (8, 3, n): whole-row adds below
    acc: F32Array = tt[0] + _F0  # (3, n); +0.0 first like C (a -0.0 term becomes +0.0)
    for i in range(1, n_pre):
        nxt = np.empty((3, acc.shape[0], n), dtype=np.float32)
        for lvl in range(3):
            np.add(acc, tt[i, lvl], out=nxt[lvl])
        acc = nxt.reshape(-1, n)
    return acc


def _exact_neighbour(g: _Grid, rows: I32Array, terms: F32Array) -> I32Array:
    """Exact ``iq2_find_best_neighbour``: sequential float32 d2 over every list entry, first minimum.
    The running sum over the first ``_PREFIX`` coordinates is read from :func:`_prefix_sums` (one gather
    per entry instead of four). Groups go in chunks of about ``_EXACT_SLOTS`` list entries, so that
    every pass over them stays in cache."""
    t = g.tables
    n = rows.shape[0]
    out = np.zeros(n, dtype=np.int32)
    if n == 0:
        return out
    cnt = t.nb_count[rows]
    ends = np.cumsum(cnt, dtype=np.int64)
    cuts = np.searchsorted(ends, np.arange(_EXACT_SLOTS, int(ends[-1]), _EXACT_SLOTS))
    a = 0
    for b in [*cuts.tolist(), n]:
        if b > a:
            out[a:b] = _exact_chunk(g, rows[a:b], cnt[a:b], terms[a:b])
        a = b
    return out


def _exact_chunk(g: _Grid, rows: I32Array, cnt: I32Array, terms: F32Array) -> I32Array:
    t = g.tables
    n = rows.shape[0]
    seg = np.cumsum(cnt, dtype=np.int64) - cnt
    total = int(seg[-1] + cnt[-1])
    flat = (take_flat(t.nb_start, rows) - seg).repeat(cnt) + np.arange(total, dtype=np.int32)
    gid = np.arange(n, dtype=np.int32).repeat(cnt)
    pre = _prefix_sums(terms, _PREFIX)
    d2 = pre.reshape(-1).take(t.nb_lo3.take(flat, mode="clip") * n + gid, mode="clip")
    base = gid * 24
    tflat = terms.reshape(-1)
    for i in range(_PREFIX, 8):
        d2 += tflat.take(g.tcode_t[i].take(flat, mode="clip") + base, mode="clip")
    # C's `d2 < best` never picks a NaN; a group without a finite distance takes its first neighbour
    first = first_min(np.where(np.isnan(d2), _INF, d2), seg)
    out: I32Array = take_flat(t.nb_flat, take_flat(flat, first))
    return out


def _margin_coefs(xv: F32Array, wa: F32Array) -> F32Array:
    """Per group (n, 8): (a0, a1, a2) with ``a0*s + a1 + a2/s`` the near-tie margin of :func:`_neighbours`
    at scale s -> (n, 3).

    C's d2 of a neighbour and the exact real distance D differ by at most ~13u*M (u = 2**-24, M =
    sum waux*(5s + |x|)^2 bounds every term; float32 products and a sequential sum of 8 non-negative
    terms), and D = s*(s*A - 2B) + const, whose float32 evaluation here is within ~15u*M (with move
    tables A and 2B are changes from the list's code: exact entries but for waux*x, at most 3 summed,
    s*|A| + 2|B| <= M/s, so within ~6u*M). A neighbour whose estimate exceeds the smallest by more
    than 2**-16 * M / s therefore also has a larger d2 in C. Underflow adds an absolute error, covered
    by a 2**-130 * (1 + s^2 + 6s + X + W0) slack (W0 = sum waux, X = max |x|)."""
    ax = np.abs(xv)
    wax = wa * ax
    wax2 = wax * ax
    # column by column: numpy's reductions over 8-value rows are slow
    w0, w1, w2, xm = wa[:, 0].copy(), wax[:, 0].copy(), wax2[:, 0].copy(), ax[:, 0].copy()
    for c in range(1, 8):
        w0 += wa[:, c]
        w1 += wax[:, c]
        w2 += wax2[:, c]
        np.maximum(xm, ax[:, c], out=xm)
    out = np.empty((xv.shape[0], 3), dtype=np.float32)
    out[:, 0] = np.float32(25) * _TIE_REL * w0 + _TIE_ABS
    out[:, 1] = np.float32(10) * _TIE_REL * w1 + np.float32(6) * _TIE_ABS
    out[:, 2] = _TIE_REL * w2 + _TIE_ABS * (_F1 + xm + w0)
    return out


def _part_tables(g: _Grid, xv: F32Array, wa: F32Array) -> npt.NDArray[np.uint64]:
    """Per group: (A, 2B) of every table entry of each part (see ``_Grid.part_mat``), packed as one
    uint64 (two float32) per entry, group-major, then the sentinel: (n * g.stride + 1,)."""
    n = xv.shape[0]
    per = -(-8 // g.parts)
    lhs = np.empty((n, g.parts, 2 * per), dtype=np.float32)
    if g.parts * per == 8:
        lhs[:, :, :per] = wa.reshape(n, g.parts, per)
        np.multiply(wa.reshape(n, g.parts, per), xv.reshape(n, g.parts, per), out=lhs[:, :, per:])
    else:
        # uneven parts: the last is padded with coordinates of zero weight, which add exactly 0
        pad = np.zeros((2, n, g.parts * per), dtype=np.float32)
        pad[0, :, :8] = wa
        np.multiply(wa, xv, out=pad[1, :, :8])
        lhs[:, :, :per] = pad[0].reshape(n, g.parts, per)
        lhs[:, :, per:] = pad[1].reshape(n, g.parts, per)
    lhs2 = lhs.reshape(n * g.parts, 2 * per)
    flat = np.empty(n * g.stride + 1, dtype=np.uint64)
    flat[-1] = _SENTINEL
    tab = flat[:-1].view(np.float32).reshape(n * g.parts, g.part_mat.shape[1])
    # OpenBLAS runs a gemm single-threaded when M*N*K <= 65536 * 4; larger calls fan out to every
    # core, which for these small products costs more than it gains and fights quantize's threads.
    rows = max(1, (65536 * 4) // g.part_mat.size)
    for a in range(0, lhs2.shape[0], rows):
        np.matmul(lhs2[a : a + rows], g.part_mat, out=tab[a : a + rows])
    return flat


def _pick(a: F32Array, b2: F32Array, s: F32Array, thr: F32Array) -> tuple[F32Array, IntpArray, BoolArray]:
    """``a*s - b2`` per column (width, m), the row of its smallest entry, and whether another entry is
    within ``thr`` of it (or anything is NaN). Padded slots hold +inf. Where that flag is clear the
    minimum is unique; elsewhere the row returned is only some valid row."""
    est = a * s
    est -= b2
    width = est.shape[0]
    lim = np.minimum.reduce(est, axis=0)  # a NaN anywhere makes lim NaN: counted as bad below
    small = np.uint8 if width < 255 else np.uint16
    hit = np.less_equal(est, lim + thr).view(np.uint8)
    close = np.add.reduce(hit, axis=0, dtype=small)
    # where close == 1 the one entry within the margin is the minimum: its row is the sum of row * hit
    j = np.add.reduce(hit * _ROWS[:width, None].astype(small), axis=0, dtype=small)
    jj: IntpArray = np.minimum(j, width - 1).astype(np.intp)
    # a NaN minimum or limit counts nothing: never 1
    return est, jj, close != 1


def _pick_lines(
    lines_l: list[tuple[npt.NDArray[np.uint64], I32Array, npt.NDArray[np.uint16], IntpArray, IntpArray]],
    es: F32Array,
    thr: F32Array,
) -> tuple[IntpArray, I32Array, BoolArray]:
    """:func:`_pick` for runs on their few competing neighbours ("lines") alone. Each item of
    ``lines_l`` holds the members' packed (A, 2B) and grid points, run by run, with each run's member
    count and first and last entry. Returns the entries, their grid points and where the pick is not
    clear. Short member lists are padded with a sentinel (A = +inf): never a minimum, never close."""
    vals, gpts, cnt_l, first_l, last_l = (np.concatenate(c) for c in zip(*lines_l, strict=True))
    cnt = cnt_l.astype(np.intp)
    n_p, n_m = cnt.size, vals.size
    n_col = int(cnt.max())
    run = np.arange(n_p).repeat(cnt)
    rank = np.arange(n_m) - (np.cumsum(cnt) - cnt).repeat(cnt)
    mi = np.full(n_col * n_p, n_m, dtype=np.intp)  # member number by (rank, run); padding: the sentinel
    mi[rank * n_p + run] = np.arange(n_m)
    mt = np.append(vals, _SENTINEL)
    loc, eb = _run_entries(first_l, last_l)
    n_e = eb.size
    ev = mi.reshape(n_col, n_p).take(loc, axis=1, mode="clip")  # (n_col, entries)
    ab = mt.take(ev, mode="clip").view(np.float32)
    _, j, bad = _pick(ab[:, 0::2], ab[:, 1::2], take_flat(es, eb), take_flat(thr, eb))
    pick = ev.reshape(-1).take(j * n_e + np.arange(n_e), mode="clip")
    return eb, np.append(gpts, 0).take(pick, mode="clip"), bad


def _run_entries(first: IntpArray, last: IntpArray) -> tuple[IntpArray, IntpArray]:
    """For runs of entries ``first[r]..last[r]``: the run of every entry and the entry itself."""
    cnt = last - first + 1
    loc = np.arange(first.size).repeat(cnt)
    return loc, (first - cnt.cumsum() + cnt).repeat(cnt) + np.arange(loc.size)


def _neighbours(
    g: _Grid, codes: I32Array, sc: F32Array, xv: F32Array, wa: F32Array
) -> tuple[I32Array, BoolArray, BoolArray]:
    """Grid point of every (group, candidate): codes/sc (n, K), xv/wa (n, 8). Returns grid indices
    (n, K) (``iq2_find_best_neighbour`` where the code is off the grid), the on-grid mask and the
    off-grid entries decided by a clear margin (not by the exact path; see :func:`_reuse_decided`).

    For an off-grid entry with scale s, neighbour j's d2 is ``s*E_j + sum waux*x^2`` with
    E_j = s*A_j - 2*B_j (real arithmetic). E is evaluated in float32 for every padded neighbour; the
    smallest decides unless another neighbour is within the margin of :func:`_margin_coefs`, where C's
    float32 rounding could order them differently: those entries (near and exact ties, non-finite or
    extreme values) take C's exact sequential d2 (``_exact_neighbour``).

    The candidates of one (group, code) pair -- a run -- are consecutive and share the neighbour list,
    which is gathered once. Each E_j is linear in s, so a neighbour that is the clear minimum (by the
    margin) at the run's smallest and largest scale is the clear minimum at every scale in between (the
    margin changes by less than the ratio of those scales, < 1.5, far inside its slack). When the ends
    have different clear minima j0 and j1, only the neighbours within the margin of j1 at the first end
    and of j0 at the last can win in between (the others are beaten by j0 or j1 all along): runs with
    at most ``g.max_lines`` of those are evaluated on them alone, candidate by candidate, the rest on
    every neighbour. The scales along a row of ``sc`` must be monotone, spanning a ratio below 1.5.
    """
    n, k_n = codes.shape
    look = take_flat(g.look, codes)
    on = look >= 0
    gi = look
    coefs = _margin_coefs(xv, wa)
    clear: BoolArray = ~on  # cleared below where the exact path decides
    for a in range(0, n, g.block):
        b = min(n, a + g.block)
        lk = look[a:b].reshape(-1)
        ent = (lk < 0).nonzero()[0]
        if ent.size == 0:
            continue
        cd = codes[a:b]
        new = ~on[a:b]
        new[:, 1:] &= cd[:, 1:] != cd[:, :-1]
        newf = new.reshape(-1)
        pstart = newf.nonzero()[0]
        efirst = newf[ent].nonzero()[0]  # entry index of each pair's first candidate
        elast = np.empty_like(efirst)
        elast[:-1] = efirst[1:] - 1
        elast[-1] = ent.size - 1
        pgrp = pstart // k_n
        prow = -1 - take_flat(lk, pstart)
        egrp = ent // k_n
        es = take_flat(sc[a:b].reshape(-1), ent)
        cf = coefs.take(a + egrp, axis=0, mode="clip")
        thr = cf[:, 0] * es
        thr += cf[:, 1]
        thr += cf[:, 2] / es
        # outside this range the error bound does not hold (overflow): exact path
        bad_e = ~((thr < _BIG) & (thr * es < _BIG))
        tab = _part_tables(g, xv[a:b], wa[a:b])
        stride = g.stride
        pres = np.full(pstart.size, -1, dtype=np.int32)  # grid point of each decided pair
        res = np.full(ent.size, -1, dtype=np.int32)  # -1 where the pair's pick (pres) decides
        amb_l: list[IntpArray] = []
        lines_l: list[
            tuple[npt.NDArray[np.uint64], I32Array, npt.NDArray[np.uint16], IntpArray, IntpArray]
        ] = []
        pbk = take_flat(g.bucket, prow)
        for bi, width in enumerate(g.widths):
            pl = (pbk == bi).nonzero()[0]
            if pl.size == 0:
                continue
            rows_b = take_flat(g.slot, take_flat(prow, pl))
            nbp = g.nbp[bi]
            # (parts, width, pairs): every neighbour of a pair is a column entry, pairs run along rows
            idx = g.hcode[bi].take(rows_b, axis=2, mode="clip")
            idx += pgrp[pl] * stride
            ab = tab.take(idx, mode="clip").view(np.float32).reshape(idx.shape[0], width, pl.size, 2)
            ab_sum = ab[0] if ab.shape[0] == 1 else ab[0] + ab[1]
            for part in range(2, ab.shape[0]):
                ab_sum += ab[part]
            av = ab_sum[:, :, 0]
            b2 = ab_sum[:, :, 1]
            f, la = take_flat(efirst, pl), take_flat(elast, pl)
            est0, j0, bad0 = _pick(av, b2, take_flat(es, f), take_flat(thr, f))
            if k_n == 1:  # one candidate per run: both ends are the same entry
                est1, j1, bad1 = est0, j0, bad0
            else:
                est1, j1, bad1 = _pick(av, b2, take_flat(es, la), take_flat(thr, la))
            ends = ~(bad0 | bad1 | take_flat(bad_e, f) | take_flat(bad_e, la))
            dec = ends & (j0 == j1)
            nbp_flat = nbp.reshape(-1)
            rw = rows_b * width
            pres[pl] = np.where(dec, nbp_flat.take(rw + j0, mode="clip"), -1)
            # Different clear minima j0, j1 at the two ends: a neighbour that is not within the margin
            # of j1's value at the small scale or of j0's at the large one is beaten by j0 or j1 by the
            # margin all along, so in between only the few that are ("lines") compete.
            two = (ends & (j0 != j1)).nonzero()[0]
            if two.size:
                t0, t1 = j0[two], j1[two]
                lim0 = est0[t1, two] + thr[f[two]]
                lim1 = est1[t0, two] + thr[la[two]]
                inset = est0.take(two, axis=1, mode="clip") <= lim0
                inset &= est1.take(two, axis=1, mode="clip") <= lim1
                n_in = np.add.reduce(inset.view(np.uint8), axis=0, dtype=np.uint16)
                # only j0 and j1: the sign of the difference of the two lines decides
                only2 = n_in == 2
                p2 = two[only2]
                if p2.size:
                    t0, t1 = t0[only2], t1[only2]
                    # the two lines' packed (A, 2B), pair by pair, then entry by entry
                    abu = ab_sum.view(np.uint64).reshape(-1)
                    line0, line1 = take_flat(abu, t0 * pl.size + p2), take_flat(abu, t1 * pl.size + p2)
                    loc, eb = _run_entries(f[p2], la[p2])
                    ln0, ln1 = take_flat(line0, loc).view(np.float32), take_flat(line1, loc).view(np.float32)
                    se = take_flat(es, eb)
                    d = ln1[0::2] * se - ln1[1::2]
                    d -= ln0[0::2] * se - ln0[1::2]
                    g1 = nbp_flat.take(rw[p2] + t1, mode="clip").take(loc, mode="clip")
                    g0 = nbp_flat.take(rw[p2] + t0, mode="clip").take(loc, mode="clip")
                    res[eb] = np.where(d < 0, g1, g0)
                    bad = ~(np.abs(d) > take_flat(thr, eb)) | take_flat(bad_e, eb)
                    if bad.any():
                        amb_l.append(eb[bad])
                    dec[p2] = True
                few = (n_in > 2) & (n_in <= g.max_lines)
                p2 = two[few]
                if p2.size:
                    # the members' (A, 2B) and grid points now; evaluated once per block below
                    rr, cc = np.nonzero(inset[:, few].T)  # pair by pair, rows ascending
                    pr = take_flat(p2, rr)
                    abu = ab_sum.view(np.uint64).reshape(-1)
                    lines_l.append(
                        (
                            abu.take(cc * pl.size + pr, mode="clip"),
                            nbp_flat.take(take_flat(rw, pr) + cc, mode="clip"),
                            n_in[few],
                            take_flat(f, p2),
                            take_flat(la, p2),
                        )
                    )
                    dec[p2] = True
            und = (~dec).nonzero()[0]
            if und.size == 0:
                continue
            # candidate by candidate for the remaining pairs
            loc, eb = _run_entries(f[und], la[und])
            loc = und[loc]
            ab_e = (
                ab_sum.view(np.uint64)[:, :, 0].take(loc, axis=1, mode="clip").view(np.float32)
            )  # (A, 2B) pairs
            _, j, bad = _pick(ab_e[:, 0::2], ab_e[:, 1::2], take_flat(es, eb), take_flat(thr, eb))
            res[eb] = take_flat(nbp_flat, take_flat(rw, loc) + j)
            bad |= take_flat(bad_e, eb)
            if bad.any():
                amb_l.append(eb[bad])
        if lines_l:
            eb, gl, bad = _pick_lines(lines_l, es, thr)
            res[eb] = gl
            bad |= take_flat(bad_e, eb)
            if bad.any():
                amb_l.append(eb[bad])
        dec_e = pres.repeat(elast - efirst + 1)
        np.maximum(res, dec_e, out=res)  # one of the two is -1
        if amb_l:
            amb = np.concatenate(amb_l)
            clear[a:b].reshape(-1)[ent[amb]] = False
            ga = a + egrp[amb]
            terms = _d2_terms(g, xv[ga], wa[ga], es[amb])
            res[amb] = _exact_neighbour(g, prow[np.searchsorted(efirst, amb, side="right") - 1], terms)
        gi[a:b].reshape(-1)[ent] = res
    return gi, on, clear


@dataclass(frozen=True)
class _Fit:
    """What the scale search hands to :func:`_refit`: w*xval and w value-major (S, values); the
    candidates' scales (K, S), codes, grid points and clear flags (n, K) (see :func:`_neighbours`)."""

    wx_t: F32Array
    w_t: F32Array
    scs: F32Array
    codes: I32Array
    gi: I32Array
    clear: BoolArray


def _sub_sums(
    g: _Grid, wx_t: F32Array, w_t: F32Array, sb: IntpArray, gi_t: I32Array
) -> tuple[F32Array, F32Array]:
    """C's sequential ``sumqx += w*xval*q; sumq2 += w*q*q`` over a sub-block, for m (sub-block, grid
    points) entries: wx_t/w_t (values, S) hold w*xval and w value-major; sb (m,), gi_t (groups, m)."""
    m = sb.shape[0]
    sx = np.zeros(m, dtype=np.float32)
    sq = np.zeros(m, dtype=np.float32)
    q = np.empty(m, dtype=np.float32)
    t = np.empty(m, dtype=np.float32)
    for grp in range(gi_t.shape[0]):
        gcol = np.ascontiguousarray(gi_t[grp])
        for c in range(8):
            i = 8 * grp + c
            g.qpos[c].take(gcol, out=q, mode="clip")
            wx_t[i].take(sb, out=t, mode="clip")
            t *= q
            sx += t
            w_t[i].take(sb, out=t, mode="clip")
            t *= q
            t *= q
            sq += t
    return sx, sq


def _scale_search(
    g: _Grid,
    xv: F32Array,
    w: F32Array,
    wa: F32Array,
    denom: F32Array,
    is_range: range,
    scale: F32Array,
    track_on: bool,
) -> tuple[F32Array, I32Array, BoolArray, _Fit]:
    """The ``for (is ...)`` loop shared by the three types.

    xv/w/wa (S, ng, 8); candidate inverse scales ``(5 + is*0.1f)/denom``. Returns the scale, grid
    points (S, ng) and on-grid flags (S, ng) of the best candidate (the initial scale, grid point of
    all-zero levels and "on the grid" where none wins), and what :func:`_refit` reuses.
    With ``track_on`` the on-grid flags are part of what a candidate changes (IQ2_XS/IQ2_S keep them).
    """
    n_sb, ng = xv.shape[:2]
    n_k = len(is_range)
    n = n_sb * ng
    xs = xv.reshape(n_sb, ng * 8)
    ids = np.empty((n_k, n_sb), dtype=np.float32)
    for k, is_ in enumerate(is_range):
        np.divide(np.float32(5) + np.float32(is_) * _TENTH, denom, out=ids[k])
    scs = _F1 / ids
    codes = np.empty((n, n_k), dtype=np.int32)
    y = np.empty(xs.shape, dtype=np.float32)
    lvb = np.empty(xs.shape, dtype=np.uint8)
    # float products are monotone in each non-negative factor: one bound covers every candidate
    safe = bool(np.abs(xs).max(initial=_F0) * ids.max(initial=_F0) < _Y_SAFE) and bool(
        ids.min(initial=_F0) >= 0
    )
    for k in range(n_k):
        # a same-shape product: numpy's broadcast over rows of ng*8 values is ~3x slower
        np.multiply(np.repeat(ids[k], ng * 8).reshape(xs.shape), xs, out=y)
        _codes(_level_bytes(y, safe if safe else None, lvb), codes[:, k])
    sc = np.repeat(scs.T, ng, axis=0)
    gi, on, clear = _neighbours(g, codes, sc, xv.reshape(n, 8), wa.reshape(n, 8))
    gi3 = gi.reshape(n_sb, ng, n_k)
    on3 = on.reshape(n_sb, ng, n_k)
    # a candidate with the same grid points (and flags) as the one before cannot change the outcome
    change = np.ones((n_k, n_sb), dtype=np.bool_)
    # grid indices are < 2**16: one key holds the grid point and the on-grid flag
    key = (gi | (on.view(np.uint8).astype(np.int32) << 16) if track_on else gi).reshape(n_sb, ng, n_k)
    diff = key[:, :, 1:] != key[:, :, :-1]
    chg = diff[:, 0].copy()
    for grp in range(1, ng):
        chg |= diff[:, grp]
    change[1:] = chg.T
    flat = np.flatnonzero(change)
    ke = flat // n_sb
    sbe = flat - ke * n_sb
    bounds = np.searchsorted(ke, np.arange(n_k + 1))
    wx_t = np.ascontiguousarray((w * xv).reshape(n_sb, -1).T)
    w_t = np.ascontiguousarray(w.reshape(n_sb, -1).T)
    # the grid points of every changed (sub-block, candidate): flat takes, not 3-D fancy indexing
    at = (sbe * (ng * n_k) + ke) + (np.arange(ng) * n_k)[:, None]  # (ng, m): long rows
    sumqx, sumq2 = _sub_sums(g, wx_t, w_t, sbe, take_flat(gi.reshape(-1), at))
    best = np.zeros(n_sb, dtype=np.float32)
    kbest = np.full(n_sb, -1, dtype=np.int64)
    for k in range(n_k):
        lo, hi = bounds[k], bounds[k + 1]
        if lo == hi:
            continue
        sb = sbe[lo:hi]
        sx = sumqx[lo:hi]
        sq = sumq2[lo:hi]
        take = (sq > 0) & (sx * sx > best[sb] * sq)
        if take.any():
            tsb = sb[take]
            new_scale = sx[take] / sq[take]
            scale[tsb] = new_scale
            best[tsb] = new_scale * sx[take]
            kbest[tsb] = k
    taken = kbest >= 0
    kb = np.maximum(kbest, 0)
    r = np.arange(n_sb)
    gi_best = np.where(taken[:, None], gi3[r, :, kb], g.look[0]).astype(np.int32)
    on_best = np.where(taken[:, None], on3[r, :, kb], True)
    return scale, gi_best, on_best, _Fit(wx_t, w_t, scs, codes, gi, clear)


def _reuse_decided(
    gnew: I32Array, off: IntpArray, rg: IntpArray, ng: int, sp: F32Array, codes: I32Array, fit: _Fit
) -> IntpArray:
    """Off-grid refit groups whose neighbour search the scale search already settled: the refit scale
    lies between two adjacent candidates' scales whose code is the refit's code and whose run was
    decided by its ends (a clear minimum at both ends is the clear minimum all along, see
    :func:`_neighbours`). Their grid points go into ``gnew``; returns the others."""
    grp = rg[off]
    s_o = sp[off]
    n_k = fit.scs.shape[0]
    if n_k < 2:
        return off
    # candidate scales fall with k: k such that scs[k] >= s > scs[k + 1] (NaN: none)
    sb = grp // ng
    k = np.zeros(grp.size, dtype=np.uint8)
    for kk in range(n_k):  # one candidate at a time: a (K, m) gather of the scales costs more
        k += np.greater_equal(fit.scs[kk].take(sb, mode="clip"), s_o).view(np.uint8)
    inside = (k >= 1) & (k < n_k)
    # flat (group, candidate) position of k (clipped into range; `inside` says where it is real)
    pos = grp * n_k + np.clip(k.astype(np.intp) - 1, 0, n_k - 2)
    codes_f, clear_f, gi_f = fit.codes.reshape(-1), fit.clear.reshape(-1), fit.gi.reshape(-1)
    c0 = codes_f.take(pos, mode="clip")
    pos += 1
    ok = inside & (c0 == codes[off]) & (codes_f.take(pos, mode="clip") == c0)
    ok &= clear_f.take(pos, mode="clip")
    g1 = gi_f.take(pos, mode="clip")
    pos -= 1
    ok &= clear_f.take(pos, mode="clip")
    g0 = gi_f.take(pos, mode="clip")
    ok &= g0 == g1
    gnew[off[ok]] = g0[ok]
    rest: IntpArray = off[~ok]
    return rest


def _refit(
    g: _Grid, xv: F32Array, wa: F32Array, scale: F32Array, gi: I32Array, redo: BoolArray, fit: _Fit
) -> None:
    """C's last rounding: the groups in ``redo`` (S, ng) are rounded again at their sub-block's best
    scale (snapped to a neighbour when off the grid), then every sub-block with such a group refits
    its scale to sumqx/sumq2 (in place)."""
    rg = np.flatnonzero(redo.reshape(-1))
    if rg.size == 0:
        return
    ng = xv.shape[1]
    x8 = xv.reshape(-1, 8)[rg]
    sp = scale[rg // ng]
    codes = _codes(_level_bytes((_F1 / sp)[:, None] * x8))
    look = g.look[codes]
    gnew = look.copy()
    off = np.flatnonzero(look < 0)
    if off.size:
        off = _reuse_decided(gnew, off, rg, ng, sp, codes, fit)
    if off.size:
        # the few groups left: one-off searches are cheaper exactly than through the tables (measured)
        terms = _d2_terms(g, x8[off], wa.reshape(-1, 8)[rg[off]], sp[off])
        gnew[off] = _exact_neighbour(g, -1 - look[off], terms)
    gi.reshape(-1)[rg] = gnew
    sel = np.flatnonzero(redo.any(axis=1))
    sumqx, sumq2 = _sub_sums(g, fit.wx_t, fit.w_t, sel, gi[sel].T)
    scale[sel] = np.where(sumq2 > 0, sumqx / sumq2, scale[sel])


def _qp_best_iscale(xt: F32Array, wt: F32Array, mx: F32Array) -> F32Array:
    """The first part of ``make_qp_quants(32, 4, ...)``: the inverse scale of smallest weighted error
    among nmax/max and the 8 trials (0.1*is + nmax)/max, is = -4..4; xt/wt value-major (32, S)."""
    nmax = np.float32(4)
    iscale = nmax / mx
    lq = (nearest_int(iscale * xt) & 255).astype(np.float32)
    diff = xt - (_F1 / iscale) * lq
    best_mse = seq_sum((wt * diff) * diff)
    trials = [(_TENTH * np.float32(is_) + nmax) / mx for is_ in (-4, -3, -2, -1, 1, 2, 3, 4)]
    # below 2**22, (v + 1.5*2**23) - 1.5*2**23 is nearest_int(v) as a float (one bound for all trials)
    exact_round = bool(np.abs(xt).max(initial=_F0) * max(float(t.max(initial=_F0)) for t in trials) < 2.0**22)
    li = np.empty(xt.shape, dtype=np.float32)
    diff = np.empty(xt.shape, dtype=np.float32)
    for iscale_is in trials:
        if exact_round:
            np.multiply(iscale_is, xt, out=li)
            li += _MAGIC
            li -= _MAGIC
            # no MIN(nmax, l) needed: x <= max and iscale_is*max <= 4.4 (+ rounding) round to <= 4
        else:
            li = np.minimum(nearest_int(iscale_is * xt), 4).astype(np.float32)
        np.multiply(_F1 / iscale_is, li, out=diff)
        np.subtract(xt, diff, out=diff)
        np.multiply(wt, diff, out=li)
        li *= diff
        mse = seq_sum(li)
        better = mse < best_mse
        best_mse = np.where(better, mse, best_mse)
        iscale = np.where(better, iscale_is, iscale)
    return iscale


def _make_qp_quants_32_4(x: F32Array, w: F32Array) -> F32Array:
    """ggml's ``make_qp_quants(32, 4, x, L, w)`` for (S, 32) rows whose max is >= GROUP_MAX_EPS; returns
    the scale. ``L`` is ``uint8_t`` there, so negative levels (possible: one xval may be negative) wrap."""
    # value-major copies: C's sequential sums over the 32 values become whole-row adds
    xt = np.ascontiguousarray(x.T)
    wt = np.ascontiguousarray(w.T)
    iscale = _qp_best_iscale(xt, wt, xt.max(axis=0))  # over rows: a short-row max is ~15x slower
    li_int = np.minimum(nearest_int(iscale[:, None] * x), 4)
    lf = li_int.astype(np.float32)
    wx = w * x
    sumlx = seq_sum(wx * lf, axis=-1)
    suml2 = seq_sum((w * lf) * lf, axis=-1)
    # value-major (32, S): the sequential loop over i reads contiguous rows
    lst = np.ascontiguousarray((li_int & 255).T)  # stored as uint8 in C
    wxt = wt * xt
    todo: IntpArray | None = None  # None: every sub-block
    for _ in range(5):
        n_todo = x.shape[0] if todo is None else todo.size
        if n_todo == 0:
            break
        changed = np.zeros(n_todo, dtype=np.bool_)
        slx_all = sumlx if todo is None else sumlx[todo]
        sl2_all = suml2 if todo is None else suml2[todo]
        for i in range(32):
            if todo is None:
                wi, xi, wxi, li_old = wt[i], xt[i], wxt[i], lst[i]
            else:
                wi, xi, wxi, li_old = wt[i][todo], xt[i][todo], wxt[i][todo], lst[i][todo]
            lo = li_old.astype(np.float32)
            slx = slx_all - wxi * lo
            sl2 = sl2_all - (wi * lo) * lo
            ok = (slx > 0) & (sl2 > 0)
            new_l = np.minimum(nearest_int((xi * sl2) / slx), 4)
            ok &= new_l != li_old
            nf = new_l.astype(np.float32)
            slx += wxi * nf
            sl2 += (wi * nf) * nf
            ok &= (slx * slx) * sl2_all > (slx_all * slx_all) * sl2
            if ok.any():
                upd = np.where(ok, new_l & 255, li_old)
                if todo is None:
                    lst[i] = upd
                else:
                    lst[i][todo] = upd
                slx_all = np.where(ok, slx, slx_all)
                sl2_all = np.where(ok, sl2, sl2_all)
                changed |= ok
        if todo is None:
            sumlx, suml2 = slx_all, sl2_all
            todo = np.flatnonzero(changed)
        else:
            sumlx[todo] = slx_all
            suml2[todo] = sl2_all
            todo = todo[changed]
    out: F32Array = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, _F1), _F0).astype(np.float32)
    return out


_ODD_BITS = (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1) & 1).astype(np.bool_)


@dataclass
class _Prep:
    xval: F32Array  # (S, n, 8) sign-folded values
    w: F32Array  # (S, n, 8) importance
    waux: F32Array  # (S, n, 8) sqrt(w)
    signs: I32Array  # (S, n) sign bits per group
    mx: F32Array  # (S,) max xval of the sub-block


# one byte per flag (0/1), little-endian in a uint64: this product gathers flag i into bit 56 + i
_GATHER8 = np.uint64(sum(1 << (56 - 7 * i) for i in range(8)))


def _pack_bits8(flags: BoolArray) -> U8Array:
    """``np.packbits(flags, axis=-1, bitorder="little")[..., 0]`` for a last axis of 8 (much cheaper)."""
    v = np.ascontiguousarray(flags).view(np.uint64)[..., 0]
    v = v * _GATHER8
    v >>= np.uint64(56)
    return v.astype(np.uint8)


def _prepare(
    rows: F32Array, imatrix: F32Array | None, sub: int, *, parity: bool, iq2s: bool
) -> tuple[int, _Prep]:
    n_rows, n_per_row = rows.shape
    nbl = n_rows * n_per_row // QK_K
    x = rows.reshape(nbl, QK_K)
    x2 = x * x
    sumx2 = seq_sum(x2, axis=-1)
    sigma2 = (np.float32(2) * sumx2 if iq2s else sumx2) / np.float32(QK_K)
    if imatrix is not None:
        qw = np.broadcast_to(imatrix.reshape(1, n_per_row), (n_rows, n_per_row)).reshape(nbl, QK_K)
        w = qw * np.sqrt(sigma2[:, None] + x2)
    else:
        w = np.float32(0.25) * sigma2[:, None] + x2
    waux = np.sqrt(w)
    ng = sub // 8
    xs = x.reshape(-1, ng, 8)
    w = w.reshape(-1, ng, 8)
    waux = waux.reshape(-1, ng, 8)
    neg = ~(xs >= 0)
    # C's -xb where xb is not >= 0 (NaN included) flips the sign bit: an xor, much cheaper than np.where
    flipbit = neg.view(np.uint8).astype(np.uint32)
    flipbit <<= np.uint32(31)
    flipbit ^= xs.view(np.uint32)
    xval = flipbit.view(np.float32)
    sbyte = _pack_bits8(neg)
    signs = sbyte.astype(np.int32)
    if parity:
        odd = _ODD_BITS[sbyte]
        if odd.any():
            imin = np.argmin((w * xs) * xs, axis=-1)
            pos = np.flatnonzero(odd.reshape(-1))
            pos = pos * 8 + imin.reshape(-1)[pos]
            xflat = xval.reshape(-1)
            xflat[pos] = -xflat[pos]
            signs = signs ^ (odd.astype(np.int32) << imin.astype(np.int32))
        signs &= 127
    xf = xval.reshape(xval.shape[0], -1)
    mx = xf[:, 0].copy()
    for i in range(1, xf.shape[1]):  # column by column: numpy's short-row reductions are slow
        np.maximum(mx, xf[:, i], out=mx)
    return nbl, _Prep(xval, w, waux, signs, mx)


def _pack_columns(v: I32Array, bits: int) -> npt.NDArray[np.uint32]:
    """``sum(v[:, i] << bits*i)`` as uint32 (fields that do not overlap), column by column."""
    out = v[:, 0].astype(np.uint32)
    for i in range(1, v.shape[1]):
        out |= v[:, i].astype(np.uint32) << np.uint32(bits * i)
    return out


def _superblock_scales(scales: F32Array, nbl: int, n_sub: int) -> tuple[F32Array, I32Array, BoolArray]:
    """max_scale, d = max_scale/31 and the 4-bit sub-block scales; also the ``max_scale != 0`` mask."""
    sc = scales.reshape(nbl, n_sub)
    max_scale = np.maximum(sc.max(axis=1), _F0)
    nz = max_scale != 0
    d = max_scale / np.float32(31)
    id_: F32Array = (_F1 / np.where(nz, d, _F1)).astype(np.float32, copy=False)
    ls = np.clip(nearest_int(_HALF * (id_[:, None] * sc - _F1)), 0, 15)
    return d, ls, nz


def _fold_sign(scale: F32Array, signs: I32Array, mask: int) -> tuple[F32Array, I32Array]:
    """A negative sub-block scale is stored as |scale| with every sign bit (within ``mask``) flipped."""
    negs = scale < 0
    return np.where(negs, -scale, scale), np.where(negs[:, None], ~signs & mask, signs)


def _fp16_header(d: F32Array, nz: BoolArray) -> U8Array:
    """The fp16 super-block scale as little-endian bytes (nbl, 2); 0 where ``max_scale == 0``."""
    h: U8Array = np.where(nz, fp32_to_fp16_bits(d), np.uint16(0)).astype("<u2").view(np.uint8)
    return h.reshape(-1, 2)


def _scale_nibbles(ls: I32Array, nz: BoolArray) -> U8Array:
    """Two 4-bit sub-block scales per byte, (nbl, 8); 0 where ``max_scale == 0``."""
    lp = ls.reshape(ls.shape[0], 8, 2)
    sc = (lp[:, :, 0] | (lp[:, :, 1] << 4)).astype(np.uint8)
    sc[~nz] = 0
    return sc


def _start(name: str, rows: F32Array, imatrix: F32Array | None, sub: int) -> tuple[_Grid, int, _Prep]:
    """Grid tables and prepared sub-blocks of ``sub`` values; IQ2_XXS/IQ2_XS need the imatrix."""
    iq2s = name == "IQ2_S"
    if imatrix is None and not iq2s:
        raise ValueError(f"{name} requires an importance matrix")
    nbl, p = _prepare(rows, imatrix, sub, parity=not iq2s, iq2s=iq2s)
    return _grid(name), nbl, p


def _iq2_xxs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    g, nbl, p = _start("IQ2_XXS", rows, imatrix, 32)
    n_sub = p.mx.shape[0]
    scales = np.zeros(n_sub, dtype=np.float32)
    gidx = np.zeros((n_sub, 4), dtype=np.int32)
    signs = np.zeros((n_sub, 4), dtype=np.int32)
    act = np.flatnonzero(~(p.mx < GROUP_MAX_EPS))
    if act.size:
        xv = p.xval[act]
        w = p.w[act]
        wa = p.waux[act]
        scale = _make_qp_quants_32_4(xv.reshape(-1, 32), w.reshape(-1, 32))
        eff_max = scale * np.float32(3)
        keep = eff_max > 0
        act, xv, w, wa, scale, eff_max = act[keep], xv[keep], w[keep], wa[keep], scale[keep], eff_max[keep]
        if act.size:
            scale, gi, _, fit = _scale_search(g, xv, w, wa, eff_max, range(-6, 7), scale, False)
            redo = np.broadcast_to((scale > 0)[:, None], gi.shape)
            _refit(g, xv, wa, scale, gi, redo, fit)
            scales[act], signs[act] = _fold_sign(scale, p.signs[act], 127)
            gidx[act] = g.canon[gi]
    d, ls, nz = _superblock_scales(scales, nbl, 8)
    q_lo = _pack_columns(gidx, 8)
    q_hi = _pack_columns(signs, 7)
    q_hi = q_hi | (ls.reshape(-1).astype(np.uint32) << np.uint32(28))
    q2 = np.stack([q_lo, q_hi], axis=1).reshape(nbl, 16)
    q2[~nz] = 0
    out = np.empty((nbl, 66), dtype=np.uint8)
    out[:, 0:2] = _fp16_header(d, nz)
    out[:, 2:] = q2.astype("<u4").view(np.uint8).reshape(nbl, 64)
    return out.reshape(rows.shape[0], -1)


def _search_16(g: _Grid, p: _Prep, eps: np.float32) -> tuple[IntpArray, F32Array, I32Array]:
    """The per-sub-block part shared by IQ2_XS and IQ2_S: (active sub-blocks, scales, grid indices)."""
    act = np.flatnonzero(~(p.mx < eps))
    if act.size == 0:
        return act, np.zeros(0, dtype=np.float32), np.zeros((0, 2), dtype=np.int32)
    xv = p.xval[act]
    w = p.w[act]
    wa = p.waux[act]
    mx = p.mx[act]
    scale = mx / np.float32(5)
    scale, gi, on, fit = _scale_search(g, xv, w, wa, mx, range(-9, 10), scale, True)
    _refit(g, xv, wa, scale, gi, ~on & (scale > 0)[:, None], fit)
    return act, scale, g.canon[gi]


def _iq2_xs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    g, nbl, p = _start("IQ2_XS", rows, imatrix, 16)
    n_sub = p.mx.shape[0]
    scales = np.zeros(n_sub, dtype=np.float32)
    q2 = np.zeros((n_sub, 2), dtype=np.uint16)
    act, scale, gidx = _search_16(g, p, GROUP_MAX_EPS)
    if act.size:
        scales[act], sg = _fold_sign(scale, p.signs[act], 127)
        q2[act] = (gidx | (sg << 9)).astype(np.uint16)
    d, ls, nz = _superblock_scales(scales, nbl, 16)
    q2 = q2.reshape(nbl, 32)
    q2[~nz] = 0
    sc = _scale_nibbles(ls, nz)
    out = np.empty((nbl, 74), dtype=np.uint8)
    out[:, 0:2] = _fp16_header(d, nz)
    out[:, 2:66] = q2.astype("<u2").view(np.uint8).reshape(nbl, 64)
    out[:, 66:74] = sc
    return out.reshape(rows.shape[0], -1)


def _iq2_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    g, nbl, p = _start("IQ2_S", rows, imatrix, 16)
    n_sub = p.mx.shape[0]
    scales = np.zeros(n_sub, dtype=np.float32)
    gall = np.zeros((n_sub, 2), dtype=np.int32)
    sall = np.zeros((n_sub, 2), dtype=np.int32)
    act, scale, gidx = _search_16(g, p, GROUP_MAX_EPS_IQ2_S)
    if act.size:
        scales[act], sall[act] = _fold_sign(scale, p.signs[act], 255)
        gall[act] = gidx
    d, ls, nz = _superblock_scales(scales, nbl, 16)
    gall = gall.reshape(nbl, 32)
    sc = _scale_nibbles(ls, nz)
    qh = _pack_columns((gall >> 8).reshape(nbl * 8, 4), 2).reshape(nbl, 8)
    out = np.empty((nbl, 82), dtype=np.uint8)
    out[:, 0:2] = _fp16_header(d * np.float32(0.9875), nz)
    out[:, 2:34] = (gall & 255).astype(np.uint8)
    out[:, 34:66] = sall.reshape(nbl, 32).astype(np.uint8)
    out[:, 66:74] = qh.astype(np.uint8)
    out[:, 74:82] = sc
    return out.reshape(rows.shape[0], -1)


# Overflow/underflow/NaN are part of ggml's arithmetic (e.g. |x| ~ 1e5 overflows fp16 scales); numpy must
# compute them silently, as C does.


def quantize_iq2_xxs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ2_XXS (66 bytes per 256 values): ``quantize_iq2_xxs``; the imatrix is mandatory."""
    with np.errstate(all="ignore"):
        return _iq2_xxs(rows, imatrix)


def quantize_iq2_xs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ2_XS (74 bytes per 256 values): ``quantize_iq2_xs``; the imatrix is mandatory."""
    with np.errstate(all="ignore"):
        return _iq2_xs(rows, imatrix)


def quantize_iq2_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ2_S (82 bytes per 256 values): ``quantize_iq2_s``, with or without imatrix."""
    with np.errstate(all="ignore"):
        return _iq2_s(rows, imatrix)
