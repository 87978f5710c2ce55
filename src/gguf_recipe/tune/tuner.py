"""``tune_model``: the best mix for a size budget, written as a readable recipe.

1. Measure (or reuse the cached measurement): every quantizable tensor's error in every candidate type.
2. Fix what the user fixed: tensors decided by ``--pin`` rules, or by the explicit rules of the
   ``--extends`` recipe, keep those types and their bytes count against the budget.
3. Turn the file-size target into a byte budget for the free tensors: the file is header + aligned
   tensor data, and the header holds the recipe text itself, so the size of a draft recipe's output
   is predicted exactly (:func:`gguf_recipe.executor.predict.predict_layout`) and the budget is what
   is left of the target.
4. Solve (:mod:`.solver`), write the recipe (:mod:`.emit`), compile it, check that it gives every
   tensor the chosen type and that its predicted file fits; if the final recipe text made the header
   grow past the target, shrink the budget by the excess and solve again.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..compiler import compile_model
from ..diagnostics import RecipeError
from ..errors import GGUFRecipeError
from ..executor.gguf_format import align_up
from ..executor.predict import predict_layout
from ..measure import Measurement, find_measurement, measure_model
from ..measure.calibrate import Calibration, find_calibration
from ..model.reader import ModelInfo, read_model
from ..plan import Plan
from .emit import TensorChoice, tuned_rules, write_recipe
from .loss import loss_kind, tensor_losses
from .solver import Allocation, InfeasibleBudget, Item, Option, solve

__all__ = ["Budget", "TuneError", "TuneResult", "tune_model"]

# Bytes kept free below a file-size target for metadata that apply may spell differently from the
# prediction (the imatrix path as typed).
DEFAULT_SLACK = 256
_MAX_ROUNDS = 8


class TuneError(GGUFRecipeError, ValueError):
    """The tuning problem has no solution (a target out of range, pins over budget, bad input)."""


@dataclass(frozen=True)
class Budget:
    """A separate budget: tensors whose name matches ``pattern`` (re.search) share ``bytes``."""

    pattern: str
    bytes: int

    @classmethod
    def parse(cls, text: str, parse_size: Callable[[str], int]) -> Budget:
        pattern, sep, size = text.rpartition("=")
        if not sep or not pattern:
            raise TuneError(f"--budget {text!r}: expected REGEX=SIZE, e.g. 'ffn_.*_exps=20GB'")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise TuneError(f"--budget {text!r}: bad regex: {exc}") from None
        try:
            return cls(pattern, parse_size(size))
        except ValueError as exc:
            raise TuneError(f"--budget {text!r}: {exc}") from None


@dataclass(frozen=True)
class TuneResult:
    recipe_text: str
    plan: Plan
    file_size: int  # predicted size of the output file (bytes), exact for the imatrix path given
    target_size: int | None
    target_bpw: float | None
    loss: float  # predicted loss of the free tensors (KLD units when calibrated)
    loss_kind: str
    choices: dict[str, str]  # tensor -> type (free tensors)
    pinned: dict[str, str]  # tensor -> type (fixed by --pin / --extends)
    group_bytes: dict[str, int] = field(default_factory=dict)  # --budget pattern -> bytes used

    @property
    def bpw(self) -> float:
        return self.plan.totals.bpw


@dataclass
class _Problem:
    model: ModelInfo
    measurement: Measurement
    items: list[Item]
    pinned: dict[str, str]
    pin_rules: list[dict[str, Any]]
    pin_extra: dict[str, Any]
    alignment: int
    calibration: Calibration | None = None


def tune_model(
    model_path: str | os.PathLike[str],
    *,
    target_size: int | None = None,
    target_bpw: float | None = None,
    imatrix: str | os.PathLike[str] | None = None,
    extends: str | None = None,
    pin: str | os.PathLike[str] | None = None,
    types: Sequence[str] | None = None,
    budgets: Sequence[Budget] = (),
    measurement: Measurement | str | os.PathLike[str] | None = None,
    calibration: Calibration | str | os.PathLike[str] | bool = True,
    slack: int = DEFAULT_SLACK,
    threads: int | None = None,
    progress: bool | None = None,
    command: str | None = None,
) -> TuneResult:
    """Find the mix of types with the lowest predicted loss whose output file is at most
    ``target_size`` bytes (or whose tensor data is at most ``target_bpw`` bits per weight)."""
    if (target_size is None) == (target_bpw is None):
        raise TuneError("give exactly one of a target size or a target bpw")
    model = read_model(Path(model_path))
    m = _measurement(model_path, model, imatrix, types, measurement, threads, progress)
    cal = _calibration(m, calibration)
    prob = _problem(model, m, imatrix, extends, pin, types, cal)
    if target_bpw is not None:
        return _tune_bpw(prob, model_path, target_bpw, imatrix, extends, budgets, command)
    assert target_size is not None
    return _tune_size(prob, model_path, target_size, imatrix, extends, budgets, slack, command)


# -- inputs -----------------------------------------------------------------------------------------


def _measurement(
    model_path: str | os.PathLike[str],
    model: ModelInfo,
    imatrix: str | os.PathLike[str] | None,
    types: Sequence[str] | None,
    given: Measurement | str | os.PathLike[str] | None,
    threads: int | None,
    progress: bool | None,
) -> Measurement:
    if isinstance(given, Measurement):
        m = given
    elif given is not None:
        m = Measurement.load(given)
    else:
        found = find_measurement(model_path, imatrix, types=types)
        m = (
            found
            if found is not None
            else measure_model(model_path, imatrix=imatrix, types=types, threads=threads, progress=progress)
        )
    if m.model_fingerprint != model.header_sha256:
        raise TuneError("the measurement was made for another model (its fingerprint differs); measure again")
    if not m.complete:
        raise TuneError("the measurement is incomplete; run `recipe measure` again to finish it")
    if (imatrix is None) != (m.imatrix_fingerprint is None):
        raise TuneError(
            "the measurement was made "
            + ("with" if m.imatrix_fingerprint else "without")
            + " an imatrix; tune with the same imatrix it was measured with"
        )
    return m


def _calibration(m: Measurement, given: Calibration | str | os.PathLike[str] | bool) -> Calibration | None:
    """``True``: the cached calibration of the model and imatrix, when there is one; ``False``: none."""
    if given is False:
        return None
    if given is True:
        return find_calibration(m.model_fingerprint, m.imatrix_fingerprint)
    cal = given if isinstance(given, Calibration) else Calibration.load(given)
    if cal.model_fingerprint != m.model_fingerprint or cal.imatrix_fingerprint != m.imatrix_fingerprint:
        raise TuneError("the calibration was made for another model or imatrix than the measurement")
    return cal


def _decided_by_rule(rule: str) -> bool:
    """A plan's ``rule`` text says an explicit rule (or token-embedding / output setting) decided it."""
    return rule.startswith(("rule ", "token-embedding", "output"))


