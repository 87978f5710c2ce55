"""Everything ``apply_plan`` checks and prepares before it writes a byte: the plan is fresh (model,
recipe and imatrix fingerprints), it fits the model (names, shapes, types), its decisions follow from its
recipe, every planned tensor's importance weights resolve, the output metadata, and no file the run
writes is one of its inputs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFValueType

from .. import quants
from ..llamacpp import guess_ftype
from ..outputs import Input, InputClobberError, check_outputs
from ..plan import PLAN_SCHEMA_VERSION, Plan, PlannedTensor
from .errors import (
    EditedPlanError,
    ImatrixError,
    OutputError,
    PlanMismatchError,
    RequantizeError,
    StalePlanError,
)
from .gguf_format import tensor_nbytes
from .imatrix import Imatrix, load_imatrix
from .metadata import (
    GGML_QNT_VERSION,
    KEY_FILE_TYPE,
    KEY_QUANT_VERSION,
    SPLIT_KEYS,
    MetadataBuilder,
    block_ids,
    imatrix_kvs,
    recipe_kvs,
)
from .provenance import PlanCheck, check_decisions
from .source import FLOAT_TYPES, SourceModel
from .writer import OutputLayout, run_files

__all__ = [
    "ImatrixCoverage",
    "Job",
    "assign_imatrix",
    "build_metadata",
    "check_fresh",
    "check_paths",
    "check_plan_decisions",
    "check_structure",
    "open_imatrix",
    "plan_fingerprint",
]

F32Array = npt.NDArray[np.float32]


def plan_fingerprint(plan: Plan) -> str:
    """sha256 of the plan's canonical JSON (sorted keys, no whitespace)."""
    data = json.dumps(plan.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ImatrixCoverage:
    file: str
    format: str
    n_entries: int
    wanted: int  # planned tensors that asked for importance weights
    used: int  # ... and got them
    missing: tuple[str, ...]  # planned (output) tensor names that asked but found no entry

    @property
    def fraction(self) -> float:
        return self.used / self.wanted if self.wanted else 1.0


@dataclass
class Job:
    index: int  # position among the written tensors
    planned: PlannedTensor
    target: GGMLQuantizationType
    mode: str  # "quantize" or "copy"
    weights: F32Array | None  # (n_matrices, ne0)


def _parse_type(name: str, what: str) -> GGMLQuantizationType:
    try:
        return quants.parse_qtype(name)
    except (ValueError, KeyError) as exc:
        raise PlanMismatchError(f"{what}: unknown ggml type {name!r}") from exc


def _current_model_fingerprint(path: Path, fallback: str) -> str:
    """The compiler's definition (gguf_recipe.model.read_model), else ours (equal for single files)."""
    from ..model import read_model

    try:
        fp: str = read_model(path).header_sha256
    except Exception:  # its reader may refuse what ours accepted; our own checks already ran
        return fallback
    return fp


def check_fresh(
    plan: Plan,
    src: SourceModel,
    im: Imatrix | None,
    recipe_fingerprint: str | None,
    force: bool,
    warn: list[str],
) -> None:
    problems: list[str] = []
    model_fp = _current_model_fingerprint(src.path, src.fingerprint)
    if plan.fingerprints.model != model_fp:
        problems.append(
            f"the model header changed since the plan was made (plan {plan.fingerprints.model[:12]}, "
            f"model {model_fp[:12]})"
        )
    if recipe_fingerprint is not None and recipe_fingerprint != plan.fingerprints.recipe:
        problems.append("the recipe changed since the plan was made")
    wants_im = plan.fingerprints.imatrix is not None or any(
        t.imatrix for t in plan.tensors if t.action != "prune"
    )
    if (
        im is not None
        and plan.fingerprints.imatrix is not None
        and im.fingerprint != plan.fingerprints.imatrix
    ):
        problems.append(f"the imatrix {im.path} is not the one the plan was made with")
    if im is None and wants_im:
        problems.append("the plan was made with an imatrix but none was given")
    if im is not None and not wants_im:
        warn.append("an imatrix was given but the plan uses none; it is ignored (re-plan with it)")
    if problems:
        text = "; ".join(problems)
        if not force:
            raise StalePlanError(f"stale plan: {text}. Re-run the plan, or force to apply it anyway")
        warn.append(f"applying a stale plan (forced): {text}")


def check_structure(plan: Plan, src: SourceModel, allow_requantize: bool) -> tuple[list[Job], list[str]]:
    """Match the plan to the source; return the jobs (written tensors, in order) and requantized names."""
    if plan.plan_schema_version != PLAN_SCHEMA_VERSION:
        raise PlanMismatchError(
            f"plan schema version {plan.plan_schema_version} is not supported (expected {PLAN_SCHEMA_VERSION})"
        )
    seen_src: set[str] = set()
    seen_out: set[str] = set()
    jobs: list[Job] = []
    requant: list[str] = []
    implemented = set(quants.implemented_types())
    for pt in plan.tensors:
        info = src.tensors.get(pt.source_name)
        if info is None:
            raise PlanMismatchError(
                f"the plan names tensor {pt.source_name!r} but the model has no such tensor"
            )
        if pt.source_name in seen_src:
            raise PlanMismatchError(f"the plan lists source tensor {pt.source_name!r} twice")
        seen_src.add(pt.source_name)
        if list(info.shape) != list(pt.shape):
            raise PlanMismatchError(
                f"tensor {pt.source_name!r}: the plan says shape {pt.shape}, the model has {list(info.shape)}"
            )
        stype = _parse_type(pt.source_type, pt.source_name)
        if stype != info.qtype:
            raise PlanMismatchError(
                f"tensor {pt.source_name!r}: the plan says type {pt.source_type}, the model has {info.qtype.name}"
            )
        if pt.action == "prune":
            continue
        if pt.name in seen_out:
            raise PlanMismatchError(f"the plan writes two tensors named {pt.name!r}")
        seen_out.add(pt.name)
        target = _parse_type(pt.type, pt.name)
        if pt.action == "copy" and target != info.qtype:
            raise PlanMismatchError(
                f"tensor {pt.name!r}: action copy but target type {pt.type} differs from the source {info.qtype.name}"
            )
        mode = "copy" if target == info.qtype else "quantize"
        if mode == "quantize":
            if target not in implemented:
                raise PlanMismatchError(
                    f"tensor {pt.name!r}: gguf-recipe cannot produce {target.name} yet "
                    f"(available: {', '.join(sorted(t.name for t in implemented))})"
                )
            block = quants.spec_for(target).block_size
            if info.ne0 % block:
                raise PlanMismatchError(
                    f"tensor {pt.name!r}: row length {info.ne0} is not a multiple of {target.name}'s block size {block}"
                )
            if info.qtype not in FLOAT_TYPES:
                requant.append(pt.name)
        nbytes = tensor_nbytes(info.shape, target)
        if pt.target_bytes != nbytes:
            raise PlanMismatchError(
                f"tensor {pt.name!r}: the plan says {pt.target_bytes} bytes but {target.name} of shape "
                f"{list(info.shape)} takes {nbytes}"
            )
        jobs.append(Job(len(jobs), pt, target, mode, None))
    missing = [n for n in src.tensors if n not in seen_src]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise PlanMismatchError(
            f"the model has tensor(s) the plan does not mention: {', '.join(missing[:3])}{more}; "
            "the plan was made for another model"
        )
    if requant and not allow_requantize:
        more = f" (+{len(requant) - 3} more)" if len(requant) > 3 else ""
        raise RequantizeError(
            f"{len(requant)} tensor(s) are already quantized and would be requantized "
            f"({', '.join(requant[:3])}{more}); this loses quality. Start from an F16/BF16/F32 model, "
            "or allow requantizing (--allow-requantize)"
        )
    return jobs, requant


def assign_imatrix(jobs: Sequence[Job], im: Imatrix | None, warn: list[str]) -> ImatrixCoverage | None:
    wanted = used = 0
    missing: list[str] = []
    for job in jobs:
        pt = job.planned
        # the plan says (llama.cpp's rule, decided by the compiler); a quantizer that cannot run
        # without weights is refused here whatever an edited plan says
        needs = job.mode == "quantize" and (pt.needs_imatrix or quants.spec_for(job.target).requires_imatrix)
        w = None
        if im is not None and pt.imatrix and job.mode == "quantize":
            wanted += 1
            w = im.weights_for(pt.source_name, pt.shape)
            if w is None:
                missing.append(pt.name)
                if pt.source_name in im.entries:
                    warn.append(
                        f"imatrix entry for {pt.source_name} does not fit the token embedding; not used"
                    )
            else:
                used += 1
        if w is None and needs:
            raise ImatrixError(
                f"tensor {pt.name!r} is planned as {job.target.name}, which needs importance weights, but "
                + (
                    "no imatrix was given"
                    if im is None
                    else f"the imatrix has no usable entry for {pt.source_name!r}"
                )
                + " (llama-quantize refuses this too: the result would be garbage)"
            )
        job.weights = w
    if im is None:
        return None
    if missing:
        warn.append(
            f"the imatrix has no entry for {len(missing)} planned tensor(s): {', '.join(missing[:5])}"
        )
    return ImatrixCoverage(str(im.path), im.format, len(im), wanted, used, tuple(missing))


def build_metadata(
    plan: Plan,
    src: SourceModel,
    jobs: Sequence[Job],
    im: Imatrix | None,
    imatrix_name: str | None,
    plan_fp: str,
    warn: list[str],
    check: PlanCheck,
) -> list[bytes]:
    b = MetadataBuilder(src.kvs)
    for k in SPLIT_KEYS:
        b.remove(k)
    ftype = plan.ftype
    if ftype is None:
        ftype = guess_ftype({j.planned.name: j.target for j in jobs})
    b.set(KEY_QUANT_VERSION, GGUFValueType.UINT32, GGML_QNT_VERSION)
    b.set(KEY_FILE_TYPE, GGUFValueType.UINT32, ftype)
    for key, value in plan.metadata_overrides.items():
        b.override(key, value)
    if im is not None and imatrix_name is not None:
        imatrix_kvs(b, imatrix_name, im.datasets, len(im), im.chunk_count)
    # pruned layers: llama-quantize sets {arch}.block_count to the number of layers kept
    src_blocks = block_ids(src.tensors)
    out_blocks = block_ids(j.planned.name for j in jobs)
    arch = src.get("general.architecture")
    if out_blocks != src_blocks and isinstance(arch, str) and src.kv(f"{arch}.block_count") is not None:
        n_kept = len(out_blocks)
        if out_blocks != set(range(n_kept)):
            raise PlanMismatchError(
                f"after pruning, the layers are numbered {sorted(out_blocks)[:8]}...; they must be 0..{n_kept - 1}"
            )
        key = f"{arch}.block_count"
        if key in plan.metadata_overrides:
            if _override_int(plan.metadata_overrides[key]) != n_kept:
                warn.append(f"metadata override {key} disagrees with the {n_kept} layers kept")
        else:
            b.set(key, GGUFValueType.UINT32, n_kept)
    recipe_kvs(
        b,
        recipe_name=plan.recipe_name,
        recipe_text=plan.recipe_text,
        recipe_fingerprint=plan.fingerprints.recipe,
        plan_fingerprint=plan_fp,
        plan_edited=check.detail if check.status == "edited" else None,
        plan_unverified=check.detail if check.status == "unverified" else None,
    )
    return b.blobs()


def open_imatrix(imatrix: str | os.PathLike[str] | Imatrix | None) -> tuple[Imatrix | None, str | None]:
    """The loaded imatrix and the name the output's metadata gives it (the path as the caller spelled it)."""
    if isinstance(imatrix, Imatrix) or imatrix is None:
        return imatrix, str(imatrix.path) if imatrix is not None else None
    return load_imatrix(imatrix), os.fspath(imatrix)


def check_plan_decisions(
    plan: Plan,
    model_path: str | os.PathLike[str],
    recipe: str | os.PathLike[str] | None,
    force: bool,
    warn: list[str],
) -> PlanCheck:
    """Refuse (unless ``force``) a plan whose decisions its recipe does not give; warn when unknown."""
    check = check_decisions(plan, model_path, recipe)
    if check.status == "edited":
        text = (
            f"the plan's decisions are not what its recipe {plan.recipe_name!r} gives for this model "
            f"(edited by hand, or made by another gguf-recipe version): {check.detail}"
        )
        if not force:
            raise EditedPlanError(f"{text}. Re-run the plan, or force to apply it anyway")
        warn.append(f"applying an edited plan (forced): {text}; the output records gguf_recipe.plan_edited")
    elif check.status == "unverified":
        warn.append(
            f"cannot check that the plan's decisions follow from its recipe {plan.recipe_name!r}: "
            f"{check.detail}; the output records gguf_recipe.plan_unverified (give the recipe file to check it)"
        )
    return check


def _override_int(v: object) -> int | None:
    if isinstance(v, dict):
        v = v.get("value")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def check_paths(
    src: SourceModel, layout: OutputLayout, other_inputs: Sequence[Input], imatrix: Imatrix | None
) -> None:
    """Refuse when any file the run may create, replace or delete is one of its inputs."""
    inputs: list[Input] = [("the input model", p) for p in src.paths]
    if imatrix is not None:
        inputs.append(("the imatrix", imatrix.path))
    inputs.extend(other_inputs)
    try:
        check_outputs(inputs, run_files(layout))
    except InputClobberError as exc:
        raise OutputError(str(exc)) from None
