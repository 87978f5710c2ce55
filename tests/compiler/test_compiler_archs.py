"""Built-in mixes on architectures that are not in the oracle (hand-made skeletons from llama.cpp's
tensor lists, tests/helpers/archs.py). Expectations come from reading llama_tensor_get_type_impl."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gguf_recipe.compiler import compile_model
from gguf_recipe.model import ModelInfo, read_model
from gguf_recipe.model.skeleton import write_skeleton
from gguf_recipe.plan import Plan, PlannedTensor
from helpers.archs import ARCHS
from helpers.oracle_models import skeleton_dir


@pytest.fixture(scope="session")
def arch_dir() -> Path:
    return skeleton_dir()


@cache
def _model(name: str, d: Path) -> ModelInfo:
    path = d / f"{name}.gguf"
    if not path.exists():
        write_skeleton(ARCHS[name](), path)
    return read_model(path)


def plan(name: str, ftype: str, d: Path, imatrix: bool = False) -> Plan:
    return compile_model(f"llama.cpp/{ftype}", _model(name, d), imatrix=imatrix, lint=False).plan


def types(p: Plan) -> dict[str, str]:
    return {t.name: t.type for t in p.tensors}


def umb(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def test_llama70b_attn_v_bump(arch_dir: Path) -> None:
    m = _model("llama31-70b", arch_dir)
    assert m.size_class == "70B"
    t = types(plan("llama31-70b", "Q4_K_M", arch_dir))
    for i in range(80):
        assert t[f"blk.{i}.attn_v.weight"] == ("q6_K" if umb(i, 80) else "q5_K"), i
        assert t[f"blk.{i}.ffn_down.weight"] == ("q6_K" if umb(i, 80) else "q4_K"), i
    t = types(plan("llama31-70b", "Q3_K_S", arch_dir))
    assert {t[f"blk.{i}.attn_v.weight"] for i in range(80)} == {"q5_K"}
    t = types(plan("llama31-70b", "Q2_K", arch_dir))
    assert {t[f"blk.{i}.attn_v.weight"] for i in range(80)} == {"q5_K"}
    t = types(plan("llama31-70b", "Q3_K_M", arch_dir))
    assert {t[f"blk.{i}.attn_v.weight"] for i in range(80)} == {"q5_K"}
    t = types(plan("llama31-70b", "Q5_K_S", arch_dir))
    assert {t[f"blk.{i}.attn_v.weight"] for i in range(80)} == {"q5_K"}
    t = types(plan("llama31-70b", "IQ3_M", arch_dir))
    assert {t[f"blk.{i}.attn_v.weight"] for i in range(80)} == {"q5_K"}


def test_falcon_rules_and_fallbacks(arch_dir: Path) -> None:
    p = plan("falcon-7b", "Q4_K_M", arch_dir)
    t = types(p)
    assert t["output.weight"] == "q8_0"  # Falcon's output is always q8_0
    assert t["token_embd.weight"] == "q5_0"  # 4544 % 256 != 0: q4_K -> q5_0
    for i in range(32):
        # ffn_down rows are 18176 = 71 * 256: no fallback; Falcon's own Q4_K_M ffn_down rule
        want = "q6_K" if i < 2 else ("q5_K" if umb(i, 32) else "q4_K")
        assert t[f"blk.{i}.ffn_down.weight"] == want, i
        # fused QKV goes through the attn_v rules; q6_K does not fit 4544 -> q8_0
        assert t[f"blk.{i}.attn_qkv.weight"] == ("q8_0" if umb(i, 32) else "q5_0"), i
        assert t[f"blk.{i}.ffn_up.weight"] == "q5_0"
        assert t[f"blk.{i}.attn_output.weight"] == "q5_0"
    fb = {x.name: (x.fallback.wanted, x.fallback.got) for x in p.tensors if x.fallback}
    assert fb["blk.0.attn_qkv.weight"] == ("q6_K", "q8_0")
    assert fb["blk.5.attn_qkv.weight"] == ("q4_K", "q5_0")
    t = types(plan("falcon-7b", "Q3_K_L", arch_dir))
    assert t["blk.5.ffn_down.weight"] == "q4_K"  # Falcon: q4_K instead of q5_K
    assert t["blk.5.attn_output.weight"] == "q5_0"  # q4_K -> fallback
    t = types(plan("falcon-7b", "Q3_K_M", arch_dir))
    assert t["blk.0.ffn_down.weight"] == "q5_K"
    assert t["blk.4.ffn_down.weight"] == "q3_K"  # not use_more_bits: Falcon keeps q3_K
    assert t["blk.6.ffn_down.weight"] == "q4_K"  # use_more_bits


def test_gpt_oss_rows_of_2880(arch_dir: Path) -> None:
    p = plan("gpt-oss-20b", "Q4_K_M", arch_dir)
    t = types(p)
    assert t["blk.0.attn_q.weight"] == "q5_0"  # 2880 % 256 = 64
    assert t["blk.0.attn_output.weight"] == "q4_K"  # rows of 4096
    assert t["blk.0.attn_v.weight"] == "q8_0"  # q6_K (use_more_bits) -> q8_0
    assert t["blk.3.attn_v.weight"] == "q5_0"
    assert t["blk.0.ffn_down_exps.weight"] == "q8_0"  # q6_K -> q8_0
    assert t["blk.3.ffn_down_exps.weight"] == "q5_0"
    assert t["blk.0.ffn_gate_inp.weight"] == "f32"
    assert t["blk.0.attn_sinks.weight"] == "f32"
    assert t["output.weight"] == "q8_0"  # rows of 2880 do not split into q4_K blocks
    assert p.totals.n_fallbacks > 100
    t = types(plan("gpt-oss-20b", "MXFP4_MOE", arch_dir))
    assert t["blk.0.ffn_up_exps.weight"] == "mxfp4"
    assert t["blk.0.ffn_down_exps.weight"] == "mxfp4"
    assert t["blk.0.attn_q.weight"] == "q8_0"
    assert t["output.weight"] == "q8_0"
    assert t["token_embd.weight"] == "q8_0"
    assert t["blk.0.ffn_gate_exps.bias"] == "f32"


def test_deepseek_v3_mla_shared_experts_dense_layers(arch_dir: Path) -> None:
    p = plan("deepseek-v3", "Q4_K_M", arch_dir)
    t = types(p)
    n = 61
    # n_expert > 1: ffn_down is chosen by block number, dense, routed and shared experts alike
    for i in range(n):
        want = "q6_K" if umb(i, n) else "q4_K"
        names = (
            [f"blk.{i}.ffn_down.weight"]
            if i < 3
            else [f"blk.{i}.ffn_down_exps.weight", f"blk.{i}.ffn_down_shexp.weight"]
        )
        for name in names:
            assert t[name] == want, name
    # MLA: attn_k_b rows are 128 long -> q5_0; attn_kv_a_mqa is a plain weight
    assert t["blk.5.attn_k_b.weight"] == "q5_0"
    assert t["blk.5.attn_kv_a_mqa.weight"] == "q4_K"
    assert t["blk.5.ffn_gate_inp.weight"] == "f32"
    assert t["blk.5.exp_probs_b.bias"] == "f32"
    assert t["output.weight"] == "q6_K"
    # MXFP4_MOE: every 3-D tensor (MLA k_b / v_b too, unlike bailingmoe3) -> mxfp4
    t = types(plan("deepseek-v3", "MXFP4_MOE", arch_dir))
    assert t["blk.5.ffn_up_exps.weight"] == "mxfp4"
    assert t["blk.5.attn_k_b.weight"] == "mxfp4"
    assert t["blk.5.ffn_up_shexp.weight"] == "q8_0"
    assert t["blk.0.ffn_up.weight"] == "q8_0"
    # IQ2_XXS: the first n_layer/8 = 7 ffn_down tensors in processing order get q2_K (a running count:
    # blk.3 and blk.4 each hold two, exps before shexp)
    t = types(plan("deepseek-v3", "IQ2_XXS", arch_dir, imatrix=True))
    firsts = [
        "blk.0.ffn_down.weight",
        "blk.1.ffn_down.weight",
        "blk.2.ffn_down.weight",
        "blk.3.ffn_down_exps.weight",
        "blk.3.ffn_down_shexp.weight",
        "blk.4.ffn_down_exps.weight",
        "blk.4.ffn_down_shexp.weight",
    ]
    for name in firsts:
        assert t[name] == "q2_K", name
    assert t["blk.5.ffn_down_exps.weight"] == "iq2_xxs"
    assert t["blk.5.attn_output.weight"] == "iq2_xxs"  # 256 experts, not 8


def test_deepseek_v2_lite_kv_b_is_attn_v_like(arch_dir: Path) -> None:
    t = types(plan("deepseek-v2-lite", "Q4_K_M", arch_dir))
    n_kv_b = 27  # one attn_kv_b per layer: the attn_v counter's total
    for i in range(27):
        assert t[f"blk.{i}.attn_kv_b.weight"] == ("q6_K" if umb(i, n_kv_b) else "q4_K"), i
    # IQ2_S: attn_kv_b is attn_v-like: 64 experts >= 4 -> q4_K
    t = types(plan("deepseek-v2-lite", "IQ2_S", arch_dir, imatrix=True))
    assert t["blk.3.attn_kv_b.weight"] == "q4_K"


def test_qwen3_norms_stay_and_gqa4(arch_dir: Path) -> None:
    t = types(plan("qwen3-8b", "Q4_K_M", arch_dir))
    assert t["blk.0.attn_q_norm.weight"] == "f32"
    assert t["blk.0.attn_k_norm.weight"] == "f32"
    assert t["output.weight"] == "q6_K"
    t = types(plan("qwen3-8b", "IQ4_XS", arch_dir))
    assert t["blk.7.attn_v.weight"] == "q5_K"  # GQA 32/8 = 4
    assert t["blk.0.ffn_down.weight"] == "q5_K"  # first eighth, no imatrix
    assert t["blk.3.ffn_down.weight"] == "q5_K"  # 36 // 8 = 4: blocks 0..3
    assert t["blk.4.ffn_down.weight"] == "iq4_xs"
    t = types(plan("qwen3-8b", "IQ4_XS", arch_dir, imatrix=True))
    assert t["blk.0.ffn_down.weight"] == "iq4_xs"  # with an imatrix the guard is off


# --- recorded llama-quantize plans for the same skeletons ------------------------------------------
# tests/data/arch_plans.json.gz: `llama-quantize --dry-run` (llama.cpp build 11434, built from the same
# sdist as the oracle) on the skeletons above, for every mix (and the imatrix-dependent ones with a
# dummy imatrix). Every tensor's type, the processing order and the printed size must reproduce.

_DATA = Path(__file__).resolve().parents[1] / "data" / "arch_plans.json.gz"


def _recorded() -> dict[str, dict[str, Any]]:
    import gzip
    import json

    data: dict[str, dict[str, Any]] = json.loads(gzip.decompress(_DATA.read_bytes()))["models"]
    return data


_RECORDED = _recorded()


def _cases(key: str, suffix: Callable[[dict[str, Any]], str]) -> list[Any]:
    """(arch, index) params for each recorded plan under ``key``, with ids ``arch-FTYPE<suffix>``."""
    return [
        pytest.param(arch, i, id=f"{arch}-{p['ftype']}{suffix(p)}")
        for arch, m in _RECORDED.items()
        for i, p in enumerate(m[key])
    ]


def _assert_like_llama_quantize(
    tensors: list[PlannedTensor], target_bytes: int, names: list[str], order: list[str], p: dict[str, object]
) -> None:
    """Every recorded tensor type, the processing order and the printed size reproduce."""
    got = {t.name: t.type for t in tensors}
    want = dict(zip(names, p["types"], strict=True))  # type: ignore[call-overload]
    wrong = {n: (w, got.get(n)) for n, w in want.items() if got.get(n) != w}
    assert not wrong, f"{len(wrong)} differ (llama-quantize, ours): {dict(list(wrong.items())[:8])}"
    assert [t.name for t in tensors] == order
    assert f"{target_bytes / 2**20:.2f}" == f"{p['quant_size_mib_printed']:.2f}"


@pytest.mark.parametrize(("arch", "index"), _cases("plans", lambda p: "-imatrix" if p["imatrix"] else ""))
def test_recorded_llama_quantize_plan(arch: str, index: int, arch_dir: Path) -> None:
    rec = _RECORDED[arch]
    names: list[str] = rec["names"]
    p: dict[str, object] = rec["plans"][index]
    plan_ = plan(arch, str(p["ftype"]), arch_dir, imatrix=bool(p["imatrix"]))
    order: list[str] = p["order"] or names  # type: ignore[assignment]
    _assert_like_llama_quantize(plan_.tensors, plan_.totals.target_bytes, names, order, p)


@pytest.mark.parametrize(("arch", "index"), _cases("option_plans", lambda p: f"-{' '.join(p['options'])}"))
def test_recorded_llama_quantize_option_plan(arch: str, index: int, arch_dir: Path) -> None:
    """llama-quantize option runs (--tensor-type, --prune-layers, ...) on the hand-made skeletons,
    through `recipe import`'s function."""
    from gguf_recipe.interop import import_llama_quantize

    rec = _RECORDED[arch]
    p: dict[str, object] = rec["option_plans"][index]
    names: list[str] = p["names"] or rec["names"]  # type: ignore[assignment]
    text = import_llama_quantize([*p["options"], str(p["ftype"])])  # type: ignore[misc]
    plan_ = compile_model(text, _model(arch, arch_dir), lint=False).plan
    live = [t for t in plan_.tensors if t.action != "prune"]
    _assert_like_llama_quantize(live, plan_.totals.target_bytes, names, names, p)
