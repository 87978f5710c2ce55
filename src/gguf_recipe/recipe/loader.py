"""Load a recipe (YAML or JSON) keeping the line and column of every key and value.

``load_recipe(path_or_text)`` returns the validated :class:`~gguf_recipe.recipe.model.Recipe` or raises
:class:`~gguf_recipe.diagnostics.RecipeError` whose diagnostics name file:line:col, what was found and
what was expected. ``load(path_or_text)`` returns a :class:`LoadedRecipe` that also keeps the source
map, so that later stages (the compiler, the linter) can point at the rule they complain about.

Checks done here (they need no model): YAML/JSON syntax, unknown and missing keys, value kinds, type
names (close matches; ik_llama.cpp-only types), regexes (with the position inside the pattern), layer
selector syntax, condition comparisons, metadata value kinds.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from ..diagnostics import Diagnostic, RecipeError, Severity, close_matches, sort_diagnostics
from .model import RECIPE_SCHEMA_VERSION, Condition, ImatrixSettings, MetadataValue, Recipe, Rule
from .selectors import SelectorError, parse_selector
from .typenames import TypeNameError, parse_type_name

__all__ = [
    "LoadedRecipe",
    "Pos",
    "SourceMap",
    "check_recipe",
    "load",
    "load_recipe",
    "parse_comparison",
]

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Pos:
    """1-based line and column; ``style`` is the scalar style (``plain``, ``'``, ``"``, ``block``)."""

    line: int
    col: int
    style: str = "plain"
    offset: int = -1  # 0-based character offset of the scalar in the text, -1 when unknown


@dataclass
class SourceMap:
    """Where each key and value of the document is. Paths are tuples like ``("rules", 2, "type")``."""

    text: str = ""
    values: dict[PathKey, Pos] = field(default_factory=dict)
    keys: dict[PathKey, Pos] = field(default_factory=dict)

    def value(self, path: Sequence[str | int]) -> Pos | None:
        """The position of the value at ``path``, or of its closest recorded parent."""
        p = tuple(path)
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), Pos(1, 1))

    def key(self, path: Sequence[str | int]) -> Pos | None:
        p = tuple(path)
        if p in self.keys:
            return self.keys[p]
        return self.value(p)

    def inside(self, path: Sequence[str | int], index: int) -> Pos | None:
        """The position of character ``index`` of the string value at ``path`` (for regexes, selectors)."""
        pos = self.value(path)
        if pos is None or tuple(path) not in self.values:
            return pos
        if pos.style == "block" or pos.offset < 0:
            return pos
        raw = _raw_index(self.text, pos.offset, pos.style, index)
        if raw is None:
            return pos
        # the scalar is on one line unless it is folded; count newlines to be safe
        chunk = self.text[pos.offset : raw]
        if "\n" in chunk:
            line = pos.line + chunk.count("\n")
            col = raw - (self.text.rfind("\n", 0, raw) + 1) + 1
        else:
            line, col = pos.line, pos.col + (raw - pos.offset)
        return Pos(line, col, pos.style, raw)


def _raw_index(text: str, start: int, style: str, index: int) -> int | None:
    """Map index ``index`` of a scalar's decoded value to its offset in the raw text."""
    if style == "plain":
        return start + index
    i = start + 1  # the opening quote
    k = 0
    n = len(text)
    while i < n:
        if k == index:
            return i
        c = text[i]
        if style == "'":
            if c == "'":
                if i + 1 < n and text[i + 1] == "'":
                    i += 2
                    k += 1
                    continue
                return None
            i += 1
        else:
            if c == '"':
                return None
            if c == "\\" and i + 1 < n:
                e = text[i + 1]
                i += {"x": 4, "u": 6, "U": 10}.get(e, 2)
            else:
                i += 1
        k += 1
    return None


