"""Diagnostics: errors and warnings that point at a place in a recipe file.

Formatted like ruff / rustc::

    recipe.yaml:12:11: error: unknown type 'q4_km'
      = help: did you mean 'q4_K'?

Every problem the loader, the compiler or the linter finds is a :class:`Diagnostic`; functions that
cannot go on raise :class:`RecipeError`, which carries one or more of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .errors import GGUFRecipeError

Severity = Literal["error", "warning"]

__all__ = [
    "Diagnostic",
    "RecipeError",
    "Severity",
    "close_matches",
    "did_you_mean",
    "format_diagnostics",
    "has_errors",
    "sort_diagnostics",
]


@dataclass(frozen=True)
class Diagnostic:
    """One problem. ``line`` and ``col`` are 1-based; ``None`` when unknown."""

    message: str
    severity: Severity = "error"
    file: str | None = None
    line: int | None = None
    col: int | None = None
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @property
    def location(self) -> str:
        parts = [self.file or "<recipe>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)

    def format(self) -> str:
        text = f"{self.location}: {self.severity}: {self.message}"
        if self.hint:
            text += f"\n  = help: {self.hint}"
        return text

    def __str__(self) -> str:
        return self.format()

    def with_file(self, file: str | None) -> Diagnostic:
        return replace(self, file=file)

    def as_warning(self) -> Diagnostic:
        return replace(self, severity="warning")


class RecipeError(GGUFRecipeError, ValueError):
    """A recipe that cannot be used; ``diagnostics`` holds every error found (at least one)."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | Diagnostic) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__(format_diagnostics(self.diagnostics))


def format_diagnostics(diagnostics: Iterable[Diagnostic]) -> str:
    return "\n".join(d.format() for d in diagnostics)


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """By file, line, column (stable: diagnostics at the same place keep their order)."""
    return sorted(diagnostics, key=lambda d: (d.file or "", d.line or 0, d.col or 0))


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def close_matches(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Candidates close to ``word`` (case-insensitive comparison, original spelling returned)."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)
    return [by_lower[f] for f in found]


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> str | None:
    """``"did you mean 'q4_K'?"`` / ``"did you mean one of 'a', 'b'?"``, or None when nothing is close."""
    found = close_matches(word, candidates, n=n)
    if not found:
        return None
    if len(found) == 1:
        return f"did you mean '{found[0]}'?"
    return "did you mean one of " + ", ".join(f"'{f}'" for f in found) + "?"
