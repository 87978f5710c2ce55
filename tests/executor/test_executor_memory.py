"""Peak memory follows ``chunk_values``, not the tensor size: the source is read through short-lived
memory maps one row chunk at a time and written as it is produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.executor import T, make_plan, write_model

CHILD = r"""
import json, sys
from gguf_recipe.executor import apply_plan
from gguf_recipe.plan import Plan

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

plan = Plan.load(sys.argv[1])
base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
except OSError:
    print(json.dumps({"growth_kib": None}))
    sys.exit(0)
apply_plan(plan, sys.argv[2], sys.argv[3], chunk_values=int(sys.argv[4]), threads=1, progress=False)
print(json.dumps({"growth_kib": status("VmHWM") - base}))
"""


def _growth_mib(plan_path: Path, model: Path, out: Path, chunk_values: int) -> float:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(plan_path), str(model), str(out), str(chunk_values)],
        capture_output=True,
        text=True,
        check=True,
    )
    growth = json.loads(r.stdout.strip().splitlines()[-1])["growth_kib"]
    if growth is None:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    return float(growth) / 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_bounded_by_chunk_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big = (rng.standard_normal((2048, 4096)) * 0.02).astype(np.float32)  # 8 Mi values: 32 MiB as f32
    model = write_model(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": big}, n_layer=1)
    del big
    plan = make_plan(model, default=T.Q8_0)
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    small = _growth_mib(plan_path, model, tmp_path / "a.gguf", 1 << 16)  # 256 KiB of f32 rows per chunk
    whole = _growth_mib(plan_path, model, tmp_path / "b.gguf", 1 << 24)  # the whole tensor at once
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert small < 16, small  # the tensor is 16 MiB of F16 and 32 MiB as float32
    assert whole > small + 24, (small, whole)


WORKER_CHILD = r"""
import json, sys
from gguf import GGMLQuantizationType as T
from gguf_recipe.executor import SourceModel
from gguf_recipe.executor.parallel import ChunkTask, ProcessQuantizer

rows = int(sys.argv[2])
with SourceModel(sys.argv[1]) as src:
    pool = ProcessQuantizer(src, 2)
    try:
        tasks = [ChunkTask("blk.0.ffn_up.weight", "t", r, rows, T.Q8_0, None, False) for r in range(0, 2048, rows)]
        for f in [pool.submit(t) for t in tasks]:
            f.result()
        print(json.dumps({"peak": max(pool.worker_peaks().values())}))
    finally:
        pool.close()
"""


def test_worker_process_memory_follows_chunk_size(tmp_path: Path) -> None:
    """Each worker holds one chunk at a time: its peak grows with the chunk, not with the model.
    Measured in a fresh process: workers forked from a big one (pytest, late in a run) reuse its
    resident free heap, which hides their growth."""
    rng = np.random.default_rng(0)
    big = (rng.standard_normal((2048, 4096)) * 0.02).astype(np.float32)
    model = write_model(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": big}, n_layer=1)
    del big

    def worker_peak_mib(rows_per_chunk: int) -> float:
        r = subprocess.run(
            [sys.executable, "-c", WORKER_CHILD, str(model), str(rows_per_chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(json.loads(r.stdout.strip().splitlines()[-1])["peak"]) / 2**20

    small = worker_peak_mib(16)  # 256 KiB of float32 rows per chunk
    whole = worker_peak_mib(2048)  # the whole tensor: 32 MiB as float32
    assert whole > small + 24, (small, whole)