@dataclass
class LoadedRecipe:
    """A validated recipe with where it came from."""

    recipe: Recipe
    text: str
    file: str | None
    source: SourceMap
    base_dir: Path | None = None
    data: Any = None

    @property
    def display_name(self) -> str:
        return self.file or "<recipe>"

    def diagnostic(
        self,
        path: Sequence[str | int],
        message: str,
        *,
        severity: str = "error",
        hint: str | None = None,
        key: bool = False,
        index: int | None = None,
    ) -> Diagnostic:
        """A diagnostic located at the value (or key) at ``path``; ``index`` points inside a string value."""
        if index is not None:
            pos = self.source.inside(path, index)
        elif key:
            pos = self.source.key(path)
        else:
            pos = self.source.value(path)
        sev: Severity = "warning" if severity == "warning" else "error"
        return Diagnostic(
            message,
            sev,
            self.file,
            pos.line if pos else None,
            pos.col if pos else None,
            hint,
        )

    def rule_diagnostic(
        self, rule_index: int, message: str, *, severity: str = "warning", hint: str | None = None
    ) -> Diagnostic:
        """A diagnostic at rule ``rule_index`` (0-based) of this recipe's own ``rules`` list."""
        path: tuple[str | int, ...] = ("rules", rule_index)
        for k in ("match", "category"):
            if ("rules", rule_index, k) in self.source.values:
                path = ("rules", rule_index, k)
                break
        return self.diagnostic(path, message, severity=severity, hint=hint)


# --------------------------------------------------------------------------------------------------
# reading text into plain Python data + a source map


def _read_source(path_or_text: str | Path, file: str | None) -> tuple[str, str | None, Path | None]:
    if isinstance(path_or_text, Path):
        p = path_or_text
    elif (
        path_or_text.strip()
        and "\n" not in path_or_text
        and not path_or_text.lstrip().startswith(("{", "recipe:"))
        and (os.path.lexists(path_or_text) or path_or_text.endswith((".yaml", ".yml", ".json")))
    ):
        p = Path(path_or_text)
    else:
        builtin = _builtin_path(path_or_text)
        if builtin is None:
            return path_or_text, file, None
        p = builtin
        file = file or path_or_text
    name = file or str(p)
    from ..inputs import InputFileError, read_input_bytes

    try:
        text = read_input_bytes(p, max_bytes=MAX_RECIPE_BYTES).decode("utf-8")
    except InputFileError as exc:
        msg = str(exc).removeprefix(f"{p}: ")
        if msg.startswith("no such file"):
            msg = f"file not found: {p}"
        raise RecipeError(Diagnostic(msg, "error", name)) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            Diagnostic(f"file is not UTF-8 text ({exc.reason} at byte {exc.start})", "error", name)
        ) from None
    return text, name, p.resolve().parent


def _builtin_path(text: str) -> Path | None:
    """The file of a built-in recipe name such as ``llama.cpp/Q4_K_M`` (None for anything else)."""
    if "\n" in text or ":" in text or "/" not in text or len(text) > 200:
        return None
    from ..recipes import RecipeNotFoundError, resolve

    try:
        return resolve(text)
    except (RecipeNotFoundError, OSError, ValueError):
        return None


def _style_of(value: Any) -> str:
    if isinstance(value, DoubleQuotedScalarString):
        return '"'
    if isinstance(value, SingleQuotedScalarString):
        return "'"
    if isinstance(value, str) and type(value) is not str:
        return "block"
    return "plain"


def _line_offsets(text: str) -> list[int]:
    offs = [0]
    for i, c in enumerate(text):
        if c == "\n":
            offs.append(i + 1)
    return offs


# Recipes are small: a cap on the file and on the values it expands to (YAML aliases can make a
# few hundred bytes stand for billions of values) keeps loading fast whatever the input.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000


