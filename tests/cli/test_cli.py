"""The ``recipe`` CLI end to end (typer's CliRunner: the same code path as the console script)."""

from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType
from typer.testing import CliRunner

from gguf_recipe.cli import app, schema_text
from gguf_recipe.plan import Plan
from gguf_recipe.quants import implemented_types
from helpers.oracle_models import SkeletonFactory

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def model(oracle_skeleton: SkeletonFactory) -> Path:
    return oracle_skeleton("llama31-8b")


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --- schema -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["recipe", "plan"])
def test_checked_in_schema_is_current(kind: str) -> None:
    path = REPO / "schema" / f"{kind}.schema.json"
    assert path.read_text(encoding="utf-8") == schema_text(kind), (
        f"{path} is stale: regenerate it with `recipe schema {kind} -o schema/{kind}.schema.json`"
    )


def test_schema_command(tmp_path: Path) -> None:
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["title"] == "gguf-recipe recipe (schema version 1)"
    assert "rules" in data["properties"]
    r = runner.invoke(app, ["schema", "plan", "-o", str(tmp_path / "p.json")])
    assert r.exit_code == 0
    assert "tensors" in json.loads((tmp_path / "p.json").read_text())["properties"]


def test_schema_validates_examples_and_builtins() -> None:
    import jsonschema
    from ruamel.yaml import YAML

    schema = json.loads(schema_text("recipe"))
    yaml = YAML(typ="safe", pure=True)
    files = sorted((REPO / "examples").glob("*.yaml")) + sorted(
        (REPO / "recipes" / "llama.cpp").glob("*.yaml")
    )
    assert files
    for f in files:
        jsonschema.validate(yaml.load(f.read_text()), schema)


# --- types --------------------------------------------------------------------------------------


def test_types_table() -> None:
    r = runner.invoke(app, ["types"])
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["type", "id", "block", "bytes", "bpw", "recipes", "produce", "imatrix"]
    q4k = next(line.split() for line in lines if line.startswith("q4_K "))
    assert q4k[:6] == ["q4_K", "12", "256", "144", "4.5", "yes"]
    iq2 = next(line.split() for line in lines if line.startswith("iq2_xxs "))
    assert iq2[-1] == "needed"
    q8k = next(line.split() for line in lines if line.startswith("q8_K "))
    assert q8k[5:] == ["-", "-"]


def test_types_json() -> None:
    r = runner.invoke(app, ["types", "--json"])
    rows = json.loads(r.stdout)
    assert [row["id"] for row in rows] == [int(t) for t in GGMLQuantizationType]
    produced = {row["name"] for row in rows if row["can_produce"]}
    assert len(produced) == len(implemented_types())
    assert next(row for row in rows if row["name"] == "q6_K")["bpw"] == 6.5625


# --- validate -----------------------------------------------------------------------------------


def test_validate_ok(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - match: '^output\\.weight$'\n    type: q8_0\n",
    )
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 0
    assert r.stdout == f"{p}: ok\n"
    assert r.stderr == ""


def test_validate_builtin_name() -> None:
    r = runner.invoke(app, ["validate", "llama.cpp/Q4_K_M"])
    assert r.exit_code == 0, r.output


def test_validate_errors_exit_1(tmp_path: Path) -> None:
    p = write(tmp_path, "recipe: 1\nbase: q4_km\nrules:\n  - match: 'a('\n    type: q8_0\n")
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 1
    assert r.stderr == (
        f"{p}:2:7: error[R104]: unknown type 'q4_km', expected a ggml type\n"
        "  = help: did you mean one of 'q4_K', 'q6_K', 'q5_K'?\n"
        f"{p}:4:14: error[R105]: invalid regex 'a(': missing ), unterminated subpattern at position 1\n"
        "  = help: regexes are Python 're' syntax, searched in the full tensor name (escape dots: 'ffn_down\\.weight')\n"
        "Found 2 errors.\n"
    )
    assert r.stdout == ""


def test_validate_missing_parent(tmp_path: Path) -> None:
    p = write(tmp_path, "recipe: 1\nextends: nope/Q9.yaml\n")
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 1
    assert r.stderr.startswith(
        f"{p}:2:10: error[R110]: extends 'nope/Q9.yaml': recipe 'nope/Q9.yaml' not found"
    )


