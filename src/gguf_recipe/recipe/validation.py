"""pydantic validation errors -> located diagnostics that say what was found and what was expected."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..diagnostics import Diagnostic, close_matches
from .model import RECIPE_SCHEMA_VERSION, Condition, ImatrixSettings, MetadataValue, Recipe, Rule
from .source_map import PathKey, Pos, describe_value

if TYPE_CHECKING:
    from .loader import LoadedRecipe

_WHAT = {
    Recipe: "recipe",
    Rule: "rule",
    Condition: "'when' condition",
    ImatrixSettings: "'imatrix' settings",
    MetadataValue: "metadata value",
}


def _model_for(path: PathKey) -> type[BaseModel] | None:
    """Which model describes the mapping at ``path`` (a data path, with list indices)."""
    names = [p for p in path if isinstance(p, str)]
    model: type[BaseModel] = Recipe
    i = 0
    while i < len(names):
        n = names[i]
        if model is Recipe and n == "rules":
            model = Rule
        elif model is Recipe and n == "imatrix":
            model = ImatrixSettings
        elif model is Recipe and n == "metadata":
            if i + 1 >= len(names):
                return None
            model = MetadataValue
            i += 1
        elif model in (Rule, Condition) and n in ("when", "any", "not"):
            model = Condition
        else:
            return None
        i += 1
    return model


def _field_names(model: type[BaseModel]) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        out.append(f.alias or name)
    return out


def _resolve_loc(data: Any, loc: Sequence[Any]) -> tuple[PathKey, Any, bool]:
    """Follow a pydantic ``loc`` through the data, skipping union tags. Returns (path, value, complete)."""
    cur = data
    path: list[str | int] = []
    for comp in loc:
        step: str | int | None = None
        if isinstance(cur, dict) and isinstance(comp, str):
            if comp in cur:
                step = comp
            elif comp.endswith("not_") and "not" in cur:
                step = "not"
        elif isinstance(cur, list) and isinstance(comp, int) and 0 <= comp < len(cur):
            step = comp
        if step is not None:
            cur = cur[step]
            path.append(step)
    return tuple(path), cur, True


_KIND_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def validation_diagnostics(exc: ValidationError, data: Any, lr: LoadedRecipe) -> list[Diagnostic]:
    by_path: dict[PathKey, list[Any]] = {}
    order: list[PathKey] = []
    for err in exc.errors(include_url=False):
        path, _, _ = _resolve_loc(data, err["loc"])
        if err["type"] == "extra_forbidden":
            path = (*path, "\0extra")
        elif err["type"] == "missing":
            path = (*path, "\0missing", str(err["loc"][-1]))
        if path not in by_path:
            by_path[path] = []
            order.append(path)
        by_path[path].append(err)
    out: list[Diagnostic] = []
    for path in order:
        errs = by_path[path]
        if path and path[-1] == "\0extra":
            real = path[:-1]
            key = real[-1]
            model = _model_for(real[:-1])
            what = _WHAT.get(model, "mapping") if model else "mapping"
            allowed = _field_names(model) if model else []
            found = close_matches(str(key), allowed)
            hint = (
                f"did you mean '{found[0]}'?"
                if found
                else ("expected one of: " + ", ".join(allowed) if allowed else None)
            )
            out.append(
                lr.diagnostic(real, f"unknown key '{key}' in {what}", key=True, hint=hint, code="R101")
            )
            continue
        if len(path) >= 2 and path[-2] == "\0missing":
            real = path[:-2]
            name = str(path[-1])
            model = _model_for(real)
            what = _WHAT.get(model, "mapping") if model else "mapping"
            hint = None
            if model is Recipe and name == "recipe":
                hint = f"add 'recipe: {RECIPE_SCHEMA_VERSION}' (the schema version) at the top"
            elif model is Rule and name == "type":
                hint = "add e.g. 'type: q4_K' (or 'type: keep')"
            out.append(lr.diagnostic(real, f"missing key '{name}' in {what}", hint=hint, code="R102"))
            continue
        value = _resolve_loc(data, errs[0]["loc"])[1]
        types = {e["type"] for e in errs}
        if "value_error" in types or "assertion_error" in types:
            e = next(e for e in errs if e["type"] in ("value_error", "assertion_error"))
            msg = str(e["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                if msg.startswith(prefix):
                    msg = msg[len(prefix) :]
            if path == () and isinstance(data, dict) and "exactly one of 'base'" in msg:
                if "base" in data and "extends" in data:
                    second = max(("base", "extends"), key=lambda k: (lr.source.key((k,)) or Pos(0, 0)).line)
                    msg = "found both 'base' and 'extends', expected exactly one of them"
                    out.append(
                        lr.diagnostic(
                            (second,),
                            msg,
                            key=True,
                            hint="a recipe either starts from a type ('base') or from another recipe ('extends')",
                            code="R103",
                        )
                    )
                else:
                    out.append(
                        lr.diagnostic(
                            (),
                            "missing key 'base' or 'extends' in recipe",
                            hint="add e.g. 'base: q4_K' or 'extends: llama.cpp/Q4_K_M'",
                            code="R102",
                        )
                    )
                continue
            out.append(lr.diagnostic(path, msg, code="R103"))
            continue
        if "literal_error" in types:
            e = next(e for e in errs if e["type"] == "literal_error")
            expected = e.get("ctx", {}).get("expected", "")
            found_choices: list[tuple[str, str]] = re.findall(r"'([^']*)'|(\d+)", str(expected))
            choices = [a or b for a, b in found_choices]
            field_name = next((p for p in reversed(path) if isinstance(p, str)), "value")
            if field_name == "recipe" and path == ("recipe",):
                out.append(
                    lr.diagnostic(
                        path,
                        f"unsupported recipe schema version {value if isinstance(value, int) and not isinstance(value, bool) else describe_value(value)}, expected {RECIPE_SCHEMA_VERSION}",
                        hint=f"write 'recipe: {RECIPE_SCHEMA_VERSION}'",
                        code="R103",
                    )
                )
                continue
            found = close_matches(str(value), choices) if isinstance(value, str) else []
            hint = f"did you mean '{found[0]}'?" if found else None
            out.append(
                lr.diagnostic(
                    path,
                    f"invalid {field_name} {describe_value(value)}, expected one of: " + ", ".join(choices),
                    hint=hint,
                    code="R103",
                )
            )
            continue
        expected_kinds: list[str] = []
        for e in errs:
            w = _KIND_WORDS.get(e["type"])
            if w and w not in expected_kinds:
                expected_kinds.append(w)
        if expected_kinds:
            exp = " or ".join(expected_kinds)
            out.append(lr.diagnostic(path, f"found {describe_value(value)}, expected {exp}", code="R103"))
            continue
        out.append(lr.diagnostic(path, str(errs[0]["msg"]), code="R103"))
    return out
