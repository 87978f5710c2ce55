"""Benchmark ``apply_plan`` on a synthetic 1B-class llama model, and llama-quantize beside it.

    python benchmarks/apply.py                       # TinyLlama-1.1B shapes, F16 -> Q8_0
    python benchmarks/apply.py --layers 4 --type q4_0
    python benchmarks/apply.py --recipe llama.cpp/Q4_K_M --layers 8   # a built-in mix, not one type
    python benchmarks/apply.py --llama-quantize /path/to/llama-quantize

The model (F16, random weights, a llama vocabulary so llama.cpp can load it) is streamed to disk with
gguf-recipe's own writer and cached in ``--dir``. The plan is "every matrix to TYPE, vectors copied",
in llama.cpp's tensor order, which is what ``llama-quantize --pure`` does, or with ``--recipe`` a
recipe compiled against the model (``llama.cpp/Q4_K_M`` is llama-quantize's ``Q4_K_M``). When a
``llama-quantize`` binary is found (``--llama-quantize``, ``$LLAMA_QUANTIZE`` or PATH), or else
llama-cpp-python's ``llama_model_quantize`` (the same library code), it runs on the same model with
the same mix and the script prints the time ratio and whether the tensor data is byte-identical.

Each run happens in a child process. Peak memory is the child's own (``wait4``); for gguf-recipe it is
the larger of that and what ``apply_plan`` reports, which adds up the peaks of its worker processes.
CPU time is the child's user + system time, its worker processes and threads included. Both sides run
``--rounds`` times (default 2), alternating which goes first, and every round prints both sides' wall
time, CPU time, peak memory and their ratios; the first round also compares the tensor data. On a shared
machine wall times are noisy: compare the sides within a round.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from gguf_recipe import quants
from gguf_recipe.executor import SourceModel, apply_plan, model_fingerprint
from gguf_recipe.executor.gguf_format import OutTensor, pack_kv, tensor_nbytes
from gguf_recipe.executor.writer import StreamingWriter, plan_layout
from gguf_recipe.llamacpp import FTYPE_OF_TYPE, processing_key
from gguf_recipe.plan import Fingerprints, Plan, PlannedTensor, PlanTotals

T = GGMLQuantizationType

# TinyLlama-1.1B
N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_VOCAB, N_LAYER = 2048, 5632, 32, 4, 32000, 22


def model_tensors(n_layer: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, ggml shape) in the order convert_hf_to_gguf writes them."""
    kv = N_EMBD * N_HEAD_KV // N_HEAD
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (N_EMBD, N_VOCAB))]
    for i in range(n_layer):
        p = f"blk.{i}."
        out += [
            (p + "attn_norm.weight", (N_EMBD,)),
            (p + "attn_q.weight", (N_EMBD, N_EMBD)),
            (p + "attn_k.weight", (N_EMBD, kv)),
            (p + "attn_v.weight", (N_EMBD, kv)),
            (p + "attn_output.weight", (N_EMBD, N_EMBD)),
            (p + "ffn_norm.weight", (N_EMBD,)),
            (p + "ffn_gate.weight", (N_EMBD, N_FF)),
            (p + "ffn_up.weight", (N_EMBD, N_FF)),
            (p + "ffn_down.weight", (N_FF, N_EMBD)),
        ]
    out += [("output_norm.weight", (N_EMBD,)), ("output.weight", (N_EMBD, N_VOCAB))]
    return out


def model_kvs(n_layer: int) -> list[bytes]:
    S, U32, F32, A = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.ARRAY
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"tok{i}" for i in range(N_VOCAB - len(tokens))]
    ttype = [2, 3, 3] + [6] * 256 + [1] * (N_VOCAB - 259)
    return [
        pack_kv("general.architecture", S, "llama"),
        pack_kv("general.name", S, f"synthetic-llama-{n_layer}L"),
        pack_kv("general.file_type", U32, 1),
        pack_kv("llama.block_count", U32, n_layer),
        pack_kv("llama.context_length", U32, 2048),
        pack_kv("llama.embedding_length", U32, N_EMBD),
        pack_kv("llama.feed_forward_length", U32, N_FF),
        pack_kv("llama.attention.head_count", U32, N_HEAD),
        pack_kv("llama.attention.head_count_kv", U32, N_HEAD_KV),
        pack_kv("llama.rope.freq_base", F32, 10000.0),
        pack_kv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        pack_kv("llama.rope.dimension_count", U32, N_EMBD // N_HEAD),
        pack_kv("tokenizer.ggml.model", S, "llama"),
        pack_kv("tokenizer.ggml.tokens", A, tokens, S),  # type: ignore[arg-type]
        pack_kv("tokenizer.ggml.scores", A, [0.0] * N_VOCAB, F32),
        pack_kv("tokenizer.ggml.token_type", A, ttype, GGUFValueType.INT32),  # type: ignore[arg-type]
        pack_kv("tokenizer.ggml.bos_token_id", U32, 1),
        pack_kv("tokenizer.ggml.eos_token_id", U32, 2),
        pack_kv("tokenizer.ggml.unknown_token_id", U32, 0),
    ]


def write_model(path: Path, n_layer: int) -> None:
    """Stream a random F16 model to ``path`` (vectors F32), one row chunk at a time."""
    tensors = model_tensors(n_layer)
    outs = [
        OutTensor(n, s, T.F16 if len(s) > 1 else T.F32, tensor_nbytes(s, T.F16 if len(s) > 1 else T.F32))
        for n, s in tensors
    ]
    layout = plan_layout(path, model_kvs(n_layer), outs)
    w = StreamingWriter(layout, run_key="bench-model", durable=False)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22) * 0.02).astype(np.float32)  # values reused with random offsets
    w.start(resume=False)
    try:
        for i, t in enumerate(outs):
            w.begin_tensor(i)
            n = int(np.prod(t.shape))
            if t.qtype == T.F32:
                w.write((1 + pool[:n]).astype(np.float32))
            else:
                step = 1 << 21
                for start in range(0, n, step):
                    m = min(step, n - start)
                    off = int(rng.integers(0, pool.size - m))
                    w.write((pool[off : off + m] * np.float32(rng.uniform(0.5, 2))).astype(np.float16))
            w.end_tensor()
        w.finalize()
    except BaseException:
        w.abort(keep_partial=False)
        raise


