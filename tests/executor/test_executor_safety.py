"""Safety: the input is never touched, failures leave no partial output, interrupted runs resume to
byte-identical files, stale or foreign inputs are refused with clear messages."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest

from gguf_recipe import quants
from gguf_recipe.executor import (
    ApplyInterrupted,
    LineProgress,
    NonFiniteError,
    NullProgress,
    OutputError,
    PlanMismatchError,
    RequantizeError,
    RequantizeWarning,
    ResumeError,
    SourceFormatError,
    StalePlanError,
    TerminalProgress,
    apply_plan,
)
from gguf_recipe.executor import writer as writer_mod
from helpers.executor import (
    T,
    interrupt_when_held,
    listdir,
    llama_tensors,
    make_plan,
    sha256_file,
    write_model,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_model(tmp_path / "m.gguf", llama_tensors(31))


class InterruptAt(NullProgress):
    """Raises KeyboardInterrupt when tensor ``index`` starts (or at its ``after_chunks``-th chunk)."""

    def __init__(self, index: int, after_chunks: int | None = None) -> None:
        self.index = index
        self.after_chunks = after_chunks
        self.current = -1
        self.chunks = 0

    def tensor_start(self, index: int, name: str, nbytes: int, what: str) -> None:
        self.current, self.chunks = index, 0
        if index == self.index and self.after_chunks is None:
            raise KeyboardInterrupt

    def advance(self, nbytes: int) -> None:
        self.chunks += 1
        if self.current == self.index and self.after_chunks is not None and self.chunks >= self.after_chunks:
            raise KeyboardInterrupt


# ------------------------------------------------------------------------------------- input/output


def test_output_equal_to_input_refused(model: Path, tmp_path: Path) -> None:
    before = sha256_file(model)
    plan = make_plan(model)
    for target in (model, tmp_path / "." / "m.gguf"):
        with pytest.raises(OutputError, match="is the input model"):
            apply_plan(plan, model, target, progress=False)
    os.link(model, tmp_path / "hardlink.gguf")
    with pytest.raises(OutputError, match="is the input model"):
        apply_plan(plan, model, tmp_path / "hardlink.gguf", progress=False)
    assert sha256_file(model) == before


def test_missing_output_folders_are_made(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "o.gguf"
    apply_plan(make_plan(model), model, out, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.gguf"]


def test_failed_run_removes_the_folders_it_made(tmp_path: Path) -> None:
    tensors = llama_tensors(32)
    tensors["blk.1.ffn_up.weight"][17, 5] = np.nan
    model = write_model(tmp_path / "m.gguf", tensors)
    (tmp_path / "mine").mkdir()
    with pytest.raises(NonFiniteError):
        apply_plan(make_plan(model), model, tmp_path / "mine" / "new" / "deeper" / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["m.gguf", "mine"]  # the user's folder stays, the run's are gone
    assert listdir(tmp_path / "mine") == []


def test_a_file_in_the_way_of_the_output_folder(model: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"mine")
    with pytest.raises(OutputError, match="is not a folder"):
        apply_plan(make_plan(model), model, tmp_path / "f" / "x" / "o.gguf", progress=False)
    assert (tmp_path / "f").read_bytes() == b"mine"


def test_overwrite_false_keeps_existing_file(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        apply_plan(make_plan(model), model, out, progress=False, overwrite=False)
    assert out.read_bytes() == b"old"


@pytest.mark.parametrize("after_bytes", [0, 5000])
def test_disk_full_leaves_nothing(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_bytes: int
) -> None:
    before = sha256_file(model)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"previous output")  # an older result must survive a failed run
    real = writer_mod._write_bytes
    written = 0

    def full(fd: int, data: memoryview) -> None:
        nonlocal written
        if written + data.nbytes > after_bytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        written += data.nbytes
        real(fd, data)

    monkeypatch.setattr(writer_mod, "_write_bytes", full)
    with pytest.raises(OutputError, match="disk full") as exc:
        apply_plan(make_plan(model), model, out, progress=False)
    assert "nothing was written" in str(exc.value)
    assert listdir(tmp_path) == ["m.gguf", "o.gguf"]
    assert out.read_bytes() == b"previous output"
    assert sha256_file(model) == before


def test_error_in_quantizer_leaves_nothing(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = quants.quantize

    def boom(*a: object, **k: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("quantizer exploded")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(quants, "quantize", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["m.gguf"]


# ------------------------------------------------------------------------------------- interrupt + resume


@pytest.mark.parametrize(
    ("index", "after_chunks", "shards"),
    [(7, None, None), (11, 3, None), (0, 2, None), (15, None, 6), (9, 2, 6)],
)
def test_interrupt_then_resume_is_byte_identical(
    model: Path, tmp_path: Path, index: int, after_chunks: int | None, shards: int | None
) -> None:
    plan = make_plan(model)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = apply_plan(plan, model, ref_dir / "o.gguf", progress=False, max_shard_tensors=shards).outputs
    out = tmp_path / "o.gguf"
    kw = {"max_shard_tensors": shards, "chunk_values": 16 * 64}
    with pytest.raises(ApplyInterrupted) as exc:
        apply_plan(plan, model, out, progress=InterruptAt(index, after_chunks), **kw)  # type: ignore[arg-type]
    assert not out.exists()
    assert not any(n.endswith(".gguf") and not n.startswith(".") and n != "m.gguf" for n in listdir(tmp_path))
    if index == 0 and after_chunks is not None:
        assert "removed" in str(exc.value)  # nothing complete: nothing worth keeping
    else:
        assert "resume" in str(exc.value)
        assert any(n.endswith(".partial") for n in listdir(tmp_path))
    res = apply_plan(plan, model, out, progress=False, resume=True, **kw)  # type: ignore[arg-type]
    assert res.resumed_tensors == (index if not (index == 0 and after_chunks) else 0)
    assert [p.name for p in res.outputs] == [p.name for p in ref]
    for a, b in zip(res.outputs, ref, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert sorted(n for n in listdir(tmp_path) if n.startswith(".")) == []


def test_resume_refuses_checkpoint_of_another_plan(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    with pytest.raises(ApplyInterrupted):
        apply_plan(make_plan(model), model, out, progress=InterruptAt(5))
    other = make_plan(model, {"blk.0.attn_q.weight": T.F16}, ftype=1)
    with pytest.raises(ResumeError, match="different run"):
        apply_plan(other, model, out, progress=False, resume=True)
    # without resume, the old partial output is discarded and the run starts over
    res = apply_plan(other, model, out, progress=False)
    assert res.resumed_tensors == 0
    assert listdir(tmp_path) == ["m.gguf", "o.gguf"]


def test_resume_without_checkpoint_starts_over(model: Path, tmp_path: Path) -> None:
    res = apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False, resume=True)
    assert res.resumed_tensors == 0
    assert any("no checkpoint" in w for w in res.warnings)


def test_resume_detects_damaged_partial_file(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    with pytest.raises(ApplyInterrupted):
        apply_plan(make_plan(model), model, out, progress=InterruptAt(6))
    partial = tmp_path / ".o.gguf.partial"
    partial.write_bytes(partial.read_bytes()[:100])
    with pytest.raises(ResumeError, match="does not match the checkpoint"):
        apply_plan(make_plan(model), model, out, progress=False, resume=True)


def test_concurrent_runs_on_one_output_refused(model: Path, tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / ".o.gguf.lock"
    with open(lock, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another run"):
            apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False)


def _run_files(tmp_path: Path) -> dict[str, str]:
    """sha256 of each hidden file beside the output (partial output, checkpoint)."""
    return {n: sha256_file(tmp_path / n) for n in listdir(tmp_path) if n.startswith(".")}


def test_refused_lock_deletes_nothing(model: Path, tmp_path: Path) -> None:
    """A run refused because another holds the lock must leave that run's files alone."""
    import fcntl

    out = tmp_path / "o.gguf"
    with pytest.raises(ApplyInterrupted):
        apply_plan(make_plan(model), model, out, progress=InterruptAt(5))
    before = _run_files(tmp_path)
    assert {".o.gguf.partial", ".o.gguf.checkpoint.json"} <= set(before)
    lock = tmp_path / ".o.gguf.lock"
    with open(lock, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        for resume in (False, True):
            with pytest.raises(OutputError, match="another run"):
                apply_plan(make_plan(model), model, out, progress=False, resume=resume)
        assert _run_files(tmp_path) == {**before, ".o.gguf.lock": sha256_file(lock)}
    lock.unlink()
    res = apply_plan(make_plan(model), model, out, progress=False, resume=True)
    assert res.resumed_tensors == 5


def test_refused_resume_deletes_nothing(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.gguf"
    with pytest.raises(ApplyInterrupted):
        apply_plan(make_plan(model), model, out, progress=InterruptAt(5))
    before = _run_files(tmp_path)
    other = make_plan(model, {"blk.0.attn_q.weight": T.F16}, ftype=1)
    with pytest.raises(ResumeError, match="different run"):
        apply_plan(other, model, out, progress=False, resume=True)
    assert _run_files(tmp_path) == before
    res = apply_plan(make_plan(model), model, out, progress=False, resume=True)
    assert res.resumed_tensors == 5


@pytest.mark.parametrize("name", [".o.gguf.lock", ".o.gguf.partial", ".o.gguf.checkpoint.json"])
def test_input_named_like_a_file_of_the_run_is_refused(model: Path, tmp_path: Path, name: str) -> None:
    """An input that has the name of the lock, temp file or checkpoint of the output is not deleted."""
    plan_file = tmp_path / name
    make_plan(model).save(plan_file)
    before = sha256_file(plan_file)
    with pytest.raises(OutputError, match=rf"refusing to write .*{name}.*the plan"):
        apply_plan(plan_file, model, tmp_path / "o.gguf", progress=False)
    assert sha256_file(plan_file) == before
    other = tmp_path / "other.txt"
    other.write_text("x")
    os.link(other, tmp_path / name.replace(".o.gguf", ".p.gguf"))  # a hard link is the same file
    with pytest.raises(OutputError, match=r"the same file as .*it is the recipe"):
        apply_plan(
            make_plan(model), model, tmp_path / "p.gguf", progress=False, inputs=[("the recipe", other)]
        )
    assert other.read_text() == "x"


# ------------------------------------------------------------------------------------- bad inputs


def test_truncated_source(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model)
    data = model.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SourceFormatError, match="truncated"):
        apply_plan(plan, cut, tmp_path / "o.gguf", progress=False)
    cut.write_bytes(data[:200])  # inside the header
    with pytest.raises(SourceFormatError, match="corrupt or truncated GGUF header"):
        apply_plan(plan, cut, tmp_path / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["cut.gguf", "m.gguf"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"PK\x03\x04" + b"\0" * 100, "not a GGUF file"),
        (b"hello world, not a model\n" * 10, "not a GGUF file"),
        (b"ggjt" + b"\0" * 100, "pre-GGUF"),
        (b"GGUF\x01\x00\x00\x00" + b"\0" * 100, "unsupported GGUF version 1"),
        (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16 + b"\0" * 100, "corrupt or truncated"),
    ],
)
def test_foreign_source(model: Path, tmp_path: Path, content: bytes, match: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(SourceFormatError, match=match):
        apply_plan(make_plan(model), bad, tmp_path / "o.gguf", progress=False)


def test_missing_source(model: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError, match="no such file"):
        apply_plan(make_plan(model), tmp_path / "none.gguf", tmp_path / "o.gguf", progress=False)


def test_stale_plan_refused_unless_forced(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model)
    changed = write_model(tmp_path / "m2.gguf", llama_tensors(31), extra_kv={"general.license": "mit"})
    with pytest.raises(StalePlanError, match="model header changed"):
        apply_plan(plan, changed, tmp_path / "o.gguf", progress=False)
    with pytest.raises(StalePlanError, match="recipe changed"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False, recipe_fingerprint="f" * 64)
    res = apply_plan(plan, changed, tmp_path / "o.gguf", progress=False, force=True)
    assert any("stale plan (forced)" in w for w in res.warnings)


def test_plan_for_another_model_refused_even_forced(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model)
    other = write_model(tmp_path / "other.gguf", llama_tensors(31, n_layer=2), n_layer=2)
    with pytest.raises(PlanMismatchError, match="no such tensor"):
        apply_plan(plan, other, tmp_path / "o.gguf", progress=False, force=True)
    bigger = write_model(tmp_path / "big.gguf", llama_tensors(31, n_layer=4), n_layer=4)
    with pytest.raises(PlanMismatchError, match="does not mention"):
        apply_plan(plan, bigger, tmp_path / "o.gguf", progress=False, force=True)


def test_nan_weights_refused(tmp_path: Path) -> None:
    tensors = llama_tensors(32)
    tensors["blk.1.ffn_up.weight"][17, 5] = np.nan
    model = write_model(tmp_path / "m.gguf", tensors)
    with pytest.raises(NonFiniteError, match=r"blk\.1\.ffn_up\.weight.*row 17, column 5"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["m.gguf"]


def test_f16_overflow_in_output_refused(tmp_path: Path) -> None:
    tensors = llama_tensors(33)
    tensors["blk.0.attn_q.weight"][3, 3] = 1e6  # fine in F32, inf in F16
    model = write_model(tmp_path / "m.gguf", tensors, dtype=T.F32)
    plan = make_plan(model, {"blk.0.attn_q.weight": T.F16}, default=None, ftype=0)
    with pytest.raises(NonFiniteError, match="validation failed"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)


def test_requantize_needs_flag_and_warns(tmp_path: Path) -> None:
    t = llama_tensors(34)
    q = quants.quantize(t.pop("blk.0.attn_q.weight"), T.Q8_0)
    model = write_model(tmp_path / "m.gguf", t, raw={"blk.0.attn_q.weight": (q, T.Q8_0)})
    plan = make_plan(model, {"blk.0.attn_q.weight": T.Q4_0})
    with pytest.raises(RequantizeError, match="already quantized"):
        apply_plan(plan, model, tmp_path / "o.gguf", progress=False)
    assert listdir(tmp_path) == ["m.gguf"]
    with pytest.warns(RequantizeWarning):
        res = apply_plan(plan, model, tmp_path / "o.gguf", progress=False, allow_requantize=True)
    assert res.requantized == ("blk.0.attn_q.weight",)
    from gguf import GGUFReader
    from gguf import quants as gq

    deq = gq.dequantize(q, T.Q8_0).astype(np.float32)
    got = next(x for x in GGUFReader(str(res.outputs[0])).tensors if x.name == "blk.0.attn_q.weight")
    assert np.asarray(got.data).tobytes() == quants.quantize(deq, T.Q4_0).tobytes()
    # copying a quantized tensor needs no flag
    plan2 = make_plan(model, {"blk.0.attn_q.weight": T.Q8_0})
    apply_plan(plan2, model, tmp_path / "o2.gguf", progress=False)


# ------------------------------------------------------------------------------------- progress


def test_progress_line_mode_and_terminal_mode(model: Path, tmp_path: Path) -> None:
    buf = io.StringIO()
    plan = make_plan(model)
    apply_plan(plan, model, tmp_path / "a.gguf", progress=LineProgress(buf))
    lines = buf.getvalue().splitlines()
    assert len(lines) == len(plan.tensors)
    assert lines[-1].startswith(f"[{len(plan.tensors)}/{len(plan.tensors)}]") and "100.0%" in lines[-1]

    tty = io.StringIO()
    apply_plan(plan, model, tmp_path / "b.gguf", progress=TerminalProgress(tty, min_interval=0))
    text = tty.getvalue()
    assert "ETA" in text and "total" in text and "\x1b[2K" in text

    class NotATty(io.StringIO):
        def isatty(self) -> bool:
            return False

    quiet = NotATty()
    from gguf_recipe.executor.progress import make_progress

    assert isinstance(make_progress(None, quiet), NullProgress)
    assert isinstance(make_progress(True, quiet), LineProgress)


def test_output_is_a_folder(model: Path, tmp_path: Path) -> None:
    (tmp_path / "out.gguf").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        apply_plan(make_plan(model), model, tmp_path / "out.gguf", progress=False)


def test_failed_rename_of_shards_leaves_nothing(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    calls = 0

    def flaky(src: object, dst: object) -> None:
        nonlocal calls
        if str(dst).endswith("-00002-of-00003.gguf"):
            calls += 1
            raise OSError(errno.EIO, "I/O error")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError, match="cannot write"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False, max_shard_tensors=12)
    monkeypatch.undo()
    assert calls == 1
    assert listdir(tmp_path) == ["m.gguf"]


CHILD = r"""
import sys
from gguf_recipe.executor import ApplyInterrupted, apply_plan
from gguf_recipe.plan import Plan
try:
    apply_plan(Plan.load(sys.argv[1]), sys.argv[2], sys.argv[3], chunk_values=64, threads=int(sys.argv[4]),
               parallel=sys.argv[5], progress=False)
except ApplyInterrupted as exc:
    print(exc)
    sys.exit(130)
"""


@pytest.mark.parametrize("workers", ["one process", "worker processes"])
def test_real_sigint_then_resume(tmp_path: Path, workers: str) -> None:
    """With worker processes the SIGINT goes to the whole process group, as a terminal's Ctrl-C does:
    the workers must leave the decision (stop, keep a checkpoint) to the parent and not outlive it."""
    import sys

    model = write_model(tmp_path / "m.gguf", llama_tensors(35, n_layer=8), n_layer=8)
    plan = make_plan(model)
    plan.save(tmp_path / "plan.json")
    ref = apply_plan(plan, model, tmp_path / "ref.gguf", progress=False).outputs[0]
    out = tmp_path / "o.gguf"
    group = workers == "worker processes"
    mode = ["2", "processes"] if group else ["1", "threads"]
    cmd = [sys.executable, "-c", CHILD, str(tmp_path / "plan.json"), str(model), str(out), *mode]
    child, stdout, stderr = interrupt_when_held(cmd, tmp_path, whole_group=group)
    assert child.returncode == 130, stderr
    assert "interrupted after" in stdout and "resume" in stdout
    assert "Traceback" not in stderr  # no worker printed a KeyboardInterrupt
    if group:
        with pytest.raises(ProcessLookupError):  # no worker outlived its parent
            os.killpg(child.pid, 0)
    assert not out.exists()
    res = apply_plan(plan, model, out, progress=False, resume=True)
    assert res.resumed_tensors > 0
    assert out.read_bytes() == ref.read_bytes()
