"""Warnings (and errors) that need the model: exact messages at the rule's file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from gguf_recipe.compiler import compile_plan
from gguf_recipe.compiler.lint import lint_compiled
from gguf_recipe.model.skeleton import skeleton_from_json
from helpers.oracle_models import MODELS, SkeletonFactory


@pytest.fixture(scope="module")
def llama8b(oracle_skeleton: SkeletonFactory) -> Path:
    return oracle_skeleton("llama31-8b")


def lint(tmp_path: Path, model: Path, text: str, imatrix: bool = False) -> list[str]:
    p = tmp_path / "r.yaml"
    p.write_text(text, encoding="utf-8")
    result = compile_plan(p, model, imatrix=imatrix)
    return [d.format().replace(str(p), "r.yaml") for d in lint_compiled(p, model, result, imatrix=imatrix)]


HEAD = "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            "  - match: 'output\\.weight'\n    type: q8_0\n",
            [
                "r.yaml:4:12: warning[L306]: rule 1: pattern 'output\\.weight' also matches blk.0.attn_output.weight "
                "(another tensor family than output.weight)\n"
                "  = help: anchor it, e.g. '^output\\.weight' or '(^|\\.)output\\.weight'"
            ],
        ),
        ("  - match: '^output\\.weight'\n    type: q8_0\n", []),
        (
            "  - match: 'ffn_down_exps\\.weight'\n    type: q8_0\n",
            [
                "r.yaml:4:12: warning[L303]: rule 1 matches no tensor of this model\n"
                "  = help: tensor families of this model that look similar: blk.*.ffn_down.weight, "
                "blk.*.ffn_up.weight, token_embd.weight"
            ],
        ),
        (
            "  - match: 'attn_norm'\n    type: q8_0\n",
            [
                "r.yaml:4:12: warning[L304]: rule 1 only matches tensors that are never quantized "
                "(e.g. blk.0.attn_norm.weight: 1-D tensor)\n"
                "  = help: llama.cpp keeps norms, biases, 1-D tensors and routers as they are"
            ],
        ),
        (
            "  - match: 'attn_q\\.weight'\n    type: q5_K\n  - match: 'blk\\.0\\.attn_q\\.weight'\n    type: q6_K\n",
            [
                "r.yaml:6:12: warning[L305]: rule 2 is shadowed: every tensor it matches is decided earlier (by rule 1)\n"
                "  = help: the first matching rule wins: move this rule up or narrow the earlier one"
            ],
        ),
        (
            "  - match: 'ffn_up'\n    layers: ['0..3', '40']\n    type: q6_K\n",
            [
                "r.yaml:5:22: error[L301]: rule 1: layer selector '40': layer 40 is outside the model: the model has 32 layers (0..31)"
            ],
        ),
        (
            "  - match: 'ffn_gate'\n    type: iq2_xxs\n",
            [
                "r.yaml:5:11: error[L307]: rule 1: type iq2_xxs needs an importance matrix, and none is given "
                "(32 tensor(s), e.g. blk.0.ffn_gate.weight)\n"
                "  = help: plan with --imatrix FILE, or pick a type that does not need one (e.g. q2_K, iq3_s, iq4_xs)"
            ],
        ),
        (
            "  - match: 'ffn_up'\n    when: {arch: deepseek2}\n    type: q6_K\n",
            [
                "r.yaml:5:11: warning[L302]: rule 1 never applies to this model: 'when arch=deepseek2' does not hold"
            ],
        ),
        (
            "  - match: 'ffn_up'\n    when: {row_multiple_of: 7}\n    type: q6_K\n",
            [
                "r.yaml:5:11: warning[L302]: rule 1 never applies to this model: 'when row_multiple_of=7' does not hold "
                "for any of the 32 tensor(s) it matches (e.g. blk.0.ffn_up.weight)"
            ],
        ),
        ("  - category: attn_v\n    layers_by: position\n    layers: ['..<1/8']\n    type: q8_0\n", []),
    ],
)
def test_lint_messages(tmp_path: Path, llama8b: Path, rules: str, expected: list[str]) -> None:
    assert lint(tmp_path, llama8b, HEAD + rules) == expected


def test_imatrix_given_silences_the_imatrix_error(tmp_path: Path, llama8b: Path) -> None:
    assert lint(tmp_path, llama8b, HEAD + "  - match: 'ffn_gate'\n    type: iq2_xxs\n", imatrix=True) == []


def test_token_embedding_shadows(tmp_path: Path, llama8b: Path) -> None:
    text = "recipe: 1\nbase: q4_K\ntoken_embedding: q8_0\nrules:\n  - match: '^token_embd'\n    type: q6_K\n"
    assert lint(tmp_path, llama8b, text) == [
        "r.yaml:5:12: warning[L305]: rule 1 is shadowed: every tensor it matches is decided earlier (by token_embedding)\n"
        "  = help: the first matching rule wins: move this rule up or narrow the earlier one"
    ]


def test_builtin_recipes_are_not_linted(llama8b: Path) -> None:
    result = compile_plan("llama.cpp/Q4_K_M", llama8b)
    from gguf_recipe.recipes import resolve

    assert lint_compiled(resolve("llama.cpp/Q4_K_M"), llama8b, result) == []


def test_lint_recipe_api_for_the_compiler(tmp_path: Path, llama8b: Path) -> None:
    """``lint_recipe(chain, model, plan, imatrix=...)`` is what the compiler calls; positions come from the chain."""
    from gguf_recipe.compiler import compile_model, load_recipe_chain
    from gguf_recipe.compiler.lint import lint_recipe
    from gguf_recipe.model import read_model

    p = tmp_path / "r.yaml"
    p.write_text(HEAD + "  - match: 'attn_norm'\n    type: q8_0\n", encoding="utf-8")
    model = read_model(llama8b)
    plan = compile_model(p, model).plan
    diags = lint_recipe(load_recipe_chain(p), model, plan, imatrix=False)
    assert [(d.file, d.line, d.col, d.severity) for d in diags] == [(str(p), 4, 12, "warning")]
    assert lint_recipe(load_recipe_chain("llama.cpp/Q4_K_M"), model, plan) == []


def test_unanchored_pattern_on_a_tied_model(tmp_path: Path) -> None:
    """gemma3 has no output.weight: 'output\\.weight' would only re-type every attn_output."""
    model = skeleton_from_json(MODELS / "gemma3-4b.model.json", tmp_path)
    assert lint(tmp_path, model, HEAD + "  - match: 'output\\.weight'\n    type: q8_0\n") == [
        "r.yaml:4:12: warning[L306]: rule 1: pattern 'output\\.weight' only matches inside other tensor names "
        "(e.g. blk.0.attn_output.weight); this model has no output tensor\n"
        "  = help: anchor it, e.g. '^output\\.weight', or remove the rule"
    ]
