"""Do a plan's decisions follow from the recipe it names?

A plan carries its recipe (``recipe_text``, the recipe fingerprint) and the output embeds it as the
recipe that made the file. A plan edited by hand can stay self-consistent (shapes, sizes, totals) and
still not be what its recipe gives; the output must then not claim that recipe. :func:`check_decisions`
compiles the plan's recipe (its text, and what it extends) against the model and compares every
decision: tensor names, types, actions, importance weights, fallbacks, the file type and the metadata
overrides.

The outcome is ``verified`` (the recipe gives exactly this plan), ``edited`` (it gives something else:
``apply_plan`` refuses unless forced, and a forced output records ``gguf_recipe.plan_edited``) or
``unverified`` (the recipe cannot be compiled here, e.g. it extends a file that is not at hand: the
output records ``gguf_recipe.plan_unverified`` with the reason).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..plan import Plan

if TYPE_CHECKING:
    from ..compiler import LoadedRecipe

__all__ = ["PlanCheck", "check_decisions"]

Status = Literal["verified", "edited", "unverified"]

# the fields that decide what the output holds (tool_version, model_path, totals and warnings do not)
_DECISION_FIELDS = ("recipe_name", "ftype", "metadata_overrides")
_TENSOR_FIELDS = (
    "name",
    "type",
    "action",
    "imatrix",
    "fallback",
    "rule",
    "decision",
    "rule_index",
    "needs_imatrix",
)


@dataclass(frozen=True)
class PlanCheck:
    status: Status
    detail: str = ""  # edited: the first differences; unverified: why it could not be checked


def _chain_fingerprint(texts: list[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def check_decisions(
    plan: Plan, model_path: str | os.PathLike[str], recipe: str | os.PathLike[str] | None = None
) -> PlanCheck:
    """Compile the plan's recipe against the model at ``model_path`` and compare the decisions.

    ``recipe``: the recipe file the plan was made from; by default the recipe chain the plan carries
    (every recipe it extends, so no file is needed), or for a plan without one its recipe text.
    """
    from ..compiler.engine import compile_chain
    from ..diagnostics import RecipeError
    from ..model import read_model

    if plan.recipe_chain and plan.recipe_chain[0].text != plan.recipe_text:
        return PlanCheck("edited", "recipe_text: not the first recipe of the plan's recipe_chain")
    try:
        chain = _chain_of(plan, recipe)
        if chain is None:
            return PlanCheck("unverified", "the plan's recipe text is not a recipe")
    except RecipeError as exc:
        first = exc.diagnostics[0].message if exc.diagnostics else str(exc)
        return PlanCheck("unverified", f"its recipe does not load here ({first})")
    except (OSError, ValueError) as exc:
        return PlanCheck("unverified", f"its recipe does not load here ({exc})")
    if _chain_fingerprint([lr.text for lr in chain]) != plan.fingerprints.recipe:
        what = "the recipe it extends is" if recipe is None else f"{recipe} is"
        return PlanCheck("unverified", f"{what} not the one the plan was made with")
    try:
        model = read_model(Path(model_path))
    except (OSError, ValueError) as exc:  # the executor's own reader accepted it; ours may differ
        return PlanCheck("unverified", f"the model header does not read here ({exc})")
    with_imatrix = plan.fingerprints.imatrix is not None or any(t.imatrix for t in plan.tensors)
    want = _decisions(plan)
    differences: list[str] = []
    # a plan made without an imatrix file may still have been made "as if" with one (imatrix=True)
    for has_im in (True,) if with_imatrix else (False, True):
        try:
            got = compile_chain(chain, model, imatrix=has_im).plan
        except RecipeError as exc:
            first = exc.diagnostics[0].message if exc.diagnostics else str(exc)
            return PlanCheck("unverified", f"its recipe does not compile for this model ({first})")
        found = _decisions(got)
        if found == want:
            return PlanCheck("verified")
        if not differences:
            differences = _differences(want, found)
    return PlanCheck("edited", "; ".join(differences))


def _chain_of(plan: Plan, recipe: str | os.PathLike[str] | None) -> list[LoadedRecipe] | None:
    """The recipe chain to recompile: ``recipe``'s, else the one the plan carries, else its text's."""
    from ..compiler import LoadedRecipe, load_recipe_chain
    from ..recipe.loader import load

    if recipe is not None:
        return load_recipe_chain(Path(recipe))
    if plan.recipe_chain:
        chain = []
        for src in plan.recipe_chain:
            lr = load(src.text, file=src.name)
            chain.append(LoadedRecipe(recipe=lr.recipe, text=lr.text, source=src.name))
        return chain
    if "\n" in plan.recipe_text:
        return load_recipe_chain(plan.recipe_text)
    return None


def _decisions(plan: Plan) -> dict[str, Any]:
    d = plan.model_dump(mode="json", include=set(_DECISION_FIELDS))
    d["tensors"] = [
        {"source_name": t.source_name, **t.model_dump(mode="json", include=set(_TENSOR_FIELDS))}
        for t in plan.tensors
    ]
    return d


def _differences(plan: dict[str, Any], recipe: dict[str, Any], limit: int = 3) -> list[str]:
    out: list[str] = []
    for key in _DECISION_FIELDS:
        if plan[key] != recipe[key]:
            out.append(f"{key}: the plan says {plan[key]!r}, the recipe gives {recipe[key]!r}")
    ours = {t["source_name"]: t for t in recipe["tensors"]}
    n = 0
    for t in plan["tensors"]:
        r = ours.get(t["source_name"])
        if r == t:
            continue
        n += 1
        if n > limit:
            continue
        if r is None:
            out.append(f"{t['source_name']}: the recipe does not plan it")
            continue
        fields = [f for f in _TENSOR_FIELDS if t[f] != r[f]]
        if "type" in fields or "action" in fields:
            out.append(
                f"{t['source_name']}: the plan says {t['action']} to {t['type']}, "
                f"the recipe gives {r['action']} to {r['type']}"
            )
        else:
            out.append(
                f"{t['source_name']}: "
                + ", ".join(f"{f} {t[f]!r} (the recipe gives {r[f]!r})" for f in fields)
            )
    if n > limit:
        out.append(f"... {n - limit} more tensor(s)")
    if not out and [t["source_name"] for t in plan["tensors"]] != [
        t["source_name"] for t in recipe["tensors"]
    ]:
        out.append("the tensors are in another order than the recipe gives")
    return out