def make_plan(model: Path, target: GGMLQuantizationType) -> Plan:
    with SourceModel(model) as src:
        infos = sorted(src.tensors.values(), key=lambda t: processing_key(t.name))
    tensors = []
    for t in infos:
        q = target if len(t.shape) > 1 else t.qtype
        tensors.append(
            PlannedTensor(
                name=t.name, source_name=t.name, shape=list(t.shape), source_type=t.qtype.name.lower(),
                type=q.name.lower(), action="quantize" if q != t.qtype else "copy", rule="bench",
                decision="base", needs_imatrix=False, source_bytes=t.nbytes,
                target_bytes=tensor_nbytes(t.shape, q),
            )
        )  # fmt: skip
    n_el = sum(int(np.prod(p.shape)) for p in tensors)
    tb = sum(p.target_bytes for p in tensors)
    text = f"name: bench\nbase: {target.name.lower()}\n"
    return Plan(
        recipe_name="bench", recipe_text=text, model_path=str(model), ftype=None,
        fingerprints=Fingerprints(recipe=hashlib.sha256(text.encode()).hexdigest(), model=model_fingerprint(model)),
        tensors=tensors,
        totals=PlanTotals(
            n_tensors=len(tensors), n_elements=n_el, source_bytes=sum(p.source_bytes for p in tensors),
            target_bytes=tb, bpw=tb * 8 / n_el, by_type={}, n_fallbacks=0,
        ),
    )  # fmt: skip


LLAMA_CPP_CHILD = """
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.nthread = int(sys.argv[4]); p.pure = sys.argv[5] == "pure"
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))
"""


@dataclass
class Run:
    wall: float  # seconds
    cpu: float  # user + system seconds of the child and the children it waited for
    rss: int  # peak resident bytes
    rc: int
    out: str


