"""End to end: recipe -> compiler -> plan -> executor gives the file llama-quantize gives.

Built-in ``llama.cpp/<FTYPE>`` recipes reproduce llama-quantize's mixes; applying their plans must
produce what ``llama_model_quantize`` (llama-cpp-python) writes for the same ftype, apart from
gguf-recipe's provenance keys. Skipped without the compiler or llama-cpp-python, and for types whose
quantizers are not implemented yet.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest_executor import llama_model_quantize, write_wide_model
from gguf_recipe import quants
from gguf_recipe.executor import apply_plan
from gguf_recipe.executor.gguf_format import read_header

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
compiler = pytest.importorskip("gguf_recipe.compiler", reason="the compiler is not available")

FTYPES = {
    "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "IQ4_NL": 25, "F16": 1, "BF16": 32,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
    "Q5_K_M": 17, "Q6_K": 18, "IQ4_XS": 30,
}  # fmt: skip


@pytest.mark.parametrize("ftype", sorted(FTYPES))
def test_builtin_recipe_plan_equals_llama_quantize(tmp_path: Path, ftype: str) -> None:
    compile_plan = getattr(compiler, "compile_plan", None)
    if compile_plan is None:
        pytest.skip("gguf_recipe.compiler has no compile_plan")
    model = write_wide_model(tmp_path / "m.gguf", 51)
    try:
        result = compile_plan(f"llama.cpp/{ftype}", model)
    except Exception as exc:  # the recipe library may not ship this ftype
        pytest.skip(f"cannot compile llama.cpp/{ftype}: {exc}")
    plan = result.plan
    implemented = set(quants.implemented_types())
    missing = {
        t.type
        for t in plan.tensors
        if t.action == "quantize" and quants.parse_qtype(t.type) not in implemented
    }
    if missing:
        pytest.skip(f"quantizers not implemented yet: {sorted(missing)}")
    ours = apply_plan(plan, model, tmp_path / "ours.gguf", progress=False).outputs[0]
    llama_model_quantize(model, tmp_path / "llama.gguf", ftype=FTYPES[ftype], pure=False)
    a, _ = read_header(ours)
    b, _ = read_header(tmp_path / "llama.gguf")
    assert [(kv.key, kv.raw) for kv in a.kvs if not kv.key.startswith("gguf_recipe.")] == [
        (kv.key, kv.raw) for kv in b.kvs
    ]
    assert [(t.name, t.shape, t.qtype) for t in a.tensors] == [(t.name, t.shape, t.qtype) for t in b.tensors]
    assert ours.read_bytes()[a.data_offset :] == (tmp_path / "llama.gguf").read_bytes()[b.data_offset :]
