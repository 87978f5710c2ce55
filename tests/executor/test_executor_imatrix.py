"""Importance matrices: both llama.cpp formats, normalised exactly as llama-quantize, refused when they
do not fit, and their coverage reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from gguf_recipe import quants
from gguf_recipe.executor import ImatrixError, StalePlanError, apply_plan, entry_names, load_imatrix
from helpers.executor import (
    N_EMBD,
    N_FF,
    T,
    llama_tensors,
    make_plan,
    sha256_file,
    source_rows,
    write_gguf_imatrix,
    write_legacy_imatrix,
    write_model,
)


def _out_bytes(path: Path, name: str) -> bytes:
    t = next(t for t in GGUFReader(str(path)).tensors if t.name == name)
    return np.asarray(t.data).tobytes()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.gguf", llama_tensors(21, moe=True))


# ------------------------------------------------------------------------------------- reading


def test_legacy_format_normalised_by_ncall(tmp_path: Path) -> None:
    vals = np.linspace(1, 9, 64, dtype=np.float32)
    p = write_legacy_imatrix(
        tmp_path / "im.dat",
        {"a.weight": (7, vals), "b.weight": (0, vals)},
        chunks=42,
        dataset="calib.txt",
    )
    im = load_imatrix(p)
    assert im.format == "legacy"
    assert im.chunk_count == 42
    assert im.datasets == ("calib.txt",)
    np.testing.assert_array_equal(im.entries["a.weight"], (vals / np.float32(7)).astype(np.float32))
    np.testing.assert_array_equal(im.entries["b.weight"], vals)  # ncall 0: values as stored
    assert entry_names(p) == ["a.weight", "b.weight"]


def test_legacy_format_without_trailer(tmp_path: Path) -> None:
    p = write_legacy_imatrix(tmp_path / "im.dat", {"a.weight": (1, np.ones(32))}, chunks=None)
    im = load_imatrix(p)
    assert im.chunk_count == 0 and im.datasets == ()


def test_gguf_format_normalised_per_expert(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sums = rng.random((4, 64), dtype=np.float32) * 100
    counts = np.array([3.0, 0.0, 5.4, 2.5], dtype=np.float32)  # lround: 3, 0, 5, 3
    p = write_gguf_imatrix(tmp_path / "im.gguf", {"x.weight": (sums, counts)}, chunk_count=9, chunk_size=256)
    im = load_imatrix(p)
    assert im.format == "gguf"
    assert (im.chunk_count, im.chunk_size, im.datasets) == (9, 256, ("calib.txt",))
    e = im.entries["x.weight"].reshape(4, 64)
    np.testing.assert_array_equal(e[0], sums[0] / np.float32(3))
    np.testing.assert_array_equal(e[1], np.ones(64, np.float32))  # zero count: weights of 1
    np.testing.assert_array_equal(e[2], sums[2] / np.float32(5))
    np.testing.assert_array_equal(e[3], sums[3] / np.float32(3))
    assert e.dtype == np.float32


def test_gguf_without_metadata_refused(tmp_path: Path) -> None:
    p = write_gguf_imatrix(tmp_path / "im.gguf", {"x.weight": (np.ones(32), np.ones(1))}, metadata=False)
    with pytest.raises(ImatrixError, match="missing imatrix metadata"):
        load_imatrix(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_refused(tmp_path: Path, bad: float) -> None:
    vals = np.ones(64, np.float32)
    vals[5] = bad
    p = write_legacy_imatrix(tmp_path / "im.dat", {"blk.0.attn_q.weight": (1, vals)})
    with pytest.raises(ImatrixError, match=r"non-finite value .* at index 5"):
        load_imatrix(p)


@pytest.mark.parametrize("fmt", ["legacy", "gguf"])
def test_negative_values_refused(tmp_path: Path, fmt: str) -> None:
    """A negative importance weight makes the quantizers' weighted error degenerate (a tensor can come
    out as all zeros): refused, naming the entry and the file."""
    vals = np.ones(64, np.float32)
    vals[7] = -0.25
    name = "blk.0.attn_q.weight"
    if fmt == "legacy":
        p = write_legacy_imatrix(tmp_path / "im.dat", {name: (1, vals)})
    else:
        p = write_gguf_imatrix(tmp_path / "im.gguf", {name: (vals.reshape(1, 64), np.array([3.0]))})
    with pytest.raises(
        ImatrixError, match=rf"{p}: imatrix entry '{name}' contains a negative value .* at index 7"
    ):
        load_imatrix(p)


@pytest.mark.parametrize(
    "data", [b"", b"\x01\x00", b"\xff\xff\xff\x7f" + b"\0" * 20, b"GGUF\x03\0\0\0garbage"]
)
def test_garbage_files_give_clear_errors(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "im.dat"
    p.write_bytes(data)
    with pytest.raises(ImatrixError, match="imatrix"):
        load_imatrix(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match=r"the imatrix .*nope\.dat: no such file"):
        load_imatrix(tmp_path / "nope.dat")


# ------------------------------------------------------------------------------------- applying


def test_weights_reach_the_quantizer_legacy(model: Path, tmp_path: Path) -> None:
    name = "blk.1.attn_q.weight"
    vals = np.random.default_rng(1).random(N_EMBD, dtype=np.float32) * 10 + 0.1
    im = write_legacy_imatrix(tmp_path / "im.dat", {name: (4, vals)})
    plan = make_plan(model, {name: T.Q4_0}, default=None, imatrix=[name])
    res = apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False)
    w = (vals / np.float32(4)).astype(np.float32)
    rows = source_rows(model, name)
    got = _out_bytes(res.outputs[0], name)
    assert got == quants.quantize(rows, T.Q4_0, w).tobytes()
    assert got != quants.quantize(rows, T.Q4_0).tobytes()
    assert res.imatrix is not None
    assert (res.imatrix.wanted, res.imatrix.used, res.imatrix.missing) == (1, 1, ())


def test_weights_per_expert_gguf(model: Path, tmp_path: Path) -> None:
    name = "blk.0.ffn_gate_exps.weight"
    rng = np.random.default_rng(2)
    sums = rng.random((4, N_EMBD), dtype=np.float32) * 50
    counts = np.array([10, 0, 7, 3], np.float32)
    im = write_gguf_imatrix(tmp_path / "im.gguf", {name: (sums, counts)})
    plan = make_plan(model, {name: T.Q4_0}, default=None, imatrix=[name], imatrix_fingerprint=sha256_file(im))
    # chunks of 48 rows: never across an expert boundary (128 rows each)
    res = apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False, chunk_values=48 * N_EMBD)
    rows = source_rows(model, name).reshape(4, N_FF, N_EMBD)
    expected = b""
    for e in range(4):
        w = sums[e] / counts[e] if counts[e] > 0 else np.ones(N_EMBD, np.float32)
        expected += quants.quantize(rows[e], T.Q4_0, w.astype(np.float32)).tobytes()
    assert _out_bytes(res.outputs[0], name) == expected


def test_entry_of_wrong_size_refused_and_nothing_written(model: Path, tmp_path: Path) -> None:
    name = "blk.0.attn_q.weight"
    im = write_legacy_imatrix(tmp_path / "im.dat", {name: (1, np.ones(N_EMBD * 2, np.float32))})
    plan = make_plan(model, {name: T.Q4_0}, default=None, imatrix=[name])
    with pytest.raises(ImatrixError, match=r"has 128 values but the tensor needs 64"):
        apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im.dat", "m.gguf"]


def test_token_embedding_mismatch_ignored_like_llama_quantize(model: Path, tmp_path: Path) -> None:
    im = write_legacy_imatrix(tmp_path / "im.dat", {"token_embd.weight": (1, np.ones(7, np.float32))})
    plan = make_plan(model, {"token_embd.weight": T.Q4_0}, default=None, imatrix=["token_embd.weight"])
    res = apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False)
    assert res.imatrix is not None and res.imatrix.missing == ("token_embd.weight",)
    assert any("token embedding" in w for w in res.warnings)


def test_coverage_reports_planned_tensors_without_entry(model: Path, tmp_path: Path) -> None:
    have = "blk.0.attn_k.weight"
    want = [have, "blk.1.attn_k.weight", "blk.2.attn_k.weight"]
    im = write_legacy_imatrix(tmp_path / "im.dat", {have: (1, np.ones(N_EMBD, np.float32))})
    plan = make_plan(model, dict.fromkeys(want, T.Q4_0), default=None, imatrix=want)
    res = apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False)
    assert res.imatrix is not None
    assert (res.imatrix.wanted, res.imatrix.used) == (3, 1)
    assert res.imatrix.missing == ("blk.1.attn_k.weight", "blk.2.attn_k.weight")
    assert "1/3 planned tensors covered" in res.summary()
    assert "blk.1.attn_k.weight" in res.summary()


def test_pruned_model_looks_entries_up_by_source_name(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(22))
    src_name = "blk.2.attn_q.weight"  # becomes blk.1 after pruning layer 1
    vals = np.random.default_rng(3).random(N_EMBD, dtype=np.float32) + 0.5
    im = write_legacy_imatrix(tmp_path / "im.dat", {src_name: (1, vals)})
    plan = make_plan(model, {src_name: T.Q4_0}, default=None, prune=[1], imatrix=[src_name])
    res = apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False)
    expected = quants.quantize(source_rows(model, src_name), T.Q4_0, vals).tobytes()
    assert _out_bytes(res.outputs[0], "blk.1.attn_q.weight") == expected


def test_imatrix_other_than_planned_is_stale(model: Path, tmp_path: Path) -> None:
    name = "blk.0.attn_q.weight"
    im = write_legacy_imatrix(tmp_path / "im.dat", {name: (1, np.ones(N_EMBD, np.float32))})
    plan = make_plan(model, {name: T.Q4_0}, default=None, imatrix=[name], imatrix_fingerprint="0" * 64)
    with pytest.raises(StalePlanError, match="not the one the plan was made with"):
        apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False)
    with pytest.raises(StalePlanError, match="none was given"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    res = apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False, force=True)
    assert any("stale plan" in w for w in res.warnings)


def test_types_that_need_an_imatrix_refused_without_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    model = write_model(
        tmp_path / "m.gguf",
        {"blk.0.attn_q.weight": rng.standard_normal((4, 256)).astype(np.float32)},
        n_layer=1,
    )
    plan = make_plan(model, {"blk.0.attn_q.weight": T.IQ2_XXS})
    with pytest.raises(ImatrixError, match="needs importance weights"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("count", [float("nan"), float("inf"), 1e30])
def test_gguf_impossible_counts_refused(tmp_path: Path, count: float) -> None:
    name = "blk.0.attn_q.weight"
    p = write_gguf_imatrix(tmp_path / "im.gguf", {name: (np.ones((1, 64)), np.array([count]))})
    with pytest.raises(ImatrixError, match=f"entry '{name}' has a non-finite or impossible count"):
        load_imatrix(p)
