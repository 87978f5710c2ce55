"""Planning speed on a big header: a DeepSeek-V3-shaped skeleton (61 layers, 1,086 tensors, ~1.3 TB of
F16 tensor data, sparse) planned with llama.cpp/Q4_K_M. Usage: python benchmarks/bench_plan.py [DIR]"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _archs import deepseek2
from gguf_recipe.compiler import compile_plan
from gguf_recipe.model import read_model
from gguf_recipe.model.skeleton import write_skeleton


def run(directory: Path, recipe: str = "llama.cpp/Q4_K_M") -> dict[str, float]:
    path = directory / "deepseek-v3-skeleton.gguf"
    t0 = time.perf_counter()
    write_skeleton(deepseek2(v3=True), path)
    t1 = time.perf_counter()
    model = read_model(path)
    t2 = time.perf_counter()
    result = compile_plan(recipe, path)
    t3 = time.perf_counter()
    return {
        "file_size_gb": path.stat().st_size / 1e9,
        "n_tensors": float(len(model.tensors)),
        "n_layers": float(model.n_layer),
        "build_s": t1 - t0,
        "read_header_s": t2 - t1,
        "plan_s": t3 - t2,
        "plan_gib": result.plan.totals.target_bytes / 2**30,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        r = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(d))
    print(
        f"planned a {r['file_size_gb']:.0f} GB header ({int(r['n_tensors'])} tensors, {int(r['n_layers'])} layers): "
        f"read header {r['read_header_s']:.3f} s, plan (read + compile) {r['plan_s']:.3f} s -> {r['plan_gib']:.1f} GiB"
    )


if __name__ == "__main__":
    main()
