"""llama.cpp's fixed quantization facts (llama-quant.cpp, build 11434): which tensors may be quantized,
tensor categories, the processing order (and the file-type guess made from it), the row-size fallback
table, which types need an importance matrix, and the llama_ftype values with their names and base types.

These are properties of llama.cpp itself, not of any mix; the mixes live in recipes/llama.cpp/*.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

T = GGMLQuantizationType

# tools/quantize/quantize.cpp QUANT_OPTIONS: every name llama-quantize accepts for its ftype argument
# -> llama_ftype value (llama.h), in its order. Q3_K/Q4_K/Q5_K are aliases of the _M mixes; COPY
# copies tensors unchanged.
QUANTIZE_OPTIONS: dict[str, int] = {
    "Q1_0": 40,
    "Q2_0": 41,
    "Q4_0": 2,
    "Q4_1": 3,
    "MXFP4_MOE": 38,
    "Q5_0": 8,
    "Q5_1": 9,
    "IQ2_XXS": 19,
    "IQ2_XS": 20,
    "IQ2_S": 28,
    "IQ2_M": 29,
    "IQ1_S": 24,
    "IQ1_M": 31,
    "TQ1_0": 36,
    "TQ2_0": 37,
    "Q2_K": 10,
    "Q2_K_S": 21,
    "IQ3_XXS": 23,
    "IQ3_S": 26,
    "IQ3_M": 27,
    "Q3_K": 12,
    "IQ3_XS": 22,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
    "Q4_K": 15,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K": 17,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "Q8_0": 7,
    "F16": 1,
    "BF16": 32,
    "F32": 0,
    "COPY": 0,
}
FTYPE_ALIASES: dict[str, str] = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# Mixes of types newer than gguf-py's (no built-in recipe can be written for them).
_FTYPES_BEYOND_GGUF_PY = ("Q1_0", "Q2_0")

# The llama_ftype of every mix gguf-recipe ships as a built-in recipe (recipes/llama.cpp/<NAME>.yaml).
LLAMA_FTYPES: dict[str, int] = {
    name: value
    for name, value in QUANTIZE_OPTIONS.items()
    if name not in FTYPE_ALIASES and name != "COPY" and name not in _FTYPES_BEYOND_GGUF_PY
}
FTYPE_Q2_K_S = LLAMA_FTYPES["Q2_K_S"]

# The canonical mix name of each llama_ftype value (what a number on llama-quantize's command line means).
FTYPE_NAMES: dict[int, str] = {
    value: name for name, value in QUANTIZE_OPTIONS.items() if name not in FTYPE_ALIASES and name != "COPY"
}

# llama-quant.cpp llama_model_quantize_impl: the default type of each ftype (what --pure uses everywhere).
FTYPE_BASE_TYPE: dict[str, str] = {
    "Q4_0": "q4_0",
    "Q4_1": "q4_1",
    "Q5_0": "q5_0",
    "Q5_1": "q5_1",
    "Q8_0": "q8_0",
    "F16": "f16",
    "BF16": "bf16",
    "F32": "f32",
    "Q1_0": "q1_0",
    "Q2_0": "q2_0",
    "MXFP4_MOE": "mxfp4",
    "Q2_K_S": "q2_K",
    "Q2_K": "q2_K",
    "IQ3_XS": "iq3_s",
    "Q3_K_S": "q3_K",
    "Q3_K_M": "q3_K",
    "Q3_K_L": "q3_K",
    "Q4_K_S": "q4_K",
    "Q4_K_M": "q4_K",
    "Q5_K_S": "q5_K",
    "Q5_K_M": "q5_K",
    "Q6_K": "q6_K",
    "TQ1_0": "tq1_0",
    "TQ2_0": "tq2_0",
    "IQ2_XXS": "iq2_xxs",
    "IQ2_XS": "iq2_xs",
    "IQ2_S": "iq2_xs",
    "IQ2_M": "iq2_s",
    "IQ3_XXS": "iq3_xxs",
    "IQ1_S": "iq1_s",
    "IQ1_M": "iq1_m",
    "IQ4_NL": "iq4_nl",
    "IQ4_XS": "iq4_xs",
    "IQ3_S": "iq3_s",
    "IQ3_M": "iq3_s",
}

# llama-model-loader.cpp: the llama_ftype a file "mostly" of one tensor type gets.
FTYPE_OF_TYPE: dict[GGMLQuantizationType, int] = {
    T.F32: 0, T.F16: 1, T.BF16: 32, T.Q4_0: 2, T.Q4_1: 3, T.Q5_0: 8, T.Q5_1: 9, T.Q8_0: 7,
    T.Q2_K: 10, T.Q3_K: 12, T.Q4_K: 15, T.Q5_K: 17, T.Q6_K: 18, T.TQ1_0: 36, T.TQ2_0: 37,
    T.IQ2_XXS: 19, T.IQ2_XS: 20, T.IQ2_S: 28, T.IQ3_XXS: 23, T.IQ1_S: 24, T.IQ1_M: 31,
    T.IQ4_NL: 25, T.IQ4_XS: 30, T.IQ3_S: 26, T.MXFP4: 38,
}  # fmt: skip

_BLK = re.compile(rb"^blk\.([+-]?\d+)")


def block_number(name: str) -> int | None:
    """The N of a leading ``blk.N.`` (sscanf("blk.%d.") semantics); None for non-block tensors."""
    m = _BLK.match(name.encode())
    return int(m.group(1)) if m else None


def processing_key(name: str) -> tuple[int, bytes]:
    """llama_model_loader's weight_name_comparer: layer (-1 outside blocks), then byte-wise name."""
    n = block_number(name)
    return (-1 if n is None else n, name.encode())


