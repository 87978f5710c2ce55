"""recipe tune: the solver's guarantees, the recipe writer's round trip, exact file sizes on real
applies, pins / extends / group budgets, bad input, the CLI; and the calibration's loss model.

Small synthetic models (``helpers.executor``) except where the real model is the point."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gguf_recipe.cli import app, parse_size
from gguf_recipe.compiler import compile_plan
from gguf_recipe.executor import apply_plan
from gguf_recipe.executor.predict import predict_file_size
from gguf_recipe.llamacpp import block_number
from gguf_recipe.measure import MeasureError, measure_model
from gguf_recipe.measure.calibrate import Calibration, Probe
from gguf_recipe.tune import Budget, InfeasibleBudget, Item, Option, TuneError, lower_hull, solve, tune_model
from gguf_recipe.tune.emit import TensorChoice, layer_ranges, tuned_rules, write_recipe
from gguf_recipe.tune.loss import tensor_losses
from helpers.executor import llama_tensors, write_model

runner = CliRunner()

# --------------------------------------------------------------------------------------- solver

options = st.lists(
    st.tuples(st.integers(1, 60), st.floats(0, 100, allow_nan=False)), min_size=1, max_size=5
).map(lambda xs: tuple(Option(f"t{k}", b, c) for k, (b, c) in enumerate(xs)))
problems = st.lists(options, min_size=1, max_size=5).map(
    lambda opts: [Item(f"x{i}", o) for i, o in enumerate(opts)]
)


def _brute_force(items: list[Item], budget: int) -> float:
    best = math.inf
    for combo in itertools.product(*(it.options for it in items)):
        if sum(o.bytes for o in combo) <= budget:
            best = min(best, sum(o.cost for o in combo))
    return best


@settings(max_examples=300, deadline=None)
@given(problems, st.integers(0, 300))
def test_solver_within_budget_deterministic_and_near_optimal(items: list[Item], budget: int) -> None:
    smallest = sum(min(o.bytes for o in it.options) for it in items)
    if budget < smallest:
        with pytest.raises(InfeasibleBudget) as exc:
            solve(items, budget)
        assert exc.value.minimum == smallest
        return
    a = solve(items, budget)
    assert a.bytes == sum(o.bytes for o in a.choice) <= budget
    assert a == solve(items, budget)  # deterministic
    assert all(c in it.options for c, it in zip(a.choice, items, strict=True))
    # Lagrangian + fill: at most one item's cost range above the optimum (the LP relaxation bound)
    spread = max(max(o.cost for o in it.options) - min(o.cost for o in it.options) for it in items)
    assert a.cost <= _brute_force(items, budget) + spread + 1e-9


@settings(max_examples=200, deadline=None)
@given(problems, st.integers(0, 200), st.integers(1, 100))
def test_solver_monotone_in_the_budget(items: list[Item], budget: int, more: int) -> None:
    smallest = sum(min(o.bytes for o in it.options) for it in items)
    budget = max(budget, smallest)
    assert solve(items, budget + more).cost <= solve(items, budget).cost + 1e-9


def test_solver_is_optimal_when_the_hull_walk_ends_exactly() -> None:
    items = [
        Item("a", (Option("q4", 10, 8.0), Option("q8", 20, 1.0), Option("f16", 40, 0.0))),
        Item("b", (Option("q4", 10, 2.0), Option("q8", 20, 1.5), Option("f16", 40, 0.0))),
    ]
    assert [o.type for o in solve(items, 30).choice] == ["q8", "q4"]
    assert [o.type for o in solve(items, 20).choice] == ["q4", "q4"]
    assert solve(items, 80).cost == 0.0


def test_lower_hull_drops_dominated_and_non_convex_points() -> None:
    pts = [Option("a", 10, 5.0), Option("b", 20, 4.9), Option("c", 30, 1.0), Option("d", 25, 6.0)]
    assert [o.type for o in lower_hull(pts)] == ["a", "c"]


# --------------------------------------------------------------------------------- recipe writer


def test_layer_ranges() -> None:
    assert layer_ranges([5, 0, 1, 2, 7, 8]) == ["0..2", 5, "7..8"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["q4_0", "q5_0", "q8_0"]), min_size=3 * 7 + 2, max_size=3 * 7 + 2))
def test_tuned_rules_give_every_tensor_its_type(source_model: Path, picks: list[str]) -> None:
    """Any assignment written as rules compiles back to exactly that assignment."""
    plan0 = compile_plan("llama.cpp/Q8_0", source_model).plan
    assert plan0 is not None
    names = [t.name for t in plan0.tensors if t.type != "f32"]
    choices = [TensorChoice(n, t) for n, t in zip(names, picks, strict=False)]
    base = "q8_0"
    text = write_recipe(
        header=["test"], name="t", description="d", base=base, extends=None,
        rules=tuned_rules(choices, base=base, all_names=names),
    )  # fmt: skip
    plan = compile_plan(text, source_model).plan
    assert plan is not None
    got = {t.name: t.type for t in plan.tensors}
    assert {c.name: got[c.name] for c in choices} == {c.name: c.type for c in choices}


# ------------------------------------------------------------------------------ tune on a model


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tune")
    return write_model(d / "m.gguf", llama_tensors(3, n_embd=256, n_ff=512), n_embd=256, n_ff=512)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


def _sizes(model: Path) -> tuple[int, int]:
    small = compile_plan("base: q2_K\nrecipe: 1\n", model).plan
    assert small is not None
    return predict_file_size(small, model), model.stat().st_size


@pytest.mark.parametrize("fraction", [0.15, 0.35, 0.6, 0.9])
def test_tuned_file_fits_the_target_exactly_as_predicted(
    source_model: Path, tmp_path: Path, fraction: float
) -> None:
    lo, hi = _sizes(source_model)
    target = int(lo + (hi - lo) * fraction)
    res = tune_model(source_model, target_size=target, threads=1)
    assert res.file_size <= target
    recipe = tmp_path / "t.yaml"
    recipe.write_text(res.recipe_text, encoding="utf-8")
    plan = compile_plan(recipe, source_model).plan
    assert plan is not None
    assert {t.name: t.type for t in plan.tensors if t.name in res.choices} == res.choices
    out = apply_plan(plan, source_model, tmp_path / "o.gguf", progress=False, threads=1).outputs[0]
    assert out.stat().st_size == res.file_size <= target
    assert f"predicted file size: {res.file_size} bytes" in res.recipe_text


def test_larger_budget_never_predicts_more_loss(source_model: Path) -> None:
    lo, hi = _sizes(source_model)
    losses = [
        tune_model(source_model, target_size=int(lo + (hi - lo) * f)).loss for f in (0.1, 0.3, 0.5, 0.8)
    ]
    assert losses == sorted(losses, reverse=True)


def test_pins_keep_their_types_and_count(source_model: Path, tmp_path: Path) -> None:
    pins = tmp_path / "pins.yaml"
    pins.write_text("rules:\n  - match: attn_v\n    type: q8_0\ntoken_embedding: f16\n", encoding="utf-8")
    lo, hi = _sizes(source_model)
    res = tune_model(source_model, target_size=(lo + hi) // 3, pin=pins)
    plan = compile_plan(res.recipe_text, source_model).plan
    assert plan is not None
    types = {t.name: t.type for t in plan.tensors}
    assert all(types[f"blk.{i}.attn_v.weight"] == "q8_0" for i in range(3))
    assert types["token_embd.weight"] == "f16"
    assert set(res.pinned) >= {"token_embd.weight", "blk.0.attn_v.weight"}
    assert predict_file_size(plan, source_model) == res.file_size <= (lo + hi) // 3


def test_pins_alone_over_the_budget_are_named(source_model: Path, tmp_path: Path) -> None:
    pins = tmp_path / "pins.yaml"
    pins.write_text("rules:\n  - match: ffn\n    type: f16\n", encoding="utf-8")
    lo, _ = _sizes(source_model)
    with pytest.raises(TuneError, match=r"pinned tensors alone take \d+ bytes \(blk\.0\.ffn_down"):
        tune_model(source_model, target_size=lo + 4096, pin=pins)


def test_extends_keeps_the_recipes_explicit_rules(source_model: Path) -> None:
    lo, hi = _sizes(source_model)
    parent = compile_plan("llama.cpp/Q4_K_M", source_model).plan
    assert parent is not None
    res = tune_model(source_model, target_size=(lo + hi) // 2, extends="llama.cpp/Q4_K_M")
    assert "extends: llama.cpp/Q4_K_M" in res.recipe_text
    plan = compile_plan(res.recipe_text, source_model).plan
    assert plan is not None
    kept = {t.name: t.type for t in parent.tensors if t.rule.startswith("rule ")}
    assert kept and {n: t for n, t in ((t.name, t.type) for t in plan.tensors) if n in kept} == kept


def test_group_budget_is_respected(source_model: Path) -> None:
    lo, hi = _sizes(source_model)
    res = tune_model(source_model, target_size=(lo + hi) // 2, budgets=[Budget("ffn_", 450_000)])
    plan = compile_plan(res.recipe_text, source_model).plan
    assert plan is not None
    assert res.group_bytes["ffn_"] <= 450_000
    assert sum(t.target_bytes for t in plan.tensors if "ffn_" in t.name) <= 450_000
    assert res.group_bytes["ffn_"] > 400_000  # spent, not left over


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_size": 1000}, r"below the smallest possible file .* possible range is \d+\.\.\d+ bytes"),
        ({"target_size": 10**12}, r"above the source model's size .* possible range is \d+\.\.\d+ bytes"),
        ({"target_bpw": 0.5}, r"below the smallest possible .* bpw"),
        ({"target_size": 10**6, "target_bpw": 4.0}, "exactly one"),
        ({"target_size": 10**6, "types": ["q9_9"]}, "q9_9"),
    ],
)
def test_out_of_range_targets_name_the_range(
    source_model: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((TuneError, MeasureError), match=message):
        tune_model(source_model, **kwargs)  # type: ignore[arg-type]


def test_budget_parse() -> None:
    assert Budget.parse("ffn_.*_exps=20GB", parse_size) == Budget("ffn_.*_exps", 20 * 10**9)
    with pytest.raises(TuneError, match="REGEX=SIZE"):
        Budget.parse("20GB", parse_size)
    with pytest.raises(TuneError, match="bad regex"):
        Budget.parse("(=1G", parse_size)


def test_target_bpw(source_model: Path) -> None:
    res = tune_model(source_model, target_bpw=5.0)
    assert res.plan.totals.bpw <= 5.0
    assert res.plan.totals.bpw > 4.0  # the budget is used, not left over


# --------------------------------------------------------------------------------------------- CLI


def test_cli_tune_then_plan_shows_the_same_totals(source_model: Path, tmp_path: Path) -> None:
    lo, hi = _sizes(source_model)
    out = tmp_path / "tuned.yaml"
    r = runner.invoke(app, ["tune", str(source_model), "--target-size", str((lo + hi) // 2), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "predicted file" in r.output and "wrote" in r.output
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Tuned by gguf-recipe")
    r = runner.invoke(app, ["plan", str(out), str(source_model), "--format", "json"])
    assert r.exit_code == 0, r.output
    plan = compile_plan(out, source_model).plan
    assert plan is not None
    assert f"predicted file size: {predict_file_size(plan, source_model)} bytes" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-size", "12xB"], "not a size"),
        (["--target-size", "1"], "possible range is"),
        ([], "exactly one of --target-size and --target-bpw"),
        (["--target-bpw", "-3"], "between 0 and 64"),
        (["--target-size", "1G", "--budget", "nope"], "REGEX=SIZE"),
    ],
)
def test_cli_tune_errors_are_one_line(source_model: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["tune", str(source_model), *args])
    assert r.exit_code == 1
    assert message in r.output and "Traceback" not in r.output
    assert r.output.count("error:") == 1


def test_cli_tune_refuses_to_overwrite_its_model(source_model: Path) -> None:
    before = source_model.read_bytes()
    r = runner.invoke(app, ["tune", str(source_model), "--target-size", "1G", "-o", str(source_model)])
    assert r.exit_code == 1 and source_model.read_bytes() == before


# ------------------------------------------------------------------------------------ calibration


def test_calibrated_losses_scale_each_tensor_by_its_probe(source_model: Path) -> None:
    m = measure_model(source_model, threads=1, progress=False)
    names = list(m.tensors)
    probed = {n: Probe(type="q4_0", kld=0.01 * (i + 1)) for i, n in enumerate(names) if block_number(n) != 1}
    cal = Calibration(
        model_fingerprint=m.model_fingerprint, text_name="t", text_sha256="0", n_ctx=8, n_chunks=1,
        probe_types=["q4_0"], probes=probed,
    )  # fmt: skip
    losses = tensor_losses(m, cal)
    for n, p in probed.items():
        assert losses[n]["q4_0"] == pytest.approx(p.kld)
        ratio = m.tensors[n].candidates["q8_0"].error / m.tensors[n].candidates["q4_0"].error
        assert losses[n]["q8_0"] == pytest.approx(p.kld * ratio)
    # block 1 was not probed: its sensitivity lies between blocks 0 and 2 of the same family
    plain = tensor_losses(m)
    for fam in ("attn_q.weight", "ffn_down.weight"):
        r = [losses[f"blk.{b}.{fam}"]["q4_0"] / plain[f"blk.{b}.{fam}"]["q4_0"] for b in range(3)]
        assert r[1] == pytest.approx((r[0] + r[2]) / 2)


def test_calibration_on_the_real_model_restores_everything(tmp_path: Path) -> None:
    """Probing two tensors with llama.cpp: positive KLDs, the ffn_down of block 0 more sensitive than
    an attn_k, the source untouched and no working copy left behind."""
    from gguf_recipe import examples
    from gguf_recipe.measure.calibrate import calibrate_model

    src = examples.smollm2_f16_path()
    assert src is not None
    before = src.stat().st_mtime_ns
    text = examples.shakespeare_play("tempest")
    assert text is not None
    m = measure_model(src, progress=False)
    names = ["blk.0.attn_k.weight", "blk.0.ffn_down.weight"]
    cal = calibrate_model(src, text, m, names=names, n_ctx=128, n_chunks=1, out=tmp_path / "c.json",
                          workdir=tmp_path, progress=False)  # fmt: skip
    assert set(cal.probes) == set(names) and cal.complete
    assert 0 < cal.probes[names[0]].kld < cal.probes[names[1]].kld
    assert src.stat().st_mtime_ns == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    assert Calibration.load(tmp_path / "c.json") == cal
    assert np.isfinite([p.kld for p in cal.probes.values()]).all()


def test_layer_stride_probes_every_kth_block_the_last_and_the_rest() -> None:
    from gguf_recipe.measure.calibrate import _strided

    names = ["token_embd.weight", *(f"blk.{b}.attn_v.weight" for b in range(8)), "output.weight"]
    assert _strided(names, 3) == [
        "token_embd.weight", "blk.0.attn_v.weight", "blk.3.attn_v.weight", "blk.6.attn_v.weight",
        "blk.7.attn_v.weight", "output.weight",
    ]  # fmt: skip
    assert _strided(names, 1) == names


def test_cli_measure_calibrate_then_tune_uses_it(tmp_path: Path) -> None:
    """`recipe measure --calibrate` on the real model (short probes, every 15th block), then `recipe
    tune` ranks by the calibration (its header says so) and interpolates the blocks in between."""
    from gguf_recipe import examples

    src = examples.smollm2_f16_path()
    text = examples.shakespeare_play("tempest")
    assert text is not None
    (tmp_path / "tempest.txt").write_text(text, encoding="utf-8")
    r = runner.invoke(app, ["measure", str(src), "--calibrate", str(tmp_path / "tempest.txt"),
                            "--calibrate-ctx", "64", "--calibrate-stride", "15", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "t.yaml"
    r = runner.invoke(app, ["tune", str(src), "--target-size", "100MB", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "KL divergence" in r.output
    assert "predicted KL-divergence of the tuned tensors" in out.read_text(encoding="utf-8")
    r = runner.invoke(app, ["tune", str(src), "--target-size", "100MB", "--uncalibrated"])
    assert r.exit_code == 0 and "uncalibrated" in r.output
