"""ggml type names as recipes write them: parsing (case-insensitive), ggml's spelling, and the
messages for names that are not types (close matches, ik_llama.cpp-only types)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..diagnostics import close_matches
from ..quants.registry import SPECS

__all__ = [
    "IK_LLAMA_ALTERNATIVES",
    "KEEP",
    "TypeNameError",
    "all_type_names",
    "ggml_name",
    "ggml_type_info",
    "parse_type_name",
]

KEEP = "keep"


def ggml_name(t: GGMLQuantizationType) -> str:
    """The spelling ggml_type_name() prints: lower case, except the K of k-quants (``q4_K``)."""
    name = t.name.lower()
    if re.fullmatch(r"q\d_k", name):
        name = name[:-1] + "K"
    return name


_BY_LOWER: dict[str, GGMLQuantizationType] = {t.name.lower(): t for t in GGMLQuantizationType}


def all_type_names() -> list[str]:
    return [ggml_name(t) for t in GGMLQuantizationType]


def producible_type_names() -> list[str]:
    """Types a recipe may ask for: those llama.cpp quantizes weights to and gguf-recipe knows."""
    return [ggml_name(t) for t in SPECS]


@dataclass(frozen=True)
class TypeInfo:
    type: GGMLQuantizationType
    name: str
    block_size: int
    type_size: int

    @property
    def bpw(self) -> float:
        return self.type_size * 8 / self.block_size


def ggml_type_info(t: GGMLQuantizationType) -> TypeInfo:
    block, size = GGML_QUANT_SIZES[t]
    return TypeInfo(t, ggml_name(t), block, size)


# ik_llama.cpp types that mainline llama.cpp (and so gguf-recipe) cannot write, by family, with the
# mainline types of about the same size.
IK_LLAMA_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "iq1_kt": ("iq1_m", "iq1_s"),
    "iq2_k": ("iq2_s", "q2_K"),
    "iq2_ks": ("iq2_xs", "iq2_s"),
    "iq2_kt": ("iq2_xs", "iq2_s"),
    "iq2_kl": ("iq2_s", "q2_K"),
    "iq3_k": ("iq3_s", "q3_K"),
    "iq3_ks": ("iq3_xxs", "iq3_s"),
    "iq3_kt": ("iq3_xxs", "iq3_s"),
    "iq4_k": ("iq4_xs", "q4_K"),
    "iq4_ks": ("iq4_xs", "q4_K"),
    "iq4_kss": ("iq4_xs", "q4_K"),
    "iq4_kt": ("iq4_xs", "q4_K"),
    "iq5_k": ("q5_K",),
    "iq5_ks": ("q5_K",),
    "iq6_k": ("q6_K",),
    "q6_0": ("q8_0", "q5_0"),
    "q8_kv": ("q8_0",),
    "iq2_bn": ("tq2_0",),
    "iq1_bn": ("tq1_0",),
}

_REPACK = re.compile(r"^(?P<base>.+?)_r(?P<n>4|8|16)$")


class TypeNameError(ValueError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _ik_message(name: str) -> TypeNameError | None:
    low = name.lower()
    base = low
    repacked = False
    m = _REPACK.match(low)
    if m:
        base = m.group("base")
        repacked = True
    if base in IK_LLAMA_ALTERNATIVES:
        alts = IK_LLAMA_ALTERNATIVES[base]
        return TypeNameError(
            f"'{name}' is an ik_llama.cpp type; llama.cpp (and gguf-recipe) cannot write it",
            "use a mainline type of about the same size: " + ", ".join(f"'{a}'" for a in alts),
        )
    if repacked and base in _BY_LOWER:
        t = _BY_LOWER[base]
        return TypeNameError(
            f"'{name}' is an ik_llama.cpp row-interleaved (repacked) type; llama.cpp (and gguf-recipe) cannot write it",
            f"use '{ggml_name(t)}' (llama.cpp repacks at load time when it helps)",
        )
    return None


def parse_type_name(name: str, *, allow_keep: bool = False) -> GGMLQuantizationType | None:
    """The type a recipe names (case-insensitive); ``None`` for ``keep`` when allowed.

    Raises :class:`TypeNameError` for anything else, with the message and hint the diagnostics use.
    """
    low = name.strip().lower()
    if allow_keep and low == KEEP:
        return None
    t = _BY_LOWER.get(low)
    if t is not None:
        if t not in SPECS:
            return_types = ", ".join(producible_type_names())
            raise TypeNameError(
                f"type '{ggml_name(t)}' cannot be used for model weights (llama.cpp does not quantize to it)",
                f"expected one of: {return_types}",
            )
        return t
    ik = _ik_message(name)
    if ik is not None:
        raise ik
    candidates = producible_type_names() + ([KEEP] if allow_keep else [])
    found = close_matches(name, candidates)
    expected = "a ggml type" + (" or 'keep'" if allow_keep else "")
    if found:
        hint = (
            f"did you mean '{found[0]}'?"
            if len(found) == 1
            else "did you mean one of " + ", ".join(f"'{f}'" for f in found) + "?"
        )
    else:
        hint = "expected one of: " + ", ".join(candidates)
    raise TypeNameError(f"unknown type '{name}', expected {expected}", hint)
