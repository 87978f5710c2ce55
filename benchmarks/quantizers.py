"""Throughput of gguf-recipe's numpy quantizers next to the reference implementations.

For every implemented type (``gguf_recipe.quants.implemented_types()``) the same N(0,1) seed-0 float32
matrix (4096 x 4096 by default) is quantized by

* ours: ``gguf_recipe.quants.quantize`` with ``threads=1`` and with every core;
* gguf-py: ``gguf.quants.quantize`` (numpy, no imatrix) for the types it has;
* ggml: ``ggml_quantize_chunk`` from a libggml-base shared library through ctypes (single call, one
  thread, and the rows split over every core), found via ``$GGML_BASE_LIB`` or llama-cpp-python's
  bundled ``llama_cpp/lib/libggml-base.so``;
* libgguf: ``libgguf.quantize_rows`` (native reference kernels) when the package is installed;

without an imatrix and, for the types whose quantizer reads it, with an Exp(1) seed-1 imatrix.
Each measurement is repeated over interleaved rounds and the median is reported in millions of
values per second, with ours (1 thread) / reference ratios. Slow implementations are timed on the
first rows only (enough for about ``--budget`` seconds per measurement). It is a report; nothing is
asserted.

    python benchmarks/quantizers.py            # 4096 x 4096, 3 rounds
    python benchmarks/quantizers.py --quick    # 512 x 4096, 1 round
    python benchmarks/quantizers.py --types Q4_0,Q4_K --rounds 5
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from gguf_recipe.quants import implemented_types, quantize, spec_for

T = GGMLQuantizationType
# ggml_quantize_chunk ignores the imatrix for these (see the oracle README).
IGNORES_IMATRIX = {T.F32, T.F16, T.BF16, T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4}

Runner = Callable[[np.ndarray, "np.ndarray | None"], object]


# ------------------------------------------------------------------------------------ references


def _find_ggml_base() -> Path | None:
    env = os.environ.get("GGML_BASE_LIB")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    lib_dir = Path(spec.origin).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (lib_dir / name).exists():
            return lib_dir / name
    return None


class GgmlC:
    """``ggml_quantize_chunk`` through ctypes (ctypes drops the GIL, so threads run in parallel)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        fn = lib.ggml_quantize_chunk
        fn.restype = ctypes.c_size_t
        fn.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
        ]
        self.fn = fn
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        self.init = lib.ggml_quantize_init

    def runner(self, qtype: GGMLQuantizationType, threads: int) -> Runner:
        self.init(int(qtype))
        block, size = GGML_QUANT_SIZES[qtype]

        def run(x: np.ndarray, im: np.ndarray | None) -> object:
            n_rows, n_per_row = x.shape
            out = np.empty((n_rows, n_per_row // block * size), dtype=np.uint8)
            im_ptr = None if im is None else im.ctypes.data

            def part(lo: int, hi: int) -> None:
                self.fn(
                    int(qtype), x[lo:hi].ctypes.data, out[lo:hi].ctypes.data, 0, hi - lo, n_per_row, im_ptr
                )

            if threads <= 1:
                part(0, n_rows)
            else:
                step = max(1, -(-n_rows // (threads * 4)))
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda s: part(s, min(s + step, n_rows)), range(0, n_rows, step)))
            return out

        return run


def _gguf_py_runner(qtype: GGMLQuantizationType) -> Runner | None:
    from gguf import quants

    probe = np.zeros((1, 256), dtype=np.float32)
    try:
        quants.quantize(probe, qtype)
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return None

    def run(x: np.ndarray, im: np.ndarray | None) -> object:
        return quants.quantize(x, qtype)

    return run


def _libgguf_runner(qtype: GGMLQuantizationType) -> Runner | None:
    try:
        import libgguf  # type: ignore[import-not-found]  # optional native reference
    except ImportError:
        return None
    try:
        lq = libgguf.GGMLQuantizationType[qtype.name]
        libgguf.quantize_rows(np.zeros((1, 256), dtype=np.float32), lq, np.ones(256, dtype=np.float32))
    except Exception:
        return None

    def run(x: np.ndarray, im: np.ndarray | None) -> object:
        return libgguf.quantize_rows(x, lq, im)

    return run


def _ours(qtype: GGMLQuantizationType, threads: int | None) -> Runner:
    def run(x: np.ndarray, im: np.ndarray | None) -> object:
        return quantize(x, qtype, im, threads=threads)

    return run


# ------------------------------------------------------------------------------------ measuring


class Measure:
    """One (type, implementation, imatrix?) cell: picks its row count once, then collects timings."""

    def __init__(
        self,
        run: Runner,
        x: np.ndarray,
        im: np.ndarray | None,
        budget: float,
        cpu_time: bool = False,
        min_time: float = 0.1,
    ) -> None:
        self.run, self.im = run, im
        self.clock = time.process_time if cpu_time else time.perf_counter
        self.times: list[float] = []
        probe_rows = min(x.shape[0], 16)
        t0 = time.perf_counter()
        run(x[:probe_rows], im)
        per_row = max(time.perf_counter() - t0, 1e-9) / probe_rows
        rows = int(min(x.shape[0], max(probe_rows, budget / per_row)))
        self.x = x[:rows]
        # A fast call is repeated so one timing lasts about min_time: a single sub-millisecond call
        # mostly measures cache and page-fault state, not the quantizer. The probe above included
        # first-use costs (imports, scratch buffers), so one warm call of the chosen rows sets the count.
        t0 = time.perf_counter()
        run(self.x, im)
        self.repeats = max(1, int(min_time / max(time.perf_counter() - t0, 1e-9)))

    def once(self) -> None:
        t0 = self.clock()
        for _ in range(self.repeats):
            self.run(self.x, self.im)
        self.times.append((self.clock() - t0) / self.repeats)

    @property
    def mvals(self) -> float:
        return self.x.size / statistics.median(self.times) / 1e6


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 10 else f"{v:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 x 4096 matrix, 1 round")
    ap.add_argument("--types", help="comma-separated type names (default: every implemented type)")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per measurement at most (about)")
    ap.add_argument(
        "--min-time",
        type=float,
        default=0.1,
        help="fast calls are repeated so that one timing lasts about this many seconds",
    )
    ap.add_argument("--no-refs", action="store_true", help="only time gguf-recipe")
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the single-threaded columns by process CPU time (steadier on a busy machine)",
    )
    args = ap.parse_args(argv)
    rows, rounds, budget = args.rows, args.rounds, args.budget
    if args.quick:
        rows, rounds, budget = min(rows, 512), 1, min(budget, 1.0)
    ncpu = os.cpu_count() or 1

    types = implemented_types()
    if args.types:
        wanted = {s.strip().upper() for s in args.types.split(",") if s.strip()}
        types = [t for t in types if t.name in wanted]
    x = np.random.default_rng(0).standard_normal((rows, args.cols)).astype(np.float32)
    im = np.random.default_rng(1).exponential(size=args.cols).astype(np.float32)

    ggml = None
    if not args.no_refs:
        path = _find_ggml_base()
        if path is not None:
            try:
                ggml = GgmlC(path)
            except OSError as exc:
                print(f"# ggml C: cannot load {path}: {exc}", file=sys.stderr)
    print(
        f"# matrix {rows} x {args.cols} N(0,1) seed 0, imatrix Exp(1) seed 1, {rounds} round(s), {ncpu} cores"
    )
    print(f"# ggml C: {ggml.path if ggml else 'not found (set GGML_BASE_LIB or install llama-cpp-python)'}")
    print(f"# libgguf: {'yes' if importlib.util.find_spec('libgguf') else 'not installed'}")

    # cells[(type, imatrix?)][impl] = Measure
    cells: dict[tuple[GGMLQuantizationType, bool], dict[str, Measure]] = {}
    for t in types:
        modes = [True] if spec_for(t).requires_imatrix else [False]
        if t not in IGNORES_IMATRIX and True not in modes:
            modes.append(True)
        for with_im in modes:
            w = im if with_im else None
            impls: dict[str, Runner] = {"ours_1t": _ours(t, 1), "ours_all": _ours(t, None)}
            if not args.no_refs:
                if not with_im:
                    g = _gguf_py_runner(t)
                    if g is not None:
                        impls["gguf_py"] = g
                if ggml is not None:
                    impls["ggml_1t"] = ggml.runner(t, 1)
                    impls["ggml_all"] = ggml.runner(t, ncpu)
                lg = _libgguf_runner(t)
                if lg is not None:
                    impls["libgguf"] = lg
            cells[(t, with_im)] = {
                name: Measure(fn, x, w, budget, args.cpu_time and not name.endswith("_all"), args.min_time)
                for name, fn in impls.items()
            }

    for _ in range(rounds):  # interleaved: every cell once per round
        for cell in cells.values():
            for m in cell.values():
                m.once()

    cols = ["ours_1t", "ours_all", "ggml_1t", "ggml_all", "gguf_py", "libgguf"]
    head = f"{'type':<8} {'imatrix':<7} " + " ".join(f"{c:>9}" for c in cols)
    head += f" {'/ggml_1t':>9} {'/gguf_py':>9} {'/libgguf':>9}"
    clock = (
        "process CPU time for single-threaded columns, wall time for *_all" if args.cpu_time else "wall time"
    )
    print(f"\nmillions of values per second (median, {clock}); ratios are ours_1t / reference")
    print(head)
    print("-" * len(head))
    for (t, with_im), cell in cells.items():
        v = {name: m.mvals for name, m in cell.items()}
        line = f"{t.name:<8} {'yes' if with_im else 'no':<7} " + " ".join(
            f"{_fmt(v.get(c)):>9}" for c in cols
        )
        ours = v.get("ours_1t")
        line += " " + " ".join(f"{_ratio(ours, v.get(r)):>9}" for r in ("ggml_1t", "gguf_py", "libgguf"))
        print(line)
    partial = [
        f"{t.name}{'+im' if w else ''}:{n}={m.x.shape[0]}"
        for (t, w), c in cells.items()
        for n, m in c.items()
        if m.x.shape[0] < rows
    ]
    if partial:
        print("\n# timed on the first rows only (slow):", " ".join(partial))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