class _Converter:
    def __init__(self, text: str, file: str | None) -> None:
        self.text = text
        self.file = file
        self.smap = SourceMap(text)
        self.lines = _line_offsets(text)
        self.n_values = 0

    def pos(self, line0: int | None, col0: int | None, value: Any, parent: Pos | None = None) -> Pos:
        if line0 is None or col0 is None:  # a tagged or aliased value has no position of its own
            return parent or Pos(1, 1)
        style = _style_of(value)
        off = self.lines[line0] + col0 if line0 < len(self.lines) else -1
        if style == "plain" and isinstance(value, str) and off >= 0 and off < len(self.text):
            # a JSON document parsed as YAML: strings are double-quoted but come back as plain str
            if self.text[off] == '"':
                style = '"'
            elif self.text[off] == "'":
                style = "'"
        return Pos(line0 + 1, col0 + 1, style, off)

    def convert(self, node: Any, path: PathKey) -> Any:
        self.n_values += 1
        if self.n_values > MAX_RECIPE_VALUES:
            raise RecipeError(
                Diagnostic(
                    f"the recipe expands to more than {MAX_RECIPE_VALUES} values (YAML aliases "
                    "repeating aliases?); recipes are small: write it out without nested aliases",
                    "error",
                    self.file,
                )
            )
        tag = getattr(getattr(node, "tag", None), "value", None)
        if isinstance(node, bytes):
            tag = "tag:yaml.org,2002:binary"
        elif isinstance(node, (set, CommentedSet)):
            tag = "tag:yaml.org,2002:set"
        if isinstance(tag, str) and tag:
            pos = self.smap.values.get(path) or Pos(1, 1)
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise RecipeError(
                Diagnostic(
                    f"YAML tag '{shown}' is not allowed in a recipe (recipes hold plain values)",
                    "error",
                    self.file,
                    pos.line,
                    pos.col,
                )
            )
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for k in node:
                kpos = node.lc.key(k) or (None, None)
                if not isinstance(k, str):
                    raise RecipeError(
                        Diagnostic(
                            f"found key {k!r} ({_kind(k)}), expected a string key",
                            "error",
                            self.file,
                            kpos[0] + 1 if kpos[0] is not None else None,
                            kpos[1] + 1 if kpos[1] is not None else None,
                        )
                    )
                key = str(k)
                sub = (*path, key)
                here = self.smap.values.get(path)
                self.smap.keys[sub] = (
                    Pos(kpos[0] + 1, kpos[1] + 1)
                    if kpos[0] is not None and kpos[1] is not None
                    else (here or Pos(1, 1))
                )
                vpos = node.lc.value(k) or (None, None)
                v = node[k]
                self.smap.values[sub] = self.pos(vpos[0], vpos[1], v, self.smap.keys[sub])
                out[key] = self.convert(v, sub)
            return out
        if isinstance(node, CommentedSeq):
            items: list[Any] = []
            for i, v in enumerate(node):
                ipos = node.lc.item(i) or (None, None)
                sub = (*path, i)
                self.smap.values[sub] = self.pos(ipos[0], ipos[1], v, self.smap.values.get(path))
                items.append(self.convert(v, sub))
            return items
        if isinstance(node, bool):
            return bool(node)
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            return str(node)
        if node is None:
            return None
        # timestamps, binary, tagged values: keep a readable form, validation will reject them
        return _Opaque(node)


