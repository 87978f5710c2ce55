"""``recipe measure``: per-tensor quantization error and bytes of every candidate type.

The errors are checked against a direct computation (our quantizers, gguf-py's dequantizer, float64
sums written out here) and against the bytes ``recipe apply`` really writes; then sampling, resume,
the cache, bad input and the CLI. Small synthetic models (``helpers.executor``); the real model only
for its 576-wide rows (fallbacks) and a real Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import quants as gguf_quants
from typer.testing import CliRunner

from gguf_recipe import quants
from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_plan
from gguf_recipe.executor import ImatrixError, NullProgress, apply_plan
from gguf_recipe.executor.imatrix import load_imatrix
from gguf_recipe.measure import (
    MIN_ROWS,
    MeasureError,
    MeasureInterrupted,
    Measurement,
    default_measure_path,
    find_measurement,
    imatrix_fingerprint,
    measure_model,
    n_sample_rows,
    sample_rows,
)
from gguf_recipe.recipe.typenames import ggml_name
from helpers.executor import (
    T,
    llama_tensors,
    source_rows,
    write_gguf_imatrix,
    write_legacy_imatrix,
    write_model,
)

runner = CliRunner()

N_EMBD, N_FF, N_EXPERT = 256, 256, 4  # 256 wide: k-quants and IQ types fit
# 1-D tensors and norms are not measured; the rest are
MATRICES = ["token_embd.weight", "output.weight"] + [
    f"blk.0.{n}.weight"
    for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
]


def tiny_moe(path: Path, seed: int = 5) -> Path:
    """One MoE layer (4 experts), 256 wide, F16: 9 measured tensors, ~0.9 M values."""
    t = llama_tensors(seed, n_layer=1, moe=True, n_embd=N_EMBD, n_ff=N_FF)
    return write_model(path, t, n_layer=1, n_embd=N_EMBD, n_ff=N_FF)


def imatrix_entries(seed: int = 9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """GGUF imatrix entries (sums, counts) as llama-imatrix writes them: every matrix but the token
    embedding (a lookup, never a matmul input), one row of sums per expert; weights = sums / counts."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in MATRICES:
        if name == "token_embd.weight":
            continue
        ne0 = N_FF if name.endswith("ffn_down_exps.weight") else N_EMBD
        n = N_EXPERT if "_exps" in name else 1
        counts = np.full(n, 10.0, dtype=np.float32)
        sums = (rng.exponential(1.0, size=(n, ne0)) * 10).astype(np.float32)
        out[name] = (sums, counts)
    return out


def weights_of(entries: dict[str, tuple[np.ndarray, np.ndarray]], name: str) -> np.ndarray | None:
    """The normalised weights (n_matrices, ne0), computed here as llama-quantize does."""
    if name not in entries:
        return None
    sums, counts = entries[name]
    return (sums / counts.astype(np.float32)[:, None]).astype(np.float32)


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_moe(tmp_path_factory.mktemp("measure") / "moe.gguf")


