"""Round trips: what apply_plan writes is read back by gguf-py, and every tensor's bytes are exactly
``quantize()`` of the source rows (or the source bytes, for copies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from gguf_recipe import quants
from gguf_recipe.executor import SourceModel, apply_plan
from gguf_recipe.executor.gguf_format import read_header
from helpers.executor import (
    T,
    llama_tensors,
    make_plan,
    source_rows,
    write_model,
)


def _tensor_bytes(reader: GGUFReader, name: str) -> bytes:
    t = next(t for t in reader.tensors if t.name == name)
    return np.asarray(t.data).tobytes()


def _check_roundtrip(model: Path, out: Path, plan_targets: dict[str, T], reader: GGUFReader) -> None:
    with SourceModel(model) as src:
        for t in reader.tensors:
            info = src.tensors[t.name]
            target = plan_targets[t.name]
            assert t.tensor_type == target
            assert [int(x) for x in t.shape] == list(info.shape)
            if target == info.qtype:
                expected = src.read_raw_rows(info, 0, info.n_rows).tobytes()
            else:
                expected = quants.quantize(source_rows(model, t.name), target).tobytes()
            assert _tensor_bytes(reader, t.name) == expected, t.name


@pytest.mark.parametrize("src_dtype", [T.F16, T.F32, T.BF16])
def test_roundtrip_every_tensor_equals_quantize(tmp_path: Path, src_dtype: T) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(1), dtype=src_dtype)
    targets: dict[str, T] = {"blk.1.attn_v.weight": T.F16, "blk.0.ffn_down.weight": T.Q4_0}
    plan = make_plan(model, targets, default=T.Q8_0)
    out = tmp_path / "out.gguf"
    res = apply_plan(plan, model, out, progress=False)
    assert res.outputs == (out,)
    assert out.stat().st_size == res.output_bytes
    reader = GGUFReader(str(out))
    want = {p.name: quants.parse_qtype(p.type) for p in plan.tensors}
    assert [t.name for t in reader.tensors] == [p.name for p in plan.tensors]
    _check_roundtrip(model, out, want, reader)
    assert res.n_quantized + res.n_copied == len(plan.tensors)
    assert 0 < res.bpw < 16
    assert "bpw" in res.summary()


def test_chunking_and_threads_do_not_change_bytes(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(2))
    plan = make_plan(model, default=T.Q8_0)
    a = apply_plan(plan, model, tmp_path / "a.gguf", progress=False, threads=1).outputs[0]
    # 100 values per chunk: one row (ne0 = 64 or 128) per chunk
    b = apply_plan(plan, model, tmp_path / "b.gguf", progress=False, threads=2, chunk_values=100).outputs[0]
    assert a.read_bytes() == b.read_bytes()


def test_moe_expert_tensors_chunked_per_expert(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(3, moe=True))
    plan = make_plan(model, default=T.Q8_0)
    out = apply_plan(plan, model, tmp_path / "o.gguf", progress=False, chunk_values=N_ROWS_CHUNK).outputs[0]
    reader = GGUFReader(str(out))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_gate_exps.weight")
    assert [int(x) for x in t.shape] == [64, 128, 4]
    _check_roundtrip(model, out, {p.name: quants.parse_qtype(p.type) for p in plan.tensors}, reader)


N_ROWS_CHUNK = 64 * 48  # 48 rows of 64: chunks end mid-expert (128 rows per expert)


def test_output_alignment_and_layout_valid(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(4))
    out = apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False).outputs[0]
    header, _ = read_header(out)  # our strict parser checks offsets, alignment and file size
    assert header.version == 3
    assert header.alignment == 32
    last = header.tensors[-1]
    assert header.data_offset + last.offset + last.nbytes <= header.file_size


@pytest.mark.parametrize("mode", ["tensors", "bytes"])
def test_shards(tmp_path: Path, mode: str) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(5))
    plan = make_plan(model, default=T.Q8_0)
    kw = {"max_shard_tensors": 10} if mode == "tensors" else {"max_shard_bytes": 20_000}
    res = apply_plan(plan, model, tmp_path / "out.gguf", progress=False, **kw)  # type: ignore[arg-type]
    n = len(res.outputs)
    assert n > 1
    assert [p.name for p in res.outputs] == [f"out-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]
    assert not (tmp_path / "out.gguf").exists()
    names: list[str] = []
    for i, p in enumerate(res.outputs):
        r = GGUFReader(str(p))
        f = r.fields
        assert int(f["split.no"].parts[-1][0]) == i
        assert int(f["split.count"].parts[-1][0]) == n
        assert int(f["split.tensors.count"].parts[-1][0]) == len(plan.tensors)
        assert ("general.architecture" in f) == (i == 0)  # metadata lives in the first shard
        names += [t.name for t in r.tensors]
        if mode == "tensors":
            assert len(r.tensors) <= 10
        else:  # the whole file, header included, or a file holding one tensor
            assert p.stat().st_size <= 20_000 or len(r.tensors) == 1
    assert names == [t.name for t in plan.tensors]
    # the shards open as one model again, and the bytes match an unsplit run
    single = apply_plan(plan, model, tmp_path / "single.gguf", progress=False).outputs[0]
    rs = GGUFReader(str(single))
    with SourceModel(res.outputs[0]) as merged:
        assert len(merged.paths) == n
        for t in rs.tensors:
            info = merged.tensors[t.name]
            assert merged.read_raw_rows(info, 0, info.n_rows).tobytes() == np.asarray(t.data).tobytes()


def test_split_source_model_is_read_as_one(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(6))
    # make an F16 split source with our own writer: a copy-everything plan written in shards
    copy_plan = make_plan(model, default=None)
    shards = apply_plan(copy_plan, model, tmp_path / "src.gguf", progress=False, max_shard_tensors=7).outputs
    assert len(shards) > 1
    plan = make_plan(shards[0], default=T.Q8_0)
    out = apply_plan(plan, shards[0], tmp_path / "o.gguf", progress=False).outputs[0]
    reader = GGUFReader(str(out))
    assert "split.count" not in reader.fields  # llama-quantize drops split keys of the source
    _check_roundtrip(model, out, {p.name: quants.parse_qtype(p.type) for p in plan.tensors}, reader)
