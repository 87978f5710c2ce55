"""``recipe apply`` end to end through the CLI (typer's CliRunner: the console script's code path), on
small synthetic llama models (``helpers.executor``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader
from typer.testing import CliRunner

from gguf_recipe import quants
from gguf_recipe.cli import app, parse_size
from gguf_recipe.executor import run as run_mod
from helpers.executor import (
    InterruptAt,
    T,
    listdir,
    llama_tensors,
    make_plan,
    sha256_file,
    start_held,
    write_gguf_imatrix,
    write_model,
)

runner = CliRunner()

RECIPE = "recipe: 1\nname: cli-test\nbase: q8_0\n"


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, ["apply", *(str(a) for a in args)])


def types_of(path: Path) -> dict[str, T]:
    return {t.name: T(t.tensor_type) for t in GGUFReader(str(path)).tensors}


def kv_string(path: Path, key: str) -> str:
    f = GGUFReader(str(path)).fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.gguf", llama_tensors(7))


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE, encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------------ recipes


def test_builtin_recipe_writes_the_model_and_prints_a_summary(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.gguf"
    r = invoke("llama.cpp/Q8_0", model, "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"wrote {out}\n")
    for word in ("size", "bpw", "tensors", "time", "fallbacks"):
        assert word in r.stdout
    assert "plan: llama.cpp/Q8_0:" in r.stderr
    types = types_of(out)
    assert types["blk.0.attn_q.weight"] == T.Q8_0
    assert types["blk.0.attn_norm.weight"] == T.F32
    assert kv_string(out, "gguf_recipe.recipe_name") == "llama.cpp/Q8_0"
    assert listdir(tmp_path) == ["m.gguf", "out.gguf"]  # no temp files or checkpoints left


def test_recipe_file_and_json_recipe(model: Path, recipe: Path, tmp_path: Path) -> None:
    r = invoke(recipe, model, "-o", tmp_path / "a.gguf", "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # --quiet: no summary, no progress
    assert kv_string(tmp_path / "a.gguf", "gguf_recipe.recipe") == RECIPE

    # a JSON *recipe* is a recipe, not a plan (told apart by content)
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"recipe": 1, "name": "cli-test", "base": "q8_0"}), encoding="utf-8")
    r = invoke(js, model, "-o", tmp_path / "b.gguf", "-q")
    assert r.exit_code == 0, r.output
    assert types_of(tmp_path / "b.gguf") == types_of(tmp_path / "a.gguf")


def test_recipe_errors_stop_before_anything_is_written(model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nname: bad\nbase: q9_z\n", encoding="utf-8")
    r = invoke(bad, model, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 1
    assert "error" in r.stderr and "q9_z" in r.stderr
    assert not (tmp_path / "out.gguf").exists()

    r = invoke("llama.cpp/Q9_X", model, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 1
    assert "not found" in r.stderr


def test_strict_fallbacks(model: Path, tmp_path: Path) -> None:
    # 64-wide rows cannot hold q4_K (256-wide blocks): Q4_K_M falls back, --strict-fallbacks refuses
    r = invoke("llama.cpp/Q4_K_M", model, "-o", tmp_path / "out.gguf", "--strict-fallbacks")
    assert r.exit_code == 1
    assert not (tmp_path / "out.gguf").exists()
    r = invoke("llama.cpp/Q4_K_M", model, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 0, r.output
    assert "fallbacks" in r.stdout and "q4_K -> q5_0" in r.stdout


def test_missing_inputs_and_output_over_input(model: Path, tmp_path: Path) -> None:
    r = invoke("llama.cpp/Q8_0", tmp_path / "nope.gguf", "-o", tmp_path / "out.gguf")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"error: the input model {tmp_path / 'nope.gguf'}: no such file")

    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "out.gguf", "--imatrix", tmp_path / "no.dat")
    assert r.exit_code == 1
    assert f"error: the imatrix {tmp_path / 'no.dat'}: no such file" in r.stderr

    before = sha256_file(model)
    r = invoke("llama.cpp/Q8_0", model, "-o", model)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: refusing to write")  # before any work
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "s.gguf", "--max-shard-tensors", "1", "-q")
    assert r.exit_code == 0, r.output
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "s.gguf", "--max-shard-tensors", "1", "-q")
    assert r.exit_code == 0, r.output  # (overwriting an earlier output is fine)
    shard = next(tmp_path.glob("s-00002-of-*.gguf"))
    r = invoke("llama.cpp/Q8_0", shard, "-o", tmp_path / "s.gguf", "--max-shard-tensors", "1")
    assert r.exit_code == 1
    assert "error: refusing to write" in r.stderr
    assert sha256_file(model) == before

    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04 not a gguf at all" * 10)
    r = invoke("llama.cpp/Q8_0", foreign, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 1
    assert r.stderr.startswith("error:")
    assert not (tmp_path / "out.gguf").exists()


def test_no_output_flag_overwrites_an_input(model: Path, recipe: Path, tmp_path: Path) -> None:
    """plan/apply -o naming the model, the recipe, the imatrix (or a hard link to one, or a name the
    apply run uses for its lock/temp/checkpoint files) is refused with one message; inputs unchanged."""
    import numpy as np

    im = write_gguf_imatrix(tmp_path / "imatrix.dat", {"blk.0.attn_q.weight": (np.ones((1, 64)), np.ones(1))})
    lock_named = tmp_path / ".o.gguf.lock"
    lock_named.write_text(RECIPE, encoding="utf-8")
    linked = tmp_path / "linked.yaml"
    linked.hardlink_to(recipe)
    files = [model, recipe, im, lock_named]
    before = [sha256_file(f) for f in files]
    cases = [
        (["plan", recipe, model, "-o", model], "the input model"),
        (["plan", recipe, model, "-o", linked], "the recipe"),
        (["plan", recipe, model, "--imatrix", im, "-o", im], "the imatrix"),
        (["apply", recipe, model, "-o", recipe], "the recipe"),
        (["apply", "llama.cpp/Q8_0", model, "-o", im, "--imatrix", im], "the imatrix"),
        (["apply", lock_named, model, "-o", tmp_path / "o.gguf"], "the recipe"),
    ]
    for args, what in cases:
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 1, (args, r.output)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and errors[0].startswith("error: refusing to write"), (args, r.stderr)
        assert f"it is {what}" in errors[0], (args, r.stderr)
    assert [sha256_file(f) for f in files] == before
    assert not (tmp_path / "o.gguf").exists()


def test_text_outputs_are_written_atomically(model: Path, recipe: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", str(recipe), str(model), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["recipe_name"] == "cli-test"
    r = runner.invoke(app, ["schema", "plan", "-o", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text())
    assert not [n for n in listdir(tmp_path) if n.endswith(".tmp")]


def test_missing_output_option_is_a_usage_error(model: Path) -> None:
    r = invoke("llama.cpp/Q8_0", model)
    assert r.exit_code == 2
    assert "--output" in r.stderr


# ------------------------------------------------------------------------------------------ plans


def test_json_plan_then_apply_gives_the_same_file(model: Path, tmp_path: Path) -> None:
    # `recipe plan --format json` on stdout is a plan file `recipe apply` takes
    r = runner.invoke(app, ["plan", "llama.cpp/Q8_0", str(model), "--format", "json"])
    assert r.exit_code == 0, r.output
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(r.stdout, encoding="utf-8")
    r = invoke(plan_file, model, "-o", tmp_path / "from-plan.gguf")
    assert r.exit_code == 0, r.output
    assert "note:" not in r.stderr  # a built-in recipe: its fingerprint was checked
    # ... and -o PLAN.json writes the same plan
    r = runner.invoke(app, ["plan", "llama.cpp/Q8_0", str(model), "-o", str(tmp_path / "p2.json")])
    assert r.exit_code == 0, r.output
    r = invoke(tmp_path / "p2.json", model, "-o", tmp_path / "from-plan2.gguf", "-q")
    assert r.exit_code == 0, r.output
    # compiling on the fly writes exactly the same bytes (same plan, same fingerprint inside)
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "direct.gguf", "-q")
    assert r.exit_code == 0, r.output
    digest = sha256_file(tmp_path / "direct.gguf")
    assert sha256_file(tmp_path / "from-plan.gguf") == digest
    assert sha256_file(tmp_path / "from-plan2.gguf") == digest


def test_stale_plan_is_refused_unless_forced(model: Path, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", "llama.cpp/Q8_0", str(model), "-o", str(plan_file)])
    assert r.exit_code == 0, r.output
    # the same tensors, another header (one more metadata key): the plan is stale
    other = write_model(tmp_path / "other.gguf", llama_tensors(7), extra_kv={"general.note": "changed"})
    out = tmp_path / "out.gguf"
    r = invoke(plan_file, other, "-o", out)
    assert r.exit_code == 1
    assert r.stderr.startswith("error: stale plan: the model header changed since the plan was made")
    assert "--force" in r.stderr
    assert not out.exists()
    assert listdir(tmp_path) == ["m.gguf", "other.gguf", "plan.json"]

    r = invoke(plan_file, other, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert "applying a stale plan (forced)" in r.stdout
    assert out.is_file()


def test_plan_from_a_changed_recipe_is_refused(model: Path, recipe: Path, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", str(recipe), str(model), "-o", str(plan_file)])
    assert r.exit_code == 0, r.output
    # unchanged recipe: fine; a custom recipe that extends nothing is checked from the plan's own text
    r = invoke(plan_file, model, "-o", tmp_path / "a.gguf", "--recipe", recipe, "-q")
    assert r.exit_code == 0, r.output
    recipe.write_text(RECIPE.replace("q8_0", "q4_0"), encoding="utf-8")
    r = invoke(plan_file, model, "-o", tmp_path / "b.gguf", "--recipe", recipe)
    assert r.exit_code == 1
    assert "the recipe changed since the plan was made" in r.stderr
    assert not (tmp_path / "b.gguf").exists()

    # a plan of a built-in recipe: checked against the built-in as it is now
    data = json.loads(runner.invoke(app, ["plan", "llama.cpp/Q8_0", str(model), "-f", "json"]).stdout)
    data["fingerprints"]["recipe"] = "0" * 64  # as if made from an older llama.cpp/Q8_0
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data), encoding="utf-8")
    r = invoke(old, model, "-o", tmp_path / "c.gguf")
    assert r.exit_code == 1
    assert "the recipe changed since the plan was made" in r.stderr


def test_plan_whose_recipe_cannot_be_found_gets_a_note(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model, recipe_text="recipe: 1\nname: test\nextends: ./gone.yaml\nbase: q8_0\n")
    p = tmp_path / "plan.json"
    plan.save(p)
    r = invoke(p, model, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 0, r.output
    assert "note: cannot find the recipe 'test'" in r.stderr


def test_invalid_plan_file(model: Path, tmp_path: Path) -> None:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"fingerprints": {}, "tensors": [], "recipe_name": 3}), encoding="utf-8")
    r = invoke(p, model, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 1
    assert "looks like a plan but is not a valid one" in r.stderr


def test_recipe_option_is_only_for_plans(model: Path, recipe: Path, tmp_path: Path) -> None:
    r = invoke(recipe, model, "-o", tmp_path / "out.gguf", "--recipe", recipe)
    assert r.exit_code == 1
    assert "--recipe is for plans" in r.stderr


# ------------------------------------------------------------------------------------------ options


def test_requantize_needs_the_flag_and_warns(model: Path, tmp_path: Path) -> None:
    q8 = tmp_path / "q8.gguf"
    assert invoke("llama.cpp/Q8_0", model, "-o", q8, "-q").exit_code == 0
    r = invoke("llama.cpp/Q4_0", q8, "-o", tmp_path / "q4.gguf")
    assert r.exit_code == 1
    assert "--allow-requantize" in r.stderr
    assert not (tmp_path / "q4.gguf").exists()
    r = invoke("llama.cpp/Q4_0", q8, "-o", tmp_path / "q4.gguf", "--allow-requantize", "-q")
    assert r.exit_code == 0, r.output
    assert "warning: requantizing" in r.stderr
    assert types_of(tmp_path / "q4.gguf")["blk.1.ffn_up.weight"] == T.Q4_0


def test_shards_by_size_and_by_tensor_count(model: Path, tmp_path: Path) -> None:
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "s.gguf", "--max-shard-tensors", "20", "-q")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in tmp_path.glob("s-*.gguf"))
    assert len(names) >= 2
    assert names[0] == f"s-00001-of-{len(names):05d}.gguf"
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "k.gguf", "--max-shard-size", "40K")
    assert r.exit_code == 0, r.output
    assert "shards" in r.stdout
    assert len(list(tmp_path.glob("k-*-of-*.gguf"))) >= 2

    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "x.gguf", "--max-shard-size", "lots")
    assert r.exit_code == 2
    assert "not a size" in r.stderr


def test_threads_and_chunk_values_do_not_change_the_bytes(model: Path, tmp_path: Path) -> None:
    a = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "a.gguf", "-q", "--threads", "1")
    b = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "b.gguf", "-q", "-t", "2", "--chunk-values", "100")
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    assert sha256_file(tmp_path / "a.gguf") == sha256_file(tmp_path / "b.gguf")
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "c.gguf", "--threads", "0")
    assert r.exit_code == 2


def test_imatrix_is_used_and_reported(model: Path, tmp_path: Path) -> None:
    import numpy as np

    from gguf_recipe.executor import SourceModel

    with SourceModel(model) as src:
        entries = {
            n: (np.ones((1, i.shape[0]), dtype=np.float32), np.array([1.0]))
            for n, i in src.tensors.items()
            if len(i.shape) == 2 and n != "token_embd.weight"
        }
    im = write_gguf_imatrix(tmp_path / "im.gguf", entries)
    r = invoke("llama.cpp/Q4_0", model, "-o", tmp_path / "out.gguf", "--imatrix", im)
    assert r.exit_code == 0, r.output
    assert "imatrix" in r.stdout and "planned tensors covered" in r.stdout


# ------------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_exits_130_and_resume_gives_the_same_file(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full.gguf"
    assert invoke("llama.cpp/Q8_0", model, "-o", full, "-q").exit_code == 0

    out = tmp_path / "out.gguf"
    with monkeypatch.context() as m:
        m.setattr(run_mod, "make_progress", lambda progress: InterruptAt(5))
        r = invoke("llama.cpp/Q8_0", model, "-o", out, "-q")
    assert r.exit_code == 130
    assert "interrupted" in r.stderr
    assert "--resume" in r.stderr
    assert not out.exists()

    r = invoke("llama.cpp/Q8_0", model, "-o", out, "--resume")
    assert r.exit_code == 0, r.output
    assert "5 resumed" in r.stdout
    assert sha256_file(out) == sha256_file(full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.gguf", "m.gguf", "out.gguf"]


def test_ctrl_c_before_streaming_exits_130(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gguf_recipe.compiler

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_recipe.compiler, "compile_plan", interrupted)
    r = invoke("llama.cpp/Q8_0", model, "-o", tmp_path / "out.gguf")
    assert r.exit_code == 130
    assert r.stderr.startswith("interrupted; nothing was written")
    assert not (tmp_path / "out.gguf").exists()


# ------------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("text", "n"),
    [("2G", 2_000_000_000), ("500M", 500_000_000), ("1.5g", 1_500_000_000), ("4GiB", 4 << 30),
     ("100", 100), ("64KiB", 65536), ("3 GB", 3_000_000_000), ("1T", 10**12)],
)  # fmt: skip
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "G", "2X", "-1G", "0", "two", "inf", "-inf", "nan", "infG", "1e30"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_quants_are_available() -> None:
    assert T.Q8_0 in quants.implemented_types()


def test_plan_of_a_recipe_extending_a_builtin_is_checked_from_its_text(model: Path, tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("recipe: 1\nname: child\nextends: llama.cpp/Q8_0\noutput: f16\n", encoding="utf-8")
    plan_file = tmp_path / "plan.json"
    r = runner.invoke(app, ["plan", str(child), str(model), "-o", str(plan_file)])
    assert r.exit_code == 0, r.output
    child.unlink()  # the plan carries the recipe's text; the built-in parent is found by name
    r = invoke(plan_file, model, "-o", tmp_path / "out.gguf", "-q")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    assert types_of(tmp_path / "out.gguf")["output.weight"] == T.F16


def test_sigint_on_the_console_command(tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT) while streaming: exit status 130, a message naming --resume, no output;
    then --resume finishes it. The run is held (test hook) once its first tensor is written, so the
    signal always lands mid-run."""
    import signal
    import subprocess
    import sys

    model = write_model(tmp_path / "m.gguf", llama_tensors(3))
    out = tmp_path / "out.gguf"
    cmd = [sys.executable, "-m", "gguf_recipe.cli", "apply", "llama.cpp/Q8_0", str(model), "-o", str(out)]
    proc, _ = start_held([*cmd, "--threads", "1"], tmp_path)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted after 1 of" in stderr
    assert "--resume" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert (tmp_path / ".out.gguf.checkpoint.json").is_file()
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 resumed" in done.stdout
    assert out.is_file()
    direct = subprocess.run(
        [*cmd[:-1], str(tmp_path / "direct.gguf"), "-q"], capture_output=True, timeout=120
    )
    assert direct.returncode == 0
    assert sha256_file(out) == sha256_file(tmp_path / "direct.gguf")
