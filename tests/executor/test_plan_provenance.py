"""A plan whose decisions do not follow from its recipe is never written out as that recipe's work:
refused unless forced (then ``gguf_recipe.plan_edited`` is recorded), or recorded as unverified when
the recipe cannot be compiled here (``gguf_recipe.plan_unverified``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader
from typer.testing import CliRunner

from gguf_recipe import quants
from gguf_recipe.cli import app
from gguf_recipe.compiler import compile_plan
from gguf_recipe.executor import EditedPlanError, apply_plan
from gguf_recipe.executor.gguf_format import tensor_nbytes
from gguf_recipe.executor.provenance import check_decisions
from gguf_recipe.plan import Plan
from helpers.executor import T, listdir, llama_tensors, make_plan, write_model

runner = CliRunner()
EDITED = "gguf_recipe.plan_edited"
UNVERIFIED = "gguf_recipe.plan_unverified"


def fields(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, f in GGUFReader(str(path)).fields.items():
        if k.startswith("gguf_recipe."):
            v = f.parts[f.data[0]]
            out[k] = bytes(v).decode() if f.types[0].name == "STRING" else bool(v[0])
    return out


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.gguf", llama_tensors(3))


def plan_json(model: Path, recipe: str = "llama.cpp/Q8_0") -> dict[str, Any]:
    r = runner.invoke(app, ["plan", recipe, str(model), "--format", "json"])
    assert r.exit_code == 0, r.output
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def retype(data: dict[str, Any], name: str, to: str) -> None:
    """A consistent hand edit: type, action and size all agree (only the recipe says otherwise)."""
    t = next(t for t in data["tensors"] if t["source_name"] == name)
    t["type"] = to
    t["action"] = "copy" if to == t["source_type"] else "quantize"
    t["target_bytes"] = tensor_nbytes(t["shape"], quants.parse_qtype(to))


def test_edited_plan_is_refused_unless_forced_and_then_recorded(model: Path, tmp_path: Path) -> None:
    data = plan_json(model)
    retype(data, "blk.0.attn_q.weight", "f16")
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out.gguf"
    r = runner.invoke(app, ["apply", str(p), str(model), "-o", str(out)])
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith(
        "error: the plan's decisions are not what its recipe 'llama.cpp/Q8_0' gives for this model"
    )
    assert "blk.0.attn_q.weight: the plan says copy to f16, the recipe gives quantize to q8_0" in r.stderr
    assert "--force" in r.stderr and "Traceback" not in r.output
    assert listdir(tmp_path) == ["m.gguf", "plan.json"]

    r = runner.invoke(app, ["apply", str(p), str(model), "-o", str(out), "--force", "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: applying an edited plan (forced)" in r.stderr
    kv = fields(out)
    assert kv[EDITED] is True
    assert UNVERIFIED not in kv
    assert kv["gguf_recipe.recipe_name"] == "llama.cpp/Q8_0"  # what it started from, marked edited
    t = {t.name: T(t.tensor_type) for t in GGUFReader(str(out)).tensors}
    assert t["blk.0.attn_q.weight"] == T.F16 and t["blk.1.attn_q.weight"] == T.Q8_0


def test_unedited_plan_and_direct_apply_claim_the_recipe(model: Path, tmp_path: Path) -> None:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan_json(model)), encoding="utf-8")
    for src, out in ((p, tmp_path / "a.gguf"), ("llama.cpp/Q8_0", tmp_path / "b.gguf")):
        r = runner.invoke(app, ["apply", str(src), str(model), "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        assert r.stderr == ""
        kv = fields(out)
        assert EDITED not in kv and UNVERIFIED not in kv
        assert kv["gguf_recipe.recipe_name"] == "llama.cpp/Q8_0"


@pytest.mark.parametrize(
    "edit, detail",
    [
        (lambda d: retype(d, "output.weight", "f16"), "output.weight: the plan says copy to f16"),
        (lambda d: d.update(recipe_name="my-mix"), "recipe_name: the plan says 'my-mix'"),
        (lambda d: d.update(ftype=2), "ftype: the plan says 2, the recipe gives 7"),
        (
            lambda d: d["metadata_overrides"].update({"general.name": "x"}),
            "metadata_overrides: the plan says {'general.name': 'x'}",
        ),
        (
            lambda d: d["tensors"].__setitem__(0, {**d["tensors"][0], "rule": "rule 1: mine"}),
            "rule 'rule 1: mine'",
        ),
        (lambda d: d["tensors"].reverse(), "the tensors are in another order"),
    ],
)
def test_every_decision_is_compared(model: Path, tmp_path: Path, edit: Any, detail: str) -> None:
    data = plan_json(model)
    edit(data)
    plan = Plan.model_validate(data)
    check = check_decisions(plan, model)
    assert check.status == "edited"
    assert detail in check.detail
    with pytest.raises(EditedPlanError, match="not what its recipe"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["m.gguf"]


def test_imatrix_flag_edit_is_found(model: Path) -> None:
    plan = compile_plan("llama.cpp/Q8_0", model, imatrix=True).plan
    assert check_decisions(plan, model).status == "verified"  # planned "as if" with an imatrix
    data = plan.model_dump(mode="json")
    t = next(t for t in data["tensors"] if t["imatrix"])
    t["imatrix"] = False
    check = check_decisions(Plan.model_validate(data), model)
    assert check.status == "edited"
    assert f"{t['source_name']}: imatrix False (the recipe gives True)" in check.detail


def test_a_plan_carries_its_recipe_chain_so_no_file_is_needed_to_check_it(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "parent.yaml").write_text("recipe: 1\nname: parent\nbase: q8_0\n", encoding="utf-8")
    child = folder / "child.yaml"
    child.write_text("recipe: 1\nname: child\nextends: parent.yaml\noutput: f16\n", encoding="utf-8")
    plan = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", str(child), str(model), "-o", str(plan)])
    assert r.exit_code == 0, r.output
    data = json.loads(plan.read_text())
    assert [c["name"] for c in data["recipe_chain"]] == [str(child), str(folder / "parent.yaml")]
    monkeypatch.chdir(tmp_path)  # parent.yaml is not beside the plan nor here
    out = tmp_path / "out.gguf"
    r = runner.invoke(app, ["apply", str(plan), str(model), "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "cannot check" not in r.stderr
    kv = fields(out)
    assert EDITED not in kv and UNVERIFIED not in kv
    # an edit is still seen without the files
    data["tensors"][-1]["needs_imatrix"] = not data["tensors"][-1]["needs_imatrix"]
    plan.write_text(json.dumps(data))
    r = runner.invoke(app, ["apply", str(plan), str(model), "-o", str(out), "-q"])
    assert r.exit_code == 1 and "needs_imatrix" in r.stderr, r.stderr


def test_hand_made_plan_is_recorded_unverified(model: Path, tmp_path: Path) -> None:
    res = apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False)
    assert any("cannot check that the plan's decisions" in w for w in res.warnings)
    assert "does not load here" in fields(tmp_path / "o.gguf")[UNVERIFIED]


def test_provenance_marks_of_the_source_are_not_carried_over(tmp_path: Path) -> None:
    src = write_model(
        tmp_path / "m.gguf", llama_tensors(3), extra_kv={EDITED: True, UNVERIFIED: "an earlier file's"}
    )
    out = tmp_path / "o.gguf"
    apply_plan(compile_plan("llama.cpp/Q8_0", src).plan, src, out, progress=False)
    kv = fields(out)
    assert EDITED not in kv and UNVERIFIED not in kv
