"""Built-in recipes: ``llama.cpp/Q4_K_M`` and friends.

The one copy lives at the repository's top, ``recipes/llama.cpp/*.yaml``; the package's
``builtin_recipes`` is a symbolic link to it, which setuptools follows when it builds a wheel (so an
installed wheel holds the files as package data).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import GGUFRecipeError

BUILTIN_DIR = (Path(__file__).resolve().parent / "builtin_recipes").resolve()


class RecipeNotFoundError(GGUFRecipeError, FileNotFoundError):
    pass


def _regular(path: Path) -> Path:
    """``path`` when it is a regular file; a folder, FIFO, device or link loop is refused by name."""
    from .inputs import InputFileError, check_input_file

    try:
        return check_input_file(path, "recipe")
    except InputFileError as exc:
        raise RecipeNotFoundError(str(exc)) from None


def builtin_names() -> list[str]:
    """Every built-in recipe name, e.g. ``llama.cpp/Q4_K_M``."""
    out: list[str] = []
    for p in sorted(BUILTIN_DIR.glob("*/*.yaml")):
        out.append(f"{p.parent.name}/{p.stem}")
    return out


def is_builtin_name(name: str) -> bool:
    return (BUILTIN_DIR / f"{name}.yaml").is_file() and "/" in name and not name.startswith((".", "/"))


def resolve(name_or_path: str | Path, *, relative_to: str | Path | None = None) -> Path:
    """The file of a recipe: a built-in name (``llama.cpp/Q4_K_M``, case-insensitive for the type part)
    or a path (relative to ``relative_to``'s directory when given, else to the working directory)."""
    text = str(name_or_path)
    if relative_to is not None:
        cand = Path(relative_to).parent / text
        if os.path.lexists(cand):
            return _regular(cand)
    cand = Path(text)
    if os.path.lexists(cand):
        return _regular(cand)
    builtin = _builtin(text)
    if builtin is not None:
        return builtin
    raise RecipeNotFoundError(
        f"recipe '{text}' not found (neither a file nor a built-in recipe){_hint(text)}"
    )


def _hint(text: str) -> str:
    """What the user probably meant: the built-in mix of that name, a close built-in name, or the list."""
    from .diagnostics import close_matches

    if text.endswith((".yaml", ".yml", ".json")):
        return ""
    if "/" not in text:
        named = [n for n in builtin_names() if n.rsplit("/", 1)[1].upper() == text.upper()]
        return f"; did you mean '{named[0]}'?" if named else ""
    family, _, mix = text.partition("/")
    mixes = {n.partition("/")[2]: n for n in builtin_names() if n.partition("/")[0] == family}
    close = [mixes[m] for m in close_matches(mix, mixes)]
    if not close:
        return "; built-in recipes are: " + ", ".join(builtin_names())
    return (
        "; did you mean " + ("one of " if len(close) > 1 else "") + ", ".join(f"'{n}'" for n in close) + "?"
    )


def _builtin(text: str) -> Path | None:
    name = text.removesuffix(".yaml")
    if "/" not in name:
        return None
    family, _, mix = name.partition("/")
    fam_dir = BUILTIN_DIR / family
    if not fam_dir.is_dir() or "/" in mix or not mix:
        return None
    exact = fam_dir / f"{mix}.yaml"
    if exact.is_file():
        return exact
    for p in fam_dir.glob("*.yaml"):
        if p.stem.lower() == mix.lower():
            return p
    return None