def _load_pins(pin: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rules (and token_embedding / output settings) of a pin file: a recipe, or a mapping with
    ``rules``, or a bare list of rules."""
    from ruamel.yaml import YAML

    path = Path(pin)
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TuneError(f"cannot read the pin file {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise TuneError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise TuneError(f"{path}: expected a recipe or a list of rules")
    extra = {k: data[k] for k in ("token_embedding", "output") if k in data}
    return list(data.get("rules", [])), extra


def _frame_recipe(rules: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    return write_recipe(
        header=[],
        name="pins",
        description="pinned rules",
        base="q8_0",
        extends=None,
        rules=rules,
        extra=extra,
    )


def _problem(
    model: ModelInfo,
    m: Measurement,
    imatrix: str | os.PathLike[str] | None,
    extends: str | None,
    pin: str | os.PathLike[str] | None,
    types: Sequence[str] | None,
    calibration: Calibration | None,
) -> _Problem:
    pinned: dict[str, str] = {}
    pin_rules: list[dict[str, Any]] = []
    pin_extra: dict[str, Any] = {}
    frames: list[str] = []
    if pin is not None:
        pin_rules, pin_extra = _load_pins(pin)
        frames.append(_frame_recipe(pin_rules, pin_extra))
    if extends is not None:
        frames.append(extends)
    for frame in frames:
        plan = _compile(frame, model, imatrix)
        for pt in plan.tensors:
            if pt.name in m.tensors and pt.name not in pinned and _decided_by_rule(pt.rule):
                pinned[pt.name] = pt.type
    wanted = None if types is None else {t.lower() for t in types}
    items: list[Item] = []
    all_losses = tensor_losses(m, calibration)
    for name in m.tensors:
        if name in pinned:
            continue
        losses = all_losses[name]
        cands = m.tensors[name].candidates
        opts = tuple(
            Option(t, align_up(c.bytes, model.alignment), losses[t])
            for t, c in cands.items()
            if wanted is None or t.lower() in wanted
        )
        if not opts:
            raise TuneError(f"{name}: none of the types {sorted(wanted or [])} can hold it")
        items.append(Item(name, opts))
    return _Problem(model, m, items, pinned, pin_rules, pin_extra, model.alignment, calibration)


def _compile(source: str, model: ModelInfo, imatrix: str | os.PathLike[str] | None) -> Plan:
    try:
        res = compile_model(source, model, imatrix=os.fspath(imatrix) if imatrix else None, lint=False)
    except RecipeError as exc:
        raise TuneError("; ".join(d.message for d in exc.diagnostics)) from None
    errors = [d.message for d in res.diagnostics if d.is_error]
    if errors or res.plan is None:
        raise TuneError("; ".join(errors) or "the recipe did not compile")
    return res.plan


# -- solving ----------------------------------------------------------------------------------------


def _groups(items: Sequence[Item], budgets: Sequence[Budget]) -> list[list[int]]:
    """Item indices per budget (first matching pattern), then the rest."""
    pats = [re.compile(b.pattern) for b in budgets]
    groups: list[list[int]] = [[] for _ in range(len(budgets) + 1)]
    for i, it in enumerate(items):
        g = next((k for k, p in enumerate(pats) if p.search(it.name)), len(budgets))
        groups[g].append(i)
    return groups


def _solve_groups(
    prob: _Problem, budget: int, budgets: Sequence[Budget], pinned_bytes: dict[str, int]
) -> tuple[list[Option], dict[str, int]]:
    """Solve every --budget group within its own budget, then the rest within what is left."""
    groups = _groups(prob.items, budgets)
    choice: list[Option | None] = [None] * len(prob.items)
    used_by: dict[str, int] = {}
    spent = 0
    for k, b in enumerate(budgets):
        pats = re.compile(b.pattern)
        fixed = sum(n for name, n in pinned_bytes.items() if pats.search(name))
        sub = [prob.items[i] for i in groups[k]]
        alloc = _solve_or_explain(sub, b.bytes - fixed, f"the budget {b.pattern}={b.bytes}")
        for i, o in zip(groups[k], alloc.choice, strict=True):
            choice[i] = o
        used_by[b.pattern] = alloc.bytes + fixed
        spent += alloc.bytes
    rest = [prob.items[i] for i in groups[-1]]
    alloc = _solve_or_explain(rest, budget - spent, "the target")
    for i, o in zip(groups[-1], alloc.choice, strict=True):
        choice[i] = o
    return [c for c in choice if c is not None], used_by


def _solve_or_explain(items: Sequence[Item], budget: int, what: str) -> Allocation:
    try:
        return solve(items, budget)
    except InfeasibleBudget as exc:
        raise TuneError(
            f"{what} leaves {max(budget, 0)} bytes for {len(items)} tensor(s), which need at least "
            f"{exc.minimum} bytes even at their smallest types"
        ) from None


# -- file size target -------------------------------------------------------------------------------


def _tune_size(
    prob: _Problem,
    model_path: str | os.PathLike[str],
    target: int,
    imatrix: str | os.PathLike[str] | None,
    extends: str | None,
    budgets: Sequence[Budget],
    slack: int,
    command: str | None,
) -> TuneResult:
    source_size = sum(Path(f).stat().st_size for f in prob.model.files)
    smallest = [min(it.options, key=lambda o: (o.bytes, o.cost)) for it in prob.items]
    draft = _emit(prob, smallest, extends, header=["draft"])
    plan = _compile(draft, prob.model, imatrix)
    layout = predict_layout(plan, model_path, imatrix=imatrix)
    free_bytes = sum(o.bytes for o in smallest)
    fixed = layout.total_size - free_bytes  # header + pinned + not quantized
    minimum = layout.total_size
    if target > source_size:
        raise TuneError(
            f"target {target} bytes is above the source model's size ({source_size} bytes); "
            f"the possible range is {minimum}..{source_size} bytes"
        )
    if target - slack < minimum:
        pinned_bytes = sum(
            align_up(t.target_bytes, prob.alignment) for t in plan.tensors if t.name in prob.pinned
        )
        if prob.pinned and fixed - pinned_bytes < target - slack < fixed:
            raise TuneError(
                f"the pinned tensors alone take {pinned_bytes} bytes ({_pin_summary(prob)}), which leaves "
                f"too little of the {target}-byte target; the possible range is {minimum}..{source_size} bytes"
            )
        raise TuneError(
            f"target {target} bytes is below the smallest possible file ({minimum} bytes with every tensor "
            f"at its smallest candidate type, {slack} bytes of slack kept); the possible range is "
            f"{minimum + slack}..{source_size} bytes"
        )
    pinned_bytes_by = {
        t.name: align_up(t.target_bytes, prob.alignment) for t in plan.tensors if t.name in prob.pinned
    }
    budget = target - slack - fixed
    for _ in range(_MAX_ROUNDS):
        choice, used_by = _solve_groups(prob, budget, budgets, pinned_bytes_by)
        header = _header(prob, choice, target_size=target, target_bpw=None, size=None, command=command)
        text = _emit(prob, choice, extends, header=header)
        plan = _compile(text, prob.model, imatrix)
        _check_choices(prob, plan, choice)
        size = predict_layout(plan, model_path, imatrix=imatrix).total_size
        if size <= target - slack:
            final = _with_size_in_header(prob, choice, extends, target, size, model_path, imatrix, command)
            if final is not None:
                text, plan, size = final
                return _result(prob, text, plan, size, target, None, choice, used_by)
        # the recipe text came out longer than the draft's: take the excess off what this choice used
        budget = min(budget, sum(o.bytes for o in choice)) - max(size - (target - slack), 1)
    raise TuneError(f"could not fit the recipe's own text into the {target}-byte target")  # pragma: no cover


def _with_size_in_header(
    prob: _Problem,
    choice: Sequence[Option],
    extends: str | None,
    target: int,
    size: int,
    model_path: str | os.PathLike[str],
    imatrix: str | os.PathLike[str] | None,
    command: str | None,
) -> tuple[str, Plan, int] | None:
    """The recipe with its own predicted file size in the header comment: rewritten until the size it
    states is the size it predicts (the number's digits can move the header across an alignment
    boundary). None when it no longer fits the target."""
    for _ in range(4):
        header = _header(prob, choice, target_size=target, target_bpw=None, size=size, command=command)
        text = _emit(prob, choice, extends, header=header)
        plan = _compile(text, prob.model, imatrix)
        new = predict_layout(plan, model_path, imatrix=imatrix).total_size
        if new > target:
            return None
        if new == size:
            return text, plan, size
        size = new
    return None  # pragma: no cover - the header size cannot oscillate more than once


def _tune_bpw(
    prob: _Problem,
    model_path: str | os.PathLike[str],
    bpw: float,
    imatrix: str | os.PathLike[str] | None,
    extends: str | None,
    budgets: Sequence[Budget],
    command: str | None,
) -> TuneResult:
    """bpw as llama-quantize prints it: tensor data bits over all elements of the source model (no
    header, no alignment)."""
    unaligned = [
        Item(it.name, tuple(Option(o.type, prob.measurement.tensors[it.name].candidates[o.type].bytes, o.cost)
                            for o in it.options))
        for it in prob.items
    ]  # fmt: skip
    prob = _Problem(
        prob.model,
        prob.measurement,
        unaligned,
        prob.pinned,
        prob.pin_rules,
        prob.pin_extra,
        1,
        prob.calibration,
    )
    smallest = [min(it.options, key=lambda o: (o.bytes, o.cost)) for it in prob.items]
    plan = _compile(_emit(prob, smallest, extends, header=["draft"]), prob.model, imatrix)
    n = plan.totals.n_elements
    fixed = plan.totals.target_bytes - sum(o.bytes for o in smallest)
    limit = int(bpw * n / 8)
    if limit < plan.totals.target_bytes:
        raise TuneError(
            f"target {bpw} bpw is below the smallest possible {plan.totals.bpw:.4f} bpw for this model"
        )
    pinned_bytes_by = {t.name: t.target_bytes for t in plan.tensors if t.name in prob.pinned}
    choice, used_by = _solve_groups(prob, limit - fixed, budgets, pinned_bytes_by)
    header = _header(prob, choice, target_size=None, target_bpw=bpw, size=None, command=command)
    text = _emit(prob, choice, extends, header=header)
    plan = _compile(text, prob.model, imatrix)
    _check_choices(prob, plan, choice)
    size = predict_layout(plan, model_path, imatrix=imatrix).total_size
    return _result(prob, text, plan, size, None, bpw, choice, used_by)


# -- output -----------------------------------------------------------------------------------------


def _emit(prob: _Problem, choice: Sequence[Option], extends: str | None, *, header: Sequence[str]) -> str:
    picks = [TensorChoice(it.name, o.type) for it, o in zip(prob.items, choice, strict=True)]
    base = None
    if extends is None:
        counts: dict[str, int] = {}
        for p in picks:
            counts[p.type] = counts.get(p.type, 0) + 1
        base = min(counts, key=lambda t: (-counts[t], t)) if counts else "q8_0"
    untouched = frozenset(prob.pinned) if extends is not None else frozenset()
    rules = [
        *prob.pin_rules,
        *tuned_rules(picks, base=base, untouched=untouched, all_names=list(prob.measurement.tensors)),
    ]
    name = f"tuned-{Path(prob.model.path).stem}"
    return write_recipe(
        header=header,
        name=name,
        description="chosen by `recipe tune` for a size budget",
        base=base,
        extends=extends,
        rules=rules,
        extra=prob.pin_extra,
    )


def _header(
    prob: _Problem,
    choice: Sequence[Option],
    *,
    target_size: int | None,
    target_bpw: float | None,
    size: int | None,
    command: str | None,
) -> list[str]:
    m = prob.measurement
    kind = loss_kind(prob.calibration)
    loss = sum(o.cost for o in choice)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    target = f"file size <= {target_size} bytes" if target_size is not None else f"{target_bpw} bpw"
    lines = [
        f"Tuned by gguf-recipe {__version__} on {when} for {Path(prob.model.path).name} "
        f"(header {m.model_fingerprint[:12]})",
        f"target: {target}" + (f"; predicted file size: {size} bytes" if size is not None else ""),
    ]
    if kind == "kld":
        cal = prob.calibration
        assert cal is not None
        lines.append(
            f"predicted KL-divergence of the tuned tensors: {loss:.5f} (sum of per-tensor KLDs measured by "
            f"llama.cpp on {cal.text_name}, {cal.n_chunks}x{cal.n_ctx} tokens)"
        )
    else:
        lines.append(
            f"predicted loss: {loss:.6g} (relative {m.metric} times weights, summed; uncalibrated: "
            "`recipe measure --calibrate TEXT` ranks tensors by their KL-divergence instead)"
        )
    if prob.pinned:
        lines.append(f"pinned (not tuned): {len(prob.pinned)} tensor(s)")
    lines.append(
        f"measurement: {len(m.tensors)} tensors x {len(m.types)} types, {m.sampling.max_rows} rows per tensor"
        + (", with the imatrix" if m.imatrix_fingerprint else ", no imatrix")
    )
    if command:
        lines.append(f"made with: {command}")
    return lines


def _pin_summary(prob: _Problem) -> str:
    names = sorted(prob.pinned)
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def _check_choices(prob: _Problem, plan: Plan, choice: Sequence[Option]) -> None:
    got = {pt.name: pt for pt in plan.tensors}
    for it, o in zip(prob.items, choice, strict=True):
        pt = got.get(it.name)
        if pt is None or pt.type != o.type or pt.fallback is not None:
            raise TuneError(  # pragma: no cover - a bug in the rule writer
                f"internal error: the tuned recipe gives {it.name} {pt.type if pt else 'nothing'}, not {o.type}"
            )
    for name, t in prob.pinned.items():
        if got[name].type != t:
            raise TuneError(  # pragma: no cover
                f"internal error: the tuned recipe moved pinned {name} from {t} to {got[name].type}"
            )


def _result(
    prob: _Problem,
    text: str,
    plan: Plan,
    size: int,
    target_size: int | None,
    target_bpw: float | None,
    choice: Sequence[Option],
    used_by: dict[str, int],
) -> TuneResult:
    return TuneResult(
        recipe_text=text,
        plan=plan,
        file_size=size,
        target_size=target_size,
        target_bpw=target_bpw,
        loss=sum(o.cost for o in choice),
        loss_kind=loss_kind(prob.calibration),
        choices={it.name: o.type for it, o in zip(prob.items, choice, strict=True)},
        pinned=dict(prob.pinned),
        group_bytes=used_by,
    )