def run_child(cmd: list[str]) -> Run:
    """Run ``cmd`` and measure it."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        log.seek(0)
        out = log.read().decode(errors="replace")
    return Run(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, p.returncode, out)


def tensor_digests(path: Path) -> dict[str, str]:
    with SourceModel(path) as m:
        out = {}
        for name, info in m.tensors.items():
            h = hashlib.sha256()
            for chunk in m.iter_raw_chunks(info, 1 << 26):
                h.update(chunk.tobytes())
            out[name] = f"{info.qtype.name}:{h.hexdigest()}"
    return out


def find_llama_quantize(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("LLAMA_QUANTIZE"), shutil.which("llama-quantize")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--layers", type=int, default=N_LAYER, help=f"transformer blocks (default {N_LAYER}: ~1.1B)"
    )
    ap.add_argument("--type", default="q8_0", help="target type for every matrix (default q8_0)")
    ap.add_argument(
        "--recipe", default=None, help="a recipe or built-in mix instead of --type, e.g. llama.cpp/Q4_K_M"
    )
    ap.add_argument("--parallel", default="auto", choices=["auto", "processes", "threads"])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "gguf-recipe-bench")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk-values", type=int, default=None)
    ap.add_argument("--llama-quantize", default=None, help="llama-quantize binary to compare with")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved runs of both sides (default 2; a busy machine is noisy)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the outputs (the source model is always kept)")
    ap.add_argument("--child", nargs=3, metavar=("PLAN", "MODEL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        kw: dict[str, Any] = {"threads": a.threads, "progress": False, "parallel": a.parallel}
        if a.chunk_values:
            kw["chunk_values"] = a.chunk_values
        res = apply_plan(Plan.load(a.child[0]), a.child[1], a.child[2], **kw)
        print(
            json.dumps(
                {
                    "seconds": res.seconds,
                    "bytes_in": res.source_bytes,
                    "bytes_out": res.output_bytes,
                    "peak_rss": res.peak_rss_bytes,
                }
            )
        )
        return 0

    target = quants.parse_qtype(a.type)
    if target not in quants.implemented_types():
        print(f"{target.name} is not implemented yet", file=sys.stderr)
        return 2
    a.dir.mkdir(parents=True, exist_ok=True)
    model = a.dir / f"synthetic-llama-{a.layers}L-f16.gguf"
    if not model.exists():
        t0 = time.monotonic()
        write_model(model, a.layers)
        print(f"wrote {model} ({model.stat().st_size / 1e9:.2f} GB) in {time.monotonic() - t0:.1f} s")
    if a.recipe:
        from gguf_recipe.compiler import compile_plan

        plan = compile_plan(a.recipe, model).plan
        mix = a.recipe
        ftype = plan.ftype if plan.ftype is not None else FTYPE_OF_TYPE[target]
    else:
        plan = make_plan(model, target)
        mix = f"matrices -> {target.name}"
        ftype = FTYPE_OF_TYPE[target]
    tag = (a.recipe or target.name).replace("/", "-").lower()
    plan_path = a.dir / "plan.json"
    plan.save(plan_path)
    n_params = plan.totals.n_elements
    size_in = model.stat().st_size
    print(f"model: {n_params / 1e9:.2f} B parameters, {size_in / 1e9:.2f} GB F16; plan: {mix}")

    ours_out = a.dir / f"ours-{tag}.gguf"
    ours_cmd = [sys.executable, __file__, "--child", str(plan_path), str(model), str(ours_out)]
    if a.threads:
        ours_cmd += ["--threads", str(a.threads)]
    if a.chunk_values:
        ours_cmd += ["--chunk-values", str(a.chunk_values)]
    ours_cmd += ["--parallel", a.parallel]

    lq = find_llama_quantize(a.llama_quantize)
    threads = str(a.threads or os.cpu_count() or 1)
    label = "llama-quantize"
    ref_cmd: list[str] | None = None
    ref_out = a.dir / f"llama-quantize-{tag}.gguf"
    if lq is not None:
        ref_cmd = [lq, *([] if a.recipe else ["--pure"]), str(model), str(ref_out), str(ftype), threads]
    elif importlib.util.find_spec("llama_cpp") is not None:
        # no binary: the same library function (llama_model_quantize) through llama-cpp-python
        label = "llama.cpp (lib)"
        ref_out = a.dir / f"llama-cpp-{tag}.gguf"
        ref_cmd = [
            sys.executable,
            "-c",
            LLAMA_CPP_CHILD,
            str(model),
            str(ref_out),
            str(ftype),
            threads,
            "mix" if a.recipe else "pure",
        ]
    else:
        print(
            "llama-quantize: not found (--llama-quantize, $LLAMA_QUANTIZE, PATH or llama-cpp-python); no comparison"
        )

    def line(who: str, r: Run, out: Path) -> str:
        return (
            f"  {who:15s}: {r.wall:7.2f} s wall, {r.cpu:7.2f} s CPU, {size_in / r.wall / 1e6:7.1f} MB/s in, "
            f"peak RSS {r.rss / 2**20:7.1f} MiB, output {out.stat().st_size / 1e9:.3f} GB"
        )

    # Rounds alternate which side runs first, so that a busy machine weighs on both alike.
    rows: list[tuple[Run, Run | None]] = []
    for rnd in range(a.rounds):
        order = ["ours", "ref"] if rnd % 2 == 0 else ["ref", "ours"]
        ours: Run | None = None
        ref: Run | None = None
        for side in order:
            if side == "ours":
                ours = run_child(ours_cmd)
                if ours.rc:
                    print(ours.out)
                    return ours.rc
                ours.rss = max(ours.rss, json.loads(ours.out.strip().splitlines()[-1])["peak_rss"])
            elif ref_cmd is not None:
                ref = run_child(ref_cmd)
                if ref.rc:
                    print(ref.out[-3000:])
                    return ref.rc
        assert ours is not None
        print(f"round {rnd + 1}/{a.rounds} ({' then '.join(order)}):")
        print(line("gguf-recipe", ours, ours_out))
        if ref is not None:
            print(line(label, ref, ref_out))
            ident = ""
            if rnd == 0:
                d_ours, d_ref = tensor_digests(ours_out), tensor_digests(ref_out)
                same = sum(1 for k in d_ref if d_ours.get(k) == d_ref[k])
                ident = f"; tensor data byte-identical: {same}/{len(d_ref)} tensors"
            print(
                f"  ratio (gguf-recipe / {label}): wall {ours.wall / ref.wall:.2f}x, CPU {ours.cpu / ref.cpu:.2f}x, "
                f"peak RSS {ours.rss / ref.rss:.2f}x{ident}"
            )
        rows.append((ours, ref))
    if len(rows) > 1 and ref_cmd is not None:
        walls = sorted(o.wall / r.wall for o, r in rows if r is not None)
        print(
            f"wall ratio over {len(walls)} rounds: median {walls[len(walls) // 2]:.2f}x, best {walls[0]:.2f}x, worst {walls[-1]:.2f}x"
        )
    if not a.keep:
        ours_out.unlink()
        if ref_cmd is not None and ref_out.exists():
            ref_out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
