"""Recipe warnings (and a few errors) that need the model: what the rules of a recipe actually do to it.

Only the recipe's own rules are checked (not those of the recipes it extends):

* a layer selector outside the model (error);
* a rule that matches no tensor of the model, or whose ``when`` does not hold for it (warning);
* a rule that only matches tensors llama.cpp never quantizes (warning);
* a rule shadowed by earlier rules: every tensor it matches is decided before it (warning);
* an unanchored pattern that also hits other tensor families, e.g. ``output\\.weight`` matching
  ``blk.0.attn_output.weight`` (warning);
* a rule whose type needs an importance matrix when none is given (error).

``lint_recipe(chain, model, plan, imatrix=...)`` is what the compiler (or the CLI) calls after compiling.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import llamacpp as llama
from ..diagnostics import Diagnostic, Severity
from ..model.reader import ModelInfo, TensorInfo
from ..plan import Plan, PlannedTensor
from ..recipe.typenames import ggml_name
from .engine import (
    Effective,
    Facts,
    LoadedRecipe,
    ResolvedRule,
    _describe_condition,
    _effective,
    _holds,
    _resolve_rules,
)

__all__ = ["lint_compiled", "lint_recipe"]

# names of tensors outside the blocks that other names contain (output.weight in attn_output.weight)
_STANDALONE = frozenset({"output", "output_norm", "token_embd", "token_embd_norm", "rope_freqs", "norm"})
_BLK = re.compile(r"^blk\.\d+\.")


def _family(name: str) -> str:
    return _BLK.sub("blk.*.", name, count=1)


@dataclass
class _Locator:
    """Positions in the root recipe: the compiler's ``locate`` or the loader's source map."""

    file: str | None
    locate: Callable[[tuple[str | int, ...]], tuple[int | None, int | None]] | None

    def at(self, path: tuple[str | int, ...]) -> tuple[int | None, int | None]:
        if self.locate is None:
            return None, None
        return self.locate(path)


def _locator(root: LoadedRecipe, source_path: str | Path | None) -> _Locator:
    if root.locate is not None:
        return _Locator(root.source, root.locate)
    from ..diagnostics import RecipeError
    from ..recipe.loader import load

    try:
        lr = load(source_path if source_path is not None and "\n" not in str(source_path) else root.text)
    except (RecipeError, OSError):
        return _Locator(root.source, None)

    def locate(path: tuple[str | int, ...]) -> tuple[int | None, int | None]:
        pos = lr.source.value(path)
        return (pos.line, pos.col) if pos else (None, None)

    return _Locator(root.source, locate)


def _is_builtin(root: LoadedRecipe, source_path: str | Path | None) -> bool:
    from ..recipes import BUILTIN_DIR, is_builtin_name

    if source_path is not None and "\n" not in str(source_path):
        try:
            Path(source_path).resolve().relative_to(BUILTIN_DIR.resolve())
            return True
        except (ValueError, OSError):
            pass
    return is_builtin_name(root.source)


def _static_match(
    r: ResolvedRule,
    name: str,
    cat: str,
    info: TensorInfo,
    facts: Facts,
    base: object,
    n_layer: int,
    *,
    use_when: bool = True,
) -> bool:
    if r.categories is not None and cat not in r.categories:
        return False
    if r.regex is not None and not r.regex.search(name):
        return False
    if use_when and r.rule.when is not None and not _holds(r.rule.when, facts, info, base):  # type: ignore[arg-type]
        return False
    if r.layers is not None and r.rule.layers_by != "position":
        blk = llama.block_number(name)
        if blk is None or not r.layers.contains(blk, n_layer):
            return False
    return True


def _unmet(r: ResolvedRule) -> str:
    assert r.rule.when is not None
    return f"'when {_describe_condition(r.rule.when)}' does not hold"


def _when_holds_for_model(r: ResolvedRule, facts: Facts, model: ModelInfo, eff: Effective) -> bool:
    """Whether the rule's 'when' holds for the model (tried on any tensor: tensor conditions may differ)."""
    if r.rule.when is None:
        return True
    return any(_holds(r.rule.when, facts, t, eff.base) for t in model.tensors)


