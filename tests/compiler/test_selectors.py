"""Layer selectors: grammar, evaluation against a layer count, exact error messages, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gguf_recipe.recipe.selectors import SelectorError, format_layers, parse_layers, parse_selector

USE_MORE_BITS = ["..<1/8", "7/8..", "1/8+2.. step 3"]


@pytest.mark.parametrize(
    ("text", "n", "layers"),
    [
        ("5", 10, [5]),
        (5, 10, [5]),
        ("0", 1, [0]),
        ("2..7", 10, [2, 3, 4, 5, 6, 7]),
        ("10..", 12, [10, 11]),
        ("..3", 10, [0, 1, 2, 3]),
        ("..<4", 10, [0, 1, 2, 3]),
        ("..", 3, [0, 1, 2]),
        ("-1", 10, [9]),
        ("-4..-1", 10, [6, 7, 8, 9]),
        ("-3..", 10, [7, 8, 9]),
        ("1/8", 32, [4]),
        ("7/8..", 32, [28, 29, 30, 31]),
        ("..<1/8", 32, [0, 1, 2, 3]),
        ("1/8+2", 32, [6]),
        ("1/2-1", 10, [4]),
        ("0.. step 4", 10, [0, 4, 8]),
        ("1/8+2.. step 3", 32, [6, 9, 12, 15, 18, 21, 24, 27, 30]),
        (" 2 .. 4 ", 10, [2, 3, 4]),
        ("2..<2/2", 5, [2, 3, 4]),
        ("7/8..", 1, [0]),  # fractions are clamped: (7*1)//8 == 0
        ("1/8+2..", 1, []),
    ],
)
def test_selector_layers(text: str | int, n: int, layers: list[int]) -> None:
    assert parse_selector(text).layers(n) == layers


@pytest.mark.parametrize(
    ("text", "message", "pos", "hint"),
    [
        ("", "empty layer selector", 0, "write e.g. '5', '2..7', '10..', '-4..-1' or '7/8..'"),
        (
            "a",
            "expected a layer number, a range 'A..B' or a fraction 'A/B', found 'a'",
            0,
            "write e.g. '5', '2..7', '10..', '-4..-1' or '7/8..'",
        ),
        (
            "1..2x",
            "unexpected 'x' in layer selector",
            4,
            "write e.g. '5', '2..7', '10..', '-4..-1', '7/8..' or '1/8+2.. step 3'",
        ),
        ("7..2", "empty range: 7..2 selects no layer", 0, "did you mean '2..7'?"),
        ("3..<3", "empty range: 3..<3 selects no layer", 0, None),
        ("-1..-4", "empty range: -1..-4 selects no layer", 0, "did you mean '-4..-1'?"),
        ("3 step 2", "'step' needs a range, not a single layer", 2, "write e.g. '3.. step 3'"),
        ("0.. step 0", "step must be at least 1", 9, None),
        ("0.. step", "expected a step after 'step', found end of selector", 8, None),
        ("9/8", "fraction 9/8 is larger than 1", 0, "a fraction of the layer count is between 0/B and B/B"),
        ("1/0", "division by zero in fraction", 2, None),
        ("-0", "'-0' is not a layer; -1 is the last layer", 0, "write 0 for the first layer"),
        ("-1/8", "a fraction cannot be negative", 0, "write e.g. '7/8..' for the last eighth"),
        ("2...5", "found '...', expected '..'", 1, "ranges are written 'A..B' (inclusive) or 'A..<B'"),
        ("..<", "expected a layer after '..<', found end of selector", 3, None),
        ("1/x", "expected the denominator of the fraction, found 'x'", 2, None),
        ("1234567890", "number 1234567890 is too large", 0, None),
    ],
)
def test_selector_errors(text: str, message: str, pos: int, hint: str | None) -> None:
    with pytest.raises(SelectorError) as exc:
        parse_selector(text)
    assert exc.value.message == message
    assert exc.value.pos == pos
    assert exc.value.hint == hint


@pytest.mark.parametrize(
    ("text", "n", "problems"),
    [
        ("40", 32, ["layer 40 is outside the model: the model has 32 layers (0..31)"]),
        ("-40", 32, ["layer -40 is outside the model: the model has 32 layers (0..31)"]),
        ("30..40", 32, ["range end 40 is outside the model: the model has 32 layers (0..31)"]),
        ("..<33", 32, ["range end 33 is outside the model: the model has 32 layers (0..31)"]),
        ("..<32", 32, []),
        ("-40..", 32, ["range start -40 is outside the model: the model has 32 layers (0..31)"]),
        ("1/8+2..", 1, ["'1/8+2..' selects no layer: the model has 1 layer (0..0)"]),
        ("7/8..", 32, []),
        ("1/8+40", 32, ["layer 1/8+40 = 44 is outside the model: the model has 32 layers (0..31)"]),
    ],
)
def test_selector_problems(text: str, n: int, problems: list[str]) -> None:
    assert parse_selector(text).problems(n) == problems


def test_union_and_format() -> None:
    ls = parse_layers(["0..2", "-1", "5"])
    assert ls.layers(10) == [0, 1, 2, 5, 9]
    assert ls.contains(9, 10) and not ls.contains(3, 10)
    assert format_layers([0, 1, 2, 5, 9, 10]) == "0..2, 5, 9..10"
    assert parse_layers("3").layers(5) == [3]
    assert parse_layers(["40"]).problems(32) == [
        (0, "layer 40 is outside the model: the model has 32 layers (0..31)")
    ]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=400))
def test_use_more_bits_equivalence(n: int) -> None:
    """llama.cpp's use_more_bits(i, n) == the union ["..<1/8", "7/8..", "1/8+2.. step 3"]."""
    ls = parse_layers(USE_MORE_BITS)
    for i in range(n):
        expected = i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
        assert ls.contains(i, n) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789-./+< stepx")), max_size=20))
def test_parse_never_crashes(text: str) -> None:
    try:
        sel = parse_selector(text)
    except SelectorError as exc:
        assert exc.message
        assert 0 <= exc.pos <= len(text)
        return
    for n in (0, 1, 7, 32, 61):
        layers = sel.layers(n)
        assert all(0 <= i < n for i in layers)
        assert layers == sorted(set(layers))
        assert all(sel.contains(i, n) for i in layers)
        sel.problems(n)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.integers(0, 80), st.integers(1, 5), st.integers(1, 100))
def test_range_semantics(a: int, b: int, step: int, n: int) -> None:
    if b < a:
        a, b = b, a
    sel = parse_selector(f"{a}..{b} step {step}")
    assert sel.layers(n) == [i for i in range(a, min(b, n - 1) + 1, step)]
