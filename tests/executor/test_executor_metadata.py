"""Output metadata follows llama-quantize: source pairs copied byte for byte, file type and quantization
version set, overrides applied, layers renumbered on pruning, provenance recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from gguf_recipe.executor import PlanMismatchError, apply_plan, plan_fingerprint
from gguf_recipe.executor.gguf_format import read_header
from helpers.executor import T, llama_tensors, make_plan, write_gguf_imatrix, write_model


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.gguf", llama_tensors(11), extra_kv={"test.name": "x"})


def _kvs(path: Path) -> dict[str, tuple[GGUFValueType, object, bytes]]:
    h, _ = read_header(path)
    return {kv.key: (kv.vtype, kv.value, kv.raw) for kv in h.kvs}


def test_source_pairs_copied_byte_for_byte_then_llama_keys(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model, ftype=15)
    out = apply_plan(plan, model, tmp_path / "o.gguf", progress=False).outputs[0]
    src, dst = _kvs(model), _kvs(out)
    set_by_us = {"general.file_type", "general.quantization_version"}
    for key, (_, _, raw) in src.items():
        if key not in set_by_us:
            assert dst[key][2] == raw, key
    assert dst["general.file_type"][:2] == (GGUFValueType.UINT32, 15)
    assert dst["general.quantization_version"][:2] == (GGUFValueType.UINT32, 2)
    keys = list(dst)
    # gguf_set_val_* removes and appends: source order first, then the keys llama-quantize sets
    src_order = [k for k in src if k not in set_by_us]
    assert keys[: len(src_order)] == src_order
    assert keys[len(src_order) : len(src_order) + 2] == ["general.quantization_version", "general.file_type"]
    assert dst["gguf_recipe.recipe"][1] == plan.recipe_text
    assert dst["gguf_recipe.plan_fingerprint"][1] == plan_fingerprint(plan)
    assert dst["gguf_recipe.recipe_fingerprint"][1] == plan.fingerprints.recipe
    assert not any(k.startswith("quantize.imatrix") for k in dst)


def test_file_type_guessed_when_plan_has_none(model: Path, tmp_path: Path) -> None:
    out = apply_plan(make_plan(model, ftype=None), model, tmp_path / "o.gguf", progress=False).outputs[0]
    assert _kvs(out)["general.file_type"][1] == 7  # mostly Q8_0


def test_metadata_overrides(model: Path, tmp_path: Path) -> None:
    overrides: dict[str, object] = {
        "general.name": {"type": "str", "value": "renamed"},
        "llama.context_length": {"type": "int", "value": 512},  # existing u32 stays u32
        "test.new_int": {"type": "int", "value": 7},
        "test.new_float": {"type": "float", "value": 0.5},
        "test.new_bool": {"type": "bool", "value": False},
        "test.typed": {"type": "u16", "value": 3},
        "test.plain_list": [1, 2, 3],
        "test.flag": None,  # delete
    }
    plan = make_plan(model, overrides=overrides)
    kv = _kvs(apply_plan(plan, model, tmp_path / "o.gguf", progress=False).outputs[0])
    assert kv["general.name"][:2] == (GGUFValueType.STRING, "renamed")
    assert kv["llama.context_length"][:2] == (GGUFValueType.UINT32, 512)
    assert kv["test.new_int"][:2] == (GGUFValueType.UINT32, 7)
    assert kv["test.new_float"][:2] == (GGUFValueType.FLOAT32, 0.5)
    assert kv["test.new_bool"][:2] == (GGUFValueType.BOOL, False)
    assert kv["test.typed"][:2] == (GGUFValueType.UINT16, 3)
    assert kv["test.plain_list"][:2] == (GGUFValueType.ARRAY, [1, 2, 3])
    assert "test.flag" not in kv


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        {"type": "float", "value": float("inf")},
        {"type": "f64", "value": float("-inf")},
        [1.0, float("nan")],
    ],
)
def test_non_finite_overrides_refused(model: Path, tmp_path: Path, value: object) -> None:
    plan = make_plan(model, overrides={"test.bad": value})
    with pytest.raises(PlanMismatchError, match=r"metadata override 'test\.bad': .* is not a finite number"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    assert list(tmp_path.iterdir()) == [model]


@pytest.mark.parametrize("key", ["split.count", "general.alignment", "gguf_recipe.recipe"])
def test_overrides_of_managed_keys_refused(model: Path, tmp_path: Path, key: str) -> None:
    plan = make_plan(model, overrides={key: 3})
    with pytest.raises(PlanMismatchError, match="managed by the executor"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    assert list(tmp_path.iterdir()) == [model]


def test_pruning_renumbers_layers_and_sets_block_count(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model, prune=[1])
    res = apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    kv = _kvs(res.outputs[0])
    assert kv["llama.block_count"][:2] == (GGUFValueType.UINT32, 2)
    r = GGUFReader(str(res.outputs[0]))
    names = [t.name for t in r.tensors]
    assert not any(n.startswith("blk.2.") for n in names)
    assert "blk.1.attn_q.weight" in names
    assert res.n_pruned == sum(1 for t in plan.tensors if t.action == "prune") > 0
    # blk.1 of the output holds the source's blk.2
    src = GGUFReader(str(model))
    s = next(t for t in src.tensors if t.name == "blk.2.attn_norm.weight")
    d = next(t for t in r.tensors if t.name == "blk.1.attn_norm.weight")
    assert np.asarray(s.data).tobytes() == np.asarray(d.data).tobytes()


def test_imatrix_provenance_keys(model: Path, tmp_path: Path) -> None:
    entries = {"blk.0.attn_q.weight": (np.ones(64, np.float32) * 4, np.array([2.0]))}
    im = write_gguf_imatrix(tmp_path / "im.gguf", entries, datasets=["d1.txt", "d2.txt"], chunk_count=33)
    plan = make_plan(model, imatrix=["blk.0.attn_q.weight"])
    kv = _kvs(apply_plan(plan, model, tmp_path / "o.gguf", imatrix=im, progress=False).outputs[0])
    assert kv["quantize.imatrix.file"][:2] == (GGUFValueType.STRING, str(im))
    assert kv["quantize.imatrix.dataset"][:2] == (GGUFValueType.STRING, "d1.txt")
    assert kv["quantize.imatrix.entries_count"][:2] == (GGUFValueType.UINT32, 1)
    assert kv["quantize.imatrix.chunks_count"][:2] == (GGUFValueType.UINT32, 33)


def test_custom_alignment_kept(tmp_path: Path) -> None:
    w = GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_custom_alignment(64)
    w.add_block_count(1)
    rng = np.random.default_rng(0)
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((8, 64)).astype(np.float16))
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(40).astype(np.float32))
    w.add_tensor("blk.0.attn_k.weight", rng.standard_normal((3, 32)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model = tmp_path / "m.gguf"
    plan = make_plan(model, default=T.Q8_0)
    out = apply_plan(plan, model, tmp_path / "o.gguf", progress=False).outputs[0]
    h, _ = read_header(out)
    assert h.alignment == 64
    assert all(t.offset % 64 == 0 for t in h.tensors)
    assert h.data_offset % 64 == 0
    GGUFReader(str(out))