def test_validate_warnings_and_strict(tmp_path: Path, model: Path) -> None:
    p = write(
        tmp_path, "recipe: 1\nextends: llama.cpp/Q4_K_M\nrules:\n  - match: 'attn_norm'\n    type: q8_0\n"
    )
    r = runner.invoke(app, ["validate", str(p), "--model", str(model)])
    assert r.exit_code == 0
    assert r.stdout == f"{p}: ok\n"
    assert r.stderr == (
        f"{p}:4:12: warning[L304]: rule 1 only matches tensors that are never quantized (e.g. blk.0.attn_norm.weight: 1-D tensor)\n"
        "  = help: llama.cpp keeps norms, biases, 1-D tensors and routers as they are\n"
        "Found 1 warning.\n"
    )
    r = runner.invoke(app, ["validate", str(p), "--model", str(model), "--strict"])
    assert r.exit_code == 1
    assert r.stderr.endswith("Found 1 warning. (--strict: warnings are errors)\n")
    assert r.stdout == ""


def test_validate_model_errors(tmp_path: Path, model: Path) -> None:
    p = write(
        tmp_path, "recipe: 1\nbase: q4_K\nrules:\n  - match: 'ffn_up'\n    layers: '30..40'\n    type: q8_0\n"
    )
    assert runner.invoke(app, ["validate", str(p)]).exit_code == 0
    r = runner.invoke(app, ["validate", str(p), "--model", str(model)])
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"{p}:5:13: error[L301]: rule 1: layer selector '30..40': range end 40 is outside the model: "
        "the model has 32 layers (0..31)"
    )


# --- plan ---------------------------------------------------------------------------------------


def test_plan_table(model: Path) -> None:
    r = runner.invoke(app, ["plan", "llama.cpp/Q4_K_M", str(model)])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert out.startswith(f"plan: llama.cpp/Q4_K_M  ->  {model}\n")
    assert "blk.{0..31}.ffn_gate.weight" in out
    assert "blk.{0..3, 6, 9, 12, 15, 18, 21, 24, 27..31}.ffn_down.weight" in out
    assert out.rstrip().splitlines()[-1] == (
        "total: 4,685.30 MiB of tensor data (4.89 bpw) from 15,317.02 MiB (16.00 bpw), 292 tensors, 0 fallback(s)"
    )
    type_rows = [line.split() for line in out.splitlines() if line.startswith(("q4_K ", "q6_K ", "f32 "))]
    assert [row[:2] for row in type_rows] == [["q4_K", "193"], ["q6_K", "33"], ["f32", "66"]]


def test_plan_json_and_output_file(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "llama.cpp/Q4_K_M", str(model), "--format", "json", "-o", str(out)])
    assert r.exit_code == 0, r.output
    plan = Plan.from_json(r.stdout)
    assert plan == Plan.load(out)
    t = next(t for t in plan.tensors if t.name == "output.weight")
    assert (t.shape, t.source_type, t.type) == ([4096, 128256], "f16", "q6_K")
    assert plan.totals.target_bytes == 4912898304


def test_plan_markdown(model: Path) -> None:
    r = runner.invoke(app, ["plan", "llama.cpp/Q4_K_M", str(model), "-f", "markdown"])
    assert r.exit_code == 0
    assert r.stdout.startswith("### Quantization plan: llama.cpp/Q4\\_K\\_M\n")
    assert "| `q6_K` | 33 | 1,198.48 | 6.56 | 25.6% |" in r.stdout