class _Opaque:
    """A YAML value of a kind recipes never use (a date, a tagged value): validation reports it."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def __repr__(self) -> str:
        return repr(str(self.node))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, _Opaque):
        return f"a {type(v.node).__name__} value"
    return f"a {type(v).__name__}"


def _describe(v: Any) -> str:
    """What was found, for messages: ``'q4_km'``, ``the integer 3``, ``a mapping``."""
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:57] + "..."
        return f"'{s}'"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{_kind(v)} {v!r}"
    return _kind(v)


MAX_DEPTH = 64


def _check_depth(text: str, file: str | None) -> None:
    """Refuse absurdly nested flow collections before the (slow, recursive) YAML parser sees them."""
    depth = 0
    quote = ""
    line, col = 1, 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        col += 1
        if c == "\n":
            line, col = line + 1, 0
            if quote == "'":
                pass
        elif quote:
            if c == "\\" and quote == '"':
                i += 1
                col += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise RecipeError(
                    Diagnostic(f"nested too deeply (more than {MAX_DEPTH} levels)", "error", file, line, col)
                )
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1


def _parse_text(text: str, file: str | None) -> tuple[Any, SourceMap]:
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(
            Diagnostic(
                f"{len(text)} characters is more than the {MAX_RECIPE_BYTES} a recipe may have", "error", file
            )
        )
    _check_depth(text, file)
    is_json = (file is not None and file.lower().endswith(".json")) or text.lstrip().startswith(("{", "["))
    if is_json:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(
                Diagnostic(f"invalid JSON: {exc.msg}", "error", file, exc.lineno, exc.colno)
            ) from None
        except RecursionError:
            raise RecipeError(Diagnostic("invalid JSON: nested too deeply", "error", file)) from None
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ruamel's ReusedAnchorWarning etc.: not the user's concern here
            node = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if "found duplicate key" in str(problem) or type(exc).__name__ == "DuplicateKeyError":
            m = re.search(r'found duplicate key "(.*?)"', str(exc))
            problem = f"duplicate key '{m.group(1)}'" if m else "duplicate key"
        msg = f"invalid {'JSON' if is_json else 'YAML'}: {problem}"
        raise RecipeError(
            Diagnostic(msg, "error", file, mark.line + 1 if mark else None, mark.column + 1 if mark else None)
        ) from None
    except YAMLError as exc:
        raise RecipeError(Diagnostic(f"invalid YAML: {exc}", "error", file)) from None
    except RecursionError:
        raise RecipeError(Diagnostic("invalid YAML: nested too deeply", "error", file)) from None
    conv = _Converter(text, file)
    conv.smap.values[()] = Pos(1, 1)
    try:
        data = conv.convert(node, ())
    except RecursionError:
        raise RecipeError(Diagnostic("recipe is nested too deeply", "error", file)) from None
    return data, conv.smap


# --------------------------------------------------------------------------------------------------
# pydantic errors -> diagnostics


_WHAT = {
    Recipe: "recipe",
    Rule: "rule",
    Condition: "'when' condition",
    ImatrixSettings: "'imatrix' settings",
    MetadataValue: "metadata value",
}


def _model_for(path: PathKey) -> type[BaseModel] | None:
    """Which model describes the mapping at ``path`` (a data path, with list indices)."""
    names = [p for p in path if isinstance(p, str)]
    model: type[BaseModel] = Recipe
    i = 0
    while i < len(names):
        n = names[i]
        if model is Recipe and n == "rules":
            model = Rule
        elif model is Recipe and n == "imatrix":
            model = ImatrixSettings
        elif model is Recipe and n == "metadata":
            if i + 1 >= len(names):
                return None
            model = MetadataValue
            i += 1
        elif model in (Rule, Condition) and n in ("when", "any", "not"):
            model = Condition
        else:
            return None
        i += 1
    return model


def _field_names(model: type[BaseModel]) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        out.append(f.alias or name)
    return out


def _resolve_loc(data: Any, loc: Sequence[Any]) -> tuple[PathKey, Any, bool]:
    """Follow a pydantic ``loc`` through the data, skipping union tags. Returns (path, value, complete)."""
    cur = data
    path: list[str | int] = []
    for comp in loc:
        step: str | int | None = None
        if isinstance(cur, dict) and isinstance(comp, str):
            if comp in cur:
                step = comp
            elif comp.endswith("not_") and "not" in cur:
                step = "not"
        elif isinstance(cur, list) and isinstance(comp, int) and 0 <= comp < len(cur):
            step = comp
        if step is not None:
            cur = cur[step]
            path.append(step)
    return tuple(path), cur, True


_KIND_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _validation_diagnostics(exc: ValidationError, data: Any, lr: LoadedRecipe) -> list[Diagnostic]:
    by_path: dict[PathKey, list[Any]] = {}
    order: list[PathKey] = []
    for err in exc.errors(include_url=False):
        path, _, _ = _resolve_loc(data, err["loc"])
        if err["type"] == "extra_forbidden":
            path = (*path, "\0extra")
        elif err["type"] == "missing":
            path = (*path, "\0missing", str(err["loc"][-1]))
        if path not in by_path:
            by_path[path] = []
            order.append(path)
        by_path[path].append(err)
    out: list[Diagnostic] = []
    for path in order:
        errs = by_path[path]
        if path and path[-1] == "\0extra":
            real = path[:-1]
            key = real[-1]
            model = _model_for(real[:-1])
            what = _WHAT.get(model, "mapping") if model else "mapping"
            allowed = _field_names(model) if model else []
            found = close_matches(str(key), allowed)
            hint = (
                f"did you mean '{found[0]}'?"
                if found
                else ("expected one of: " + ", ".join(allowed) if allowed else None)
            )
            out.append(lr.diagnostic(real, f"unknown key '{key}' in {what}", key=True, hint=hint))
            continue
        if len(path) >= 2 and path[-2] == "\0missing":
            real = path[:-2]
            name = str(path[-1])
            model = _model_for(real)
            what = _WHAT.get(model, "mapping") if model else "mapping"
            hint = None
            if model is Recipe and name == "recipe":
                hint = f"add 'recipe: {RECIPE_SCHEMA_VERSION}' (the schema version) at the top"
            elif model is Rule and name == "type":
                hint = "add e.g. 'type: q4_K' (or 'type: keep')"
            out.append(lr.diagnostic(real, f"missing key '{name}' in {what}", hint=hint))
            continue
        value = _resolve_loc(data, errs[0]["loc"])[1]
        types = {e["type"] for e in errs}
        if "value_error" in types or "assertion_error" in types:
            e = next(e for e in errs if e["type"] in ("value_error", "assertion_error"))
            msg = str(e["msg"])
            for prefix in ("Value error, ", "Assertion failed, "):
                if msg.startswith(prefix):
                    msg = msg[len(prefix) :]
            if path == () and isinstance(data, dict) and "exactly one of 'base'" in msg:
                if "base" in data and "extends" in data:
                    second = max(("base", "extends"), key=lambda k: (lr.source.key((k,)) or Pos(0, 0)).line)
                    msg = "found both 'base' and 'extends', expected exactly one of them"
                    out.append(
                        lr.diagnostic(
                            (second,),
                            msg,
                            key=True,
                            hint="a recipe either starts from a type ('base') or from another recipe ('extends')",
                        )
                    )
                else:
                    out.append(
                        lr.diagnostic(
                            (),
                            "missing key 'base' or 'extends' in recipe",
                            hint="add e.g. 'base: q4_K' or 'extends: llama.cpp/Q4_K_M'",
                        )
                    )
                continue
            out.append(lr.diagnostic(path, msg))
            continue
        if "literal_error" in types:
            e = next(e for e in errs if e["type"] == "literal_error")
            expected = e.get("ctx", {}).get("expected", "")
            found_choices: list[tuple[str, str]] = re.findall(r"'([^']*)'|(\d+)", str(expected))
            choices = [a or b for a, b in found_choices]
            field_name = next((p for p in reversed(path) if isinstance(p, str)), "value")
            if field_name == "recipe" and path == ("recipe",):
                out.append(
                    lr.diagnostic(
                        path,
                        f"unsupported recipe schema version {value if isinstance(value, int) and not isinstance(value, bool) else _describe(value)}, expected {RECIPE_SCHEMA_VERSION}",
                        hint=f"write 'recipe: {RECIPE_SCHEMA_VERSION}'",
                    )
                )
                continue
            found = close_matches(str(value), choices) if isinstance(value, str) else []
            hint = f"did you mean '{found[0]}'?" if found else None
            out.append(
                lr.diagnostic(
                    path,
                    f"invalid {field_name} {_describe(value)}, expected one of: " + ", ".join(choices),
                    hint=hint,
                )
            )
            continue
        expected_kinds: list[str] = []
        for e in errs:
            w = _KIND_WORDS.get(e["type"])
            if w and w not in expected_kinds:
                expected_kinds.append(w)
        if expected_kinds:
            exp = " or ".join(expected_kinds)
            out.append(lr.diagnostic(path, f"found {_describe(value)}, expected {exp}"))
            continue
        out.append(lr.diagnostic(path, str(errs[0]["msg"])))
    return out


# --------------------------------------------------------------------------------------------------
# semantic checks that need no model

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
            diags.append(lr.diagnostic(path, pr.message, severity=pr.severity, hint=pr.hint, index=pr.index))
    except re.error as exc:
        pos = exc.pos if exc.pos is not None else 0
        diags.append(
            lr.diagnostic(
                path,
                f"invalid regex '{pattern}': {exc.msg} at position {pos}",
                index=pos,
                hint="regexes are Python 're' syntax, searched in the full tensor name (escape dots: 'ffn_down\\.weight')",
            )
        )
    except (RecursionError, OverflowError, ValueError) as exc:  # pathological patterns
        diags.append(lr.diagnostic(path, f"invalid regex '{pattern}': {exc}"))


def _check_type(
    lr: LoadedRecipe, path: PathKey, name: str, allow_keep: bool, diags: list[Diagnostic]
) -> None:
    try:
        parse_type_name(name, allow_keep=allow_keep)
    except TypeNameError as exc:
        diags.append(lr.diagnostic(path, exc.message, hint=exc.hint))


def _check_condition(lr: LoadedRecipe, path: PathKey, cond: Condition, diags: list[Diagnostic]) -> None:
    for name in ("layers", "experts", "gqa", "dims"):
        v = getattr(cond, name)
        if v is None:
            continue
        try:
            parse_comparison(v)
        except ValueError as exc:
            diags.append(lr.diagnostic((*path, name), str(exc), hint="write e.g. 8, '>= 4', '< 8' or '!= 1'"))
    rm = cond.row_multiple_of
    if isinstance(rm, bool):
        pass
    elif isinstance(rm, int):
        if rm < 1:
            diags.append(
                lr.diagnostic((*path, "row_multiple_of"), f"row_multiple_of must be at least 1, found {rm}")
            )
    elif isinstance(rm, str) and rm.lower() != "base":
        try:
            parse_type_name(rm)
        except TypeNameError as exc:
            diags.append(lr.diagnostic((*path, "row_multiple_of"), exc.message, hint=exc.hint))
    if cond.any:
        for i, c in enumerate(cond.any):
            _check_condition(lr, (*path, "any", i), c, diags)
    if cond.not_ is not None:
        _check_condition(lr, (*path, "not"), cond.not_, diags)


def _check_semantics(lr: LoadedRecipe) -> list[Diagnostic]:
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
        if rule.layers is not None:
            items = rule.layers if isinstance(rule.layers, list) else [rule.layers]
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
                )
            )
    for j, layer in enumerate(r.prune_layers):
        if layer < 0:
            diags.append(
                lr.diagnostic(
                    ("prune_layers", j),
                    f"invalid layer {layer} in prune_layers, expected a block number >= 0",
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
                )
            )
            continue
        kinds = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}[mv.type]
        ok = isinstance(mv.value, kinds) and not (mv.type in ("int", "float") and isinstance(mv.value, bool))
        if not ok:
            diags.append(
                lr.diagnostic(
                    ("metadata", key, "value"),
                    f"metadata '{key}': found {_describe(mv.value)}, expected a value of type {mv.type}",
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
                )
            )
        elif isinstance(mv.value, float) and not math.isfinite(mv.value):
            diags.append(
                lr.diagnostic(
                    ("metadata", key, "value"),
                    f"metadata '{key}': {mv.value} is not a finite number (NaN and infinities cannot be written)",
                )
            )
        if len(key) >= 128:
            diags.append(
                lr.diagnostic(
                    ("metadata", key),
                    f"metadata key '{key[:40]}...' is too long (llama.cpp keys are < 128 bytes)",
                    key=True,
                )
            )
    return diags


# --------------------------------------------------------------------------------------------------
# public entry points


def load(path_or_text: str | Path, *, file: str | None = None) -> LoadedRecipe:
    """Load and validate; raises :class:`RecipeError` with every error found."""
    lr, diags = _load(path_or_text, file=file)
    errors = [d for d in diags if d.is_error]
    if errors or lr is None:
        raise RecipeError(errors or [Diagnostic("cannot load recipe", "error", file)])
    return lr


def check_recipe(
    path_or_text: str | Path, *, file: str | None = None
) -> tuple[LoadedRecipe | None, list[Diagnostic]]:
    """Load without raising: the recipe (None when it does not validate) and every diagnostic."""
    try:
        return _load(path_or_text, file=file)
    except RecipeError as exc:
        return None, exc.diagnostics


def load_recipe(path_or_text: str | Path) -> Recipe:
    """The validated recipe (``extends`` is not resolved here: the compiler does that)."""
    return load(path_or_text).recipe


def _load(
    path_or_text: str | Path, *, file: str | None = None
) -> tuple[LoadedRecipe | None, list[Diagnostic]]:
    text, name, base_dir = _read_source(path_or_text, file)
    data, smap = _parse_text(text, name)
    stub = LoadedRecipe.__new__(LoadedRecipe)
    stub.text, stub.file, stub.source, stub.base_dir, stub.data = text, name, smap, base_dir, data
    if data is None:
        return None, [
            Diagnostic(
                "empty recipe",
                "error",
                name,
                1,
                1,
                hint=f"a recipe starts with 'recipe: {RECIPE_SCHEMA_VERSION}' and has 'base: <type>' or 'extends: <recipe>'",
            )
        ]
    if not isinstance(data, dict):
        return None, [
            Diagnostic(
                f"found {_kind(data)}, expected a mapping (key: value lines) at the top level",
                "error",
                name,
                1,
                1,
            )
        ]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        return None, sort_diagnostics(_validation_diagnostics(exc, data, stub))
    lr = LoadedRecipe(recipe, text, name, smap, base_dir, data)
    return lr, sort_diagnostics(_check_semantics(lr))
