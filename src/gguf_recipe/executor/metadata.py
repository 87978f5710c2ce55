"""The output file's key/value pairs, built the way llama-quantize builds them.

Order and types follow ``llama_model_quantize_impl``: every source pair is copied byte for byte (split
keys dropped), then ``general.quantization_version`` and ``general.file_type`` are set (u32), then the
metadata overrides, the imatrix provenance keys, ``{arch}.block_count`` when layers were pruned, and
finally gguf-recipe's own provenance keys. Setting a key that exists removes it and appends it, as
``gguf_set_val_*`` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gguf import GGUFValueType

from .. import __version__
from ..model.header import RESERVED_KEYS, RESERVED_PREFIXES
from .errors import PlanMismatchError
from .gguf_format import INT_RANGES, KeyValue, Scalar, Value, pack_kv

__all__ = [
    "GGML_QNT_VERSION",
    "KEY_PLAN_FINGERPRINT",
    "KEY_RECIPE",
    "MetadataBuilder",
    "split_kvs",
]

GGML_QNT_VERSION = 2
KEY_QUANT_VERSION = "general.quantization_version"
KEY_FILE_TYPE = "general.file_type"
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_N_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_N_CHUNKS = "quantize.imatrix.chunks_count"
KEY_RECIPE = "gguf_recipe.recipe"
KEY_RECIPE_NAME = "gguf_recipe.recipe_name"
KEY_RECIPE_FINGERPRINT = "gguf_recipe.recipe_fingerprint"
KEY_PLAN_FINGERPRINT = "gguf_recipe.plan_fingerprint"
KEY_TOOL_VERSION = "gguf_recipe.version"
KEY_PLAN_EDITED = "gguf_recipe.plan_edited"
KEY_PLAN_UNVERIFIED = "gguf_recipe.plan_unverified"
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")

_BLK = re.compile(r"(?:^|\.)blk\.(\d+)\.")


def block_ids(names: Iterable[str]) -> set[int]:
    out: set[int] = set()
    for n in names:
        m = _BLK.search(n)
        if m:
            out.add(int(m.group(1)))
    return out


def _truncate127(s: str) -> bytes:
    """quantize.cpp copies these strings with ``strncpy(..., 127)``."""
    return s.encode("utf-8")[:127]


def _int_type_for(v: int, key: str = "") -> GGUFValueType:
    for t in (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.INT64, GGUFValueType.UINT64):
        lo, hi = INT_RANGES[t]
        if lo <= v <= hi:
            return t
    where = f"metadata override {key!r}: " if key else ""
    raise ValueError(f"{where}integer {v} does not fit any GGUF integer type (-2^63 .. 2^64-1)")


_TYPE_NAMES: dict[str, GGUFValueType] = {
    "u8": GGUFValueType.UINT8, "i8": GGUFValueType.INT8, "u16": GGUFValueType.UINT16,
    "i16": GGUFValueType.INT16, "u32": GGUFValueType.UINT32, "i32": GGUFValueType.INT32,
    "u64": GGUFValueType.UINT64, "i64": GGUFValueType.INT64, "f32": GGUFValueType.FLOAT32,
    "f64": GGUFValueType.FLOAT64, "bool": GGUFValueType.BOOL, "str": GGUFValueType.STRING,
    "string": GGUFValueType.STRING,
}  # fmt: skip
# the recipe language's kinds (like --override-kv): the exact type follows the existing key
_GENERIC_KINDS = {"int": int, "float": float}


def _scalar_type(v: object, existing: GGUFValueType | None, key: str) -> GGUFValueType:
    if isinstance(v, bool):
        return GGUFValueType.BOOL
    if isinstance(v, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(v, int):
        if existing is not None and existing in INT_RANGES:
            lo, hi = INT_RANGES[existing]
            if lo <= v <= hi:
                return existing
        return _int_type_for(v, key)
    if isinstance(v, float):
        if existing == GGUFValueType.FLOAT64:
            return existing
        return GGUFValueType.FLOAT32
    raise ValueError(f"metadata override {key!r}: unsupported value {v!r}")


def _check_finite(key: str, value: object) -> None:
    """NaN and infinities are no metadata values (llama.cpp would read them back as they are)."""
    if isinstance(value, Mapping):
        value = value.get("value")
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"metadata override {key!r}: {v} is not a finite number")


def encode_override(key: str, value: object, existing: KeyValue | None) -> bytes | None:
    """Serialise one metadata override; ``None`` means delete the key.

    Plain values take the type of the existing key when it fits (else: bool, string, u32/i32/i64,
    f32); ``{"type": "u16", "value": 3}`` names the type; lists become arrays.
    """
    if value is None:
        return None
    _check_finite(key, value)
    if isinstance(value, Mapping) and set(value) == {"type", "value"}:
        tname = str(value["type"]).lower()
        inner: Any = value["value"]
        if tname.startswith("array[") and tname.endswith("]"):
            et = _TYPE_NAMES.get(tname[6:-1])
            if et is None or not isinstance(inner, list):
                raise ValueError(f"metadata override {key!r}: bad typed array {value!r}")
            return pack_kv(key, GGUFValueType.ARRAY, list(inner), et)
        if tname in _GENERIC_KINDS:
            if isinstance(inner, bool) or not isinstance(inner, (int, float)):
                raise ValueError(f"metadata override {key!r}: expected a number, got {inner!r}")
            if tname == "int" and isinstance(inner, float) and not inner.is_integer():
                raise ValueError(f"metadata override {key!r}: expected an integer, got {inner!r}")
            inner = _GENERIC_KINDS[tname](inner)
            return pack_kv(key, _scalar_type(inner, existing.vtype if existing else None, key), inner)
        vt = _TYPE_NAMES.get(tname)
        if vt is None:
            raise ValueError(f"metadata override {key!r}: unknown type {value['type']!r}")
        if vt in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64) and isinstance(inner, int):
            inner = float(inner)
        return pack_kv(key, vt, inner)
    if isinstance(value, (list, tuple)):
        items: list[Scalar] = list(value)
        existing_elem = existing.array_type if existing is not None else None
        if not items:
            et = existing_elem or GGUFValueType.STRING
        else:
            kinds = {_scalar_type(v, existing_elem, key) for v in items}
            if len(kinds) == 1:
                et = kinds.pop()
            elif kinds <= set(INT_RANGES):
                et = (
                    GGUFValueType.INT64
                    if any(isinstance(v, int) and v < 0 for v in items)
                    else GGUFValueType.UINT64
                )
                if existing_elem in INT_RANGES:
                    lo, hi = INT_RANGES[existing_elem]
                    if all(isinstance(v, int) and lo <= v <= hi for v in items):
                        et = existing_elem
            elif kinds <= {*INT_RANGES, GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}:
                et = GGUFValueType.FLOAT32
                items = [float(v) for v in items if not isinstance(v, (str, bytes))]
            else:
                raise ValueError(f"metadata override {key!r}: a list must hold values of one kind")
        return pack_kv(key, GGUFValueType.ARRAY, items, et)
    vtype = _scalar_type(value, existing.vtype if existing is not None else None, key)
    scalar: Value = value  # type: ignore[assignment]
    return pack_kv(key, vtype, scalar)


class MetadataBuilder:
    """An ordered set of serialised key/value pairs with gguf.cpp's set semantics."""

    def __init__(self, source_kvs: Sequence[KeyValue]) -> None:
        self._source = {kv.key: kv for kv in source_kvs}
        self._blobs: dict[str, bytes] = {kv.key: kv.raw for kv in source_kvs}

    def remove(self, key: str) -> None:
        self._blobs.pop(key, None)

    def set_blob(self, key: str, blob: bytes) -> None:
        self._blobs.pop(key, None)
        self._blobs[key] = blob

    def set(
        self, key: str, vtype: GGUFValueType, value: Value, array_type: GGUFValueType | None = None
    ) -> None:
        self.set_blob(key, pack_kv(key, vtype, value, array_type))

    def override(self, key: str, value: object) -> None:
        if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
            raise PlanMismatchError(f"metadata override {key!r}: this key is managed by the executor")
        try:
            blob = encode_override(key, value, self._source.get(key))
        except ValueError as exc:
            raise PlanMismatchError(str(exc)) from None
        if blob is None:
            self.remove(key)
        else:
            self.set_blob(key, blob)

    def has(self, key: str) -> bool:
        return key in self._blobs

    def keys(self) -> list[str]:
        return list(self._blobs)

    def blobs(self) -> list[bytes]:
        return list(self._blobs.values())


