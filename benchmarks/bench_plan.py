"""Planning speed on a big header: a DeepSeek-V3-shaped skeleton (61 layers, 1,086 tensors, ~1.3 TB of
F16 tensor data, sparse; a 129,280-token vocabulary with token types and 127,741 merges) planned with
llama.cpp/Q4_K_M.

    python benchmarks/bench_plan.py [DIR]                 # in-process phases + the whole `recipe plan` process
    python benchmarks/bench_plan.py --runs 15 --top 20    # more runs, a longer import list
    python benchmarks/bench_plan.py --no-bytecode         # also time it compiling gguf_recipe from source
    python benchmarks/bench_plan.py --in-process           # only the in-process phases
    python benchmarks/bench_plan.py --baseline OLD/src     # before/after: interleaved runs of both trees

The whole-process time is what a user waits for: ``python -m gguf_recipe.cli plan llama.cpp/Q4_K_M
deepseek-v3.gguf --format json`` from exec to exit (median of ``--runs`` runs after one warm-up run,
wall and CPU). By default the bytecode of every module is cached (in a private PYTHONPYCACHEPREFIX), as
for an installed package; ``--no-bytecode`` adds the runs under PYTHONDONTWRITEBYTECODE=1 without that
cache, where gguf_recipe's own modules are compiled from source every run (site-packages keep their
``__pycache__``). ``-X importtime`` lists the imports that cost the most. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from gguf_recipe.compiler import compile_plan  # noqa: E402
from gguf_recipe.model import read_model  # noqa: E402
from gguf_recipe.model.skeleton import write_skeleton  # noqa: E402
from helpers.archs import deepseek2  # noqa: E402

RECIPE = "llama.cpp/Q4_K_M"
MODEL_FILE = "deepseek-v3.gguf"
# DeepSeek-V3's chat template is about 3 KB of Jinja
_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}" * 48


def deepseek_v3_spec() -> dict[str, Any]:
    """tests/helpers/archs.py' DeepSeek-V3 with the rest of the real tokenizer metadata (the string arrays that
    dominate a real header: tokens and merges)."""
    spec: dict[str, Any] = deepseek2(v3=True)
    md: list[dict[str, Any]] = spec["metadata"]
    at = next(i for i, kv in enumerate(md) if kv["key"] == "tokenizer.ggml.tokens") + 1
    n_vocab = int(md[at - 1]["length"])
    md[at:at] = [
        {"key": "tokenizer.ggml.pre", "type": "string", "value": "deepseek-v3"},
        {"key": "tokenizer.ggml.token_type", "type": "array", "element_type": "int32", "length": n_vocab},
        {"key": "tokenizer.ggml.merges", "type": "array", "element_type": "string", "length": 127741},
        {"key": "tokenizer.ggml.bos_token_id", "type": "uint32", "value": 0},
        {"key": "tokenizer.ggml.eos_token_id", "type": "uint32", "value": 1},
        {"key": "tokenizer.ggml.padding_token_id", "type": "uint32", "value": 1},
        {"key": "tokenizer.ggml.add_bos_token", "type": "bool", "value": True},
        {"key": "tokenizer.ggml.add_eos_token", "type": "bool", "value": False},
        {"key": "tokenizer.chat_template", "type": "string", "value": _CHAT_TEMPLATE},
    ]
    return spec


def build(directory: Path) -> Path:
    path = directory / MODEL_FILE
    write_skeleton(deepseek_v3_spec(), path)
    return path


def run(directory: Path, recipe: str = RECIPE) -> dict[str, float]:
    """In-process phases: build the skeleton, read its header, plan (read + compile + lint)."""
    t0 = time.perf_counter()
    path = build(directory)
    t1 = time.perf_counter()
    model = read_model(path)
    t2 = time.perf_counter()
    result = compile_plan(recipe, path)
    t3 = time.perf_counter()
    return {
        "file_size_gb": path.stat().st_size / 1e9,
        "header_mb": model.data_offsets[0] / 1e6,
        "n_tensors": float(len(model.tensors)),
        "n_layers": float(model.n_layer),
        "build_s": t1 - t0,
        "read_header_s": t2 - t1,
        "plan_s": t3 - t2,
        "plan_gib": result.plan.totals.target_bytes / 2**30,
    }


def cli_command(model: Path, recipe: str = RECIPE) -> list[str]:
    return [sys.executable, "-m", "gguf_recipe.cli", "plan", recipe, str(model), "--format", "json"]


def _env(pycache: Path | None, src: Path = ROOT / "src") -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    if pycache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, user + sys CPU) seconds of one run of ``cmd``, from exec to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def whole_process(
    model: Path, runs: int, pycache: Path | None, srcs: Sequence[Path] = (ROOT / "src",)
) -> list[dict[str, float]]:
    """Median wall and CPU seconds of ``runs`` runs of the CLI (after one warm-up run), per source
    tree in ``srcs``; their runs interleave, so a busy machine slows them alike."""
    cmd = cli_command(model)
    envs = [_env(None if pycache is None else pycache / str(i), src) for i, src in enumerate(srcs)]
    for env in envs:
        _timed(cmd, env)
    samples: list[list[tuple[float, float]]] = [[] for _ in envs]
    for _ in range(runs):
        for env, got in zip(envs, samples, strict=True):
            got.append(_timed(cmd, env))
    return [
        {
            "wall_median_s": statistics.median(w for w, _ in got),
            "wall_min_s": min(w for w, _ in got),
            "cpu_median_s": statistics.median(c for _, c in got),
        }
        for got in samples
    ]


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def import_offenders(model: Path, pycache: Path | None) -> list[tuple[str, int, int, int]]:
    """``-X importtime`` of one CLI run: (module, depth, self µs, cumulative µs), in import order."""
    cmd = cli_command(model)
    cmd.insert(1, "-Ximporttime")
    proc = subprocess.run(
        cmd, env=_env(pycache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    rows = []
    for line in proc.stderr.decode().splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            self_us, cum_us, indent, name = m.groups()
            rows.append((name, len(indent) // 2, int(self_us), int(cum_us)))
    return rows


def _print_imports(rows: list[tuple[str, int, int, int]], top: int) -> None:
    total = sum(cum for _, depth, _, cum in rows if depth == 0)
    print(
        f"  -X importtime: {len(rows)} modules, {total / 1e3:.0f} ms in top-level imports (inflated by the tracing)"
    )
    print("  top-level imports by cumulative time:")
    for name, _, _, cum in sorted((r for r in rows if r[1] == 0), key=lambda r: -r[3])[:top]:
        print(f"    {cum / 1e3:8.1f} ms  {name}")
    print("  modules by self time:")
    for name, _, self_us, _ in sorted(rows, key=lambda r: -r[2])[:top]:
        print(f"    {self_us / 1e3:8.1f} ms  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "directory", nargs="?", type=Path, help="where to write the skeleton (default: a temp dir)"
    )
    ap.add_argument("--runs", type=int, default=9, help="whole-process runs (median; default 9)")
    ap.add_argument("--top", type=int, default=12, help="how many imports to list (default 12)")
    ap.add_argument("--in-process", action="store_true", help="only the in-process phases")
    ap.add_argument("--no-bytecode", action="store_true", help="also time it without cached bytecode")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="also time the CLI of this source tree (e.g. an older src/), interleaved",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        directory = args.directory or Path(d)
        r = run(directory)
        print(
            f"planned a {r['file_size_gb']:.0f} GB model ({r['header_mb']:.1f} MB header, {int(r['n_tensors'])} tensors, "
            f"{int(r['n_layers'])} layers) in process: read header {r['read_header_s']:.3f} s, "
            f"plan (read + compile + lint) {r['plan_s']:.3f} s -> {r['plan_gib']:.1f} GiB"
        )
        if args.in_process:
            return
        model = directory / MODEL_FILE
        print(f"whole process: {' '.join(cli_command(model)[1:])}")
        pycache = Path(d) / "pycache"
        srcs = [ROOT / "src"] + ([args.baseline.resolve()] if args.baseline else [])
        modes: list[tuple[str, Path | None]] = [("cached bytecode", pycache)]
        if args.no_bytecode:
            modes.append(("no bytecode for gguf_recipe", None))
        for label, cache in modes:
            for src, w in zip(srcs, whole_process(model, args.runs, cache, srcs), strict=True):
                print(
                    f"  {src}, {label}: wall median {w['wall_median_s']:.3f} s (min {w['wall_min_s']:.3f} s), "
                    f"CPU median {w['cpu_median_s']:.3f} s over {args.runs} runs"
                )
        _print_imports(import_offenders(model, pycache), args.top)


if __name__ == "__main__":
    main()
