"""Checks of a validated recipe that need no model: type names, regexes, layer selectors, condition
comparisons, metadata values."""

from __future__ import annotations

import math
import re
import warnings
from typing import TYPE_CHECKING

from ..diagnostics import Diagnostic
from .model import Condition
from .selectors import SelectorError, parse_selector
from .source_map import PathKey, describe_value
from .typenames import TypeNameError, parse_type_name

if TYPE_CHECKING:
    from .loader import LoadedRecipe

_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<|=)?\s*(-?\d+)\s*$")


def parse_comparison(value: int | str) -> tuple[str, int]:
    """``8`` -> ("==", 8); ``">= 4"`` -> (">=", 4). Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"found {value!r}, expected an integer or a comparison like '>= 4'")
    if isinstance(value, int):
        return "==", value
    m = _COMPARISON.match(value)
    if not m:
        raise ValueError(
            f"invalid comparison '{value}', expected an integer or '>= N', '> N', '<= N', '< N', '== N', '!= N'"
        )
    op = m.group(1) or "=="
    return ("==" if op == "=" else op), int(m.group(2))


def _check_regex(lr: LoadedRecipe, path: PathKey, pattern: str, diags: list[Diagnostic]) -> None:
    from .patterns import pattern_problems

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pattern_problems reports them
            re.compile(pattern)
        for pr in pattern_problems(pattern):
            diags.append(
                lr.diagnostic(
                    path, pr.message, severity=pr.severity, hint=pr.hint, index=pr.index, code="R106"
                )
            )
    except re.error as exc:
        pos = exc.pos if exc.pos is not None else 0
        diags.append(
            lr.diagnostic(
                path,
                f"invalid regex '{pattern}': {exc.msg} at position {pos}",
                index=pos,
                hint="regexes are Python 're' syntax, searched in the full tensor name (escape dots: 'ffn_down\\.weight')",
                code="R105",
            )
        )
    except (RecursionError, OverflowError, ValueError) as exc:  # pathological patterns
        diags.append(lr.diagnostic(path, f"invalid regex '{pattern}': {exc}", code="R105"))


def _check_type(
    lr: LoadedRecipe, path: PathKey, name: str, allow_keep: bool, diags: list[Diagnostic]
) -> None:
    try:
        parse_type_name(name, allow_keep=allow_keep)
    except TypeNameError as exc:
        diags.append(lr.diagnostic(path, exc.message, hint=exc.hint, code="R104"))


def _check_condition(lr: LoadedRecipe, path: PathKey, cond: Condition, diags: list[Diagnostic]) -> None:
    for name in ("layers", "experts", "gqa", "dims"):
        v = getattr(cond, name)
        if v is None:
            continue
        try:
            parse_comparison(v)
        except ValueError as exc:
            diags.append(
                lr.diagnostic(
                    (*path, name), str(exc), hint="write e.g. 8, '>= 4', '< 8' or '!= 1'", code="R108"
                )
            )
    rm = cond.row_multiple_of
    if isinstance(rm, bool):
        pass
    elif isinstance(rm, int):
        if rm < 1:
            diags.append(
                lr.diagnostic(
                    (*path, "row_multiple_of"), f"row_multiple_of must be at least 1, found {rm}", code="R108"
                )
            )
    elif isinstance(rm, str) and rm.lower() != "base":
        try:
            parse_type_name(rm)
        except TypeNameError as exc:
            diags.append(lr.diagnostic((*path, "row_multiple_of"), exc.message, hint=exc.hint, code="R104"))
    if cond.any:
        for i, c in enumerate(cond.any):
            _check_condition(lr, (*path, "any", i), c, diags)
    if cond.not_ is not None:
        _check_condition(lr, (*path, "not"), cond.not_, diags)


def check_semantics(lr: LoadedRecipe) -> list[Diagnostic]:
    r = lr.recipe
    diags: list[Diagnostic] = []
    if r.base is not None:
        _check_type(lr, ("base",), r.base, False, diags)
    for name in ("token_embedding", "output"):
        v = getattr(r, name)
        if v is not None:
            _check_type(lr, (name,), v, True, diags)
    for i, rule in enumerate(r.rules):
        p: PathKey = ("rules", i)
        _check_type(lr, (*p, "type"), rule.type, True, diags)
        if rule.match is not None:
            _check_regex(lr, (*p, "match"), rule.match, diags)
        if (items := rule.layer_selectors) is not None:
            is_list = isinstance(rule.layers, list)
            for k, s in enumerate(items):
                sp: PathKey = (*p, "layers", k) if is_list else (*p, "layers")
                try:
                    parse_selector(s)
                except SelectorError as exc:
                    diags.append(
                        lr.diagnostic(
                            sp,
                            f"invalid layer selector '{exc.text}': {exc.message}",
                            index=exc.pos if isinstance(s, str) else None,
                            hint=exc.hint,
                            code="R107",
                        )
                    )
        if rule.when is not None:
            _check_condition(lr, (*p, "when"), rule.when, diags)
    if r.imatrix is not None:
        for key_name, pats in (("include", r.imatrix.include), ("exclude", r.imatrix.exclude)):
            for j, pat in enumerate(pats):
                _check_regex(lr, ("imatrix", key_name, j), pat, diags)
        if r.imatrix.include and r.imatrix.exclude:
            diags.append(
                lr.diagnostic(
                    ("imatrix", "exclude"),
                    "'imatrix.include' and 'imatrix.exclude' cannot be used together (as in llama-quantize)",
                    key=True,
                    code="R103",
                )
            )
    for j, layer in enumerate(r.prune_layers):
        if layer < 0:
            diags.append(
                lr.diagnostic(
                    ("prune_layers", j),
                    f"invalid layer {layer} in prune_layers, expected a block number >= 0",
                    code="R103",
                )
            )
    # from the header module, not the executor package: planning imports none of the executor
    from ..model.header import RESERVED_KEYS, RESERVED_PREFIXES

    for key, mv in r.metadata.items():
        if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
            diags.append(
                lr.diagnostic(
                    ("metadata", key),
                    f"metadata '{key}': this key describes the file's layout or its provenance and is "
                    "written by gguf-recipe itself; it cannot be set",
                    key=True,
                    code="R109",
                )
            )
            continue
        kinds = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}[mv.type]
        ok = isinstance(mv.value, kinds) and not (mv.type in ("int", "float") and isinstance(mv.value, bool))
        if not ok:
            diags.append(
                lr.diagnostic(
                    ("metadata", key, "value"),
                    f"metadata '{key}': found {describe_value(mv.value)}, expected a value of type {mv.type}",
                    code="R109",
                )
            )
        elif (
            isinstance(mv.value, int)
            and not isinstance(mv.value, bool)
            and not -(2**63) <= mv.value <= 2**64 - 1
        ):
            diags.append(
                lr.diagnostic(
                    ("metadata", key, "value"),
                    f"metadata '{key}': {mv.value} does not fit a GGUF integer (-2^63 .. 2^64-1)",
                    code="R109",
                )
            )
        elif isinstance(mv.value, float) and not math.isfinite(mv.value):
            diags.append(
                lr.diagnostic(
                    ("metadata", key, "value"),
                    f"metadata '{key}': {mv.value} is not a finite number (NaN and infinities cannot be written)",
                    code="R109",
                )
            )
        if len(key) >= 128:
            diags.append(
                lr.diagnostic(
                    ("metadata", key),
                    f"metadata key '{key[:40]}...' is too long (llama.cpp keys are < 128 bytes)",
                    key=True,
                    code="R109",
                )
            )
    return diags
