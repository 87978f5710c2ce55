"""Property tests: the loader never crashes; on any input it returns a recipe or clear diagnostics."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gguf_recipe.diagnostics import Diagnostic, RecipeError
from gguf_recipe.recipe import Recipe
from gguf_recipe.recipe.loader import check_recipe, load

KEYS = [
    "recipe",
    "name",
    "description",
    "extends",
    "base",
    "ftype",
    "token_embedding",
    "output",
    "counters",
    "fallbacks",
    "imatrix",
    "prune_layers",
    "metadata",
    "rules",
    "match",
    "category",
    "layers",
    "layers_by",
    "when",
    "type",
    "arch",
    "experts",
    "include",
    "exclude",
    "value",
    "not",
    "any",
    "bogus",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        [
            "q4_K",
            "Q8_0",
            "keep",
            "iq4_k",
            "q4_km",
            "ffn_(",
            "blk\\.[0-3]\\.",
            "3..19",
            "7/8..",
            ">= 8",
            "llama.cpp/Q4_K_M",
            "attn_v",
            "stable",
            "x" * 70,
            "ü",
            "",
        ]
    ),
    st.text(max_size=8),
)


def _json_like() -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
        ),
        max_leaves=25,
    )


def _check(text: str) -> None:
    lr, diags = check_recipe(text, file="fuzz.yaml")
    assert all(isinstance(d, Diagnostic) for d in diags)
    for d in diags:
        assert d.message and d.format()
        assert d.file == "fuzz.yaml"
        if d.line is not None:
            assert d.line >= 1
        if d.col is not None:
            assert d.col >= 1
    if lr is None:
        assert any(d.is_error for d in diags)
    else:
        assert isinstance(lr.recipe, Recipe)
    if any(d.is_error for d in diags):
        try:
            load(text, file="fuzz.yaml")
        except RecipeError as exc:
            assert exc.diagnostics
        else:  # pragma: no cover
            raise AssertionError("load() accepted a recipe with errors")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _check(text if "\n" in text else text + "\n")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), _json_like(), max_size=8))
def test_arbitrary_structures_as_json(data: dict[str, Any]) -> None:
    _check(json.dumps(data) + "\n")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.sampled_from(["", " q4_K", " [1, x", " {a: 1}", " - 3", " 'a(", ' "\\x"', " &a", " *a"]),
        ),
        max_size=10,
    )
)
def test_arbitrary_yaml_lines(lines: list[tuple[str, str]]) -> None:
    text = "recipe: 1\n" + "".join(f"{k}:{v}\n" for k, v in lines)
    _check(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "match": SCALARS,
                "category": SCALARS,
                "layers": st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
                "type": SCALARS,
                "when": st.dictionaries(
                    st.sampled_from(["arch", "experts", "gqa", "imatrix", "row_multiple_of", "bogus"]),
                    SCALARS,
                    max_size=3,
                ),
            },
        ),
        max_size=4,
    )
)
def test_arbitrary_rules(rules: list[dict[str, Any]]) -> None:
    _check(json.dumps({"recipe": 1, "base": "q4_K", "rules": rules}) + "\n")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    _check("recipe: 1\nbase: q4_K\nrules: " + "[" * 3000 + "]" * 3000 + "\n")
    _check('{"recipe": 1, "rules": ' + "[" * 3000 + "]" * 3000 + "}\n")
    _, diags = check_recipe("recipe: 1\nrules: " + "[" * 100 + "]" * 100 + "\n", file="deep.yaml")
    assert [d.format() for d in diags] == [
        "deep.yaml:2:72: error[R003]: nested too deeply (more than 64 levels)"
    ]
