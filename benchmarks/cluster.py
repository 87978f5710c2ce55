"""``recipe apply --cluster``: measured throughput with 1 and 2 local Dask workers beside local apply,
and, on paper, a DeepSeek-V3 (671B) Q4_K_M apply with 1, 8 and 64 workers.

    python benchmarks/cluster.py                     # TinyLlama shapes, 2 layers, llama.cpp/Q4_K_M
    python benchmarks/cluster.py --layers 4 --fs-gbs 10 --client-nic-gbit 100

1. Measured: the same plan applied (a) locally in this process on one core, (b) locally with 2 worker
   processes, (c) on a Dask cluster of 1 and (d) 2 one-thread workers (a ``LocalCluster`` started
   beforehand, so its start-up is reported apart, not in the throughput). Every output is checked to be
   byte-identical to (a).
2. Measured: single-core throughput of the worker's step (``quantize_chunk``: read F16 rows, NaN check,
   quantize, validate) for each type the DeepSeek-V3 Q4_K_M plan uses, on 2048-wide rows.
3. On paper: the DeepSeek-V3 plan (``tests/helpers/archs.deepseek2(v3=True)``, as ``bench_plan.py``) split by
   type, divided by those rates and the number of workers (one core each), set against what the disks
   and the network allow (``--fs-gbs``, ``--client-nic-gbit``, ``--disk-write-gbs``: assumptions, not
   measurements). The run is bound by the slowest of: quantizing, reading the source from the shared
   filesystem, bringing the quantized bytes to the client, the client writing them.

Nothing is asserted; on a shared or busy machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _bench_apply() -> ModuleType:
    """benchmarks/apply.py (its synthetic TinyLlama-shaped model writer)."""
    spec = importlib.util.spec_from_file_location("bench_apply", HERE / "apply.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # local worker processes, once joined
    return r.ru_utime + r.ru_stime


def _apply(plan: Any, model: Path, out: Path, client: Any = None, **kw: Any) -> tuple[float, float, bytes]:
    """(wall seconds, CPU seconds of this process, its local workers and the Dask workers, output)."""
    from gguf_recipe.executor import apply_plan

    workers0 = sum(client.run(_cpu_self).values()) if client is not None else 0.0
    cpu0 = _cpu_self() + _cpu_children()
    res = apply_plan(plan, model, out, progress=False, **kw)
    cpu = _cpu_self() + _cpu_children() - cpu0
    if client is not None:
        cpu += sum(client.run(_cpu_self).values()) - workers0
    data = out.read_bytes()
    out.unlink()
    return res.seconds, cpu, data


@dataclass
class Run:
    label: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    same: bool = True


def measure_apply(model: Path, plan: Any, work: Path, rounds: int) -> list[Run]:
    """Each way to apply, ``rounds`` times interleaved (the best round is reported: a busy machine
    only ever makes a run slower); outputs compared with the local 1-core run's."""
    import distributed

    from gguf_recipe.executor.cluster import start_local_cluster

    local1, local2 = Run("local, 1 core (in process)"), Run("local, 2 worker processes")
    dask = {n: Run(f"Dask, {n} worker{'s' if n > 1 else ''}") for n in (1, 2)}
    clusters = {}
    for n in dask:
        t0 = time.monotonic()
        clusters[n] = start_local_cluster(distributed, n)  # what --cluster local:N starts
        dask[n].label += f" (cluster start {time.monotonic() - t0:.1f} s, not counted)"
    try:
        ref = b""
        for _ in range(rounds):
            secs, cpu, ref = _apply(plan, model, work / "local1.gguf", threads=1, parallel="threads")
            local1.wall.append(secs)
            local1.cpu.append(cpu)
            secs, cpu, data = _apply(plan, model, work / "local2.gguf", threads=2, parallel="processes")
            local2.wall.append(secs)
            local2.cpu.append(cpu)
            local2.same &= data == ref
            for n, run in dask.items():
                client: Any = distributed.Client(  # type: ignore[no-untyped-call]
                    clusters[n].scheduler_address, set_as_default=False
                )
                try:
                    secs, cpu, data = _apply(
                        plan, model, work / f"dask{n}.gguf", client, cluster=clusters[n].scheduler_address
                    )
                finally:
                    client.close()
                run.wall.append(secs)
                run.cpu.append(cpu)
                run.same &= data == ref
    finally:
        for c in clusters.values():
            c.close()
    return [local1, local2, *dask.values()]


