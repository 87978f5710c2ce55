"""``recipe export`` to mainline's ``--tensor-type-file`` and ik_llama.cpp's ``--custom-q``, and recipes
that extend a built-in mix (base ftype + overrides): each translation imports back to the same plan."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_model
from gguf_recipe.interop import InteropError, export_recipe, import_llama_quantize
from gguf_recipe.model import read_model
from gguf_recipe.recipe.loader import load
from helpers.oracle_models import SkeletonFactory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "q4_k_m-q8-embeddings.yaml"
runner = CliRunner()

RECIPE = """\
recipe: 1
extends: llama.cpp/Q4_K_M
counters: llama-quantize
output: q8_0
rules:
  - category: [attn_v, attn_qkv]
    type: q8_0
  - match: 'ffn_down'
    layers: ['..3']
    type: q6_K
  - category: ffn_up
    type: q5_K
"""


def _types(text: str, model: Path) -> list[tuple[str, str]]:
    plan = compile_model(text, read_model(model), lint=False).plan
    return [(t.name, t.type) for t in plan.tensors]


def test_example_extending_a_builtin_exports_as_its_own_comment_says() -> None:
    lr = load(EXAMPLE)
    exp = export_recipe(lr.recipe, base_dir=lr.base_dir)
    assert exp.argv() == [
        "llama-quantize",
        "--prune-layers", "31",
        "--token-embedding-type", "q8_0",
        "--output-tensor-type", "q8_0",
        "--override-kv", "general.name=str:Llama-3.1-8B-Q4_K_M-q8emb",
        "--tensor-type", r"attn_v\.weight=q8_0",
        "MODEL.gguf", "OUTPUT.gguf", "Q4_K_M",
    ]  # fmt: skip
    assert exp.notes and exp.notes[0].startswith("counters: stable")


def test_example_round_trip_plans_the_same(oracle_skeleton: SkeletonFactory) -> None:
    """The exported command, imported again, plans Llama 3.1 8B exactly as the example does (its attn_v
    rule takes every attn_v, so llama-quantize's counter shift changes nothing here)."""
    lr = load(EXAMPLE)
    argv = export_recipe(lr.recipe, base_dir=lr.base_dir).argv()
    back = import_llama_quantize([*argv[1:-3], argv[-1]])
    model = oracle_skeleton("llama31-8b")
    assert _types(back, model) == _types(EXAMPLE.read_text(), model)


@pytest.mark.parametrize("name", ["llama31-8b", "phi3-mini-4k", "qwen3moe-30b-a3b"])
def test_tensor_type_file_and_custom_q_round_trip(
    name: str, tmp_path: Path, oracle_skeleton: SkeletonFactory
) -> None:
    model = oracle_skeleton(name)
    recipe = load(RECIPE).recipe
    want = _types(RECIPE, model)
    # mainline: --tensor-type-file holds whitespace-separated regex=type words
    exp = export_recipe(recipe, target="tensor-type-file")
    text = exp.tensor_type_file()
    assert (
        text
        == "(attn_v\\.weight|attn_qkv\\.weight)=q8_0\n^blk\\.(?:0|1|2|3)\\..*(?:ffn_down)=q6_K\nffn_up=q5_K\n"
    )
    assert not any(c in text for c in "# ") and len(text.split()) == 3
    rules = tmp_path / "rules.txt"
    rules.write_text(text)
    argv = exp.argv(rules_file=str(rules))
    assert "--tensor-type-file" in argv and "--tensor-type" not in argv
    assert _types(import_llama_quantize([*argv[1:-3], argv[-1]]), model) == want
    # ik_llama.cpp: --custom-q regex=type,regex=type
    exp = export_recipe(recipe, target="custom-q")
    q = exp.custom_q()
    assert q == text.strip().replace("\n", ",")
    argv = exp.argv()
    assert argv[argv.index("--custom-q") + 1] == q
    assert _types(import_llama_quantize([*argv[1:-3], argv[-1]]), model) == want


def test_format_specific_refusals_name_the_rule() -> None:
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - match: 'attn_(q|k){1,2}'\n    type: q8_0\n"
    # a comma separates --custom-q rules; the mainline forms take it
    with pytest.raises(InteropError, match=r"rule 1: pattern 'attn_\(q\|k\)\{1,2\}' has a comma"):
        export_recipe(load(text).recipe, target="custom-q")
    assert export_recipe(load(text).recipe, target="tensor-type-file").tensor_types
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - match: 'attn_q weight'\n    type: q8_0\n"
    with pytest.raises(InteropError, match="rule 1: pattern 'attn_q weight' has white space"):
        export_recipe(load(text).recipe, target="tensor-type-file")
    # ik_llama.cpp keeps the case of --custom-q patterns; mainline lower-cases them
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - match: 'Attn_Q'\n    type: q8_0\n"
    assert export_recipe(load(text).recipe, target="custom-q").custom_q() == "Attn_Q=q8_0"
    with pytest.raises(InteropError, match="upper-case"):
        export_recipe(load(text).recipe, target="tensor-type-file")
    # what llama-quantize cannot say at all is refused, naming the rule and why
    text = "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - category: attn_v\n    when: {experts: 8}\n    type: q8_0\n"
    with pytest.raises(
        InteropError, match=r"rule 1: llama-quantize cannot express when \(llama-quantize has no"
    ):
        export_recipe(load(text).recipe)


def test_cli_export_formats(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", str(EXAMPLE), "--format", "tensor-type-file"])
    assert r.exit_code == 0, r.output
    assert r.stdout == "attn_v\\.weight=q8_0\n"
    assert "--tensor-type-file RULES.txt" in r.stderr
    out = tmp_path / "rules.txt"
    r = runner.invoke(app, ["export", str(EXAMPLE), "-f", "tensor-type-file", "--rules-file", str(out)])
    assert r.exit_code == 0 and r.stdout == ""
    assert out.read_text() == "attn_v\\.weight=q8_0\n"
    cmd = next(x for x in r.stderr.splitlines() if x.startswith("command: ")).removeprefix("command: ")
    assert shlex.split(cmd)[-4:-3] == [str(out)]
    r = runner.invoke(app, ["export", str(EXAMPLE), "-f", "custom-q"])
    assert r.exit_code == 0 and r.stdout == "attn_v\\.weight=q8_0\n"
    assert "--custom-q" in r.stderr
    r = runner.invoke(app, ["export", str(EXAMPLE)])
    assert r.exit_code == 0 and "--tensor-type 'attn_v\\.weight=q8_0'" in r.stdout
