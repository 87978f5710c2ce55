"""Recipe regexes: checked with Python's ``re`` (its syntax, its messages), matched with bounded work.

A regex with nested quantifiers such as ``(a+)+$`` or ``(.*)*x`` makes a backtracking engine take
exponential time on a name it does not match: seconds per tensor name, hours on a real model.

* :func:`pattern_problems` is the lint: the forms that are exponential for certain (an unbounded
  repeat around a body that is an unbounded repeat plus only optional parts) are errors, other nested
  unbounded quantifiers are warnings; so are patterns Python reads differently than the user meant
  (``[[:alpha:]]``: a POSIX class is no Python syntax, re warns "possible nested set").
* :func:`compile_pattern` compiles for matching with the ``regex`` engine (the same syntax as ``re`` for
  every pattern ``re`` accepts, and it gives up after :data:`MATCH_TIMEOUT_S`): a search that takes
  longer raises :class:`PatternTimeout` naming the pattern and the name, instead of running for hours.
"""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Any

# the parser of Python's re (re._parser since 3.11, sre_parse before), to walk a pattern's structure
_sre: Any = importlib.import_module("re._parser" if sys.version_info >= (3, 11) else "sre_parse")

__all__ = [
    "MATCH_TIMEOUT_S",
    "BoundedPattern",
    "PatternProblem",
    "PatternTimeout",
    "compile_pattern",
    "pattern_problems",
]

MATCH_TIMEOUT_S = 0.25  # one search of one tensor name (normally microseconds)

_regex: Any = importlib.import_module("regex")  # (untyped: imported by name)


class PatternTimeout(RuntimeError):
    """A regex search ran past :data:`MATCH_TIMEOUT_S` (catastrophic backtracking)."""

    def __init__(self, pattern: str, name: str) -> None:
        super().__init__(
            f"the regex '{pattern}' takes too long to match the tensor name '{name}' (more than "
            f"{MATCH_TIMEOUT_S} s: catastrophic backtracking, e.g. nested quantifiers like (a+)+); simplify it"
        )
        self.pattern = pattern
        self.name = name


class BoundedPattern:
    """A compiled recipe regex whose :meth:`search` gives up after :data:`MATCH_TIMEOUT_S`."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._re = re.compile(pattern)  # raises re.error for invalid patterns, as before
        self._fast = _regex.compile(pattern)

    def search(self, name: str) -> Any:
        try:
            return self._fast.search(name, timeout=MATCH_TIMEOUT_S)
        except TimeoutError:
            raise PatternTimeout(self.pattern, name) from None


_CACHE: dict[str, BoundedPattern] = {}


def compile_pattern(pattern: str) -> BoundedPattern:
    """The bounded matcher of ``pattern`` (raises ``re.error`` when ``re`` refuses the pattern)."""
    hit = _CACHE.get(pattern)
    if hit is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # reported by the lint
            hit = BoundedPattern(pattern)
        if len(_CACHE) > 4096:
            _CACHE.clear()
        _CACHE[pattern] = hit
    return hit


@dataclass(frozen=True)
class PatternProblem:
    message: str
    severity: str  # "error" or "warning"
    index: int | None = None  # position in the pattern, when known
    hint: str | None = None


_REPEATS = {
    _sre.MAX_REPEAT,
    _sre.MIN_REPEAT,
    *([_sre.POSSESSIVE_REPEAT] if hasattr(_sre, "POSSESSIVE_REPEAT") else []),
}
_ZERO_WIDTH = {_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT}


def _seq_nullable(items: Any) -> bool:
    return all(_nullable(op, av) for op, av in items)


def _nullable(op: Any, av: Any) -> bool:
    """Whether the item can match the empty string."""
    if op in _REPEATS:
        lo, _hi, sub = av
        return bool(lo == 0 or _seq_nullable(sub))
    if op == _sre.SUBPATTERN:
        return _seq_nullable(av[-1])
    if op == _sre.BRANCH:
        return any(_seq_nullable(b) for b in av[1])
    return op in _ZERO_WIDTH


def _unbounded(op: Any, av: Any) -> bool:
    return op in _REPEATS and av[1] == _sre.MAXREPEAT and op != getattr(_sre, "POSSESSIVE_REPEAT", None)


def _has_unbounded(items: Any) -> bool:
    for op, av in items:
        if _unbounded(op, av):
            return True
        if op in _REPEATS and _has_unbounded(av[2]):
            return True
        if op == _sre.SUBPATTERN and _has_unbounded(av[-1]):
            return True
        if op == _sre.BRANCH and any(_has_unbounded(b) for b in av[1]):
            return True
        if op in (_sre.ASSERT, _sre.ASSERT_NOT) and _has_unbounded(av[1]):
            return True
    return False


def _ambiguous(items: Any) -> bool:
    """A repeat body that an unbounded repeat can match in several ways: the repeat (at any depth of
    groups and alternatives) plus only parts that may be empty."""
    items = list(items)
    for i, (op, av) in enumerate(items):
        inner = (
            _unbounded(op, av)
            or (op == _sre.SUBPATTERN and _ambiguous(av[-1]))
            or (op == _sre.BRANCH and any(_ambiguous(b) for b in av[1]))
        )
        if inner and all(_nullable(o, a) for o, a in items[:i] + items[i + 1 :]):
            return True
    return False


def _nested(items: Any) -> tuple[bool, bool]:
    """(an unbounded repeat holds another unbounded repeat, ... in the certainly exponential form)."""
    nested = certain = False
    for op, av in items:
        subs: list[Any] = []
        if op in _REPEATS:
            body = av[2]
            if (
                av[1] == _sre.MAXREPEAT
                and op != getattr(_sre, "POSSESSIVE_REPEAT", None)
                and _has_unbounded(body)
            ):
                nested = True
                certain = certain or _ambiguous(body)
            subs = [body]
        elif op == _sre.SUBPATTERN:
            subs = [av[-1]]
        elif op == _sre.BRANCH:
            subs = list(av[1])
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            subs = [av[1]]
        for sub in subs:
            n, c = _nested(sub)
            nested, certain = nested or n, certain or c
    return nested, certain


_POSITION = re.compile(r" at position (\d+)$")


def pattern_problems(pattern: str) -> list[PatternProblem]:
    """What is wrong with a recipe regex that compiles (see the module docstring); [] when fine.
    Raises ``re.error`` when it does not compile."""
    out: list[PatternProblem] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)
        parsed = _sre.parse(pattern)
    for w in caught:
        if issubclass(w.category, FutureWarning):
            text = str(w.message)
            m = _POSITION.search(text)
            out.append(
                PatternProblem(
                    f"regex '{pattern}': {text[0].lower()}{text[1:]}"
                    + (
                        " (a POSIX class such as [[:alpha:]] is no Python syntax)"
                        if "nested set" in text
                        else ""
                    ),
                    "error",
                    int(m.group(1)) if m else None,
                    "escape a literal '[' as '\\[', and write classes as [a-zA-Z], \\d, \\w",
                )
            )
    try:
        nested, certain = _nested(list(parsed))
    except RecursionError:  # pragma: no cover - refused by the parser first
        nested, certain = True, True
    if nested:
        out.append(
            PatternProblem(
                f"regex '{pattern}': nested quantifiers "
                + (
                    "can take exponential time on names it does not match (catastrophic backtracking)"
                    if certain
                    else "may take a long time on names they do not match"
                ),
                "error" if certain else "warning",
                None,
                "write one quantifier, e.g. 'a+' instead of '(a+)+' and '.*' instead of '(.*)*'",
            )
        )
    return out