def test_plan_bad_recipe_exits_1(tmp_path: Path, model: Path) -> None:
    p = write(tmp_path, "recipe: 1\nbase: q4_K\nbogus: 1\n")
    r = runner.invoke(app, ["plan", str(p), str(model)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"{p}:3:1: error[R101]: unknown key 'bogus' in recipe")
    r = runner.invoke(app, ["plan", "llama.cpp/Q9_X", str(model)])
    assert r.exit_code == 1
    assert "recipe 'llama.cpp/Q9_X' not found" in r.stderr


def test_plan_imatrix_flag_changes_builtin_choice(tmp_path: Path, model: Path) -> None:
    # the oracle's dummy: a legacy .dat imatrix with one entry (blk.0.attn_output.weight, 4096 ones)
    im = tmp_path / "dummy.dat"
    name = b"blk.0.attn_output.weight"
    im.write_bytes(
        struct.pack("<ii", 1, len(name))
        + name
        + struct.pack("<ii", 1, 4096)
        + struct.pack("<4096f", *([1.0] * 4096))
        + struct.pack("<ii", 1, 5)
        + b"dummy"
    )
    a = Plan.from_json(runner.invoke(app, ["plan", "llama.cpp/IQ4_XS", str(model), "-f", "json"]).stdout)
    b = Plan.from_json(
        runner.invoke(
            app, ["plan", "llama.cpp/IQ4_XS", str(model), "-f", "json", "--imatrix", str(im)]
        ).stdout
    )
    assert {t.name: t.type for t in a.tensors} != {t.name: t.type for t in b.tensors}


# --- import / export ----------------------------------------------------------------------------


def test_import_to_stdout_and_file(tmp_path: Path, model: Path) -> None:
    r = runner.invoke(app, ["import", "--", "--tensor-type", "attn_v=q8_0", "Q4_K_M"])
    assert r.exit_code == 0
    assert "extends: llama.cpp/Q4_K_M\n" in r.stdout
    out = tmp_path / "imp.yaml"
    r = runner.invoke(
        app, ["import", "-o", str(out), "--", "--tensor-type", "attn_v=q8_0", "--pure", "Q4_K_M"]
    )
    assert r.exit_code == 0
    assert r.stderr == f"wrote {out}\n"
    r = runner.invoke(app, ["plan", str(out), str(model), "-f", "json"])
    plan = Plan.from_json(r.stdout)
    assert {t.type for t in plan.tensors if t.name.endswith("attn_v.weight")} == {"q8_0"}
    assert {t.type for t in plan.tensors if t.name.endswith("ffn_down.weight")} == {"q4_K"}


def test_import_errors() -> None:
    r = runner.invoke(app, ["import", "--", "--tensor-type", "attn_v=q9", "Q4_K_M"])
    assert r.exit_code == 1
    assert r.stderr == "error: invalid quantization type 'q9' in 'attn_v=q9'\n"
    r = runner.invoke(app, ["import"])
    assert r.exit_code == 2


def test_import_ik_to_mainline() -> None:
    r = runner.invoke(
        app, ["import", "--ik-to-mainline", "--", "--custom-q", "blk\\.[0-2]\\..*=iq5_k_r4", "Q4_K_M"]
    )
    assert r.exit_code == 0
    assert "    type: q5_K\n" in r.stdout


def test_export(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "recipe: 1\nextends: llama.cpp/Q4_K_M\noutput: q8_0\nrules:\n  - match: 'attn_v'\n    type: q8_0\n",
    )
    r = runner.invoke(app, ["export", str(p)])
    assert r.exit_code == 0
    assert (
        r.stdout
        == "llama-quantize --output-tensor-type q8_0 --tensor-type attn_v=q8_0 MODEL.gguf OUTPUT.gguf Q4_K_M\n"
    )
    assert r.stderr.startswith("note: counters: stable:")
    p2 = write(
        tmp_path,
        "recipe: 1\nbase: q4_K\nrules:\n  - category: attn_v\n    when: {experts: 8}\n    type: q8_0\n",
        "bad.yaml",
    )
    r = runner.invoke(app, ["export", str(p2)])
    assert r.exit_code == 1
    assert r.stderr == (
        "error: cannot export to llama-quantize:\n"
        "  - rule 1: llama-quantize cannot express when (llama-quantize has no conditions on model facts)\n"
    )


def test_export_import_round_trip_gives_the_same_plan(tmp_path: Path, model: Path) -> None:
    p = write(
        tmp_path,
        "recipe: 1\nextends: llama.cpp/Q4_K_M\ncounters: llama-quantize\ntoken_embedding: q8_0\n"
        "rules:\n  - match: 'ffn_down'\n    layers: '0..3'\n    type: q8_0\n  - match: 'attn_.*'\n    type: iq4_nl\n",
    )
    argv = shlex.split(runner.invoke(app, ["export", str(p)]).stdout)
    opts, ftype = argv[1:-3], argv[-1]
    out = tmp_path / "back.yaml"
    assert runner.invoke(app, ["import", "-o", str(out), "--", *opts, ftype]).exit_code == 0
    a = Plan.from_json(runner.invoke(app, ["plan", str(p), str(model), "-f", "json"]).stdout)
    b = Plan.from_json(runner.invoke(app, ["plan", str(out), str(model), "-f", "json"]).stdout)
    assert [(t.name, t.type) for t in a.tensors] == [(t.name, t.type) for t in b.tensors]
    assert a.totals.target_bytes == b.totals.target_bytes


def test_help_lists_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("validate", "plan", "schema", "types", "import", "export", "infer", "diff"):
        assert cmd in r.stdout
