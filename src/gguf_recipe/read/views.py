"""One view of "which type does each tensor have", whatever it comes from: a quantized GGUF header
(one file or a split), a plan JSON, or a recipe compiled against a model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import llamacpp as llama
from ..diagnostics import RecipeError
from ..errors import GGUFRecipeError
from ..model.header import ggml_n_dims
from ..model.reader import GGUF_MAGIC, ModelInfo, read_model
from ..plan import Plan
from ..recipe.typenames import ggml_name

__all__ = [
    "QuantView",
    "TypedTensor",
    "ViewError",
    "family_of",
    "load_view",
    "view_of_model",
    "view_of_plan",
]

_BLK = re.compile(r"^blk\.(\d+)\.")

Kind = Literal["gguf", "plan", "recipe"]


class ViewError(GGUFRecipeError, ValueError):
    """An input that is neither a GGUF file, a plan JSON nor a recipe that compiles."""


def family_of(name: str) -> str:
    """The tensor's family: its name with the block number replaced (``blk.*.ffn_down.weight``)."""
    return _BLK.sub("blk.*.", name, count=1)


@dataclass(frozen=True)
class TypedTensor:
    name: str
    shape: tuple[int, ...]  # ggml order, ne0 first
    type: str  # ggml spelling, e.g. 'q4_K'
    nbytes: int
    fallback_from: str | None = None  # the type a rule asked for, when the row length forced `type`

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def block(self) -> int | None:
        return llama.block_number(self.name)

    @property
    def family(self) -> str:
        return family_of(self.name)

    @property
    def n_dims(self) -> int:
        return ggml_n_dims(self.shape)


@dataclass
class QuantView:
    """The types of a model's tensors as one input of ``recipe diff`` / a heatmap sees them."""

    label: str
    kind: Kind
    path: str
    tensors: list[TypedTensor]  # in llama-quantize's processing order
    n_elements: int  # elements of the whole source model (the bpw denominator, as llama-quantize prints)
    _by_name: dict[str, TypedTensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.tensors = sorted(self.tensors, key=lambda t: llama.processing_key(t.name))
        self._by_name = {t.name: t for t in self.tensors}

    def get(self, name: str) -> TypedTensor | None:
        return self._by_name.get(name)

    @property
    def n_layer(self) -> int:
        blocks = [b for t in self.tensors if (b := t.block) is not None]
        return max(blocks) + 1 if blocks else 0

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bpw(self) -> float:
        return self.total_bytes * 8 / self.n_elements if self.n_elements else 0.0

    def by_type(self) -> dict[str, tuple[int, int]]:
        """type -> (tensors, bytes)."""
        out: dict[str, tuple[int, int]] = {}
        for t in self.tensors:
            n, b = out.get(t.type, (0, 0))
            out[t.type] = (n + 1, b + t.nbytes)
        return out


def view_of_model(model: ModelInfo, label: str | None = None) -> QuantView:
    """The tensors of a GGUF header with the types they have in the file."""
    tensors = [TypedTensor(t.name, tuple(t.shape), ggml_name(t.qtype), t.nbytes) for t in model.tensors]
    return QuantView(
        label=label or _stem(model.files[0] if model.files else model.path),
        kind="gguf",
        path=str(model.path),
        tensors=tensors,
        n_elements=model.n_elements,
    )


def view_of_plan(plan: Plan, label: str | None = None, kind: Kind = "plan", path: str = "") -> QuantView:
    """The tensors a plan writes (pruned ones left out) with their planned types."""
    tensors = [
        TypedTensor(
            t.name,
            tuple(t.shape),
            t.type,
            t.target_bytes,
            t.fallback.wanted if t.fallback is not None else None,
        )
        for t in plan.tensors
        if t.action != "prune"
    ]
    return QuantView(
        label=label or plan.recipe_name,
        kind=kind,
        path=path or plan.model_path,
        tensors=tensors,
        n_elements=plan.totals.n_elements,
    )


def _stem(path: str) -> str:
    name = Path(path).name
    m = re.match(r"^(?P<p>.*)-\d{5}-of-\d{5}\.gguf$", name)
    if m:
        return m.group("p")
    return name.removesuffix(".gguf")


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _plan_or_none(path: Path) -> Plan | None:
    if path.suffix.lower() != ".json":
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(data, dict) and "fingerprints" in data and "tensors" in data):
        return None
    try:
        return Plan.model_validate(data)
    except ValueError as exc:
        raise ViewError(f"{path}: looks like a plan but is not a valid one: {exc}") from None


def load_view(
    arg: str | Path,
    *,
    model: str | Path | ModelInfo | None = None,
    imatrix: str | Path | bool | None = None,
) -> QuantView:
    """A GGUF file (any file of a split), a plan JSON, or a recipe (file or built-in name; needs ``model``)."""
    p = Path(arg)
    if p.is_file() and _is_gguf(p):
        return view_of_model(read_model(p))
    if p.is_file():
        plan = _plan_or_none(p)
        if plan is not None:
            return view_of_plan(plan, label=_stem(str(p)).removesuffix(".json"), path=str(p))
    from ..compiler import compile_model
    from ..recipes import resolve

    try:
        source = resolve(str(arg))
    except FileNotFoundError:
        raise ViewError(f"{arg}: neither a GGUF file, a plan JSON nor a recipe") from None
    if model is None:
        raise ViewError(f"{arg} is a recipe: pass --model MODEL.gguf to plan it against a model")
    info = model if isinstance(model, ModelInfo) else read_model(model)
    try:
        result = compile_model(source, info, imatrix=imatrix, lint=False)
    except RecipeError as exc:
        raise ViewError(f"{arg}: the recipe does not compile:\n{exc}") from None
    errors = [d for d in result.diagnostics if d.is_error]
    if errors:
        raise ViewError(f"{arg}: " + "; ".join(d.message for d in errors))
    return view_of_plan(result.plan, label=result.plan.recipe_name, kind="recipe", path=str(source))
