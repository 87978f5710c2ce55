"""The executor's shortcuts keep its results: the vectorized float16 conversion, and worker processes
that write their chunks into the output file themselves (sharded outputs, a full disk)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from gguf_recipe.executor import NonFiniteError, OutputError, SourceModel, apply_plan
from gguf_recipe.executor import writer as writer_mod
from gguf_recipe.executor.source import f16_to_f32
from helpers.executor import T, listdir, llama_tensors, make_plan, write_model


def _numpy_f16(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.float16).astype(np.float32)


@pytest.mark.parametrize("specials", [False, True])
def test_f16_conversion_matches_numpy_for_every_value(specials: bool) -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)  # zeros, subnormals, normals, both signs
    if not specials:
        bits = bits[(bits & 0x7C00) != 0x7C00]
    got = f16_to_f32(bits.view(np.uint8))
    assert np.array_equal(got.view(np.uint32), _numpy_f16(bits).view(np.uint32))


def test_f16_conversion_of_short_input() -> None:
    bits = np.array([0x8000, 0x0001, 0x7BFF, 0xFC00], dtype=np.uint16)
    assert np.array_equal(f16_to_f32(bits.view(np.uint8)).view(np.uint32), _numpy_f16(bits).view(np.uint32))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    tensors = llama_tensors(43, n_layer=4, n_embd=256, n_ff=512)
    return write_model(tmp_path / "m.gguf", tensors, n_layer=4)


def test_read_rows_of_an_f16_model_are_numpys_conversion(model: Path) -> None:
    with SourceModel(model) as src:
        info = src.tensors["blk.0.ffn_up.weight"]
        assert info.qtype == T.F16
        rows = src.read_f32_rows(info, 3, 100)
        raw = src.read_raw_rows(info, 3, 100)
    assert np.array_equal(rows.view(np.uint32), _numpy_f16(raw.view(np.uint16)).view(np.uint32))


def test_sharded_output_from_processes_is_the_same(model: Path, tmp_path: Path) -> None:
    """Only a single-file output is written in place; shards still go through the writer."""
    plan = make_plan(model, {"blk.0.ffn_down.weight": T.Q4_K}, default=T.Q8_0)
    kw: dict[str, object] = {"progress": False, "chunk_values": 1000, "max_shard_tensors": 7}
    a = apply_plan(plan, model, tmp_path / "a.gguf", threads=1, **kw)  # type: ignore[arg-type]
    b = apply_plan(plan, model, tmp_path / "b.gguf", threads=2, parallel="processes", **kw)  # type: ignore[arg-type]
    assert len(a.outputs) == len(b.outputs) > 1
    for pa, pb in zip(a.outputs, b.outputs, strict=True):
        assert pa.read_bytes() == pb.read_bytes()


def test_disk_full_in_a_worker_leaves_nothing(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker writing its chunk in place goes through the same write function: a full disk there is
    reported as one, and the partial output is removed."""
    real = writer_mod._write_bytes

    def full(fd: int, data: memoryview) -> None:
        if data.nbytes > 4096:  # the header and padding pass, chunks do not
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(writer_mod, "_write_bytes", full)
    plan = make_plan(model, {}, default=T.Q8_0)
    with pytest.raises(OutputError, match="disk full"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False, threads=2, parallel="processes")
    assert listdir(tmp_path) == ["m.gguf"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float16_rows_are_refused(tmp_path: Path, bad: float) -> None:
    """Rows long enough for the vectorized conversion: an inf or NaN still stops the run."""
    tensors = llama_tensors(45, n_layer=2, n_embd=256, n_ff=512)
    tensors["blk.1.ffn_up.weight"][17, 5] = bad
    model = write_model(tmp_path / "m.gguf", tensors, n_layer=2)
    with SourceModel(model) as src:
        assert src.tensors["blk.1.ffn_up.weight"].n_elements >= 1 << 12
    with pytest.raises(NonFiniteError, match=r"blk\.1\.ffn_up\.weight.*row 17, column 5"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["m.gguf"]
