"""The plan: a frozen, reviewable per-tensor decision list (Terraform's plan, for quantization).

The compiler produces it from a recipe and a model header; the executor runs exactly it and refuses
it when the model or recipe fingerprint no longer matches the files it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import __version__

PLAN_SCHEMA_VERSION = 2  # 2: per tensor decision, rule_index and needs_imatrix

Action = Literal["quantize", "copy", "prune"]
# what decided a tensor's type (``rule`` is the same, for people)
Decision = Literal["rule", "base", "token-embedding", "output", "not-quantizable", "pruned"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Fallback(_Frozen):
    """A type the recipe asked for that the tensor's row length cannot hold, and what was used instead."""

    wanted: str
    got: str
    reason: str


class PlannedTensor(_Frozen):
    name: str = Field(description="tensor name in the output file (renumbered when layers are pruned)")
    source_name: str = Field(description="tensor name in the source model")
    shape: list[int] = Field(description="ggml order: ne0 (row length) first")
    source_type: str = Field(description="ggml spelling, e.g. 'f16'")
    type: str = Field(description="target type, ggml spelling, e.g. 'q4_K'")
    action: Action
    rule: str = Field(
        description="what decided the type: 'rule N: <text>', 'base', 'token-embedding', 'output', "
        "'not quantizable: <why>', 'fallback from X', 'pruned'"
    )
    decision: Decision = Field(description="what decided the type (the machine-readable form of `rule`)")
    rule_index: int | None = Field(
        default=None, description="with decision 'rule': the rule's number N (as in 'rule N' of `rule`)"
    )
    fallback: Fallback | None = None
    imatrix: bool = Field(default=False, description="the quantizer gets importance weights for this tensor")
    needs_imatrix: bool = Field(
        description="llama.cpp refuses this type without an importance matrix (apply refuses it too)"
    )
    source_bytes: int
    target_bytes: int


class RecipeSource(_Frozen):
    """One recipe of the chain a plan was compiled from (the recipe, then what it extends)."""

    name: str = Field(description="its file or built-in name, for messages")
    text: str


class PlanTotals(_Frozen):
    n_tensors: int
    n_elements: int
    source_bytes: int
    target_bytes: int
    bpw: float = Field(description="target bits per weight over all elements of the source model")
    by_type: dict[str, int] = Field(description="target bytes per target type")
    n_fallbacks: int


class Fingerprints(_Frozen):
    recipe: str = Field(description="sha256 of the recipe text (after resolving extends)")
    model: str = Field(description="sha256 of the model header (metadata and tensor infos, not data)")
    imatrix: str | None = None


class Plan(_Frozen):
    plan_schema_version: int = PLAN_SCHEMA_VERSION
    tool_version: str = __version__
    recipe_name: str
    recipe_text: str = Field(description="the recipe as written, so the output can embed how it was made")
    recipe_chain: list[RecipeSource] = Field(
        default_factory=list,
        description="the recipe and every recipe it extends, child first: the plan alone can be recompiled",
    )
    model_path: str
    ftype: int | None = Field(default=None, description="general.file_type to write (llama_ftype value)")
    fingerprints: Fingerprints
    tensors: list[PlannedTensor]
    totals: PlanTotals
    metadata_overrides: dict[str, object] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _schema_version_first(cls, data: object) -> object:
        """An older or newer plan is refused by its version, before its fields are read."""
        if isinstance(data, dict):
            version = data.get("plan_schema_version", PLAN_SCHEMA_VERSION)
            if version != PLAN_SCHEMA_VERSION:
                raise ValueError(
                    f"plan schema version {version} is not supported (expected {PLAN_SCHEMA_VERSION}); "
                    "make the plan again with `recipe plan`"
                )
        return data

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        from .inputs import read_input_bytes

        return cls.from_json(read_input_bytes(path, "the plan").decode("utf-8"))

    def save(self, path: str | Path) -> None:
        """Write the plan JSON (atomically: a temp file renamed into place)."""
        from .outputs import write_text_atomic

        write_text_atomic(path, self.to_json() + "\n")


def plan_json_schema() -> dict[str, object]:
    schema: dict[str, object] = Plan.model_json_schema()
    copy: dict[str, object] = json.loads(json.dumps(schema))
    return copy