def _group_totals(names: Sequence[str], n_layer: int) -> dict[str, int]:
    totals = {"attn_v": 0, "ffn_down": n_layer, "ffn_gate": n_layer, "ffn_up": n_layer}
    for n in names:
        if llama.COUNTER_GROUP.get(llama.category(n)) == "attn_v":
            totals["attn_v"] += 1
    return totals


def lint_recipe(
    chain: list[LoadedRecipe],
    model: ModelInfo,
    plan: Plan,
    *,
    imatrix: bool = False,
    source_path: str | Path | None = None,
) -> list[Diagnostic]:
    """Diagnostics about the root recipe's own rules on this model (see the module docstring)."""
    diags: list[Diagnostic] = []
    try:
        eff: Effective = _effective(chain)
        rules = _resolve_rules(eff, [])
    except Exception:  # the compiler reports recipes it cannot resolve
        return []
    own = [r for r in rules if r.depth == 0 and r.pseudo is None]
    if not own:
        return []
    if _is_builtin(chain[0], source_path):
        return []  # built-in mixes are checked by the parity tests, not linted
    loc = _locator(chain[0], source_path)
    file = loc.file

    def diag(
        path: tuple[str | int, ...],
        code: str,
        message: str,
        severity: str = "warning",
        hint: str | None = None,
    ) -> Diagnostic:
        line, col = loc.at(path)
        sev: Severity = "error" if severity == "error" else "warning"
        return Diagnostic(message, sev, file, line, col, hint, code=code)

    facts = Facts.of(model, imatrix)
    n_layer = model.n_layer
    infos = {t.name: t for t in model.tensors}
    live = [t for t in plan.tensors if t.action != "prune"]
    cats = {t.name: llama.category(t.name) for t in live}
    totals = _group_totals([t.name for t in live], n_layer)
    by_index = {r.index: r for r in rules}

    for r in own:
        k = r.local_index
        rule_path: tuple[str | int, ...] = (
            ("rules", k, "match") if r.rule.match is not None else ("rules", k, "category")
        )
        label = f"rule {k + 1}"

        if not _when_holds_for_model(r, facts, model, eff):
            diags.append(
                diag(("rules", k, "when"), "L302", f"{label} never applies to this model: {_unmet(r)}")
            )
            continue

        # layer selectors that do not fit the model
        bad_layers = False
        if r.layers is not None:
            if r.rule.layers_by == "position":
                groups = {llama.COUNTER_GROUP.get(c) for c in (r.categories or [])} - {None}
                ns = sorted({totals[g] for g in groups if g is not None}) or [n_layer]
            else:
                ns = [n_layer]
            is_list = isinstance(r.rule.layers, list)
            for n in ns:
                for idx, msg in r.layers.problems(n):
                    p: tuple[str | int, ...] = (
                        ("rules", k, "layers", idx) if is_list else ("rules", k, "layers")
                    )
                    diags.append(
                        diag(
                            p,
                            "L301",
                            f"{label}: layer selector '{r.layers.selectors[idx].text}': {msg}",
                            "error",
                        )
                    )
                    bad_layers = True
        if bad_layers:
            continue

        cands: list[PlannedTensor] = []
        cands_no_when: list[PlannedTensor] = []
        for t in live:
            info = infos.get(t.source_name)
            if info is None:
                continue
            if _static_match(r, t.name, cats[t.name], info, facts, eff.base, n_layer, use_when=False):
                cands_no_when.append(t)
                if r.rule.when is None or _holds(r.rule.when, facts, info, eff.base):
                    cands.append(t)

        if r.rule.when is not None and cands_no_when and not cands:
            diags.append(
                diag(
                    ("rules", k, "when"),
                    "L302",
                    f"{label} never applies to this model: {_unmet(r)} for any of the "
                    f"{len(cands_no_when)} tensor(s) it matches (e.g. {cands_no_when[0].name})",
                )
            )
            continue
        if not cands:
            hint = None
            if r.rule.match is not None:
                fams = sorted({_family(t.name) for t in live})
                close = difflib.get_close_matches(r.rule.match.replace("\\", ""), fams, n=3, cutoff=0.5)
                if close:
                    hint = "tensor families of this model that look similar: " + ", ".join(close)
            diags.append(diag(rule_path, "L303", f"{label} matches no tensor of this model", hint=hint))
            continue

        quantizable = [t for t in cands if not t.rule.startswith("not quantizable")]
        if not quantizable:
            sample = cands[0]
            why = sample.rule.removeprefix("not quantizable: ")
            diags.append(
                diag(
                    rule_path,
                    "L304",
                    f"{label} only matches tensors that are never quantized (e.g. {sample.name}: {why})",
                    hint="llama.cpp keeps norms, biases, 1-D tensors and routers as they are",
                )
            )
            continue

        decided = [t for t in quantizable if t.rule_index == r.index]
        if not decided and r.rule.layers_by != "position":
            shadows: list[str] = []
            for t in quantizable:
                d = t.rule_index
                if d is not None and d in by_index and d < r.index:
                    sr = by_index[d]
                    what = (
                        f"rule {sr.local_index + 1}" if sr.depth == 0 and sr.pseudo is None else sr.describe()
                    )
                elif t.rule.startswith("token-embedding"):
                    what = "token_embedding"
                elif t.rule.startswith("output"):
                    what = "output"
                else:
                    what = t.rule
                if what not in shadows:
                    shadows.append(what)
            diags.append(
                diag(
                    rule_path,
                    "L305",
                    f"{label} is shadowed: every tensor it matches is decided earlier (by {', '.join(shadows[:3])})",
                    hint="the first matching rule wins: move this rule up or narrow the earlier one",
                )
            )

        # unanchored patterns hitting other tensor families
        if r.regex is not None and not r.rule.match.startswith("^"):  # type: ignore[union-attr]
            clean: dict[str, str] = {}
            partial: dict[str, str] = {}
            for t in cands:
                m = r.regex.search(t.name)
                if m is None:
                    continue
                fam = _family(t.name)
                start_ok = m.start() == 0 or t.name[m.start() - 1] == "."
                (clean if start_ok else partial).setdefault(fam, t.name)
            if clean and partial:
                other = next(iter(partial.values()))
                meant = next(iter(clean))
                diags.append(
                    diag(
                        rule_path,
                        "L306",
                        f"{label}: pattern '{r.rule.match}' also matches {other} (another tensor family than {meant})",
                        hint=f"anchor it, e.g. '^{r.rule.match}' or '(^|\\.){r.rule.match}'",
                    )
                )
            elif partial and not clean:
                prefix = re.match(r"[A-Za-z0-9_]+", r.rule.match or "")
                if prefix and prefix.group(0) in _STANDALONE:
                    other = next(iter(partial.values()))
                    diags.append(
                        diag(
                            rule_path,
                            "L306",
                            f"{label}: pattern '{r.rule.match}' only matches inside other tensor names "
                            f"(e.g. {other}); this model has no {prefix.group(0)} tensor",
                            hint=f"anchor it, e.g. '^{r.rule.match}', or remove the rule",
                        )
                    )

        # types that need an importance matrix
        if r.type is not None and not imatrix:
            needing = [
                t for t in decided if llama.requires_imatrix(t.name, r.type, eff.ftype) and not t.imatrix
            ]
            if needing:
                diags.append(
                    diag(
                        ("rules", k, "type"),
                        "L307",
                        f"{label}: type {ggml_name(r.type)} needs an importance matrix, and none is given "
                        f"({len(needing)} tensor(s), e.g. {needing[0].name})",
                        "error",
                        hint="plan with --imatrix FILE, or pick a type that does not need one (e.g. q2_K, iq3_s, iq4_xs)",
                    )
                )
    return diags


def lint_compiled(
    recipe_source: str | Path, model_path: str | Path, result: object, *, imatrix: bool | None = None
) -> list[Diagnostic]:
    """Lint after :func:`gguf_recipe.compiler.compile_plan` (re-reads the recipe chain and the model header)."""
    from ..model.reader import read_model
    from . import load_recipe_chain

    plan = getattr(result, "plan", None)
    if not isinstance(plan, Plan):
        return []
    try:
        chain = load_recipe_chain(recipe_source)
        model = read_model(model_path)
    except Exception:
        return []
    if imatrix is None:
        imatrix = plan.fingerprints.imatrix is not None or any(t.imatrix for t in plan.tensors)
    return lint_recipe(chain, model, plan, imatrix=imatrix, source_path=recipe_source)
