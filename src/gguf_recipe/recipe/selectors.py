"""Layer selectors: the strings a rule's ``layers:`` list holds.

Grammar (whitespace between tokens is allowed)::

    selector := span [ "step" INT ]
    span     := bound                      one layer:             "5", "-1", "1/8"
              | [bound] ".." ["<"] [bound] a range, inclusive:    "2..7", "10..", "..3", ".."
                                           "..<" excludes the end: "..<4" == "0..3"
    bound    := INT | "-" INT              a layer; negative counts from the end: -1 is the last layer
              | INT "/" INT [("+"|"-") INT]  a fraction of the layer count N, floored like C integer
                                           division, plus an offset: "7/8" == (7*N)//8, "1/8+2"

``"<range> step K"`` keeps every K-th layer starting at the range's start, so llama.cpp's
``use_more_bits(i, n)`` (``i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2``) is the union
``["..<1/8", "7/8..", "1/8+2.. step 3"]``.

A bound written as a plain number must lie inside the model (an error otherwise); bounds written as
fractions scale with the model and are clamped to it, so a built-in mix works on any layer count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Bound",
    "LayerSelector",
    "LayerSet",
    "SelectorError",
    "format_layers",
    "parse_layers",
    "parse_selector",
]


class SelectorError(ValueError):
    """A selector that does not parse or does not fit the model. ``pos`` is a 0-based offset into the text."""

    def __init__(self, message: str, text: str, pos: int = 0, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.pos = pos
        self.hint = hint


@dataclass(frozen=True)
class Bound:
    """A layer number for a model with ``n`` layers: ``value`` / ``-value`` / ``(num*n)//den + offset``."""

    value: int = 0
    negative: bool = False
    num: int | None = None
    den: int | None = None
    offset: int = 0

    @property
    def is_fraction(self) -> bool:
        return self.den is not None

    def resolve(self, n: int) -> int:
        if self.num is not None and self.den is not None:
            return (self.num * n) // self.den + self.offset
        if self.negative:
            return n - self.value
        return self.value

    def __str__(self) -> str:
        if self.num is not None and self.den is not None:
            off = f"+{self.offset}" if self.offset > 0 else (str(self.offset) if self.offset < 0 else "")
            return f"{self.num}/{self.den}{off}"
        return f"-{self.value}" if self.negative else str(self.value)