@pytest.fixture(scope="module")
def moe_imatrix(moe: Path) -> Path:
    return write_gguf_imatrix(moe.parent / "moe.imatrix.gguf", imatrix_entries())


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own measurement cache (find_measurement's default location)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def direct_error(
    x: np.ndarray, qtype: T, w: np.ndarray | None, rows_per_mat: int, rows: np.ndarray | None = None
) -> tuple[float, float]:
    """(sum of w*(x - dequant(quant(x)))^2, sum of w*x^2) over ``rows`` (default all), each matrix
    quantized with its own weights: written out with numpy, gguf-py's dequantize and math.fsum."""
    idx = np.arange(len(x)) if rows is None else rows
    err: list[float] = []
    ref: list[float] = []
    for m in sorted({int(r) // rows_per_mat for r in idx}):
        sel = np.array([r for r in idx if r // rows_per_mat == m])
        xm = x[sel]
        wm = None if w is None else w[m]
        q = quants.quantize(xm, qtype, wm, threads=1)
        xhat = np.asarray(gguf_quants.dequantize(q, qtype), dtype=np.float32).reshape(xm.shape)
        d2 = (xm.astype(np.float64) - xhat.astype(np.float64)) ** 2
        x2 = xm.astype(np.float64) ** 2
        ww = np.ones(xm.shape[1]) if wm is None else wm.astype(np.float64)
        err += [float((r * ww).sum()) for r in d2]
        ref += [float((r * ww).sum()) for r in x2]
    return math.fsum(err), math.fsum(ref)


def rows_per_mat(shape: list[int]) -> int:
    return shape[1]


def same_but_time(a: Path, b: Path) -> None:
    """Two measurement files equal in everything but the seconds they took."""
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    da.pop("seconds")
    db.pop("seconds")
    assert da == db


# ------------------------------------------------------------------------------ the numbers themselves


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["plain", "imatrix"])
def test_error_matches_direct_computation(
    moe: Path, moe_imatrix: Path, tmp_path: Path, with_imatrix: bool
) -> None:
    """Every row measured (small tensors): each candidate's error and the reference are exactly the
    direct sums; with an imatrix each expert is quantized and weighted with its own weights."""
    types = ["q8_0", "q4_K", "iq4_nl"] + (["iq2_xs"] if with_imatrix else [])
    m = measure_model(
        moe,
        imatrix=moe_imatrix if with_imatrix else None,
        types=types,
        max_rows=10_000,
        threads=1,
        out=tmp_path / "m.json",
        progress=False,
    )
    assert m.complete and sorted(m.tensors) == sorted(MATRICES)
    assert m.metric.startswith("imatrix" if with_imatrix else "squared")
    entries = imatrix_entries()
    for name, tm in m.tensors.items():
        assert tm.sampled_rows == tm.n_rows  # small: measured exactly
        x = source_rows(moe, name)
        w = weights_of(entries, name) if with_imatrix else None
        assert tm.imatrix == (w is not None)
        for t in types:
            qt = quants.parse_qtype(t)
            if t == "iq2_xs" and w is None:  # llama.cpp cannot make IQ2_XS without weights
                assert "needs importance weights" in tm.impossible["iq2_xs"]
                continue
            err, ref = direct_error(x, qt, w, rows_per_mat(tm.shape))
            assert tm.candidates[t].error == pytest.approx(err, rel=1e-12, abs=0), (name, t)
            assert tm.reference == pytest.approx(ref, rel=1e-12), name
            assert tm.candidates[t].error > 0
        assert tm.candidates["f16"].error == 0.0  # the source type itself: `keep`
    # the imatrix changes the quantization too, not only the weighting: quantized with its weights,
    # an expert's weighted error is smaller than that of the plain quantization
    if with_imatrix:
        x = source_rows(moe, "blk.0.ffn_up_exps.weight")[:N_FF]  # expert 0
        w = weights_of(entries, "blk.0.ffn_up_exps.weight")
        assert w is not None
        q = quants.quantize(x, T.Q4_K, None, threads=1)
        xhat = np.asarray(gguf_quants.dequantize(q, T.Q4_K), dtype=np.float32).reshape(x.shape)
        plain = float((((x - xhat).astype(np.float64) ** 2) * w[0]).sum())
        weighted, _ = direct_error(x, T.Q4_K, w[:1], N_FF)
        assert weighted < plain


def test_sampled_error_is_scaled_from_the_sampled_rows(moe: Path, tmp_path: Path) -> None:
    """With fewer rows than the tensor has: the error is the sampled rows' sum times n_rows / k, and
    the rows are those ``sample_rows`` picks (spread over the experts)."""
    k = 24
    m = measure_model(moe, types=["q4_0"], max_rows=k, threads=1, out=tmp_path / "m.json", progress=False)
    for name, tm in m.tensors.items():
        assert tm.sampled_rows == min(k, tm.n_rows)
        rpm = rows_per_mat(tm.shape)
        rows = sample_rows(name, tm.n_rows, rpm, tm.sampled_rows, 0)
        assert len(rows) == tm.sampled_rows
        err, ref = direct_error(source_rows(moe, name), T.Q4_0, None, rpm, rows)
        scale = tm.n_rows / tm.sampled_rows
        assert tm.candidates["q4_0"].error == pytest.approx(err * scale, rel=1e-12)
        assert tm.reference == pytest.approx(ref * scale, rel=1e-12)
    # the estimate is close to the exact value (same order of magnitude on random weights)
    exact = measure_model(
        moe, types=["q4_0"], max_rows=10_000, threads=1, out=tmp_path / "x.json", progress=False
    )
    for name, tm in m.tensors.items():
        rel = tm.candidates["q4_0"].error / exact.tensors[name].candidates["q4_0"].error
        assert 0.7 < rel < 1.3, (name, rel)


@pytest.mark.parametrize(
    "qtype,extra",
    [("q4_K", ""), ("iq4_xs", ""), ("q5_0", ""), ("iq2_xs", "token_embedding: q8_0\n")],
)
def test_apply_writes_the_measured_bytes_and_error(
    moe: Path, moe_imatrix: Path, tmp_path: Path, qtype: str, extra: str
) -> None:
    """A real ``recipe apply`` with the imatrix: every quantized tensor of its output takes exactly the
    candidate's bytes, and dequantizing apply's own bytes gives exactly the measured error (so the
    measurement quantizes as apply does: same weights, same experts, same tensors left unweighted)."""
    m = measure_model(
        moe,
        imatrix=moe_imatrix,
        types=[qtype, "q8_0"],
        max_rows=10_000,
        out=tmp_path / "m.json",
        progress=False,
    )
    recipe = f"recipe: 1\nname: t\nbase: {qtype}\n{extra}"
    plan = compile_plan(recipe, moe, imatrix=moe_imatrix).plan
    out = tmp_path / "out.gguf"
    apply_plan(plan, moe, out, imatrix=moe_imatrix, progress=False, threads=1)
    entries = imatrix_entries()
    r = GGUFReader(str(out))
    seen = 0
    for t in r.tensors:
        if t.name not in m.tensors:
            continue
        tm = m.tensors[t.name]
        c = tm.candidates[ggml_name(T(t.tensor_type))]
        assert c.bytes == int(t.n_bytes) == np.asarray(t.data).nbytes, t.name
        x = source_rows(moe, t.name)
        xhat = np.asarray(gguf_quants.dequantize(np.asarray(t.data), T(t.tensor_type)), dtype=np.float32)
        xhat = xhat.reshape(x.shape)
        w = weights_of(entries, t.name)
        rpm = rows_per_mat(tm.shape)
        d2 = (x.astype(np.float64) - xhat.astype(np.float64)) ** 2
        ww = np.ones_like(d2) if w is None else np.repeat(w.astype(np.float64), rpm, axis=0)
        assert c.error == pytest.approx(math.fsum((d2 * ww).sum(axis=1).tolist()), rel=1e-12), t.name
        seen += 1
    assert seen == len(MATRICES)
    if qtype == "iq2_xs":
        # apply refuses IQ2_XS for the token embedding (no weights for it): the measurement lists it
        # as impossible, with the reason
        assert "needs importance weights" in m.tensors["token_embd.weight"].impossible["iq2_xs"]
        bad = compile_plan(f"recipe: 1\nname: t\nbase: {qtype}\n", moe, imatrix=moe_imatrix).plan
        with pytest.raises(ImatrixError):
            apply_plan(bad, moe, tmp_path / "bad.gguf", imatrix=moe_imatrix, progress=False, threads=1)


def test_types_that_need_an_imatrix_follow_apply(moe: Path, tmp_path: Path) -> None:
    """Without an imatrix: IQ2_XS fits nothing (its quantizer needs weights); IQ3_XXS only the token
    embedding and the output, which llama-quantize exempts, as apply does."""
    m = measure_model(moe, types=["iq2_xs", "iq3_xxs"], threads=1, out=tmp_path / "m.json", progress=False)
    assert any("iq2_xs fits no tensor" in n for n in m.notes)
    for name, tm in m.tensors.items():
        assert "iq2_xs" in tm.impossible
        exempt = name in ("token_embd.weight", "output.weight")
        assert ("iq3_xxs" in tm.candidates) == exempt, name
        assert ("iq3_xxs" in tm.impossible) == (not exempt), name


def test_real_model_fallbacks_and_plan_bytes(source: Path, tmp_path: Path) -> None:
    """SmolLM2's 576-wide rows: a 256-block type is impossible there and the reason names the type a
    recipe gets instead, which is the plan's fallback; every planned type's bytes are the plan's
    (which apply checks against what it writes)."""
    plan = compile_plan("llama.cpp/Q4_K_M", source).plan
    live = [pt for pt in plan.tensors if pt.action == "quantize"]
    wanted = {pt.fallback.wanted for pt in live if pt.fallback} | {pt.type for pt in live}
    m = measure_model(source, types=sorted(wanted), max_rows=2, out=tmp_path / "m.json", progress=False)
    assert sorted(m.tensors) == sorted(pt.source_name for pt in live)
    n_fallbacks = 0
    for pt in live:
        tm = m.tensors[pt.source_name]
        assert tm.candidates[pt.type].bytes == pt.target_bytes, pt.name
        if pt.fallback is not None:
            why = tm.impossible[pt.fallback.wanted]
            assert why.startswith("row length 576 is not a multiple of 256")
            assert f"gets {pt.fallback.got}" in why
            n_fallbacks += 1
    assert n_fallbacks > 100
    assert m.skipped == len(plan.tensors) - len(live)


# ----------------------------------------------------------------------------------------- sampling


def test_n_sample_rows() -> None:
    assert n_sample_rows(100, 256, 256, 1 << 20) == 100  # small: every row
    assert n_sample_rows(10_000, 4096, 256, 256 * 4096) == 256  # capped by max_rows
    assert n_sample_rows(10_000, 8192, 256, 256 * 4096) == 128  # by max_values
    assert n_sample_rows(10_000, 28672, 256, 256 * 4096) == 36
    assert n_sample_rows(10_000, 1 << 20, 256, 256 * 4096) == MIN_ROWS  # never fewer than MIN_ROWS
    assert n_sample_rows(5, 1 << 20, 256, 1) == 5


def test_sample_rows_deterministic_and_spread() -> None:
    a = sample_rows("blk.3.ffn_down.weight", 5000, 5000, 64, 0)
    assert np.array_equal(a, sample_rows("blk.3.ffn_down.weight", 5000, 5000, 64, 0))
    assert not np.array_equal(a, sample_rows("blk.3.ffn_down.weight", 5000, 5000, 64, 1))
    assert not np.array_equal(a, sample_rows("blk.4.ffn_down.weight", 5000, 5000, 64, 0))
    assert len(np.unique(a)) == 64 and np.all(np.diff(a) > 0) and a[-1] < 5000
    assert np.array_equal(sample_rows("x", 50, 50, 50, 0), np.arange(50))  # all rows when k >= n
    assert np.array_equal(sample_rows("x", 50, 50, 80, 0), np.arange(50))
    # experts: 10 matrices of 100 rows, 25 rows -> 2 or 3 from every matrix
    e = sample_rows("blk.0.ffn_up_exps.weight", 1000, 100, 25, 0)
    per = np.bincount(e // 100, minlength=10)
    assert len(np.unique(e)) == 25 and per.min() >= 2 and per.max() <= 3
    # more matrices than rows: one row from each of k matrices
    f = sample_rows("blk.0.ffn_up_exps.weight", 256 * 64, 64, 40, 0)
    assert len(np.unique(f // 64)) == 40


def test_same_file_on_one_or_several_processes(moe: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"types": ["q4_0", "q5_K", "iq4_xs"], "max_rows": 40, "progress": False}
    measure_model(moe, threads=1, out=tmp_path / "one.json", **kw)
    measure_model(moe, threads=2, out=tmp_path / "two.json", **kw)
    same_but_time(tmp_path / "one.json", tmp_path / "two.json")


# ------------------------------------------------------------------------------------------- resume


class InterruptAt(NullProgress):
    """Ctrl-C once ``n`` tensors are done."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0

    def tensor_done(self, index: int, name: str) -> None:
        self.done += 1
        if self.done == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_after_interrupt_gives_the_same_file(moe: Path, tmp_path: Path, threads: int) -> None:
    kw: dict[str, Any] = {"types": ["q4_0", "q4_K", "q8_0"], "max_rows": 64, "threads": threads}
    ref = measure_model(moe, out=tmp_path / "ref.json", progress=False, **kw)
    out = tmp_path / "m.json"
    with pytest.raises(MeasureInterrupted, match="Run the same command again to continue"):
        measure_model(moe, out=out, progress=InterruptAt(3), **kw)
    partial = Measurement.load(out)
    assert not partial.complete and 3 <= len(partial.tensors) < len(ref.tensors)
    assert find_measurement(moe) is None  # (not in the cache, and incomplete anyway)
    m = measure_model(moe, out=out, progress=False, **kw)
    assert any(n.startswith("continued the measurement") for n in m.notes)
    assert m.complete
    same_but_time(out, tmp_path / "ref.json")
    assert m.seconds >= partial.seconds


def test_reuse_and_start_over(moe: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    kw: dict[str, Any] = {"threads": 1, "out": out, "progress": False, "max_rows": 16}
    first = measure_model(moe, types="q4_0,q8_0", **kw)
    again = measure_model(moe, types=["q8_0", "q4_0"], **kw)  # same set: reused as is
    assert any(n.startswith("reused the complete measurement") for n in again.notes)
    assert again.tensors == first.tensors
    sub = measure_model(moe, types=["q8_0"], **kw)  # fewer types: the bigger one is reused
    assert sub.types == ["q4_0", "q8_0"] and "also has q4_0" in sub.notes[0]
    more = measure_model(moe, types=["q8_0", "q5_0"], **kw)
    assert "other types" in more.notes[0] and more.types == ["q8_0", "q5_0"]
    other = measure_model(moe, types=["q8_0", "q5_0"], seed=1, **kw)
    assert "other sampling" in other.notes[0]
    fresh = measure_model(moe, types=["q8_0", "q5_0"], seed=1, resume=False, **kw)
    assert "resume off" in fresh.notes[0]
    out.write_text("{not json")
    broken = measure_model(moe, types=["q8_0"], **kw)
    assert "not a readable measurement" in broken.notes[0] and broken.complete


# -------------------------------------------------------------------------------------------- cache


def test_find_measurement_uses_the_cache(moe: Path, moe_imatrix: Path, tmp_path: Path) -> None:
    assert find_measurement(moe) is None
    m = measure_model(moe, types=["q4_0", "q8_0"], max_rows=16, threads=1, progress=False)
    assert m.path == default_measure_path(m.model_fingerprint, None)
    assert str(m.path).startswith(str(tmp_path / "cache" / "gguf-recipe" / "measure"))
    found = find_measurement(moe)
    assert found is not None and found.tensors == m.tensors
    assert find_measurement(moe, types=["q8_0"]) is not None
    assert find_measurement(moe, types="Q4_0, q8_0") is not None
    assert find_measurement(moe, types=["q5_0"]) is None  # not measured
    assert find_measurement(moe, types=["nonsense"]) is None
    assert find_measurement(moe, moe_imatrix) is None  # measured without that imatrix
    assert find_measurement(tmp_path / "missing.gguf") is None
    # with the imatrix: its own cache entry, found by the fingerprint of the imatrix file
    mi = measure_model(moe, imatrix=moe_imatrix, types=["q4_0"], max_rows=16, threads=1, progress=False)
    assert mi.path != m.path
    fi = find_measurement(moe, moe_imatrix)
    assert fi is not None and fi.imatrix_fingerprint == mi.imatrix_fingerprint
    # another imatrix file (same entries, other metadata bytes): another fingerprint, not found
    other = write_gguf_imatrix(tmp_path / "other.gguf", imatrix_entries(), chunk_count=13)
    assert find_measurement(moe, other) is None
    # and measure_model itself reuses the cached measurement
    again = measure_model(moe, imatrix=moe_imatrix, types=["q4_0"], max_rows=16, progress=False)
    assert any(n.startswith("reused") for n in again.notes)


def test_imatrix_fingerprint_agrees_with_what_is_stored(moe: Path, tmp_path: Path) -> None:
    """find_measurement hashes the imatrix file; measure_model stores the loaded Imatrix's fingerprint
    (and a plan stores the compiler's): all the same value, for both imatrix formats."""
    gguf_im = write_gguf_imatrix(tmp_path / "i.gguf", imatrix_entries())
    legacy = write_legacy_imatrix(
        tmp_path / "i.dat", {n: (10, s.reshape(-1)) for n, (s, _) in imatrix_entries().items()}
    )
    for im in (gguf_im, legacy):
        fp = imatrix_fingerprint(im)
        assert fp == load_imatrix(im).fingerprint
        assert compile_plan("llama.cpp/Q8_0", moe, imatrix=im).plan.fingerprints.imatrix == fp
        m = measure_model(moe, imatrix=im, types=["q8_0"], max_rows=4, threads=1, progress=False)
        assert m.imatrix_fingerprint == fp
        assert m.path == default_measure_path(m.model_fingerprint, fp)
        assert find_measurement(moe, im) is not None


# ---------------------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error(moe: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    with pytest.raises(MeasureError, match="model not found"):
        measure_model(tmp_path / "nope.gguf", out=out)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(MeasureError, match="cannot read the model"):
        measure_model(text, out=out)
    with pytest.raises(MeasureError, match="imatrix not found"):
        measure_model(moe, imatrix=tmp_path / "nope.dat", out=out)
    with pytest.raises(MeasureError, match=r"a llama\.cpp mix such as Q4_K_M is not a type"):
        measure_model(moe, types="q4_0,Q4_K_M", out=out)
    with pytest.raises(MeasureError, match="unknown type 'q9_0'"):
        measure_model(moe, types=["q9_0"], out=out)
    with pytest.raises(MeasureError, match="no candidate types"):
        measure_model(moe, types=" , ", out=out)
    with pytest.raises(ValueError, match="max_rows"):
        measure_model(moe, max_rows=0, out=out)
    assert not out.exists()


def test_imatrix_for_another_model_is_refused(moe: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    # the right names, the wrong width (another model's hidden size)
    wrong = write_legacy_imatrix(tmp_path / "w.dat", {"blk.0.attn_q.weight": (1, np.ones(512, np.float32))})
    with pytest.raises(MeasureError, match="made for a different model"):
        measure_model(moe, imatrix=wrong, types=["q4_0"], out=out, progress=False)
    # names this model does not have at all
    alien = write_legacy_imatrix(tmp_path / "a.dat", {"blk.0.attn_qkv.weight": (1, np.ones(256, np.float32))})
    with pytest.raises(MeasureError, match="no entry for any of the 9 tensors"):
        measure_model(moe, imatrix=alien, types=["q4_0"], out=out, progress=False)
    # not an imatrix
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x01\x00")
    with pytest.raises(MeasureError, match="imatrix"):
        measure_model(moe, imatrix=junk, types=["q4_0"], out=out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("threads", [1, 2])
def test_damaged_model_is_a_clear_error(tmp_path: Path, threads: int) -> None:
    """NaN in the source (llama-quantize refuses it too): a MeasureError naming the tensor and the
    tensor's own row number (also when only sampled rows are read), also from a worker process; the
    tensors measured before are saved."""
    name = "blk.0.ffn_up.weight"  # (measured after others)
    bad_row = int(sample_rows(name, N_FF, N_FF, 48, 0)[5])  # a row the 48-row sample reads
    t = llama_tensors(4, n_layer=1, n_embd=N_EMBD, n_ff=N_FF)
    t[name][bad_row, 7] = np.nan
    model = write_model(tmp_path / "nan.gguf", t, n_layer=1, n_embd=N_EMBD, n_ff=N_FF)
    for max_rows in (10_000, 48):
        out = tmp_path / f"m{max_rows}.json"
        with pytest.raises(MeasureError, match=rf"{re.escape(name)}: .* \(nan\) at row {bad_row}, column 7;"):
            measure_model(model, types=["q4_0"], max_rows=max_rows, threads=threads, out=out, progress=False)
        saved = Measurement.load(out)
        assert not saved.complete and len(saved.tensors) > 0 and name not in saved.tensors


def test_partial_imatrix_coverage_is_noted(moe: Path, tmp_path: Path) -> None:
    im = write_legacy_imatrix(tmp_path / "p.dat", {"blk.0.attn_q.weight": (2, np.ones(256, np.float32))})
    m = measure_model(
        moe, imatrix=im, types=["q4_0"], max_rows=8, threads=1, out=tmp_path / "m.json", progress=False
    )
    assert [n for n, t in m.tensors.items() if t.imatrix] == ["blk.0.attn_q.weight"]
    assert any("no entry for 8 of 9 tensors" in n for n in m.notes)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_measure(moe: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    args = ["measure", str(moe), "--types", "q4_0,q8_0", "-o", str(out), "--max-rows", "16", "-t", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "measured 9 tensors x 2 types (4 not quantizable, skipped)" in r.stdout
    assert "at most 16 rows" in r.stdout and f"saved     {out}" in r.stdout
    m = Measurement.load(out)
    assert m.complete and m.types == ["q4_0", "q8_0"] and m.sampling.max_rows == 16
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "note: reused the complete measurement" in r.stderr
    r = runner.invoke(app, [*args, "--fresh"])
    assert r.exit_code == 0 and "note: started over (resume off)" in r.stderr
    r = runner.invoke(app, [*args, "-q"])
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (["{missing}"], "error: model not found"),
        (
            ["{model}", "--types", "q4_K_M"],
            "error: unknown type 'q4_K_M' in the candidate types (a llama.cpp mix",
        ),
        (["{model}", "--imatrix", "{missing}"], "error: imatrix not found"),
        (["{model}", "--imatrix", "{model}"], "error: "),  # a model is not an imatrix
    ],
)
def test_cli_errors_are_one_line(moe: Path, tmp_path: Path, args: list[str], message: str) -> None:
    argv = [a.format(model=moe, missing=tmp_path / "missing") for a in args]
    r = runner.invoke(app, ["measure", *argv, "-o", str(tmp_path / "m.json")])
    assert r.exit_code == 1
    assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.output
    assert not (tmp_path / "m.json").exists()


def test_cli_ctrl_c_saves_and_the_next_run_continues(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole process group, worker processes included): exit 130,
    the partial measurement saved; the same command then continues it to the same result."""
    model = write_model(
        tmp_path / "m.gguf",
        llama_tensors(3, n_layer=6, n_embd=256, n_ff=512),
        n_layer=6,
        n_embd=256,
        n_ff=512,
    )
    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "gguf_recipe.cli", "measure", str(model), "-o", str(out), "-t", "2"]
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not out.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    if child.returncode == 0:
        pytest.skip("the measurement finished before the interrupt arrived")
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("interrupted after") and "Run the same command again to continue" in stderr
    with pytest.raises(ProcessLookupError):  # no worker outlived its parent
        os.killpg(child.pid, 0)
    partial = Measurement.load(out)
    assert not partial.complete and 0 < len(partial.tensors) < 6 * 7 + 2
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "note: continued the measurement" in done.stderr
    measure_model(model, out=tmp_path / "ref.json", progress=False)
    same_but_time(out, tmp_path / "ref.json")
