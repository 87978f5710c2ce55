"""Load a recipe (YAML or JSON) keeping the line and column of every key and value.

``load_recipe(path_or_text)`` returns the validated :class:`~gguf_recipe.recipe.model.Recipe` or raises
:class:`~gguf_recipe.diagnostics.RecipeError` whose diagnostics name file:line:col, what was found and
what was expected. ``load(path_or_text)`` returns a :class:`LoadedRecipe` that also keeps the source
map, so that later stages (the compiler, the linter) can point at the rule they complain about.

The steps live beside this module: ``source_map`` (text -> data + positions, with limits for hostile
input), ``validation`` (pydantic errors -> located diagnostics), ``checks`` (what needs no model).
Checks done (they need no model): YAML/JSON syntax, unknown and missing keys, value kinds, type
names (close matches; ik_llama.cpp-only types), regexes (with the position inside the pattern), layer
selector syntax, condition comparisons, metadata value kinds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..diagnostics import Diagnostic, RecipeError, Severity, sort_diagnostics
from .checks import check_semantics, parse_comparison
from .model import RECIPE_SCHEMA_VERSION, Recipe
from .source_map import MAX_RECIPE_BYTES, Pos, SourceMap, kind_of, parse_text
from .validation import validation_diagnostics

__all__ = [
    "LoadedRecipe",
    "Pos",
    "SourceMap",
    "check_recipe",
    "load",
    "load_recipe",
    "parse_comparison",
]


@dataclass
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: Recipe
    text: str
    file: str | None
    source: SourceMap
    base_dir: Path | None = None
    data: Any = None

    @property
    def display_name(self) -> str:
        return self.file or "<recipe>"

    def diagnostic(
        self,
        path: Sequence[str | int],
        message: str,
        *,
        code: str,
        severity: str = "error",
        hint: str | None = None,
        key: bool = False,
        index: int | None = None,
    ) -> Diagnostic:
        """A diagnostic located at the value (or key) at ``path``; ``index`` points inside a string value."""
        if index is not None:
            pos = self.source.inside(path, index)
        elif key:
            pos = self.source.key(path)
        else:
            pos = self.source.value(path)
        sev: Severity = "warning" if severity == "warning" else "error"
        return Diagnostic(
            message,
            sev,
            self.file,
            pos.line if pos else None,
            pos.col if pos else None,
            hint,
            code=code,
        )

    def rule_diagnostic(
        self, rule_index: int, message: str, *, code: str, severity: str = "warning", hint: str | None = None
    ) -> Diagnostic:
        """A diagnostic at rule ``rule_index`` (0-based) of this recipe's own ``rules`` list."""
        path: tuple[str | int, ...] = ("rules", rule_index)
        for k in ("match", "category"):
            if ("rules", rule_index, k) in self.source.values:
                path = ("rules", rule_index, k)
                break
        return self.diagnostic(path, message, code=code, severity=severity, hint=hint)


# --------------------------------------------------------------------------------------------------
# reading text into plain Python data + a source map


def _read_source(path_or_text: str | Path, file: str | None) -> tuple[str, str | None, Path | None]:
    if isinstance(path_or_text, Path):
        p = path_or_text
    elif (
        path_or_text.strip()
        and "\n" not in path_or_text
        and not path_or_text.lstrip().startswith(("{", "recipe:"))
        and (os.path.lexists(path_or_text) or path_or_text.endswith((".yaml", ".yml", ".json")))
    ):
        p = Path(path_or_text)
    else:
        builtin = _builtin_path(path_or_text)
        if builtin is None:
            return path_or_text, file, None
        p = builtin
        file = file or path_or_text
    name = file or str(p)
    from ..inputs import InputFileError, read_input_bytes

    try:
        text = read_input_bytes(p, max_bytes=MAX_RECIPE_BYTES).decode("utf-8")
    except InputFileError as exc:
        msg = str(exc).removeprefix(f"{p}: ")
        if msg.startswith("no such file"):
            msg = f"file not found: {p}"
        raise RecipeError(Diagnostic(msg, "error", name, code="R001")) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            Diagnostic(
                f"file is not UTF-8 text ({exc.reason} at byte {exc.start})", "error", name, code="R001"
            )
        ) from None
    return text, name, p.resolve().parent


def _builtin_path(text: str) -> Path | None:
    """The file of a built-in recipe name such as ``llama.cpp/Q4_K_M`` (None for anything else)."""
    if "\n" in text or ":" in text or "/" not in text or len(text) > 200:
        return None
    from ..recipes import RecipeNotFoundError, resolve

    try:
        return resolve(text)
    except (RecipeNotFoundError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# public entry points


def load(path_or_text: str | Path, *, file: str | None = None) -> LoadedRecipe:
    """Load and validate; raises :class:`RecipeError` with every error found."""
    lr, diags = _load(path_or_text, file=file)
    errors = [d for d in diags if d.is_error]
    if errors or lr is None:
        raise RecipeError(errors or [Diagnostic("cannot load recipe", "error", file, code="R002")])
    return lr


def check_recipe(
    path_or_text: str | Path, *, file: str | None = None
) -> tuple[LoadedRecipe | None, list[Diagnostic]]:
    """Load without raising: the recipe (None when it does not validate) and every diagnostic."""
    try:
        return _load(path_or_text, file=file)
    except RecipeError as exc:
        return None, exc.diagnostics


def load_recipe(path_or_text: str | Path) -> Recipe:
    """The validated recipe (``extends`` is not resolved here: the compiler does that)."""
    return load(path_or_text).recipe


def _load(
    path_or_text: str | Path, *, file: str | None = None
) -> tuple[LoadedRecipe | None, list[Diagnostic]]:
    text, name, base_dir = _read_source(path_or_text, file)
    data, smap = parse_text(text, name)
    stub = LoadedRecipe.__new__(LoadedRecipe)
    stub.text, stub.file, stub.source, stub.base_dir, stub.data = text, name, smap, base_dir, data
    if data is None:
        return None, [
            Diagnostic(
                "empty recipe",
                "error",
                name,
                1,
                1,
                hint=f"a recipe starts with 'recipe: {RECIPE_SCHEMA_VERSION}' and has 'base: <type>' or 'extends: <recipe>'",
                code="R102",
            )
        ]
    if not isinstance(data, dict):
        return None, [
            Diagnostic(
                f"found {kind_of(data)}, expected a mapping (key: value lines) at the top level",
                "error",
                name,
                1,
                1,
                code="R103",
            )
        ]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        return None, sort_diagnostics(validation_diagnostics(exc, data, stub))
    lr = LoadedRecipe(recipe, text, name, smap, base_dir, data)
    return lr, sort_diagnostics(check_semantics(lr))
