"""The recipes in examples/: they validate, and they do what their comments say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gguf_recipe.compiler import compile_plan
from gguf_recipe.compiler.lint import lint_compiled
from gguf_recipe.model.skeleton import skeleton_from_json, write_skeleton
from gguf_recipe.recipe.loader import check_recipe
from helpers.archs import deepseek2
from helpers.oracle_models import MODELS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".json"))

# The ik_llama.cpp --custom-q list of the issue (abridged), and the mainline types the example uses.
IK_LIST = [
    r"token_embd\.weight=iq6_k",
    r"blk\.[0-2]\..*=iq5_k_r4",
    r"blk\.[3-9]\.ffn_down_exps\.weight=iq5_k_r4",
    r"blk\.[1][0-9]\.ffn_down_exps\.weight=iq5_k_r4",
    r"blk\.[2-5][0-9]\.ffn_down_exps\.weight=iq4_k_r4",
    r"blk\.60\.ffn_down_exps\.weight=iq4_k_r4",
    r"blk\.[3-9]\.ffn_(gate|up)_exps\.weight=iq4_k_r4",
    r"blk\.[1][0-9]\.ffn_(gate|up)_exps\.weight=iq4_k_r4",
    r"blk\.[2-5][0-9]\.ffn_(gate|up)_exps\.weight=iq3_k_r4",
]
MAINLINE = {"iq6_k": "q6_K", "iq5_k_r4": "q5_K", "iq4_k_r4": "iq4_xs", "iq3_k_r4": "iq3_s"}


def test_there_are_four_or_more_examples() -> None:
    assert len(FILES) >= 4


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    lr, diags = check_recipe(path)
    assert lr is not None
    assert diags == []
    if path.suffix == ".yaml":
        assert path.read_text().startswith("# yaml-language-server: $schema=../schema/recipe.schema.json\n")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("examples")
    out = {
        "deepseek-v3": write_skeleton(deepseek2(v3=True), d / "deepseek-v3.gguf")[0],
    }
    for name in ("llama31-8b", "qwen3moe-30b-a3b"):
        out[name] = skeleton_from_json(MODELS / f"{name}.model.json", d)
    return out


def test_deepseek_blend_says_the_same_as_the_ik_list(models: dict[str, Path]) -> None:
    path = EXAMPLES / "deepseek-v3-cpu-blend.yaml"
    result = compile_plan(path, models["deepseek-v3"], imatrix=True)
    assert not [d for d in result.diagnostics if d.is_error]
    assert lint_compiled(path, models["deepseek-v3"], result, imatrix=True) == []
    rules = [(re.compile(p), MAINLINE[t]) for p, t in (line.split("=") for line in IK_LIST)]
    checked = 0
    for t in result.plan.tensors:
        if t.rule.startswith("not quantizable"):
            continue
        want = next((ty for rx, ty in rules if rx.search(t.name)), "q8_0")  # q8_0: the recipe's base
        got = t.fallback.wanted if t.fallback else t.type
        assert got == want, t.name
        checked += 1
    assert checked > 600
    # shorter than the --custom-q list it replaces (rules only, comments aside)
    body = [
        line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    rule_text = "\n".join(line.split("#")[0].rstrip() for line in body[body.index("rules:") + 1 :])
    assert len(rule_text) < len("\n".join(IK_LIST))


def test_dynamic_blend(models: dict[str, Path]) -> None:
    path = EXAMPLES / "unsloth-style-dynamic.yaml"
    for name in ("llama31-8b", "qwen3moe-30b-a3b"):
        plan = compile_plan(path, models[name], imatrix=True).plan
        types = {t.name: t.type for t in plan.tensors}
        assert types["blk.0.attn_v.weight"] == "q8_0"
        assert types["token_embd.weight"] == "q4_K"
        assert types["output.weight"] == "q6_K"
        last = max(int(n.split(".")[1]) for n in types if n.startswith("blk."))
        down = "ffn_down_exps" if name.startswith("qwen3moe") else "ffn_down"
        assert types[f"blk.{last}.{down}.weight"] == "q6_K"
        assert types[f"blk.{last - 2}.{down}.weight"] == "q5_K"
        assert types[f"blk.10.{down}.weight"] == "q4_K"
    qwen = {t.name: t.type for t in compile_plan(path, models["qwen3moe-30b-a3b"], imatrix=True).plan.tensors}
    assert qwen["blk.10.ffn_gate_exps.weight"] == "iq3_xxs"
    result = compile_plan(path, models["llama31-8b"], imatrix=False)
    assert any(d.is_error and "requires an importance matrix" in d.message for d in result.diagnostics)


def test_q8_embeddings_example(models: dict[str, Path]) -> None:
    plan = compile_plan(EXAMPLES / "q4_k_m-q8-embeddings.yaml", models["llama31-8b"]).plan
    types = {t.name: t.type for t in plan.tensors if t.action != "prune"}
    assert types["token_embd.weight"] == "q8_0" and types["output.weight"] == "q8_0"
    assert {types[f"blk.{i}.attn_v.weight"] for i in range(31)} == {"q8_0"}
    assert "blk.31.attn_v.weight" not in types
    assert plan.metadata_overrides["general.name"] == {"type": "str", "value": "Llama-3.1-8B-Q4_K_M-q8emb"}


def test_moe_json_example(models: dict[str, Path]) -> None:
    plan = compile_plan(EXAMPLES / "moe-gpu-attention.json", models["qwen3moe-30b-a3b"]).plan
    types = {t.name: t.type for t in plan.tensors}
    assert types["blk.0.ffn_up_exps.weight"] == "iq4_xs"
    assert types["blk.0.attn_q.weight"] == "q8_0"
    assert types["output.weight"] == "q6_K"
    dense = {
        t.name: t.type
        for t in compile_plan(EXAMPLES / "moe-gpu-attention.json", models["llama31-8b"]).plan.tensors
    }
    assert dense["blk.0.ffn_up.weight"] == "q8_0"