@dataclass(frozen=True)
class LayerSelector:
    """One parsed selector. ``single`` when it names one layer (``lo`` is that layer)."""

    text: str
    lo: Bound | None
    hi: Bound | None
    single: bool = False
    exclusive: bool = False
    step: int = 1

    def bounds(self, n: int) -> tuple[int, int]:
        """Resolved [start, stop) for a model with ``n`` layers, clamped to [0, n]."""
        if self.single:
            assert self.lo is not None
            i = self.lo.resolve(n)
            return (i, i + 1) if 0 <= i < n else (0, 0)
        start = self.lo.resolve(n) if self.lo is not None else 0
        stop = n if self.hi is None else self.hi.resolve(n) + (0 if self.exclusive else 1)
        start = max(0, start)
        stop = min(n, stop)
        return start, max(start, stop)

    def contains(self, i: int, n: int) -> bool:
        start, stop = self.bounds(n)
        return start <= i < stop and (i - start) % self.step == 0

    def layers(self, n: int) -> list[int]:
        start, stop = self.bounds(n)
        return list(range(start, stop, self.step))

    def problems(self, n: int) -> list[str]:
        """Why this selector does not fit a model with ``n`` layers (empty when it does)."""
        out: list[str] = []
        last = n - 1
        desc = f"the model has {n} layer{'s' if n != 1 else ''}" + (f" (0..{last})" if n > 0 else "")
        if self.single:
            assert self.lo is not None
            i = self.lo.resolve(n)
            if not self.lo.is_fraction and not 0 <= i < n:
                out.append(f"layer {self.lo} is outside the model: {desc}")
            elif self.lo.is_fraction and not 0 <= i < n:
                out.append(f"layer {self.lo} = {i} is outside the model: {desc}")
            return out
        for b, is_hi in ((self.lo, False), (self.hi, True)):
            if b is None or b.is_fraction:
                continue
            v = b.resolve(n)
            top = n if (is_hi and self.exclusive) else last
            if not 0 <= v <= top:
                what = "end" if is_hi else "start"
                out.append(f"range {what} {b} is outside the model: {desc}")
        if not out and not self.layers(n):
            out.append(f"'{self.text}' selects no layer: {desc}")
        return out

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class LayerSet:
    """A union of selectors (a rule's ``layers:`` list)."""

    selectors: tuple[LayerSelector, ...]

    def contains(self, i: int, n: int) -> bool:
        return any(s.contains(i, n) for s in self.selectors)

    def layers(self, n: int) -> list[int]:
        return sorted({i for s in self.selectors for i in s.layers(n)})

    def problems(self, n: int) -> list[tuple[int, str]]:
        """(index of the selector in the list, message) for every selector that does not fit."""
        return [(k, msg) for k, s in enumerate(self.selectors) for msg in s.problems(n)]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str, pos: int | None = None, hint: str | None = None) -> SelectorError:
        return SelectorError(message, self.text, self.pos if pos is None else pos, hint)

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def found(self) -> str:
        if self.at_end():
            return "end of selector"
        return f"'{self.text[self.pos]}'"

    def integer(self, what: str) -> int:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in "0123456789":
            self.pos += 1
        if start == self.pos:
            raise self.error(f"expected {what}, found {self.found()}", start)
        digits = self.text[start : self.pos]
        if len(digits) > 9:
            raise self.error(f"number {digits} is too large", start)
        return int(digits)

    def bound(self) -> Bound:
        start = self.pos
        if self.peek("-"):
            self.pos += 1
            v = self.integer("a layer number after '-'")
            if v == 0:
                raise self.error(
                    "'-0' is not a layer; -1 is the last layer", start, hint="write 0 for the first layer"
                )
            if self.peek("/"):
                raise self.error(
                    "a fraction cannot be negative", start, hint="write e.g. '7/8..' for the last eighth"
                )
            return Bound(value=v, negative=True)
        v = self.integer("a layer number, '-N' or a fraction 'A/B'")
        if not self.peek("/"):
            return Bound(value=v)
        self.pos += 1
        den_pos = self.pos
        den = self.integer("the denominator of the fraction")
        if den == 0:
            raise self.error("division by zero in fraction", den_pos)
        if v > den:
            raise self.error(
                f"fraction {v}/{den} is larger than 1",
                start,
                hint="a fraction of the layer count is between 0/B and B/B",
            )
        offset = 0
        if self.peek("+") or self.peek("-"):
            sign = -1 if self.text[self.pos] == "-" else 1
            self.pos += 1
            offset = sign * self.integer("an offset after the fraction")
        return Bound(num=v, den=den, offset=offset)

    def starts_bound(self) -> bool:
        return not self.at_end() and (self.text[self.pos].isdigit() or self.text[self.pos] == "-")

    def parse(self) -> LayerSelector:
        self.ws()
        if self.at_end():
            raise self.error(
                "empty layer selector", 0, hint="write e.g. '5', '2..7', '10..', '-4..-1' or '7/8..'"
            )
        lo: Bound | None = None
        hi: Bound | None = None
        single = False
        exclusive = False
        if self.starts_bound():
            lo = self.bound()
            self.ws()
        if self.peek("..."):
            raise self.error(
                "found '...', expected '..'",
                self.pos,
                hint="ranges are written 'A..B' (inclusive) or 'A..<B'",
            )
        if self.peek(".."):
            self.pos += 2
            self.ws()
            if self.peek("<"):
                exclusive = True
                self.pos += 1
                self.ws()
                if not self.starts_bound():
                    raise self.error(f"expected a layer after '..<', found {self.found()}")
            if self.starts_bound():
                hi = self.bound()
                self.ws()
        elif lo is None:
            raise self.error(
                f"expected a layer number, a range 'A..B' or a fraction 'A/B', found {self.found()}",
                hint="write e.g. '5', '2..7', '10..', '-4..-1' or '7/8..'",
            )
        else:
            single = True
        step = 1
        if self.peek("step"):
            kw = self.pos
            self.pos += 4
            if single:
                raise self.error(
                    "'step' needs a range, not a single layer", kw, hint=f"write e.g. '{lo}.. step 3'"
                )
            self.ws()
            step_pos = self.pos
            step = self.integer("a step after 'step'")
            if step == 0:
                raise self.error("step must be at least 1", step_pos)
            self.ws()
        if not self.at_end():
            raise self.error(
                f"unexpected {self.found()} in layer selector",
                hint="write e.g. '5', '2..7', '10..', '-4..-1', '7/8..' or '1/8+2.. step 3'",
            )
        if (
            lo is not None
            and hi is not None
            and not lo.is_fraction
            and not hi.is_fraction
            and lo.negative == hi.negative
        ):
            a, b = (-lo.value, -hi.value) if lo.negative else (lo.value, hi.value)
            if b < a or (exclusive and b == a):
                raise self.error(
                    f"empty range: {self.text.strip()} selects no layer",
                    0,
                    hint=f"did you mean '{hi}..{lo}'?" if not exclusive else None,
                )
        return LayerSelector(self.text.strip(), lo, hi, single, exclusive, step)


def parse_selector(text: str | int) -> LayerSelector:
    """Parse one selector; raises :class:`SelectorError` with the position of the problem."""
    if isinstance(text, bool):
        raise SelectorError(f"expected a layer selector, found {text!r}", str(text))
    if isinstance(text, int):
        text = str(text)
    return _Parser(text).parse()


def parse_layers(items: Sequence[str | int] | str | int) -> LayerSet:
    """Parse a ``layers:`` value (one selector or a list of them, a union)."""
    if isinstance(items, (str, int)):
        items = [items]
    return LayerSet(tuple(parse_selector(s) for s in items))


def format_layers(layers: Iterable[int]) -> str:
    """Compact text for a set of layer numbers: ``0..3, 7, 9..10``."""
    xs = sorted(set(layers))
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}..{xs[j]}")
        i = j + 1
    return ", ".join(out)