def imatrix_kvs(
    b: MetadataBuilder, file_name: str, datasets: Sequence[str], n_entries: int, chunk_count: int
) -> None:
    """The keys quantize.cpp records (as KV overrides, hence INT → u32)."""
    b.set(KEY_IMATRIX_FILE, GGUFValueType.STRING, _truncate127(file_name))
    if datasets:
        b.set(KEY_IMATRIX_DATASET, GGUFValueType.STRING, _truncate127(datasets[0]))
    b.set(KEY_IMATRIX_N_ENTRIES, GGUFValueType.UINT32, abs(n_entries) & 0xFFFFFFFF)
    if chunk_count > 0:
        b.set(KEY_IMATRIX_N_CHUNKS, GGUFValueType.UINT32, abs(chunk_count) & 0xFFFFFFFF)


def split_kvs(split_no: int, split_count: int, n_tensors: int) -> list[bytes]:
    """llama-gguf-split / llama-quantize --keep-split keys: u16, u16, i32."""
    return [
        pack_kv("split.no", GGUFValueType.UINT16, split_no),
        pack_kv("split.count", GGUFValueType.UINT16, split_count),
        pack_kv("split.tensors.count", GGUFValueType.INT32, n_tensors),
    ]


def recipe_kvs(
    b: MetadataBuilder,
    *,
    recipe_name: str,
    recipe_text: str,
    recipe_fingerprint: str,
    plan_fingerprint: str,
    plan_edited: str | None = None,
    plan_unverified: str | None = None,
) -> None:
    """Provenance. ``plan_edited`` / ``plan_unverified``: why the plan's decisions are not (known to be)
    what the recipe gives; written as ``gguf_recipe.plan_edited`` (true) and ``gguf_recipe.plan_unverified``
    (the reason), so that the recipe keys are never read as the whole story."""
    b.set(KEY_TOOL_VERSION, GGUFValueType.STRING, __version__)
    b.set(KEY_RECIPE_NAME, GGUFValueType.STRING, recipe_name)
    b.set(KEY_RECIPE, GGUFValueType.STRING, recipe_text)
    b.set(KEY_RECIPE_FINGERPRINT, GGUFValueType.STRING, recipe_fingerprint)
    b.set(KEY_PLAN_FINGERPRINT, GGUFValueType.STRING, plan_fingerprint)
    b.remove(KEY_PLAN_EDITED)  # a source made by gguf-recipe may carry them: they described that file
    b.remove(KEY_PLAN_UNVERIFIED)
    if plan_edited is not None:
        b.set(KEY_PLAN_EDITED, GGUFValueType.BOOL, True)
    if plan_unverified is not None:
        b.set(KEY_PLAN_UNVERIFIED, GGUFValueType.STRING, plan_unverified)
