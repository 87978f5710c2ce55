"""``recipe diff`` / ``recipe infer`` / heatmaps on real outputs: SmolLM2-135M quantized by this project's
own ``recipe apply`` (Q4_K_M, Q3_K_M and a custom blend), compared with each other, with the plans and
with the recipes they were made from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_plan
from gguf_recipe.executor import apply_plan
from gguf_recipe.read import diff_views, infer_recipe, load_view, render_diff
from gguf_recipe.read.views import ViewError, view_of_plan
from gguf_recipe.recipe.loader import load_recipe

runner = CliRunner()

CUSTOM = """\
recipe: 1
name: custom-blend
extends: llama.cpp/Q4_K_M
token_embedding: q5_0
rules:
  - match: 'ffn_down\\.weight$'
    layers: ['..3', '26..']
    type: q8_0
  - match: 'attn_(q|k)\\.weight$'
    layers: ['10..19']
    type: q4_0
"""


@pytest.fixture(scope="module")
def outputs(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("real-quants")
    out: dict[str, Path] = {}
    for name, recipe in (("Q4_K_M", "llama.cpp/Q4_K_M"), ("Q3_K_M", "llama.cpp/Q3_K_M"), ("custom", CUSTOM)):
        plan = compile_plan(recipe, source).plan
        plan.save(d / f"{name}.plan.json")
        apply_plan(plan, source, d / f"smollm2-{name}.gguf", progress=False)
        out[name] = d / f"smollm2-{name}.gguf"
    return out


def test_diff_q4_k_m_vs_q3_k_m(outputs: dict[str, Path], source: Path) -> None:
    a, b = load_view(outputs["Q4_K_M"]), load_view(outputs["Q3_K_M"])
    result = diff_views([a, b])
    # what differs is exactly what the two plans say differs
    pa = {t.name: t.type for t in compile_plan("llama.cpp/Q4_K_M", source).plan.tensors}
    pb = {t.name: t.type for t in compile_plan("llama.cpp/Q3_K_M", source).plan.tensors}
    differ = {n for n in pa if pa[n] != pb[n]}
    assert result.n_different == len(differ) > 100
    assert {n for r in result.rows if r.different for n in r.names} == differ
    rows = {r.label: r for r in result.rows}
    assert rows["blk.{0..29}.ffn_gate.weight"].types == ["q5_0", "q4_0"]  # q4_K / q3_K fall back: rows of 576
    assert not rows["blk.{0..29}.attn_norm.weight"].different
    # same model: what moved, and by how many bytes
    (moved,) = result.moved
    assert moved.bytes_delta == b.total_bytes - a.total_bytes < 0
    assert moved.tensors == len(differ)
    top = moved.moves[0]
    assert (top.src, top.dst, top.tensors) == ("q5_0", "q4_0", 120)
    text = render_diff(result)
    assert "148 of 272 tensor(s) differ" in text
    assert "q5_0 -> q4_0: 120 tensor(s)" in text
    assert "*  blk.{0..29}.ffn_gate.weight" in text
    only = render_diff(result, only_different=True)
    assert "attn_norm" not in only and "ffn_gate" in only


def test_a_recipe_and_the_gguf_it_produced_do_not_differ(outputs: dict[str, Path], source: Path) -> None:
    for name, recipe in (("Q4_K_M", "llama.cpp/Q4_K_M"), ("custom", CUSTOM)):
        views = [load_view(outputs[name]), view_of_plan(compile_plan(recipe, source).plan, kind="recipe")]
        views.append(load_view(outputs[name].parent / f"{name}.plan.json"))
        result = diff_views(views)
        assert result.n_different == 0
        assert [m.moves for m in result.moved] == [[], []]
        assert len({v.total_bytes for v in views}) == 1
    # the same through the CLI, recipe planned against --model
    r = runner.invoke(
        app, ["diff", str(outputs["Q4_K_M"]), "llama.cpp/Q4_K_M", "--model", str(source), "-f", "json"]
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["different_tensors"] == 0
    assert [i["kind"] for i in data["inputs"]] == ["gguf", "recipe"]
    assert data["moved"][0]["tensors"] == 0


def test_infer_real_outputs(outputs: dict[str, Path], source: Path) -> None:
    res = infer_recipe(outputs["Q4_K_M"])
    assert (res.base, res.n_rules) == ("llama.cpp/Q4_K_M", 0)
    res = infer_recipe(outputs["custom"], source=source)
    recipe = load_recipe(res.text)
    assert recipe.extends == "llama.cpp/Q4_K_M" and recipe.token_embedding == "q5_0"
    assert res.n_rules <= 3
    plan = compile_plan(res.text, source).plan
    assert {t.name: t.type for t in plan.tensors} == {
        t.name: t.type for t in load_view(outputs["custom"]).tensors
    }


def test_cli_diff_formats_and_heatmap(outputs: dict[str, Path], tmp_path: Path) -> None:
    a, b, c = (str(outputs[k]) for k in ("Q4_K_M", "Q3_K_M", "custom"))
    r = runner.invoke(
        app,
        ["diff", a, b, c, "--format", "markdown", "--only-different", "--heatmap", str(tmp_path / "h.svg")],
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("| tensor | n | smollm2-Q4\\_K\\_M | smollm2-Q3\\_K\\_M | smollm2-custom |")
    assert "| **size (MiB)** |" in r.stdout and "What moved:" in r.stdout
    svg = (tmp_path / "h.svg").read_text()
    assert svg.count("smollm2-") >= 3 and "q4_0 (4.50 bpw)" in svg
    r = runner.invoke(app, ["diff", a, "llama.cpp/Q4_K_M"])
    assert r.exit_code == 1 and "--model" in r.stderr
    r = runner.invoke(app, ["diff", a])
    assert r.exit_code == 2
    with pytest.raises(ViewError, match="neither a GGUF file"):
        load_view(tmp_path / "nothing.bin")


def test_infer_with_source_finds_the_pruned_blocks(source: Path, tmp_path: Path) -> None:
    """Blocks of SmolLM2 all look alike in the header; the norms (copied as they are) tell which went."""
    recipe = "recipe: 1\nextends: llama.cpp/Q4_K_M\nprune_layers: [3, 17]\n"
    out = tmp_path / "pruned.gguf"
    apply_plan(compile_plan(recipe, source).plan, source, out, progress=False)
    res = infer_recipe(out, source=source)
    assert res.prune_layers == [3, 17] and not res.notes
    assert (res.n_rules, load_recipe(res.text).prune_layers) == (0, [3, 17])
    alone = infer_recipe(out)  # without the source: the file's own 28 blocks, exact too
    assert load_recipe(alone.text).prune_layers == []
