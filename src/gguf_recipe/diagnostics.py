"""Diagnostics: errors and warnings that point at a place in a recipe file.

Formatted like ruff / rustc::

    recipe.yaml:12:11: error[R104]: unknown type 'q4_km'
      = help: did you mean 'q4_K'?

Every problem the loader, the compiler or the linter finds is a :class:`Diagnostic` (data: code,
severity, message, place, help); functions that cannot go on raise :class:`RecipeError`, which carries
one or more of them. Codes are stable (:data:`CODES`): ``R`` the recipe file itself, ``C`` compiling it
against a model, ``L`` what its rules do to that model. A user can silence warnings by code
(``--ignore L302``); errors cannot be silenced.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from .errors import GGUFRecipeError

Severity = Literal["error", "warning"]

# code -> short name (stable; documented in the README)
CODES: dict[str, str] = {
    "R001": "unreadable-file",
    "R002": "syntax-error",
    "R003": "too-deep",
    "R101": "unknown-key",
    "R102": "missing-key",
    "R103": "invalid-value",
    "R104": "unknown-type",
    "R105": "invalid-regex",
    "R106": "risky-regex",
    "R107": "invalid-layer-selector",
    "R108": "invalid-condition",
    "R109": "invalid-metadata",
    "R110": "invalid-extends",
    "C201": "needs-imatrix",
    "C202": "fallback",
    "C203": "imatrix-coverage",
    "C204": "pattern-timeout",
    "C205": "not-for-this-model",
    "C206": "unreadable-imatrix",
    "L301": "layers-outside-model",
    "L302": "never-applies",
    "L303": "matches-nothing",
    "L304": "only-unquantized",
    "L305": "shadowed-rule",
    "L306": "unanchored-pattern",
    "L307": "rule-needs-imatrix",
}

__all__ = [
    "CODES",
    "Diagnostic",
    "RecipeError",
    "Severity",
    "close_matches",
    "did_you_mean",
    "format_diagnostics",
    "has_errors",
    "sort_diagnostics",
    "without_ignored",
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
    code: str = field(kw_only=True)  # one of CODES

    @property
    def name(self) -> str:
        """The code's short name, e.g. ``unknown-type``."""
        return CODES.get(self.code, "")

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
        tag = f"{self.severity}[{self.code}]" if self.code else self.severity
        text = f"{self.location}: {tag}: {self.message}"
        if self.hint:
            text += f"\n  = help: {self.hint}"
        return text

    def __str__(self) -> str:
        return self.format()

    def with_file(self, file: str | None) -> Diagnostic:
        return replace(self, file=file)

    def as_warning(self) -> Diagnostic:
        return replace(self, severity="warning")

    def to_json(self) -> dict[str, object]:
        """For ``--format json``: every field, and the code's name."""
        return {**asdict(self), "name": self.name}


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


def without_ignored(diagnostics: Iterable[Diagnostic], ignore: Iterable[str]) -> list[Diagnostic]:
    """The diagnostics minus the warnings whose code (or name) is in ``ignore``; errors always stay."""
    drop = {c.upper() for c in ignore} | {c.lower() for c in ignore}
    return [d for d in diagnostics if d.is_error or (d.code not in drop and d.name not in drop)]


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
