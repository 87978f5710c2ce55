"""End to end: recipe -> compiler -> plan -> executor gives the file llama-quantize gives.

Built-in ``llama.cpp/<FTYPE>`` recipes reproduce llama-quantize's mixes; applying their plans must
produce what ``llama_model_quantize`` (llama-cpp-python) writes for the same ftype, apart from
gguf-recipe's provenance keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gguf_recipe.compiler import compile_plan
from gguf_recipe.executor import apply_plan
from gguf_recipe.executor.gguf_format import read_header
from gguf_recipe.llamacpp import LLAMA_FTYPES
from helpers.executor import llama_model_quantize, write_wide_model

# the mixes llama-quantize makes without an imatrix from this small model
FTYPES = {
    name: LLAMA_FTYPES[name]
    for name in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "F16", "BF16", "Q2_K", "Q3_K_S", "Q3_K_M",
                 "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_XS")
}  # fmt: skip


@pytest.mark.parametrize("ftype", sorted(FTYPES))
def test_builtin_recipe_plan_equals_llama_quantize(tmp_path: Path, ftype: str) -> None:
    model = write_wide_model(tmp_path / "m.gguf", 51)
    plan = compile_plan(f"llama.cpp/{ftype}", model).plan
    ours = apply_plan(plan, model, tmp_path / "ours.gguf", progress=False).outputs[0]
    llama_model_quantize(model, tmp_path / "llama.gguf", ftype=FTYPES[ftype], pure=False)
    a, _ = read_header(ours)
    b, _ = read_header(tmp_path / "llama.gguf")
    assert [(kv.key, kv.raw) for kv in a.kvs if not kv.key.startswith("gguf_recipe.")] == [
        (kv.key, kv.raw) for kv in b.kvs
    ]
    assert [(t.name, t.shape, t.qtype) for t in a.tensors] == [(t.name, t.shape, t.qtype) for t in b.tensors]
    assert ours.read_bytes()[a.data_offset :] == (tmp_path / "llama.gguf").read_bytes()[b.data_offset :]
