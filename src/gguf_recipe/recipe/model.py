"""Recipe language, schema version 1: the pydantic models are the single source of truth.

``schema/recipe.schema.json`` is generated from :class:`Recipe`; every field carries a description so
that editors can show it. Values are kept as written (type names are validated and normalised by the
compiler, which knows the model; the loader maps validation errors to file:line:col).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from .typenames import KEEP, producible_type_names

RECIPE_SCHEMA_VERSION = 1
_T = TypeVar("_T")

# A numeric condition: an int (equality) or a comparison string such as ">= 4", "< 8", "!= 1", "== 2".
NumericCondition = Annotated[
    int | str,
    Field(
        description="an integer (equality) or a comparison such as '>= 4', '< 8', '!= 1'",
        examples=[8, ">= 4", "!= 1"],
    ),
]

# The tensor categories of llama.cpp's tensor_get_category (llama-quant.cpp), by their lower-case names.
Category = Literal[
    "token_embd",
    "output",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "attn_kv_b",
    "attn_output",
    "ffn_up",
    "ffn_gate",
    "ffn_down",
    "other",
]

CATEGORIES: tuple[str, ...] = get_args(Category)

LayerSelector = Annotated[
    str | int,
    Field(
        description=(
            "a layer selector: '5', '2..7' (inclusive), '10..', '..3', '..<4' (exclusive end), "
            "'-4..-1' (counting from the end), fractions of the layer count N floored like C "
            "('1/8' = N*1/8, '7/8..', '1/8+2'), and a stride '<range> step K'"
        ),
        examples=["0", "2..7", "..<1/8", "7/8..", "1/8+2.. step 3", "-4..-1"],
    ),
]


def _spellings(names: list[str]) -> list[str]:
    """The enum an editor checks type names against: ggml's spelling, lower and upper case."""
    return sorted({v for n in names for v in (n, n.lower(), n.upper())})


# A type name as a recipe writes it (case-insensitive; checked with a located diagnostic by the
# compiler). The schema lists every spelling so that an editor flags 'q4_km' while typing.
TypeName = Annotated[str, WithJsonSchema({"type": "string", "enum": _spellings(producible_type_names())})]
TypeNameOrKeep = Annotated[
    str, WithJsonSchema({"type": "string", "enum": _spellings([*producible_type_names(), KEEP])})
]

# llama.cpp's llm_type names (llm_type_name): '7B', '70B', '1.5B', '8x7B', '30B.A3B', '256M', ...
_SIZE_CLASS = re.compile(r"^(\d+x)?\d+(\.\d+)?[KMBT](\.A\d+(\.\d+)?[MB])?$|^unknown$", re.IGNORECASE)


def _as_list(value: _T | list[_T] | None) -> list[_T] | None:
    """The one place where a field written as ``X`` or ``[X, ...]`` becomes a list."""
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Condition(_Strict):
    """Facts about the model (and the tensor) a rule needs before it applies. All given fields must hold."""

    arch: str | list[str] | None = Field(
        default=None,
        description="general.architecture of the model, e.g. 'llama', 'deepseek2', 'falcon' (a list: any of them)",
    )
    layers: NumericCondition | None = Field(
        default=None, description="the model's block count (<arch>.block_count)"
    )
    experts: NumericCondition | None = Field(
        default=None, description="the model's expert count (<arch>.expert_count; 0 for dense models)"
    )
    gqa: NumericCondition | None = Field(
        default=None,
        description="grouped-query ratio n_head / n_head_kv (integer division, as llama.cpp's n_gqa())",
    )
    size: str | list[str] | None = Field(
        default=None,
        description="llama.cpp's model size class (llm_type), e.g. '7B', '8B', '70B' (a list: any of them)",
    )
    tied_embeddings: bool | None = Field(
        default=None,
        description="true when the model has no output.weight (token_embd doubles as the output)",
    )

    @field_validator("size")
    @classmethod
    def _size_classes(cls, v: str | list[str] | None) -> str | list[str] | None:
        for s in [v] if isinstance(v, str) else v or []:
            if not _SIZE_CLASS.match(s):
                raise ValueError(
                    f"'{s}' is not a model size class; llama.cpp names them like '7B', '70B', '1.5B', "
                    "'8x7B' or '30B.A3B'"
                )
        return v

    imatrix: bool | None = Field(default=None, description="true when an importance matrix is given")
    row_multiple_of: int | str | None = Field(
        default=None,
        description=(
            "the tensor's row length (ne0) is a multiple of this number, or of this type's block size "
            "when a type name is given (e.g. 'q4_K' = 256); the special value 'base' means the recipe's base type"
        ),
    )
    dims: NumericCondition | None = Field(
        default=None,
        description="the tensor's number of dimensions (ggml_n_dims: 3 for stacked expert tensors)",
    )
    any: list[Condition] | None = Field(default=None, description="at least one of these conditions holds")
    not_: Condition | None = Field(default=None, alias="not", description="this condition does not hold")

    @property
    def archs(self) -> list[str] | None:
        """``arch`` as a list (a single name is a list of one)."""
        return _as_list(self.arch)

    @property
    def sizes(self) -> list[str] | None:
        """``size`` as a list (a single class is a list of one)."""
        return _as_list(self.size)


