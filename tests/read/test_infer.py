"""``recipe infer`` on header-only quantized files built from recorded llama-quantize runs
(tests/helpers/quant_files.py): 7 oracle architectures x 61 runs and 6 hand-made ones x 57 (dense, MoE with
shared experts, MLA, fused QKV, tied embeddings; plain mixes, with and without an imatrix, and runs with
--tensor-type, --pure, --output-tensor-type, --token-embedding-type, --leave-output-tensor,
--prune-layers). Every inferred recipe must plan every tensor to the type the file has, in at most 12
rules; a plain mix (and the options that are recipe fields) needs none.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_model
from gguf_recipe.model import read_model
from gguf_recipe.model.header import GGUFReadError
from gguf_recipe.model.skeleton import write_skeleton
from gguf_recipe.read import InferError, infer_recipe
from gguf_recipe.recipe.loader import load_recipe
from helpers.oracle_models import skeleton_dir
from helpers.quant_files import QuantRun, quant_file, quant_spec, runs, source_file, writable

RUNS = runs()
_SCALAR_OPTIONS = {"--pure", "--leave-output-tensor", "--output-tensor-type", "--token-embedding-type"}


def _rules_expected_zero(run: QuantRun) -> bool:
    opts = {o for o in run.options if o.startswith("--")}
    return opts <= _SCALAR_OPTIONS


@cache
def _dir() -> Path:
    d = skeleton_dir() / "quantized"
    d.mkdir(exist_ok=True)
    return d


def _types_of_plan(text: str, model: Path, imatrix: bool) -> dict[str, str]:
    plan = compile_model(text, read_model(model), imatrix=imatrix, lint=False).plan
    return {t.name: t.type for t in plan.tensors if t.action != "prune"}


def test_all_recorded_runs_are_here() -> None:
    assert len(RUNS) == 7 * 61 + 6 * 57 == 769
    kinds = {o for r in RUNS for o in r.options if o.startswith("--")}
    assert kinds >= _SCALAR_OPTIONS | {"--tensor-type", "--prune-layers"}
    assert {r.model for r in RUNS} >= {
        "deepseek-v3",
        "deepseek-v2-lite",
        "phi3-mini-4k",
        "gemma3-4b",
        "qwen3moe-30b-a3b",
    }
    assert sum(r.imatrix for r in RUNS) == 7 * 19 + 6 * 15


def test_unwritable_recorded_runs_are_refused_by_the_reader() -> None:
    """The recorded runs no file can hold (a forced type on rows it does not divide) are exactly these,
    and reading such a file is one error naming the tensor."""
    bad = [r for r in RUNS if not writable(r)]
    assert sorted(f"{r.model}-{r.id}" for r in bad) == sorted(UNWRITABLE)
    for r in bad:
        with pytest.raises(GGUFReadError, match=r"row length \d+ is not a multiple of"):
            read_model(quant_file(r, _dir()))


UNWRITABLE = [
    "qwen25-0.5b-Q4_K_M---output-tensor-type q4_K --token-embedding-type q4_K",
    "falcon-7b-Q4_K_M---output-tensor-type q5_K",
    "gpt-oss-20b-Q4_K_M---output-tensor-type q5_K",
]


@pytest.mark.parametrize("run", [pytest.param(r, id=f"{r.model}-{r.id}") for r in RUNS if writable(r)])
def test_infer_replans_exactly(run: QuantRun) -> None:
    f = quant_file(run, _dir())
    res = infer_recipe(f)
    # checked here again, independently of infer's own check: the text as `recipe plan` reads it
    assert _types_of_plan(res.text, f, run.imatrix) == dict(run.tensors)
    assert res.n_rules <= 12
    assert res.n_rules == len(load_recipe(res.text).rules)
    if _rules_expected_zero(run):
        assert res.n_rules == 0, res.text
    assert res.imatrix == run.imatrix
    recipe = load_recipe(res.text)
    assert (recipe.imatrix is not None and recipe.imatrix.required) == run.imatrix
    if "--pure" in run.options:
        assert recipe.base is not None and recipe.ftype == run.ftype
    elif _rules_expected_zero(run):
        assert recipe.extends == f"llama.cpp/{run.ftype}"
    else:  # the mix general.file_type names, or its plain base type where that needs fewer rules
        assert recipe.extends == f"llama.cpp/{run.ftype}" or recipe.ftype == run.ftype


def _run(model: str, run_id: str) -> QuantRun:
    for r in RUNS:
        if r.model == model and r.id == run_id:
            return r
    raise LookupError(run_id)


def test_infer_reads_the_tensor_type_rules_back() -> None:
    r = _run("llama31-8b", r"Q4_K_M---tensor-type blk\.[0-3]\.ffn_down=q8_0 --tensor-type ffn_down=q5_K "
             r"--tensor-type attn_v=q6_K --tensor-type attn_.*=iq4_nl")  # fmt: skip
    res = infer_recipe(quant_file(r, _dir()))
    rules = [(x.match, x.layers, x.type) for x in load_recipe(res.text).rules]
    assert rules == [
        (r"attn_(k|output|q)\.weight$", None, "iq4_nl"),
        (r"attn_v\.weight$", None, "q6_K"),
        (r"ffn_down\.weight$", ["..3"], "q8_0"),
        (r"ffn_down\.weight$", None, "q5_K"),
    ]
    assert res.counters == "stable"


def test_infer_uses_llama_quantize_counters_where_they_explain_the_file() -> None:
    # IQ3_M's ffn_down choices are counted by position; --tensor-type on blocks 0-3 moves them
    r = _run("qwen3-8b", r"IQ3_M---tensor-type blk\.[0-3]\.ffn_down=q8_0 --tensor-type attn_v=q6_K "
             r"--tensor-type ffn_down_exps=q5_K")  # fmt: skip
    res = infer_recipe(quant_file(r, _dir()))
    assert res.counters == "llama-quantize"
    assert "counters: llama-quantize" in res.text
    assert res.n_rules == 2


def test_infer_mla_and_shared_experts() -> None:
    r = _run("deepseek-v3", r"Q4_K_M---tensor-type blk\.[0-3]\.ffn_down=q8_0 --tensor-type attn_v=q6_K "
             r"--tensor-type ffn_down_exps=q5_K")  # fmt: skip
    rules = [(x.match, x.layers, x.type) for x in load_recipe(infer_recipe(quant_file(r, _dir())).text).rules]
    assert rules == [  # in the model's order: blk.0.attn_v_b comes before blk.0.ffn_down
        (r"attn_v_b\.weight$", None, "q6_K"),
        (r"ffn_down(_exps|_shexp)?\.weight$", ["..3"], "q8_0"),
        (r"ffn_down_exps\.weight$", None, "q5_K"),
    ]


def test_infer_scalar_options_become_fields() -> None:
    r = _run("llama31-8b", "Q4_K_M---output-tensor-type q8_0 --token-embedding-type q8_0")
    recipe = load_recipe(infer_recipe(quant_file(r, _dir())).text)
    assert (recipe.token_embedding, recipe.output, recipe.rules) == ("q8_0", "q8_0", [])
    r = _run("llama31-8b", "Q4_K_M---leave-output-tensor")
    assert load_recipe(infer_recipe(quant_file(r, _dir())).text).output == "keep"
    # tied embeddings: --output-tensor-type reaches token_embd through the row-size fallback
    r = _run("qwen25-0.5b", "Q4_K_M---output-tensor-type q5_K")
    assert load_recipe(infer_recipe(quant_file(r, _dir())).text).token_embedding == "q5_1"


def test_infer_split_file_is_the_same_recipe() -> None:
    r = _run("mixtral-8x7b", r"Q4_K_M---tensor-type ffn_down=q5_K --tensor-type blk\.[0-3]\.ffn_down=q8_0 "
             r"--tensor-type attn_.*=iq4_nl")  # fmt: skip
    d = _dir() / "split"
    d.mkdir(exist_ok=True)
    first = quant_file(r, d, n_splits=3)
    assert first.name.endswith("-00001-of-00003.gguf")
    one = infer_recipe(quant_file(r, _dir()), name="x")
    three = infer_recipe(first.with_name(first.name.replace("00001-of", "00002-of")), name="x")
    assert [x.model_dump() for x in load_recipe(one.text).rules] == [
        x.model_dump() for x in load_recipe(three.text).rules
    ]
    assert three.n_tensors == len(r.tensors)


def test_infer_with_source_explains_pruned_layers() -> None:
    r = _run("llama31-8b", "Q4_K_M---prune-layers 1,2")
    src = source_file("llama31-8b", _dir())
    res = infer_recipe(quant_file(r, _dir()), source=src)
    recipe = load_recipe(res.text)
    assert len(recipe.prune_layers) == 2
    assert res.n_rules == 0  # against the source, plain Q4_K_M with two blocks pruned is the whole story
    # the skeletons hold no data: which two blocks cannot be told, and the recipe says so
    assert any("cannot tell" in n for n in res.notes)
    assert _types_of_plan(res.text, src, False) == dict(r.tensors)
    # without the source, the file alone still replans exactly (with rules for the moved choices)
    alone = infer_recipe(quant_file(r, _dir()))
    assert alone.n_rules > 0 and load_recipe(alone.text).prune_layers == []


def test_infer_with_source_of_the_same_tensors() -> None:
    r = _run("gemma3-4b", r"Q4_K_M---tensor-type ffn_down=q5_K --tensor-type blk\.[0-3]\.ffn_down=q8_0 "
             r"--tensor-type attn_.*=iq4_nl")  # fmt: skip
    src = source_file("gemma3-4b", _dir())
    res = infer_recipe(quant_file(r, _dir()), source=src)
    assert _types_of_plan(res.text, src, False) == dict(r.tensors)
    # another model is refused
    with pytest.raises(InferError, match="not the model"):
        infer_recipe(quant_file(r, _dir()), source=source_file("llama2-7b", _dir()))


def _write(spec: dict[str, Any], name: str) -> Path:
    path = _dir() / name
    if not path.exists():
        write_skeleton(spec, path)
    return path


def test_infer_without_file_type_finds_the_closest_mix() -> None:
    r = _run("phi3-mini-4k", "Q5_K_S")
    spec = quant_spec(r)
    spec["metadata"] = [kv for kv in spec["metadata"] if kv["key"] != "general.file_type"]
    res = infer_recipe(_write(spec, "phi3-no-ftype.gguf"))
    assert res.base == "llama.cpp/Q5_K_S" and res.n_rules == 0


def test_infer_refuses_a_type_no_recipe_can_give() -> None:
    # a block tensor in q4_K with rows of 896 (not a multiple of 256): no rule gives it
    r = _run("qwen25-0.5b", "Q4_K_M")
    spec = quant_spec(r)
    for t in spec["tensors"]:
        if t["name"] == "blk.3.attn_q.weight":
            t["dtype"] = "Q4_K"
    with pytest.raises(GGUFReadError, match=r"blk\.3\.attn_q\.weight.* row length 896 is not a multiple"):
        infer_recipe(_write(spec, "qwen-bad-q4k.gguf"))


runner = CliRunner()


def test_cli_infer_writes_a_recipe_that_plans_the_file(tmp_path: Path) -> None:
    r = _run("gemma3-4b", "IQ4_XS-imatrix")
    f = quant_file(r, _dir())
    out = tmp_path / "r.yaml"
    res = runner.invoke(app, ["infer", str(f), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "0 rules" in res.output and "imatrix" in res.output
    assert "required: true" in out.read_text()
    # without --imatrix the plan is refused; with one it is exact
    res = runner.invoke(app, ["plan", str(out), str(f), "--format", "json"])
    assert res.exit_code == 1
    assert _types_of_plan(out.read_text(), f, True) == dict(r.tensors)
    # to stdout
    res = runner.invoke(app, ["infer", str(f)])
    assert res.exit_code == 0 and "extends: llama.cpp/IQ4_XS" in res.stdout


def test_cli_infer_reports_what_it_cannot_reproduce(tmp_path: Path) -> None:
    spec = quant_spec(_run("qwen25-0.5b", "Q4_K_M"))
    for t in spec["tensors"]:
        if t["name"] == "blk.3.attn_q.weight":
            t["dtype"] = "Q4_K"
    res = runner.invoke(
        app, ["infer", str(_write(spec, "qwen-bad-q4k.gguf")), "-o", str(tmp_path / "x.yaml")]
    )
    assert res.exit_code == 1
    assert "blk.3.attn_q.weight" in res.output
    assert not (tmp_path / "x.yaml").exists()
