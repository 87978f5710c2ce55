"""Header-only *quantized* GGUF files as llama-quantize would have written them, from recorded
``llama-quantize --dry-run`` plans: the oracle's 7 architectures (``../shared/oracle/models``, 61 runs
each) and the hand-made skeletons of tests/helpers/archs.py (DeepSeek V2-Lite / V3 with MLA and shared experts,
Falcon, gpt-oss, Llama 3.1 70B, Qwen3; 57 runs each, tests/data/arch_plans.json.gz).

Each file has the source model's metadata with ``general.file_type`` set to the run's ftype, the
``quantize.imatrix.*`` keys llama-quantize writes when it was given an imatrix, every tensor with the
type llama-quantize chose (renamed and fewer blocks after ``--prune-layers``), and a sparse data section.
Long tokenizer arrays are dropped (``<arch>.vocab_size`` keeps the vocabulary size) so that writing
hundreds of files stays fast.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from gguf_recipe import llamacpp as llama
from gguf_recipe.model.skeleton import write_skeleton
from helpers.archs import ARCHS
from helpers.oracle_models import MODELS, load_plans, model_names, plan_id

ARCH_PLANS = Path(__file__).resolve().parents[1] / "data" / "arch_plans.json.gz"


@dataclass(frozen=True)
class QuantRun:
    """One recorded llama-quantize run: the model, its options and the type of every tensor."""

    model: str
    ftype: str
    options: tuple[str, ...]
    imatrix: bool
    tensors: tuple[tuple[str, str], ...]  # (name as written, ggml type) in llama-quantize's order

    @property
    def id(self) -> str:
        return plan_id({"ftype": self.ftype, "imatrix": self.imatrix, "options": list(self.options)})


@cache
def _arch_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(gzip.decompress(ARCH_PLANS.read_bytes()))["models"]
    return data


def runs() -> list[QuantRun]:
    """Every recorded run: 7 oracle models x 61 and 6 hand-made architectures x 57."""
    out: list[QuantRun] = []
    if MODELS.is_dir():
        for name in model_names():
            for p in load_plans(name):
                out.append(
                    QuantRun(
                        name, p["ftype"], tuple(p["options"]), bool(p["imatrix"]), tuple(p["tensors"].items())
                    )
                )
    for arch, rec in _arch_data().items():
        for p in rec["plans"]:
            names = p["order"] or rec["names"]
            types = dict(zip(rec["names"], p["types"], strict=True))
            out.append(
                QuantRun(arch, p["ftype"], (), bool(p["imatrix"]), tuple((n, types[n]) for n in names))
            )
        for p in rec["option_plans"]:
            names = p["names"] or rec["names"]
            out.append(
                QuantRun(
                    arch, p["ftype"], tuple(p["options"]), False, tuple(zip(names, p["types"], strict=True))
                )
            )
    return out


@cache
def source_spec(model: str) -> dict[str, Any]:
    """The F16 source model's spec (the oracle's .model.json layout)."""
    if model in ARCHS:
        spec: dict[str, Any] = ARCHS[model]()
        return spec
    spec = json.loads((MODELS / f"{model}.model.json").read_text(encoding="utf-8"))
    return spec


def _prune_list(options: tuple[str, ...]) -> list[int]:
    if "--prune-layers" not in options:
        return []
    return sorted(int(x) for x in options[options.index("--prune-layers") + 1].split(","))


def quant_spec(run: QuantRun) -> dict[str, Any]:
    """The spec of the file llama-quantize would have written for ``run`` (header only)."""
    src = source_spec(run.model)
    arch = src["architecture"]
    shapes = {t["name"]: t["shape"] for t in src["tensors"]}
    prune = _prune_list(run.options)
    # the source name of every written name (blocks renumbered after pruning, as llama-quantize does)
    kept_blocks = sorted({b for n in shapes if (b := llama.block_number(n)) is not None} - set(prune))
    original = {i: b for i, b in enumerate(kept_blocks)}

    def source_name(name: str) -> str:
        b = llama.block_number(name)
        return name if b is None else re.sub(r"^blk\.\d+\.", f"blk.{original[b]}.", name)

    metadata: list[dict[str, Any]] = []
    vocab = None
    for kv in src["metadata"]:
        if kv["type"] == "array" and kv.get("value") is None:
            if kv["key"] == "tokenizer.ggml.tokens":
                vocab = int(kv["length"])
            continue
        if kv["key"] == "general.file_type":
            continue
        if prune and kv["key"] == f"{arch}.block_count":
            kv = {**kv, "value": kv["value"] - len(prune)}
        metadata.append(kv)
    if vocab is not None and not any(kv["key"] == f"{arch}.vocab_size" for kv in metadata):
        metadata.append({"key": f"{arch}.vocab_size", "type": "uint32", "value": vocab})
    metadata.append({"key": "general.file_type", "type": "uint32", "value": llama.LLAMA_FTYPES[run.ftype]})
    if run.imatrix:
        metadata += [
            {"key": "quantize.imatrix.file", "type": "string", "value": "imatrix.dat"},
            {"key": "quantize.imatrix.dataset", "type": "string", "value": "calibration.txt"},
            {"key": "quantize.imatrix.entries_count", "type": "int32", "value": 1},
            {"key": "quantize.imatrix.chunks_count", "type": "int32", "value": 1},
        ]
    tensors = [
        {"name": name, "shape": shapes[source_name(name)], "dtype": qtype.upper()}
        for name, qtype in run.tensors
    ]
    return {"architecture": arch, "metadata": metadata, "tensors": tensors}


def source_file(model: str, directory: Path) -> Path:
    """The F16 source model as a header-only GGUF (tokenizer arrays dropped like the quantized files)."""
    path = directory / f"{model}-F16.gguf"
    if not path.exists():
        src = source_spec(model)
        q = quant_spec(
            QuantRun(model, "F16", (), False, tuple((t["name"], t["dtype"].lower()) for t in src["tensors"]))
        )
        write_skeleton(q, path)
    return path


def quant_file(run: QuantRun, directory: Path, *, n_splits: int = 1) -> Path:
    """Write (once) the header-only quantized GGUF of ``run``; returns its (first) file."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run.model}-{run.id}")[:120]
    target = directory / f"{stem}.gguf"
    first = target if n_splits == 1 else directory / f"{stem}-00001-of-{n_splits:05d}.gguf"
    if not first.exists():
        write_skeleton(quant_spec(run), target, n_splits=n_splits)
    return first


def writable(run: QuantRun) -> bool:
    """Whether a file with ``run``'s types can exist: every row a whole number of its type's blocks.
    A few recorded ``--dry-run`` plans give a user-forced output or embedding type to rows it cannot
    hold (llama-quantize would stop when quantizing them); the header reader refuses such files."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    shapes = {t["name"]: t["shape"] for t in quant_spec(run)["tensors"]}
    for name, qtype in run.tensors:
        block = GGML_QUANT_SIZES[GGMLQuantizationType[qtype.upper()]][0]
        if int(shapes[name][0]) % block:
            return False
    return True