class Rule(_Strict):
    """One ordered rule. The first rule (in file order, child recipes before the recipes they extend)
    that matches a quantizable tensor decides its type. A rule with neither ``match`` nor ``category``
    applies to every quantizable tensor its ``layers`` and ``when`` allow."""

    match: str | None = Field(
        default=None,
        description=(
            "a Python regular expression searched (re.search) in the full tensor name, e.g. "
            "'ffn_down_exps\\.weight$'; case is kept"
        ),
    )
    category: Category | list[Category] | None = Field(
        default=None,
        description=(
            "llama.cpp's tensor category (tensor_get_category): token_embd, output, attn_q, attn_k, attn_v, "
            "attn_qkv, attn_kv_b, attn_output, ffn_up, ffn_gate, ffn_down, other (a list: any of them)"
        ),
    )
    layers: list[LayerSelector] | LayerSelector | None = Field(
        default=None,
        description="layer selectors (a list is a union); a tensor outside any block never matches",
    )
    layers_by: Literal["block", "position"] = Field(
        default="block",
        description=(
            "'block': the layer is N in 'blk.N.' and the total is the block count; 'position': llama-quantize's "
            "running counters (the tensor's index among the earlier tensors of its counter group: attn_v-like "
            "(attn_v, attn_qkv, attn_kv_b) with total = their count, or ffn_down / ffn_gate / ffn_up with total = "
            "the block count)"
        ),
    )
    when: Condition | None = Field(
        default=None, description="model facts that must hold for this rule to apply"
    )
    type: TypeNameOrKeep = Field(
        description="target ggml type (case-insensitive, e.g. 'q4_K', 'IQ4_XS', 'q8_0') or 'keep' (the source type)"
    )
    imatrix: bool | None = Field(
        default=None,
        description="whether the quantizer gets importance weights for tensors this rule decides (default: yes when given)",
    )
    note: str | None = Field(default=None, description="free text shown in the plan next to the rule")

    @property
    def categories(self) -> list[Category] | None:
        """``category`` as a list (a single category is a list of one)."""
        return _as_list(self.category)

    @property
    def layer_selectors(self) -> list[str | int] | None:
        """``layers`` as a list (a single selector is a list of one)."""
        return _as_list(self.layers)


class ImatrixSettings(_Strict):
    """How an importance matrix is used (like llama-quantize --imatrix/--include-weights/--exclude-weights)."""

    required: bool = Field(default=False, description="planning without an imatrix is an error")
    include: list[str] = Field(
        default_factory=list,
        description="regexes: only tensors matching one of these get importance weights (--include-weights)",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="regexes: tensors matching one of these get no importance weights (--exclude-weights)",
    )


MetadataType = Literal["str", "int", "float", "bool"]


class MetadataValue(_Strict):
    """A typed metadata override, like llama-quantize --override-kv KEY=TYPE:VALUE."""

    type: MetadataType = Field(
        description="str, int (written as uint32, as llama-quantize does), float or bool"
    )
    value: str | int | float | bool = Field(description="the value, of the given type")


class Recipe(_Strict):
    """A gguf-recipe recipe: what every tensor of a GGUF model should become."""

    schema_: str | None = Field(
        default=None, alias="$schema", description="the JSON Schema this file follows (for editors; ignored)"
    )
    recipe: Literal[1] = Field(description="recipe schema version; always 1")
    name: str | None = Field(default=None, description="a short name for the recipe (shown in plans)")
    description: str | None = Field(default=None, description="what the recipe is for")
    extends: str | None = Field(
        default=None,
        description=(
            "a built-in recipe (e.g. 'llama.cpp/Q4_K_M') or a path relative to this file; its rules come after "
            "this recipe's rules and its scalar fields are overridden by this recipe's"
        ),
    )
    base: TypeName | None = Field(
        default=None,
        description="default type for every quantizable tensor no rule decides (any ggml type name, case-insensitive)",
    )
    ftype: str | None = Field(
        default=None,
        description="general.file_type to write, as a llama_ftype name such as 'Q4_K_M' (inherited with extends)",
    )
    token_embedding: TypeNameOrKeep | None = Field(
        default=None,
        description=(
            "type for token_embd.weight or 'keep' (like --token-embedding-type: beats every rule, "
            "no row-size fallback)"
        ),
    )
    output: TypeNameOrKeep | None = Field(
        default=None,
        description=(
            "type for output.weight or 'keep' (like --output-tensor-type / --leave-output-tensor: no row-size "
            "fallback; with tied embeddings it applies to token_embd.weight after this recipe's rules, with the "
            "fallback)"
        ),
    )
    counters: Literal["stable", "llama-quantize"] = Field(
        default="stable",
        description=(
            "'stable': rules of this recipe do not move the position-based choices ('layers_by: position') of "
            "the recipes it extends; 'llama-quantize': they do, exactly like --tensor-type does"
        ),
    )
    fallbacks: Literal["allow", "error"] = Field(
        default="allow",
        description="'allow': a type the row length cannot hold falls back as llama.cpp does (reported); 'error': fail",
    )
    imatrix: ImatrixSettings | None = Field(default=None, description="importance-matrix settings")
    prune_layers: list[int] = Field(
        default_factory=list,
        description="blocks to drop (like --prune-layers); the remaining blocks are renumbered",
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="typed metadata overrides (like --override-kv)"
    )
    rules: list[Rule] = Field(default_factory=list, description="ordered rules; the first match wins")

    @model_validator(mode="after")
    def _base_or_extends(self) -> Recipe:
        if (self.base is None) == (self.extends is None):
            raise ValueError("a recipe needs exactly one of 'base' (a type) or 'extends' (a recipe)")
        return self


def recipe_json_schema() -> dict[str, object]:
    """The JSON Schema of recipe files (what schema/recipe.schema.json holds)."""
    schema: dict[str, object] = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "gguf-recipe recipe (schema version 1)"
    return schema


__all__ = [
    "CATEGORIES",
    "RECIPE_SCHEMA_VERSION",
    "Category",
    "Condition",
    "ImatrixSettings",
    "MetadataValue",
    "Recipe",
    "Rule",
    "recipe_json_schema",
]
