"""The compiler: a recipe (and what it extends) + a model header -> a frozen :class:`~gguf_recipe.plan.Plan`.

``compile_plan(recipe, model)`` is the public entry point used by the CLI and the executor.
"""

from __future__ import annotations

from pathlib import Path

from ..diagnostics import Diagnostic, RecipeError
from ..model.reader import ModelInfo, read_model
from ..recipe.patterns import PatternTimeout
from .engine import (
    CompileResult,
    LoadedRecipe,
    compile_chain,
    load_chain,
    merged_recipe,
    pattern_timeout_diagnostic,
)

__all__ = [
    "CompileResult",
    "LoadedRecipe",
    "RecipeError",
    "compile_model",
    "compile_plan",
    "load_recipe_chain",
    "merged_recipe",
]


_CACHE: dict[tuple[str, int, int], LoadedRecipe] = {}


def _loader(path: Path) -> LoadedRecipe:
    """Load one recipe file (cached on path, size and mtime: ruamel's pure-Python parser is slow)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _CACHE[key] = _load_file(path)
    return hit


def _load_file(path: Path) -> LoadedRecipe:
    from ..recipe.loader import load

    try:
        lr = load(path)
    except RecipeError as exc:
        raise RecipeError(list(exc.diagnostics)) from None

    def locate(p: tuple[str | int, ...]) -> tuple[int | None, int | None]:
        pos = lr.source.value(p)
        return (pos.line, pos.col) if pos else (None, None)

    return LoadedRecipe(recipe=lr.recipe, text=lr.text, source=_display(path), locate=locate)


def _display(path: Path) -> str:
    from ..recipes import BUILTIN_DIR

    try:
        rel = path.resolve().relative_to(BUILTIN_DIR)
        return str(rel.with_suffix(""))
    except ValueError:
        return str(path)


def load_recipe_chain(recipe_source: str | Path) -> list[LoadedRecipe]:
    """The recipe and every recipe it extends, child first."""
    text = str(recipe_source)
    if isinstance(recipe_source, str) and "\n" in text:
        from ..recipe.loader import load

        try:
            lr = load(text)
        except RecipeError as exc:
            raise RecipeError(list(exc.diagnostics)) from None
        first = LoadedRecipe(recipe=lr.recipe, text=lr.text, source="<recipe>")
        if lr.recipe.extends is None:
            return [first]
        return [first, *load_chain(lr.recipe.extends, _loader)]
    return load_chain(recipe_source, _loader)


def _imatrix_info(imatrix: str | Path | bool | None) -> tuple[bool, str | None, set[str] | None]:
    if imatrix is None or imatrix is False:
        return False, None, None
    if imatrix is True:
        return True, None, None
    from ..inputs import InputFileError, check_input_file

    p = Path(imatrix)
    try:
        check_input_file(p, "the imatrix")
    except InputFileError as exc:
        raise RecipeError([Diagnostic(str(exc), "error", str(p), code="C206")]) from None
    try:  # read (and so checked) before it is hashed: a wrong file fails at once
        from ..executor.imatrix import load_imatrix

        im = load_imatrix(p)
    except Exception as exc:
        raise RecipeError(
            [Diagnostic(f"cannot read the imatrix: {exc}", "error", str(p), code="C206")]
        ) from None
    return True, im.fingerprint, set(im.entries)


def compile_model(
    recipe_source: str | Path,
    model: ModelInfo,
    *,
    imatrix: str | Path | bool | None = None,
    strict_fallbacks: bool = False,
    lint: bool = True,
) -> CompileResult:
    """Like :func:`compile_plan` with an already-read model header. ``lint``: also run the recipe
    warnings that need the model (:func:`gguf_recipe.compiler.lint.lint_recipe`)."""
    chain = load_recipe_chain(recipe_source)
    has_im, im_fp, im_names = _imatrix_info(imatrix)
    result = compile_chain(
        chain,
        model,
        imatrix=has_im,
        imatrix_fingerprint=im_fp,
        imatrix_names=im_names,
        strict_fallbacks=strict_fallbacks,
    )
    if lint:
        from .lint import lint_recipe

        try:
            found = lint_recipe(chain, model, result.plan, imatrix=has_im, source_path=recipe_source)
        except PatternTimeout as exc:
            found = [pattern_timeout_diagnostic(exc, chain)]
        if any(d.code == "L307" and d.is_error for d in found):
            # the linter names the rule; drop the compiler's whole-plan message
            result.diagnostics[:] = [d for d in result.diagnostics if d.code != "C201"]
        result.diagnostics.extend(found)
    return result


def compile_plan(
    recipe_source: str | Path,
    model_path: str | Path,
    *,
    imatrix: str | Path | bool | None = None,
    strict_fallbacks: bool = False,
) -> CompileResult:
    """Compile a recipe (a path, a built-in name such as ``llama.cpp/Q4_K_M``, or YAML text) against the
    header of a GGUF model (a file or any file of a ``-0000k-of-0000n`` split). ``imatrix``: a file, or
    True to plan as if one is given. Raises :class:`RecipeError` when the recipe cannot be compiled."""
    model = read_model(model_path)
    return compile_model(recipe_source, model, imatrix=imatrix, strict_fallbacks=strict_fallbacks)
