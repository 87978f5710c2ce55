"""Write a tuned allocation as a recipe a person can read: a few rules per tensor family with layer
ranges, not one rule per tensor.

Tensors are grouped into families by their name without the block number (``blk.7.attn_v.weight``
→ ``attn_v.weight``). Families whose per-layer types are identical share one rule set (one regex
alternation). Within a set, the most common type is the set's default (one rule without layers, or
nothing when it equals the recipe's ``base``) and every other type gets one rule listing its layers
as ranges. A family that also has tensors the tuner must not touch (decided by the recipe it extends)
gets explicit layer lists only, so its defaults cannot reach those tensors.
"""

from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from ..llamacpp import block_number

__all__ = ["TensorChoice", "family_of", "layer_ranges", "tuned_rules", "write_recipe"]


@dataclass(frozen=True)
class TensorChoice:
    name: str
    type: str  # ggml spelling


def family_of(name: str) -> tuple[str, int | None]:
    """``blk.7.attn_v.weight`` → (``attn_v.weight``, 7); ``token_embd.weight`` → (itself, None)."""
    b = block_number(name)
    parts = name.split(".", 2)
    return (parts[2], b) if b is not None and len(parts) == 3 else (name, None)


def layer_ranges(layers: Sequence[int]) -> list[str | int]:
    """Sorted layer numbers as selectors: runs become ``'a..b'``, lone layers stay numbers."""
    out: list[str | int] = []
    xs = sorted(set(layers))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(xs[i] if i == j else f"{xs[i]}..{xs[j]}")
        i = j + 1
    return out


def _pattern(families: Sequence[str], layered: bool) -> str:
    alts = [re.escape(f) for f in families]
    body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return rf"^blk\.\d+\.{body}$" if layered else rf"^{body}$"


def tuned_rules(
    choices: Sequence[TensorChoice],
    *,
    base: str | None,
    untouched: frozenset[str] = frozenset(),
    all_names: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Rules (plain dicts, in order) that give every tensor in ``choices`` its type.

    ``base``: the recipe's base type (families whose default equals it need no default rule), or None
    when the recipe extends another one (every choice then gets a rule). ``untouched``: names of
    tensors of ``all_names`` the rules must not decide (pinned, or left to the extended recipe)."""
    layered: dict[str, dict[int, str]] = defaultdict(dict)
    flat: dict[str, str] = {}
    for c in choices:
        fam, layer = family_of(c.name)
        if layer is None:
            flat[fam] = c.type
        else:
            layered[fam][layer] = c.type
    guarded = {family_of(n)[0] for n in all_names if n in untouched}

    # families with the same per-layer types share rules; keep first-seen order
    sets: dict[tuple[tuple[int, str], ...], list[str]] = {}
    for fam, per_layer in layered.items():
        sets.setdefault(tuple(sorted(per_layer.items())), []).append(fam)

    rules: list[dict[str, Any]] = []
    for key, fams in sets.items():
        by_type: dict[str, list[int]] = defaultdict(list)
        for layer, t in key:
            by_type[t].append(layer)
        counts = Counter({t: len(ls) for t, ls in by_type.items()})
        default = None if any(f in guarded for f in fams) else _most_common(counts)
        pattern = _pattern(fams, layered=True)
        for t, ls in sorted(by_type.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            if t == default:
                continue
            rules.append({"match": pattern, "layers": layer_ranges(ls), "type": t})
        if default is not None and default != base:
            rules.append({"match": pattern, "type": default})
    for fam, t in flat.items():
        if t != base or fam in guarded:
            rules.append({"match": _pattern([fam], layered=False), "type": t})
    return rules


def _most_common(counts: Counter[str]) -> str:
    return min(counts, key=lambda t: (-counts[t], t))


def write_recipe(
    *,
    header: Sequence[str],
    name: str,
    description: str,
    base: str | None,
    extends: str | None,
    rules: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """YAML text of a recipe with ``header`` as its leading comment lines."""
    doc = CommentedMap()
    doc["recipe"] = 1
    doc["name"] = name
    doc["description"] = description
    if extends is not None:
        doc["extends"] = extends
    else:
        doc["base"] = base
    for k, v in (extra or {}).items():
        doc[k] = v
    seq = CommentedSeq()
    for r in rules:
        m = CommentedMap()
        for k, v in r.items():
            if k == "layers":
                flow = CommentedSeq(v)
                flow.fa.set_flow_style()
                m[k] = flow
            else:
                m[k] = v
        seq.append(m)
    doc["rules"] = seq
    if header:
        doc.yaml_set_start_comment("\n".join(header))
    yaml = YAML()
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()
