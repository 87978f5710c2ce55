"""Header-only GGUF skeletons: a model's header (metadata and tensor infos) written with gguf-py's
GGUFWriter, then extended with ``truncate`` to the full nominal size (a sparse file: no data written).

The input is the oracle's ``.model.json`` layout (``architecture``, ``metadata`` [{key, type, value |
element_type+length}], ``tensors`` [{name, shape (ggml order), dtype}]) or a dict of the same shape.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from .header import tensor_nbytes
from .reader import read_model, split_paths

_VTYPES = {
    "uint8": GGUFValueType.UINT8,
    "int8": GGUFValueType.INT8,
    "uint16": GGUFValueType.UINT16,
    "int16": GGUFValueType.INT16,
    "uint32": GGUFValueType.UINT32,
    "int32": GGUFValueType.INT32,
    "float32": GGUFValueType.FLOAT32,
    "bool": GGUFValueType.BOOL,
    "string": GGUFValueType.STRING,
    "array": GGUFValueType.ARRAY,
    "uint64": GGUFValueType.UINT64,
    "int64": GGUFValueType.INT64,
    "float64": GGUFValueType.FLOAT64,
}


def _placeholder_array(element_type: str, length: int) -> list[Any]:
    if element_type == "string":
        return [f"<t{i}>" for i in range(length)]
    if element_type in ("float32", "float64"):
        return [0.0] * length
    if element_type == "bool":
        return [False] * length
    return [1] * length


def write_skeleton(spec: dict[str, Any], path: str | Path, *, n_splits: int = 1) -> list[Path]:
    """Write a header-only (sparse) GGUF for ``spec``; returns the written file(s).

    With ``n_splits > 1`` the tensors are spread over ``<stem>-0000k-of-0000n.gguf`` files next to ``path``.
    """
    path = Path(path)
    arch = str(spec["architecture"])
    split_max = 0
    if n_splits > 1:
        split_max = math.ceil(len(spec["tensors"]) / n_splits)
    writer = GGUFWriter(path, arch, split_max_tensors=split_max)
    for kv in spec.get("metadata", []):
        key = kv["key"]
        if key == "general.architecture":
            continue
        vtype = _VTYPES[kv["type"]]
        if vtype == GGUFValueType.ARRAY:
            sub = _VTYPES[kv["element_type"]]
            value = kv.get("value")
            if value is None:
                value = _placeholder_array(kv["element_type"], int(kv["length"]))
            writer.add_key_value(key, value, vtype, sub_type=sub)
        else:
            writer.add_key_value(key, kv["value"], vtype)
    for t in spec["tensors"]:
        qtype = GGMLQuantizationType[t["dtype"].upper()]
        shape = [int(d) for d in t["shape"]]
        writer.add_tensor_info(
            t["name"],
            list(reversed(shape)),
            np.dtype(np.float32),
            tensor_nbytes(shape, qtype),
            raw_dtype=qtype,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    files = split_paths(_first_written(path, n_splits))
    for f in files:
        _extend(f)
    return files


def _first_written(path: Path, n_splits: int) -> Path:
    if n_splits <= 1:
        return path
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    cands = sorted(path.parent.glob(f"{stem}-00001-of-*.gguf"))
    if not cands:
        raise FileNotFoundError(f"GGUFWriter wrote no split files for {path}")
    return cands[0]


def _extend(f: Path) -> None:
    """Grow a header-only file to the size its tensor infos describe (sparse, nothing written)."""
    info = read_model(f)
    end = info.data_offsets[0]
    align = info.alignment
    for t in info.tensors:
        end = max(end, info.data_offsets[0] + t.offset + (t.nbytes + align - 1) // align * align)
    with f.open("r+b") as fh:
        fh.truncate(end)


def skeleton_from_json(model_json: str | Path, out_dir: str | Path, *, n_splits: int = 1) -> Path:
    """Build (or reuse) the skeleton GGUF of an oracle ``.model.json``; returns the (first) file."""
    model_json = Path(model_json)
    spec = json.loads(model_json.read_text(encoding="utf-8"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = str(spec.get("name") or model_json.name.removesuffix(".model.json"))
    target = out_dir / f"{stem}.gguf"
    if n_splits > 1:
        first = out_dir / f"{stem}-00001-of-{n_splits:05d}.gguf"
        if first.exists():
            return first
        write_skeleton(spec, target, n_splits=n_splits)
        return first
    if target.exists() and target.stat().st_size > 0:
        return target
    tmp = out_dir / f".{stem}.{os.getpid()}.gguf"
    write_skeleton(spec, tmp)
    tmp.replace(target)
    return target