def guess_ftype(types: Mapping[str, GGMLQuantizationType]) -> int:
    """llama-model-loader's guess: the ftype of the most common tensor type (ties: the type that
    reached the count first in llama's tensor order)."""
    counts: dict[GGMLQuantizationType, int] = {}
    best, best_n = T.F32, 0
    for name in sorted(types, key=processing_key):
        t = types[name]
        counts[t] = counts.get(t, 0) + 1
        if counts[t] > best_n:
            best, best_n = t, counts[t]
    return FTYPE_OF_TYPE.get(best, 0)


def category(name: str) -> str:
    """tensor_get_category, by lower-case category name."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for needle, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if needle in name:
            return cat
    return "other"


# The position counters of llama-quantize: i_attention_wv (attn_v-like), i_ffn_down, i_ffn_gate, i_ffn_up.
COUNTER_GROUP: dict[str, str] = {
    "attn_v": "attn_v",
    "attn_qkv": "attn_v",
    "attn_kv_b": "attn_v",
    "ffn_down": "ffn_down",
    "ffn_gate": "ffn_gate",
    "ffn_up": "ffn_up",
}

_NOT_QUANTIZED_SUBSTRINGS = (
    ("_norm.weight", "a norm"),
    ("ffn_gate_inp.weight", "the expert router (ffn_gate_inp)"),
    ("ffn_gate_tid2eid.weight", "the token-to-expert routing table"),
    ("altup", "an altup tensor (tiny)"),
    ("laurel", "a laurel tensor (tiny)"),
    ("per_layer_model_proj", "per_layer_model_proj (small)"),
    ("ssm_conv1d", "a small conv1d weight"),
    ("shortconv.conv.weight", "a small conv weight"),
    ("indexer.k_proj.weight", "an indexer projection (tiny)"),
    ("indexer.q_proj.weight", "an indexer projection (tiny)"),
)
_GLM5_NEXT = (
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
)
_RWKV = tuple(
    f"time_mix_{s}.weight"
    for s in (
        "first",
        "w0",
        "w1",
        "w2",
        "v0",
        "v1",
        "v2",
        "a0",
        "a1",
        "a2",
        "g1",
        "g2",
        "decay_w1",
        "decay_w2",
        "lerp_fused",
    )
)
_MULTIMODAL = (
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)


def not_quantizable_reason(name: str, n_dims: int, arch: str, *, quantize_output: bool = True) -> str | None:
    """tensor_allows_quantization, inverted: why llama.cpp leaves this tensor as it is (None: it may quantize)."""
    if n_dims < 2:
        return "1-D tensor"
    if not name.endswith("weight"):
        return "not a weight"
    if not quantize_output and name == "output.weight":
        return "output tensor left as it is"
    for needle, why in _NOT_QUANTIZED_SUBSTRINGS:
        if needle in name:
            return why
    if name in ("position_embd.weight", "token_types.weight"):
        return "positional / token-type embedding"
    if arch == "glm5-next":
        for needle in _GLM5_NEXT:
            if needle in name:
                return f"{needle} (glm5-next)"
    for needle in _RWKV:
        if needle in name:
            return "a small RWKV weight"
    for needle in _MULTIMODAL:
        if needle in name:
            return f"{needle.strip('.')} (kept as is)"
    return None


_TO_IQ4_NL = {T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS}
_TO_Q4_0 = {T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0}
_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


class NoFallbackError(ValueError):
    pass


def block_size(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def is_quantized(t: GGMLQuantizationType) -> bool:
    """ggml_is_quantized: every type but the float and integer ones."""
    return t not in (T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64)


def fallback_type(target: GGMLQuantizationType, ncols: int) -> GGMLQuantizationType | None:
    """tensor_type_fallback: None when ``ncols`` fits ``target``, else the type llama.cpp uses instead."""
    qk = block_size(target)
    if ncols % qk == 0:
        return None
    if target in _TO_IQ4_NL:
        ret = T.IQ4_NL
    elif target in _TO_Q4_0:
        ret = T.Q4_0
    elif target in _FALLBACK:
        ret = _FALLBACK[target]
    elif qk <= 32:
        ret = target
    else:
        raise NoFallbackError(f"no tensor type fallback is defined for type {target.name.lower()}")
    if ncols % block_size(ret) != 0:
        ret = T.F16
    return ret


# tensor_requires_imatrix: llama-quantize refuses these types without an importance matrix (ggml's
# own quantizers can run IQ3_XXS, IQ2_S and IQ1_M without one; llama.cpp does not let them).
TYPES_NEEDING_IMATRIX = frozenset({T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S})


def requires_imatrix(name: str, t: GGMLQuantizationType, ftype: str | int | None) -> bool:
    """tensor_requires_imatrix (llama-quantize refuses a real run without an imatrix); ``ftype`` is the
    mix's name or llama_ftype value (Q2_K needs one only in the Q2_K_S mix)."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if t in TYPES_NEEDING_IMATRIX:
        return True
    is_q2_k_s = ftype == FTYPE_Q2_K_S if isinstance(ftype, int) else (ftype or "").upper() == "Q2_K_S"
    return t == T.Q2_K and is_q2_k_s
