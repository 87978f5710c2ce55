"""The header-only GGUF reader and the skeleton builder."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from gguf_recipe.model import GGUFReadError, read_model, split_paths
from gguf_recipe.model.skeleton import skeleton_from_json, write_skeleton
from helpers.oracle_models import MODELS, SkeletonFactory


@pytest.fixture(scope="module")
def llama8b(oracle_skeleton: SkeletonFactory) -> Path:
    return oracle_skeleton("llama31-8b")


def test_reader_matches_model_json(llama8b: Path) -> None:
    spec = json.loads((MODELS / "llama31-8b.model.json").read_text())
    m = read_model(llama8b)
    assert llama8b.stat().st_size == spec["gguf_file_size"]
    assert [t.name for t in m.tensors] == [t["name"] for t in spec["tensors"]]
    assert [list(t.shape) for t in m.tensors] == [t["shape"] for t in spec["tensors"]]
    assert [t.qtype.name for t in m.tensors] == [t["dtype"] for t in spec["tensors"]]
    assert m.n_elements == spec["n_elements"]
    assert m.n_bytes == spec["tensor_data_bytes"]
    assert (m.arch, m.n_layer, m.n_head, m.n_head_kv, m.n_gqa, m.n_expert) == ("llama", 32, 32, 8, 4, 0)
    assert m.n_vocab == 128256 and m.size_class == "8B"
    assert m.metadata["tokenizer.ggml.tokens.length"] == 128256
    assert not m.tied_embeddings


def test_sparse_file_and_header_only(llama8b: Path) -> None:
    st = llama8b.stat()
    assert st.st_blocks * 512 < 64 * 2**20  # the data was never written


def test_fingerprint_is_the_header(llama8b: Path, tmp_path: Path) -> None:
    a = read_model(llama8b).header_sha256
    assert a == read_model(llama8b).header_sha256
    spec = json.loads((MODELS / "llama31-8b.model.json").read_text())
    spec["metadata"][2]["value"] = "renamed"
    other = tmp_path / "other.gguf"
    write_skeleton(spec, other)
    assert read_model(other).header_sha256 != a


def test_splits(tmp_path: Path) -> None:
    first = skeleton_from_json(MODELS / "qwen25-0.5b.model.json", tmp_path, n_splits=3)
    assert first.name == "qwen25-0.5b-00001-of-00003.gguf"
    files = split_paths(tmp_path / "qwen25-0.5b-00002-of-00003.gguf")
    assert [f.name for f in files] == [f"qwen25-0.5b-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    m = read_model(files[1])
    assert len(m.tensors) == 290
    assert {t.file_index for t in m.tensors} == {0, 1, 2}
    assert m.arch == "qwen2" and m.tied_embeddings
    files[2].unlink()
    with pytest.raises(GGUFReadError, match="part of a split model"):
        read_model(first)


def test_not_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(GGUFReadError, match="not a GGUF file"):
        read_model(p)
    p.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (9).to_bytes(8, "little"))
    with pytest.raises(GGUFReadError, match="unexpected end"):
        read_model(p)


def test_compiler_and_executor_fingerprints_agree(llama8b: Path, tmp_path: Path) -> None:
    """One header parser (gguf_recipe.model.header) serves both; the executor checks the compiler's
    fingerprint, so they must agree for single files and for splits."""
    from gguf_recipe.executor import model_fingerprint

    assert read_model(llama8b).header_sha256 == model_fingerprint(llama8b)
    first = skeleton_from_json(MODELS / "qwen25-0.5b.model.json", tmp_path, n_splits=3)
    assert read_model(first).header_sha256 == model_fingerprint(first)


def test_implausible_string_length_is_refused_without_reading_it(tmp_path: Path) -> None:
    # magic, version 3, 0 tensors, 1 kv; the key's length claims 1 TiB inside a sparse 2 TiB file
    path = tmp_path / "corrupt.gguf"
    with path.open("wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 40))
        f.truncate(1 << 41)
    with pytest.raises(GGUFReadError, match=r"corrupt GGUF header: .* claims 1099511627776 bytes"):
        read_model(path)