def measure_types(model: Path, types: list[str], rows: int) -> dict[str, float]:
    """Values per CPU second of the worker's step on one core, by ggml type name (lower case)."""
    from gguf_recipe import quants
    from gguf_recipe.executor import SourceModel
    from gguf_recipe.executor.parallel import ChunkTask, quantize_chunk

    rates: dict[str, float] = {}
    with SourceModel(model) as src:
        info = src.tensors["blk.0.ffn_gate.weight"]  # 2048-wide rows
        rows = min(rows, info.n_elements // info.ne0)
        for name in types:
            qt = quants.parse_qtype(name)
            needs_im = quants.spec_for(qt).requires_imatrix
            weights = None
            if needs_im:
                import numpy as np

                weights = np.ones(info.ne0, np.float32)
            task = ChunkTask(info.name, info.name, 0, rows, qt, weights, False)
            quantize_chunk(src, ChunkTask(info.name, info.name, 0, 8, qt, weights, False), 1)  # warm
            t0 = time.process_time()  # one thread: its CPU time, which a busy machine does not inflate
            quantize_chunk(src, task, 1)
            rates[name] = rows * info.ne0 / (time.process_time() - t0)
    return rates


def deepseek_plan_by_type(work: Path) -> tuple[dict[str, int], int, int, int]:
    """(quantized values by target type, source bytes, output tensor bytes, copied bytes) of the
    DeepSeek-V3 llama.cpp/Q4_K_M plan."""
    from gguf_recipe.compiler import compile_plan
    from gguf_recipe.model.skeleton import write_skeleton
    from helpers.archs import deepseek2

    path = work / "deepseek-v3-skeleton.gguf"
    write_skeleton(deepseek2(v3=True), path)  # sparse: headers and holes
    try:
        plan = compile_plan("llama.cpp/Q4_K_M", path).plan
    finally:
        path.unlink()
    values: dict[str, int] = defaultdict(int)
    copied = 0
    for t in plan.tensors:
        if t.action == "prune":
            continue
        if t.action == "copy" or t.type == t.source_type:
            copied += t.source_bytes
            continue
        n = 1
        for d in t.shape:
            n *= int(d)
        values[t.type] += n
    return dict(values), plan.totals.source_bytes, plan.totals.target_bytes, copied


def estimate_rows(
    values: Mapping[str, int],
    rates: Mapping[str, float],
    source_bytes: int,
    out_bytes: int,
    efficiency: float,
    fs_bps: float,
    nic_bps: float,
    disk_bps: float,
) -> list[tuple[int, float, float, float, float, float, str]]:
    """(workers, quantize s, read s, to-client s, write s, estimate s, bound by) for 1, 8, 64 workers."""
    core_seconds = sum(v / rates[t] for t, v in values.items()) / efficiency
    read = source_bytes / fs_bps
    to_client = out_bytes / nic_bps
    write = out_bytes / disk_bps
    out = []
    for w in (1, 8, 64):
        parts = {
            "quantizing": core_seconds / w,
            "shared-FS read": read,
            "client NIC": to_client,
            "client disk": write,
        }
        bound = max(parts, key=lambda k: parts[k])
        out.append((w, parts["quantizing"], read, to_client, write, parts[bound], bound))
    return out


def _hms(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2, help="blocks of the TinyLlama-shaped model (default 2)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "gguf-recipe-bench")
    ap.add_argument("--type-rows", type=int, default=1024, help="rows (2048 wide) timed per type")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each run (best reported)")
    ap.add_argument("--fs-gbs", type=float, default=5.0, help="shared FS aggregate read, GB/s (assumed)")
    ap.add_argument("--client-nic-gbit", type=float, default=25.0, help="client's network, Gbit/s (assumed)")
    ap.add_argument("--disk-write-gbs", type=float, default=2.0, help="client's disk write, GB/s (assumed)")
    a = ap.parse_args(argv)
    import distributed  # noqa: F401 - its logging set-up first, then quieter (INFO lines at close)

    logging.getLogger("distributed").setLevel(logging.ERROR)

    from gguf_recipe.compiler import compile_plan

    a.dir.mkdir(parents=True, exist_ok=True)
    model = a.dir / f"synthetic-llama-{a.layers}L-f16.gguf"
    if not model.exists():
        _bench_apply().write_model(model, a.layers)
    plan = compile_plan("llama.cpp/Q4_K_M", model).plan
    size = model.stat().st_size
    print(
        f"model: {model} ({size / 1e9:.2f} GB F16, {plan.totals.n_elements / 1e6:.0f} M values); plan Q4_K_M"
    )
    print(f"cores here: {os.cpu_count()}\n")
    runs = measure_apply(model, plan, a.dir, a.rounds)
    src_mb = plan.totals.source_bytes / 1e6
    print(f"best of {a.rounds} interleaved rounds\n")
    print("| run | wall s | source MB/s | CPU s (all processes) | same bytes |\n|---|---:|---:|---:|---|")
    for r in runs:
        wall, cpu = min(r.wall), min(r.cpu)
        print(f"| {r.label} | {wall:.1f} | {src_mb / wall:.1f} | {cpu:.1f} | {'yes' if r.same else 'NO'} |")
    # Dask's cost per value against the same step in one process, in CPU time (not wall: on a busy
    # machine wall time says more about the neighbours than about Dask)
    efficiency = min(runs[0].cpu) / min(runs[2].cpu)
    print(f"\nCPU efficiency of Dask with 1 worker (in-process CPU s / Dask CPU s): {efficiency:.2f}")

    values, src_bytes, out_bytes, copied = deepseek_plan_by_type(a.dir)
    rates = measure_types(model, sorted(values), a.type_rows)
    total_values = sum(values.values())
    print(
        f"\nDeepSeek-V3 llama.cpp/Q4_K_M plan: {src_bytes / 1e12:.2f} TB of source tensors -> "
        f"{out_bytes / 1e9:.0f} GB; {total_values / 1e9:.0f} G values quantized, "
        f"{copied / 1e9:.2f} GB copied\n"
    )
    print("| type | G values | one core, M values per CPU s (measured) | core-hours |\n|---|---:|---:|---:|")
    for t in sorted(values, key=lambda k: -values[k]):
        print(f"| {t} | {values[t] / 1e9:.1f} | {rates[t] / 1e6:.1f} | {values[t] / rates[t] / 3600:.1f} |")
    fs, nic, disk = a.fs_gbs * 1e9, a.client_nic_gbit * 1e9 / 8, a.disk_write_gbs * 1e9
    print(
        f"\nassumed: shared FS {a.fs_gbs:g} GB/s aggregate, client NIC {a.client_nic_gbit:g} Gbit/s, "
        f"client disk write {a.disk_write_gbs:g} GB/s; one worker = one core; Dask efficiency "
        f"{efficiency:.2f} (measured above)\n"
    )
    print(
        "| workers | quantizing | read source (FS) | results to client | client writes | estimate | bound by |\n"
        "|---:|---:|---:|---:|---:|---:|---|"
    )
    for w, quant, read, net, write, est, bound in estimate_rows(
        values, rates, src_bytes, out_bytes, efficiency, fs, nic, disk
    ):
        cells = " | ".join(_hms(x) for x in (quant, read, net, write, est))
        print(f"| {w} | {cells} | {bound} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
