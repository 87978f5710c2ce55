"""Hand-made model skeletons of architectures that are not in the oracle, from llama.cpp's tensor lists
(src/models/<arch>.cpp, build 11434) and the real models' config values. F16 conversion conventions:
1-D tensors, norms, routers and non-``.weight`` tensors are F32, the rest F16."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _kv(key: str, value: Any, typ: str | None = None) -> dict[str, Any]:
    if typ is None:
        typ = (
            "string"
            if isinstance(value, str)
            else "float32"
            if isinstance(value, float)
            else ("bool" if isinstance(value, bool) else "uint32")
        )
    return {"key": key, "type": typ, "value": value}


class _Spec:
    def __init__(self, arch: str, name: str) -> None:
        self.arch = arch
        self.metadata: list[dict[str, Any]] = [_kv("general.architecture", arch), _kv("general.name", name)]
        self.tensors: list[dict[str, Any]] = []

    def kv(self, key: str, value: Any, typ: str | None = None) -> None:
        self.metadata.append(
            _kv(key if key.startswith(("general.", "tokenizer.")) else f"{self.arch}.{key}", value, typ)
        )

    def t(self, name: str, *shape: int) -> None:
        f32 = len(shape) == 1 or not name.endswith(".weight") or "_norm" in name or "ffn_gate_inp" in name
        self.tensors.append({"name": name, "shape": list(shape), "dtype": "F32" if f32 else "F16"})

    def vocab(self, n: int) -> None:
        self.metadata.append({"key": "tokenizer.ggml.model", "type": "string", "value": "gpt2"})
        self.metadata.append(
            {"key": "tokenizer.ggml.tokens", "type": "array", "element_type": "string", "length": n}
        )
        self.kv("general.file_type", 1)
        self.kv("general.quantization_version", 2)

    def hparams(self, n_layer: int, n_ctx: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int) -> None:
        self.kv("block_count", n_layer)
        self.kv("context_length", n_ctx)
        self.kv("embedding_length", n_embd)
        self.kv("feed_forward_length", n_ff)
        self.kv("attention.head_count", n_head)
        self.kv("attention.head_count_kv", n_head_kv)

    def embeddings(
        self, n_embd: int, n_vocab: int, *, output: bool = True, output_norm_bias: bool = False
    ) -> None:
        """token_embd, output_norm (and its bias) and, unless the embeddings are tied, output."""
        self.t("token_embd.weight", n_embd, n_vocab)
        self.t("output_norm.weight", n_embd)
        if output_norm_bias:
            self.t("output_norm.bias", n_embd)
        if output:
            self.t("output.weight", n_embd, n_vocab)

    def spec(self) -> dict[str, Any]:
        return {"architecture": self.arch, "metadata": self.metadata, "tensors": self.tensors}


def llama_like(
    arch: str,
    name: str,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    n_vocab: int,
    *,
    qk_norm: bool = False,
    head_dim: int | None = None,
    tied: bool = False,
) -> dict[str, Any]:
    s = _Spec(arch, name)
    hd = head_dim or n_embd // n_head
    s.hparams(n_layer, 8192, n_embd, n_ff, n_head, n_head_kv)
    s.kv("attention.layer_norm_rms_epsilon", 1e-5)
    s.kv("rope.freq_base", 500000.0)
    if head_dim:
        s.kv("attention.key_length", hd)
        s.kv("attention.value_length", hd)
    s.kv("vocab_size", n_vocab)
    s.vocab(n_vocab)
    s.embeddings(n_embd, n_vocab, output=not tied)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.t(b + "attn_norm.weight", n_embd)
        s.t(b + "attn_q.weight", n_embd, n_head * hd)
        s.t(b + "attn_k.weight", n_embd, n_head_kv * hd)
        s.t(b + "attn_v.weight", n_embd, n_head_kv * hd)
        if qk_norm:
            s.t(b + "attn_q_norm.weight", hd)
            s.t(b + "attn_k_norm.weight", hd)
        s.t(b + "attn_output.weight", n_head * hd, n_embd)
        s.t(b + "ffn_norm.weight", n_embd)
        s.t(b + "ffn_gate.weight", n_embd, n_ff)
        s.t(b + "ffn_up.weight", n_embd, n_ff)
        s.t(b + "ffn_down.weight", n_ff, n_embd)
    return s.spec()


def llama31_70b() -> dict[str, Any]:
    return llama_like("llama", "Llama 3.1 70B (skeleton)", 80, 8192, 64, 8, 28672, 128256)


def qwen3_8b() -> dict[str, Any]:
    return llama_like(
        "qwen3", "Qwen3 8B (skeleton)", 36, 4096, 32, 8, 12288, 151936, qk_norm=True, head_dim=128
    )


def falcon_7b() -> dict[str, Any]:
    s = _Spec("falcon", "Falcon 7B (skeleton)")
    n_layer, n_embd, n_head, n_head_kv, n_vocab = 32, 4544, 71, 1, 65024
    hd = n_embd // n_head
    s.hparams(n_layer, 2048, n_embd, 4 * n_embd, n_head, n_head_kv)
    s.kv("attention.layer_norm_epsilon", 1e-5)
    s.vocab(n_vocab)
    s.embeddings(n_embd, n_vocab, output_norm_bias=True)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.t(b + "attn_norm.weight", n_embd)
        s.t(b + "attn_norm.bias", n_embd)
        s.t(b + "attn_qkv.weight", n_embd, n_embd + 2 * n_head_kv * hd)
        s.t(b + "attn_output.weight", n_embd, n_embd)
        s.t(b + "ffn_up.weight", n_embd, 4 * n_embd)
        s.t(b + "ffn_down.weight", 4 * n_embd, n_embd)
    return s.spec()


def gpt_oss_20b() -> dict[str, Any]:
    s = _Spec("gpt-oss", "gpt-oss 20B (skeleton)")
    n_layer, n_embd, n_head, n_head_kv, hd, n_expert, n_ff, n_vocab = 24, 2880, 64, 8, 64, 32, 2880, 201088
    s.hparams(n_layer, 131072, n_embd, n_ff, n_head, n_head_kv)
    s.kv("attention.key_length", hd)
    s.kv("attention.value_length", hd)
    s.kv("attention.layer_norm_rms_epsilon", 1e-5)
    s.kv("attention.sliding_window", 128)
    s.kv("rope.freq_base", 150000.0)
    s.kv("expert_count", n_expert)
    s.kv("expert_used_count", 4)
    s.kv("expert_feed_forward_length", n_ff)
    s.vocab(n_vocab)
    s.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.t(b + "attn_norm.weight", n_embd)
        s.t(b + "post_attention_norm.weight", n_embd)
        s.t(b + "attn_q.weight", n_embd, n_head * hd)
        s.t(b + "attn_q.bias", n_head * hd)
        s.t(b + "attn_k.weight", n_embd, n_head_kv * hd)
        s.t(b + "attn_k.bias", n_head_kv * hd)
        s.t(b + "attn_v.weight", n_embd, n_head_kv * hd)
        s.t(b + "attn_v.bias", n_head_kv * hd)
        s.t(b + "attn_output.weight", n_head * hd, n_embd)
        s.t(b + "attn_output.bias", n_embd)
        s.t(b + "attn_sinks.weight", n_head)
        s.t(b + "ffn_gate_inp.weight", n_embd, n_expert)
        s.t(b + "ffn_gate_inp.bias", n_expert)
        s.t(b + "ffn_gate_exps.weight", n_embd, n_ff, n_expert)
        s.t(b + "ffn_gate_exps.bias", n_ff, n_expert)
        s.t(b + "ffn_up_exps.weight", n_embd, n_ff, n_expert)
        s.t(b + "ffn_up_exps.bias", n_ff, n_expert)
        s.t(b + "ffn_down_exps.weight", n_ff, n_embd, n_expert)
        s.t(b + "ffn_down_exps.bias", n_embd, n_expert)
    return s.spec()


def deepseek2(*, v3: bool) -> dict[str, Any]:
    """DeepSeek-V2-Lite (legacy attn_kv_b) or DeepSeek-V3 (q_lora, split attn_k_b / attn_v_b, 3 dense layers)."""
    if v3:
        name, n_layer, n_embd, n_head, n_vocab = "DeepSeek V3 (skeleton)", 61, 7168, 128, 129280
        q_lora, kv_lora, n_dense, n_expert, n_shared, n_ff, n_ff_exp = 1536, 512, 3, 256, 1, 18432, 2048
    else:
        name, n_layer, n_embd, n_head, n_vocab = "DeepSeek V2 Lite (skeleton)", 27, 2048, 16, 102400
        q_lora, kv_lora, n_dense, n_expert, n_shared, n_ff, n_ff_exp = 0, 512, 1, 64, 2, 10944, 1408
    nope, rope, v_dim = 128, 64, 128
    s = _Spec("deepseek2", name)
    s.hparams(n_layer, 163840, n_embd, n_ff, n_head, 1 if v3 else n_head)
    s.kv("attention.layer_norm_rms_epsilon", 1e-6)
    s.kv("rope.freq_base", 10000.0)
    s.kv("rope.dimension_count", rope)
    s.kv("leading_dense_block_count", n_dense)
    if q_lora:
        s.kv("attention.q_lora_rank", q_lora)
    s.kv("attention.kv_lora_rank", kv_lora)
    s.kv("attention.key_length", kv_lora + rope if v3 else nope + rope)
    s.kv("attention.value_length", kv_lora if v3 else v_dim)
    if v3:
        s.kv("attention.key_length_mla", nope + rope)
        s.kv("attention.value_length_mla", v_dim)
    s.kv("expert_feed_forward_length", n_ff_exp)
    s.kv("expert_count", n_expert)
    s.kv("expert_shared_count", n_shared)
    s.kv("expert_used_count", 8 if v3 else 6)
    s.kv("expert_weights_scale", 2.5 if v3 else 1.0)
    if v3:
        s.kv("expert_weights_norm", True)
        s.kv("expert_gating_func", 2)
    s.vocab(n_vocab)
    s.embeddings(n_embd, n_vocab)
    for i in range(n_layer):
        b = f"blk.{i}."
        s.t(b + "attn_norm.weight", n_embd)
        if q_lora:
            s.t(b + "attn_q_a_norm.weight", q_lora)
            s.t(b + "attn_q_a.weight", n_embd, q_lora)
            s.t(b + "attn_q_b.weight", q_lora, n_head * (nope + rope))
        else:
            s.t(b + "attn_q.weight", n_embd, n_head * (nope + rope))
        s.t(b + "attn_kv_a_norm.weight", kv_lora)
        s.t(b + "attn_kv_a_mqa.weight", n_embd, kv_lora + rope)
        if v3:
            s.t(b + "attn_k_b.weight", nope, kv_lora, n_head)
            s.t(b + "attn_v_b.weight", kv_lora, v_dim, n_head)
        else:
            s.t(b + "attn_kv_b.weight", kv_lora, n_head * (nope + v_dim))
        s.t(b + "attn_output.weight", n_head * v_dim, n_embd)
        s.t(b + "ffn_norm.weight", n_embd)
        if i < n_dense:
            s.t(b + "ffn_gate.weight", n_embd, n_ff)
            s.t(b + "ffn_down.weight", n_ff, n_embd)
            s.t(b + "ffn_up.weight", n_embd, n_ff)
        else:
            s.t(b + "ffn_gate_inp.weight", n_embd, n_expert)
            if v3:
                s.t(b + "exp_probs_b.bias", n_expert)
            s.t(b + "ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert)
            s.t(b + "ffn_down_exps.weight", n_ff_exp, n_embd, n_expert)
            s.t(b + "ffn_up_exps.weight", n_embd, n_ff_exp, n_expert)
            s.t(b + "ffn_gate_shexp.weight", n_embd, n_ff_exp * n_shared)
            s.t(b + "ffn_down_shexp.weight", n_ff_exp * n_shared, n_embd)
            s.t(b + "ffn_up_shexp.weight", n_embd, n_ff_exp * n_shared)
    return s.spec()


ARCHS: dict[str, Callable[[], dict[str, Any]]] = {
    "llama31-70b": llama31_70b,
    "qwen3-8b": qwen3_8b,
    "falcon-7b": falcon_7b,
    "gpt-oss-20b": gpt_oss_20b,
    "deepseek-v2-lite": lambda: deepseek2(v3=False),
    "deepseek-v3": lambda: deepseek2(v3=True),
}
