"""What a new user sees: --version, help text, the types table, plan and apply summaries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gguf_recipe import __version__
from gguf_recipe.cli import app
from helpers.executor import llama_tensors, write_model, write_wide_model

runner = CliRunner()
COMMANDS = ["validate", "plan", "schema", "types", "import", "export", "apply", "measure", "eval"]
COMMANDS += ["infer", "diff", "tune"]


def run(*args: str | Path) -> tuple[int, str, str]:
    r = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wide_model(tmp_path_factory.mktemp("m") / "m.gguf", 5)


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0
    assert out.strip() == f"gguf-recipe {__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_type_tokens(command: str | None) -> None:
    code, out, _ = run(*([command] if command else []), "--help")
    assert code == 0
    assert not re.search(r"<(bool|str|int|float|path|int range|float range)>", out), out
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_import_help_shows_the_llama_quantize_form() -> None:
    _, out, _ = run("import", "--help")
    assert "[OPTIONS] -- [LLAMA_QUANTIZE_OPTIONS]... TYPE" in re.sub(r"\s+", " ", out)


def test_types_table_names_every_type_the_compiler_refuses_without_imatrix(
    model: Path, tmp_path: Path
) -> None:
    code, out, _ = run("types", "--json")
    assert code == 0
    rows = [r for r in json.loads(out) if r["in_recipes"] and r["name"] not in ("f32", "f16", "bf16")]
    assert {r["name"] for r in rows if r["requires_imatrix"]} == {
        "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq1_s", "iq1_m"
    }  # fmt: skip
    for r in rows:
        recipe = tmp_path / f"{r['name']}.yaml"
        recipe.write_text(f"recipe: 1\nbase: {r['name']}\n")
        code, _, err = run("plan", recipe, model, "-f", "json")
        refused = "needs an importance matrix" in err
        assert refused == r["requires_imatrix"], (r["name"], err)
        assert code == (1 if refused else 0), (r["name"], err)


def test_plan_table_keeps_a_family_together_and_lists_the_rules_below(model: Path) -> None:
    code, out, _ = run("plan", "llama.cpp/Q4_K_M", model)
    assert code == 0
    lines = out.splitlines()
    families = [re.sub(r"^blk\.\S*?\}?\.", "", line.split()[0]) for line in lines if line.startswith("blk.")]
    seen: list[str] = []
    for f in families:  # each family's rows are adjacent
        if not seen or seen[-1] != f:
            assert f not in seen, (f, families)
            seen.append(f)
    decided = [line for line in lines if line.startswith(("blk.", "token_embd", "output"))]
    assert all(len(line) < 140 for line in decided), decided
    legend = lines[lines.index("rules that decided:") + 1 :]
    used = {m for line in decided for m in re.findall(r"\brule \d+\b", line)}
    assert used
    assert {
        m for line in legend if line.startswith("  rule ") for m in re.findall(r"^  (rule \d+):", line)
    } == used
    assert "MiB of tensor data" in out


def test_apply_says_it_replaces_an_existing_output_and_counts_fallbacks(tmp_path: Path) -> None:
    model = write_model(tmp_path / "narrow.gguf", llama_tensors(1))  # rows too short for k-quants
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    code, stdout, err = run("apply", "llama.cpp/Q4_K_M", model, "-o", out)
    assert code == 0, err
    assert f"note: {out} exists; it will be replaced once the new file is complete" in err
    assert re.search(r"^  fallbacks \d+: \w+ -> \w+ ×\d+", stdout, re.M), stdout
    assert "of tensor data (" in stdout and "+ header and alignment" in stdout
    code, _, err = run("apply", "llama.cpp/Q4_K_M", model, "-o", tmp_path / "new" / "o.gguf")
    assert code == 0 and "note:" not in err


def _shadowed_recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(
        "recipe: 1\nbase: q4_0\nrules:\n  - {match: attn, type: q8_0}\n  - {match: attn_q, type: q6_K}\n"
    )
    return p


def test_codes_lists_every_code() -> None:
    from gguf_recipe.diagnostics import CODES

    code, out, _ = run("codes")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [[c, n] for c, n in CODES.items()]


def test_ignore_silences_a_warning_by_code_or_name_but_never_an_error(model: Path, tmp_path: Path) -> None:
    p = _shadowed_recipe(tmp_path)
    code, _, err = run("validate", p, "--model", model, "--strict")
    assert code == 1 and "warning[L305]" in err
    for ignore in ("L305", "shadowed-rule", "l305"):
        code, _, err = run("validate", p, "--model", model, "--strict", "--ignore", ignore)
        assert code == 0 and "L305" not in err, (ignore, err)
    code, out, err = run("plan", p, model, "--strict", "--ignore", "L305", "-f", "json")
    assert json.loads(out)["tensors"]
    assert code == 0, err
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nbase: q4_km\n")
    code, _, err = run("validate", bad, "--ignore", "R104")
    assert code == 1 and "error[R104]" in err
    code, _, err = run("validate", bad, "--ignore", "Z999")
    assert code == 2 and "no such diagnostic code" in err


def test_validate_json(model: Path, tmp_path: Path) -> None:
    code, out, _ = run("validate", _shadowed_recipe(tmp_path), "--model", model, "-f", "json")
    assert code == 0
    [d] = json.loads(out)
    assert (d["code"], d["name"], d["severity"], d["line"]) == ("L305", "shadowed-rule", "warning", 5)
