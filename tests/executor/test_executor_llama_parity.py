"""Parity with llama.cpp itself: for the same model, mix, imatrix and pruning, the file apply_plan
writes equals the one ``llama_model_quantize`` (the library function behind ``llama-quantize``) writes
— same key/value pairs in the same order, same tensor infos, same tensor bytes — apart from
gguf-recipe's own provenance keys. Runs on tiny synthetic models; needs llama-cpp-python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gguf_recipe.executor import SourceModel, apply_plan
from gguf_recipe.executor.gguf_format import read_header
from gguf_recipe.llamacpp import FTYPE_OF_TYPE, processing_key
from helpers.executor import (
    N_EMBD,
    N_EXPERT,
    N_FF,
    T,
    assert_same_tensors,
    llama_model_quantize,
    llama_quantizable,
    llama_tensors,
    make_plan,
    write_model,
    write_wide_model,
)

FTYPE = {
    t: FTYPE_OF_TYPE[t]
    for t in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.IQ4_NL, T.F16, T.BF16, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K,
              T.Q6_K, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.IQ3_S)
}  # fmt: skip
# 256-wide blocks: these need a wider model than the default 64
WIDE = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.IQ3_S}


def _compare(ours: Path, theirs: Path) -> None:
    a, _ = read_header(ours)
    b, _ = read_header(theirs)
    ka = [(kv.key, kv.raw) for kv in a.kvs if not kv.key.startswith("gguf_recipe.")]
    kb = [(kv.key, kv.raw) for kv in b.kvs]
    assert [k for k, _ in ka] == [k for k, _ in kb]
    for (k, ra), (_, rb) in zip(ka, kb, strict=True):
        assert ra == rb, k
    assert_same_tensors(ours, theirs)


def _plan_like_llama(model: Path, qtype: T, **kw: object) -> object:
    with SourceModel(model) as src:
        infos = dict(src.tensors)
    order = sorted(infos, key=processing_key)
    targets = {n: (qtype if llama_quantizable(n, infos[n].shape) else infos[n].qtype) for n in order}
    return make_plan(model, targets, default=None, ftype=FTYPE[qtype], order=order, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("qtype", list(FTYPE), ids=[t.name for t in FTYPE])
def test_pure_mix_equals_llama_quantize(tmp_path: Path, qtype: T) -> None:
    if qtype in WIDE:
        model = write_wide_model(tmp_path / "m.gguf", 41)
    else:
        model = write_model(tmp_path / "m.gguf", llama_tensors(41))
    plan = _plan_like_llama(model, qtype)
    ours = apply_plan(plan, model, tmp_path / "ours.gguf", progress=False).outputs[0]  # type: ignore[arg-type]
    llama_model_quantize(model, tmp_path / "llama.gguf", ftype=FTYPE[qtype])
    _compare(ours, tmp_path / "llama.gguf")


def test_imatrix_and_pruning_equal_llama_quantize(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(42, n_layer=4), n_layer=4)
    rng = np.random.default_rng(5)
    weights = {
        "blk.0.attn_q.weight": rng.random(N_EMBD, dtype=np.float32) + 0.1,
        "blk.2.ffn_down.weight": rng.random(N_FF, dtype=np.float32) + 0.1,  # becomes blk.1
        "blk.3.ffn_up.weight": rng.random(N_EMBD, dtype=np.float32) + 0.1,  # becomes blk.2
        "output.weight": rng.random(N_EMBD, dtype=np.float32) + 0.1,
    }
    # hand our executor the same normalised entries llama gets (file formats are tested elsewhere)
    from gguf_recipe.executor.imatrix import Imatrix

    im = Imatrix(tmp_path / "im", "legacy", dict(weights), (), 0, 0, "0" * 64)
    plan = _plan_like_llama(model, T.Q4_0, prune=[1], imatrix=True)
    ours = apply_plan(plan, model, tmp_path / "ours.gguf", imatrix=im, progress=False).outputs[0]  # type: ignore[arg-type]
    llama_model_quantize(model, tmp_path / "llama.gguf", ftype=2, imatrix=weights, prune=[1])
    # llama-quantize's *tool* adds the quantize.imatrix.* keys; the library call does not
    h, _ = read_header(ours)
    assert h.kv("quantize.imatrix.file") is not None
    _strip_and_compare(ours, tmp_path / "llama.gguf")


def _strip_and_compare(ours: Path, theirs: Path) -> None:
    a, _ = read_header(ours)
    b, _ = read_header(theirs)
    ka = [(kv.key, kv.raw) for kv in a.kvs if not kv.key.startswith(("gguf_recipe.", "quantize.imatrix."))]
    assert ka == [(kv.key, kv.raw) for kv in b.kvs]
    assert [(t.name, t.shape, t.qtype, t.offset) for t in a.tensors] == [
        (t.name, t.shape, t.qtype, t.offset) for t in b.tensors
    ]
    assert ours.read_bytes()[a.data_offset :] == theirs.read_bytes()[b.data_offset :]


def test_moe_experts_with_per_expert_imatrix_equal_llama_quantize(tmp_path: Path) -> None:
    model = write_model(
        tmp_path / "m.gguf",
        llama_tensors(43, moe=True),
        extra_kv={"llama.expert_count": N_EXPERT, "llama.expert_used_count": 2},
    )
    rng = np.random.default_rng(6)
    weights = {
        "blk.0.ffn_gate_exps.weight": rng.random(N_EXPERT * N_EMBD, dtype=np.float32) + 0.1,
        "blk.0.ffn_down_exps.weight": rng.random(N_EXPERT * N_FF, dtype=np.float32) + 0.1,
    }
    from gguf_recipe.executor.imatrix import Imatrix

    im = Imatrix(tmp_path / "im", "gguf", dict(weights), (), 0, 0, "0" * 64)
    plan = _plan_like_llama(model, T.Q4_0, imatrix=True)
    ours = apply_plan(
        plan,  # type: ignore[arg-type]
        model,
        tmp_path / "ours.gguf",
        imatrix=im,
        progress=False,
        chunk_values=40 * N_EMBD,
    )
    llama_model_quantize(model, tmp_path / "llama.gguf", ftype=2, imatrix=weights, threads=2)
    _strip_and_compare(ours.outputs[0], tmp_path / "llama.gguf")


# ftype whose default type is the key (IQ2_S files default to IQ2_XS; IQ2_M ones to IQ2_S)
IMATRIX_TYPES = {T.IQ2_XXS: 19, T.IQ2_XS: 20, T.IQ2_S: 29, T.IQ3_XXS: 23, T.IQ1_S: 24, T.IQ1_M: 31}


@pytest.mark.parametrize("qtype", list(IMATRIX_TYPES), ids=[t.name for t in IMATRIX_TYPES])
def test_imatrix_types_equal_llama_quantize(tmp_path: Path, qtype: T) -> None:
    """The very low-bit types, which llama-quantize only makes with an imatrix (one per matrix here)."""
    # a few small matrices: these quantizers are the slowest
    rng = np.random.default_rng(44)
    tensors = {
        "blk.0.attn_norm.weight": (1 + rng.standard_normal(256) * 0.05).astype(np.float32),
        "blk.0.attn_q.weight": (rng.standard_normal((32, 256)) * 0.05).astype(np.float32),
        "blk.0.ffn_down.weight": (rng.standard_normal((16, 512)) * 0.05).astype(np.float32),
    }
    model = write_model(tmp_path / "m.gguf", tensors, n_layer=1, n_embd=256, n_ff=512)
    rng = np.random.default_rng(7)
    with SourceModel(model) as src:
        weights = {
            n: rng.random(t.shape[0], dtype=np.float32) + 0.1
            for n, t in src.tensors.items()
            if llama_quantizable(n, t.shape)
        }
    from gguf_recipe.executor.imatrix import Imatrix

    im = Imatrix(tmp_path / "im", "gguf", dict(weights), (), 0, 0, "0" * 64)
    with SourceModel(model) as src:
        infos = dict(src.tensors)
    order = sorted(infos, key=processing_key)
    targets = {n: (qtype if llama_quantizable(n, infos[n].shape) else infos[n].qtype) for n in order}
    plan = make_plan(model, targets, default=None, ftype=IMATRIX_TYPES[qtype], order=order, imatrix=True)
    ours = apply_plan(plan, model, tmp_path / "ours.gguf", imatrix=im, progress=False).outputs[0]
    llama_model_quantize(
        model, tmp_path / "llama.gguf", ftype=IMATRIX_TYPES[qtype], imatrix=weights, threads=2
    )
    _strip_and_compare(ours, tmp_path / "llama.gguf")
