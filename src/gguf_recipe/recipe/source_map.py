"""The recipe text as plain Python data plus a source map: the line and column of every key and value
(YAML through ruamel.yaml's round-trip loader, JSON through the json module), with limits that keep
hostile input cheap."""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, CommentedSet
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from ..diagnostics import Diagnostic, RecipeError

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
                    code="R003",
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
                    code="R103",
                )
            )
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for k in node:
                kpos = node.lc.key(k) or (None, None)
                if not isinstance(k, str):
                    raise RecipeError(
                        Diagnostic(
                            f"found key {k!r} ({kind_of(k)}), expected a string key",
                            "error",
                            self.file,
                            kpos[0] + 1 if kpos[0] is not None else None,
                            kpos[1] + 1 if kpos[1] is not None else None,
                            code="R103",
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


def kind_of(v: Any) -> str:
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


def describe_value(v: Any) -> str:
    """What was found, for messages: ``'q4_km'``, ``the integer 3``, ``a mapping``."""
    if isinstance(v, str):
        s = v if len(v) <= 60 else v[:57] + "..."
        return f"'{s}'"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{kind_of(v)} {v!r}"
    return kind_of(v)


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
                    Diagnostic(
                        f"nested too deeply (more than {MAX_DEPTH} levels)",
                        "error",
                        file,
                        line,
                        col,
                        code="R003",
                    )
                )
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1


def parse_text(text: str, file: str | None) -> tuple[Any, SourceMap]:
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(
            Diagnostic(
                f"{len(text)} characters is more than the {MAX_RECIPE_BYTES} a recipe may have",
                "error",
                file,
                code="R001",
            )
        )
    _check_depth(text, file)
    is_json = (file is not None and file.lower().endswith(".json")) or text.lstrip().startswith(("{", "["))
    if is_json:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(
                Diagnostic(f"invalid JSON: {exc.msg}", "error", file, exc.lineno, exc.colno, code="R002")
            ) from None
        except RecursionError:
            raise RecipeError(
                Diagnostic("invalid JSON: nested too deeply", "error", file, code="R003")
            ) from None
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
            Diagnostic(
                msg,
                "error",
                file,
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
                code="R002",
            )
        ) from None
    except YAMLError as exc:
        raise RecipeError(Diagnostic(f"invalid YAML: {exc}", "error", file, code="R002")) from None
    except RecursionError:
        raise RecipeError(Diagnostic("invalid YAML: nested too deeply", "error", file, code="R003")) from None
    conv = _Converter(text, file)
    conv.smap.values[()] = Pos(1, 1)
    try:
        data = conv.convert(node, ())
    except RecursionError:
        raise RecipeError(Diagnostic("recipe is nested too deeply", "error", file, code="R003")) from None
    return data, conv.smap
