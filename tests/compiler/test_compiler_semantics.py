"""Compiler semantics beyond the built-in mixes: extends, counters, keep, overrides, fallbacks, pruning,
imatrix flags, sizes and fingerprints. Planned against the oracle's llama31-8b / qwen2.5-0.5b skeletons."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from gguf_recipe.compiler import compile_model, compile_plan
from gguf_recipe.diagnostics import RecipeError
from gguf_recipe.model import ModelInfo, read_model
from gguf_recipe.model.skeleton import skeleton_from_json
from gguf_recipe.plan import Plan
from helpers.oracle_models import MODELS, SkeletonFactory


@cache
def _model(name: str, oracle_skeleton: SkeletonFactory) -> ModelInfo:
    return read_model(oracle_skeleton(name))


def plan_of(text: str, oracle_skeleton: SkeletonFactory, model: str = "llama31-8b", **kw: object) -> Plan:
    return compile_model(text, _model(model, oracle_skeleton), lint=False, **kw).plan  # type: ignore[arg-type]


def types(p: Plan) -> dict[str, str]:
    return {t.name: t.type for t in p.tensors if t.action != "prune"}


def umb(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def test_base_only_is_pure(oracle_skeleton: SkeletonFactory) -> None:
    t = types(plan_of("recipe: 1\nbase: Q4_K\n", oracle_skeleton))
    assert t["output.weight"] == "q4_K"
    assert t["blk.0.attn_v.weight"] == "q4_K"
    assert t["blk.0.attn_norm.weight"] == "f32"
    assert t["rope_freqs.weight"] == "f32"


def test_first_match_wins_and_keep(oracle_skeleton: SkeletonFactory) -> None:
    text = (
        "recipe: 1\nbase: q4_0\nrules:\n"
        "  - {match: 'ffn_down', layers: ['0'], type: keep}\n"
        "  - {match: 'ffn_down', type: q8_0}\n"
        "  - {match: 'ffn_', type: q5_0}\n"
    )
    p = plan_of(text, oracle_skeleton)
    t = types(p)
    assert t["blk.0.ffn_down.weight"] == "f16"
    assert t["blk.1.ffn_down.weight"] == "q8_0"
    assert t["blk.1.ffn_up.weight"] == "q5_0"
    assert t["blk.1.attn_q.weight"] == "q4_0"
    by = {x.name: x for x in p.tensors}
    assert by["blk.0.ffn_down.weight"].action == "copy"
    assert by["blk.0.ffn_down.weight"].rule.startswith("rule 1:")
    assert by["blk.1.attn_q.weight"].rule == "base"
    assert by["blk.0.attn_norm.weight"].rule.startswith("not quantizable")


def test_regex_case_is_kept(oracle_skeleton: SkeletonFactory) -> None:
    t = types(
        plan_of("recipe: 1\nbase: q4_0\nrules:\n  - {match: 'FFN_DOWN', type: q8_0}\n", oracle_skeleton)
    )
    assert t["blk.0.ffn_down.weight"] == "q4_0"


def test_layer_selectors(oracle_skeleton: SkeletonFactory) -> None:
    text = "recipe: 1\nbase: q4_0\nrules:\n  - {match: 'ffn_down', layers: ['-2..-1', '..<1/8', '10..20 step 5'], type: q8_0}\n"
    t = types(plan_of(text, oracle_skeleton))
    chosen = {i for i in range(32) if t[f"blk.{i}.ffn_down.weight"] == "q8_0"}
    assert chosen == {30, 31, 0, 1, 2, 3, 10, 15, 20}


def test_conditions(oracle_skeleton: SkeletonFactory) -> None:
    text = (
        "recipe: 1\nbase: q4_0\nrules:\n"
        "  - {match: 'attn_v', when: {gqa: '>= 8'}, type: q8_0}\n"
        "  - {match: 'attn_v', when: {gqa: 4, arch: [llama, qwen2], layers: 32, size: 8B}, type: q6_K}\n"
        "  - {match: 'attn_k', when: {not: {imatrix: true}}, type: q5_0}\n"
        "  - {match: 'attn_q', when: {any: [{experts: '> 0'}, {tied_embeddings: true}]}, type: q5_0}\n"
        "  - {match: 'ffn_up', when: {row_multiple_of: q4_K}, type: q4_K}\n"
        "  - {match: 'ffn_gate', when: {dims: 3}, type: q8_0}\n"
    )
    t = types(plan_of(text, oracle_skeleton))
    assert t["blk.0.attn_v.weight"] == "q6_K"
    assert t["blk.0.attn_k.weight"] == "q5_0"
    assert t["blk.0.attn_q.weight"] == "q4_0"
    assert t["blk.0.ffn_up.weight"] == "q4_K"
    assert t["blk.0.ffn_gate.weight"] == "q4_0"
    t = types(plan_of(text, oracle_skeleton, imatrix=True))
    assert t["blk.0.attn_k.weight"] == "q4_0"


def test_extends_child_rules_first_and_scalars_override(
    oracle_skeleton: SkeletonFactory, tmp_path: Path
) -> None:
    parent = tmp_path / "parent.yaml"
    parent.write_text("recipe: 1\nbase: q4_0\noutput: q8_0\nrules:\n  - {match: 'attn_', type: q5_0}\n")
    child = tmp_path / "child.yaml"
    child.write_text(
        "recipe: 1\nextends: parent.yaml\noutput: q6_K\nrules:\n  - {match: 'attn_v', type: q8_0}\n"
    )
    p = compile_plan(child, oracle_skeleton("llama31-8b")).plan
    t = types(p)
    assert t["blk.0.attn_v.weight"] == "q8_0"
    assert t["blk.0.attn_k.weight"] == "q5_0"
    assert t["blk.0.ffn_up.weight"] == "q4_0"
    assert t["output.weight"] == "q6_K"
    assert any("[" in x.rule and "parent" in x.rule for x in p.tensors if x.name == "blk.0.attn_k.weight")


COUNTER_RULES = "rules:\n  - {match: 'blk\\.[0-3]\\.attn_v', type: q8_0}\n"


def test_counters_stable_does_not_move_the_mix(oracle_skeleton: SkeletonFactory) -> None:
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\n" + COUNTER_RULES
    t = types(plan_of(text, oracle_skeleton))
    for i in range(4, 32):
        assert t[f"blk.{i}.attn_v.weight"] == ("q6_K" if umb(i, 32) else "q4_K"), i


def test_counters_llama_quantize_moves_the_mix(oracle_skeleton: SkeletonFactory) -> None:
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\ncounters: llama-quantize\n" + COUNTER_RULES
    t = types(plan_of(text, oracle_skeleton))
    # the four overridden tensors were not counted: layer i sits at position i - 4
    for i in range(4, 32):
        assert t[f"blk.{i}.attn_v.weight"] == ("q6_K" if umb(i - 4, 32) else "q4_K"), i


def test_token_embedding_and_output_skip_fallback(oracle_skeleton: SkeletonFactory) -> None:
    # qwen2.5-0.5b: rows of 896 (not a multiple of 256), tied embeddings
    p = plan_of(
        "recipe: 1\nextends: llama.cpp/Q4_K_M\ntoken_embedding: q4_K\n", oracle_skeleton, "qwen25-0.5b"
    )
    tok = next(x for x in p.tensors if x.name == "token_embd.weight")
    assert tok.type == "q4_K" and tok.fallback is None and tok.rule == "token-embedding"
    assert tok.target_bytes == 151936 * (144 * 896 // 256)  # ggml_row_size: 504 bytes per row
    p = plan_of("recipe: 1\nextends: llama.cpp/Q4_K_M\noutput: q5_K\n", oracle_skeleton, "qwen25-0.5b")
    tok = next(x for x in p.tensors if x.name == "token_embd.weight")
    assert tok.type == "q5_1" and tok.fallback is not None  # tied: through the normal path


def test_output_keep_and_token_embedding_keep(oracle_skeleton: SkeletonFactory) -> None:
    p = plan_of(
        "recipe: 1\nextends: llama.cpp/Q4_K_M\noutput: keep\ntoken_embedding: keep\n", oracle_skeleton
    )
    t = types(p)
    assert t["output.weight"] == "f16"
    assert t["token_embd.weight"] == "f16"


def test_fallbacks_reported_and_errors(oracle_skeleton: SkeletonFactory) -> None:
    r = compile_model("llama.cpp/Q4_K_M", _model("qwen25-0.5b", oracle_skeleton), lint=False)
    fbs = [x for x in r.plan.tensors if x.fallback]
    assert len(fbs) == r.plan.totals.n_fallbacks == 144
    assert fbs[0].fallback is not None and "896" in fbs[0].fallback.reason
    assert "fallback from" in fbs[0].rule
    assert not r.has_errors
    r = compile_model(
        "llama.cpp/Q4_K_M", _model("qwen25-0.5b", oracle_skeleton), strict_fallbacks=True, lint=False
    )
    assert r.has_errors
    r = compile_model(
        "recipe: 1\nextends: llama.cpp/Q4_K_M\nfallbacks: error\n",
        _model("qwen25-0.5b", oracle_skeleton),
        lint=False,
    )
    assert sum(d.is_error for d in r.diagnostics) == 144


def test_prune_renumbers(oracle_skeleton: SkeletonFactory) -> None:
    p = plan_of("recipe: 1\nextends: llama.cpp/Q4_K_M\nprune_layers: [1, 2]\n", oracle_skeleton)
    live = [x for x in p.tensors if x.action != "prune"]
    pruned = [x for x in p.tensors if x.action == "prune"]
    assert len(pruned) == 18 and all(x.target_bytes == 0 for x in pruned)
    names = {x.name for x in live}
    assert "blk.29.attn_v.weight" in names and "blk.30.attn_v.weight" not in names
    assert next(x for x in live if x.name == "blk.1.attn_v.weight").source_name == "blk.3.attn_v.weight"
    assert p.metadata_overrides["llama.block_count"] == {"type": "int", "value": 30}
    with pytest.raises(RecipeError):
        plan_of("recipe: 1\nbase: q4_0\nprune_layers: [40]\n", oracle_skeleton)


def test_imatrix_flags(oracle_skeleton: SkeletonFactory) -> None:
    text = (
        "recipe: 1\nbase: q4_K\nimatrix: {exclude: ['attn_k']}\n"
        "rules:\n  - {match: 'attn_q', type: q4_K, imatrix: false}\n"
    )
    p = plan_of(text, oracle_skeleton, imatrix=True)
    by = {x.name: x for x in p.tensors}
    assert by["blk.0.attn_v.weight"].imatrix
    assert not by["blk.0.attn_q.weight"].imatrix
    assert not by["blk.0.attn_k.weight"].imatrix
    assert not by["blk.0.attn_norm.weight"].imatrix
    p = plan_of(text, oracle_skeleton)
    assert not any(x.imatrix for x in p.tensors)


def test_imatrix_needed_is_an_error(oracle_skeleton: SkeletonFactory) -> None:
    r = compile_model("llama.cpp/IQ2_XXS", _model("llama31-8b", oracle_skeleton), lint=False)
    assert any(d.is_error and "importance matrix" in d.message for d in r.diagnostics)
    r = compile_model("llama.cpp/IQ2_XXS", _model("llama31-8b", oracle_skeleton), imatrix=True, lint=False)
    assert not r.has_errors


def test_plan_totals_and_fingerprints(oracle_skeleton: SkeletonFactory) -> None:
    p = plan_of("llama.cpp/Q4_K_M", oracle_skeleton)
    assert p.totals.target_bytes == 4912898304  # the oracle's exact figure
    assert sum(p.totals.by_type.values()) == p.totals.target_bytes
    assert p.totals.n_tensors == 292
    assert p.ftype == 15
    assert len(p.fingerprints.model) == 64 and len(p.fingerprints.recipe) == 64
    again = plan_of("llama.cpp/Q4_K_M", oracle_skeleton)
    assert again.fingerprints == p.fingerprints
    other = plan_of("llama.cpp/Q5_K_M", oracle_skeleton)
    assert other.fingerprints.recipe != p.fingerprints.recipe
    assert Plan.from_json(p.to_json()) == p


def test_compile_plan_from_path_and_split(oracle_skeleton: SkeletonFactory, tmp_path: Path) -> None:
    split_first = skeleton_from_json(MODELS / "llama31-8b.model.json", tmp_path, n_splits=3)
    a = compile_plan("llama.cpp/Q4_K_M", split_first).plan
    b = compile_plan("llama.cpp/Q4_K_M", oracle_skeleton("llama31-8b")).plan
    assert types(a) == types(b)
    assert a.totals.target_bytes == b.totals.target_bytes


def test_unknown_type_is_a_compile_error(oracle_skeleton: SkeletonFactory) -> None:
    with pytest.raises(RecipeError) as exc:
        plan_of("recipe: 1\nbase: q4_0\nrules:\n  - {match: 'x', type: q4_km}\n", oracle_skeleton)
    assert "q4_km" in str(exc.value)


def test_imatrix_file_coverage_warnings(oracle_skeleton: SkeletonFactory, tmp_path: Path) -> None:
    import struct

    name = b"blk.0.attn_output.weight"
    im = tmp_path / "im.dat"
    im.write_bytes(
        struct.pack("<ii", 1, len(name))
        + name
        + struct.pack("<ii", 1, 4096)
        + struct.pack("<4096f", *[1.0] * 4096)
        + struct.pack("<ii", 1, 5)
        + b"dummy"
    )
    r = compile_plan("llama.cpp/IQ4_XS", oracle_skeleton("llama31-8b"), imatrix=im)
    assert r.plan.fingerprints.imatrix is not None and len(r.plan.fingerprints.imatrix) == 64
    assert not r.has_errors
    assert any("the imatrix has no entry for" in w for w in r.plan.warnings)
    assert any(d.severity == "warning" and "no entry" in d.message for d in r.diagnostics)
    assert next(t for t in r.plan.tensors if t.name == "blk.0.ffn_down.weight").imatrix
