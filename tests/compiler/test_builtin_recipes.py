"""The built-in llama.cpp mixes: present for every ftype, valid, identical in both places."""

from __future__ import annotations

from pathlib import Path

import pytest

from gguf_recipe.recipe.loader import load
from gguf_recipe.recipes import BUILTIN_DIR, RecipeNotFoundError, builtin_names, resolve

REPO = Path(__file__).resolve().parents[2]
FTYPES = [
    "Q2_K",
    "Q2_K_S",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "IQ4_NL",
    "IQ4_XS",
    "TQ1_0",
    "TQ2_0",
    "MXFP4_MOE",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ3_XXS",
    "IQ3_XS",
    "IQ3_S",
    "IQ3_M",
    "IQ1_S",
    "IQ1_M",
    "F16",
    "BF16",
]


def test_every_mix_is_built_in() -> None:
    assert sorted(builtin_names()) == sorted(f"llama.cpp/{f}" for f in FTYPES)


def test_the_package_reads_the_one_copy_at_the_top() -> None:
    """recipes/ is the only copy: the package's builtin_recipes is a link to it."""
    assert (REPO / "recipes").resolve() == BUILTIN_DIR


@pytest.mark.parametrize("ftype", FTYPES)
def test_builtin_loads_cleanly(ftype: str) -> None:
    lr = load(resolve(f"llama.cpp/{ftype}"))
    assert lr.recipe.ftype == ftype
    assert lr.recipe.name == f"llama.cpp/{ftype}"


def test_resolve() -> None:
    assert resolve("llama.cpp/q4_k_m").name == "Q4_K_M.yaml"
    with pytest.raises(RecipeNotFoundError, match=r"built-in recipes are: llama\.cpp/BF16, "):
        resolve("llama.cpp/zzz")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("Q4_K_M", "did you mean 'llama.cpp/Q4_K_M'?"),
        ("q4_k_m", "did you mean 'llama.cpp/Q4_K_M'?"),
        ("llama.cpp/Q4_KM", "did you mean one of 'llama.cpp/Q4_K_M', "),
        ("llama.cpp/IQ4XS", "did you mean one of 'llama.cpp/IQ4_XS', "),
    ],
)
def test_not_found_suggests_the_built_in(text: str, hint: str) -> None:
    with pytest.raises(RecipeNotFoundError) as info:
        resolve(text)
    assert f"recipe '{text}' not found (neither a file nor a built-in recipe); {hint}" in str(info.value)


def test_a_missing_file_gets_no_suggestion() -> None:
    with pytest.raises(RecipeNotFoundError) as info:
        resolve("mine.yaml")
    assert str(info.value) == "recipe 'mine.yaml' not found (neither a file nor a built-in recipe)"
