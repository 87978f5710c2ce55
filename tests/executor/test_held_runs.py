"""Real ``recipe apply`` processes held at a known point by the test hook
(``gguf_recipe.executor.testhook``): a SIGKILL leaves no worker process behind, and a second run on
the same output while the first is mid-run is refused without touching the first run's files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gguf_recipe.cli import app
from gguf_recipe.executor.parallel import PROCESS_MIN_VALUES
from helpers.executor import (
    alive,
    children_of,
    listdir,
    llama_tensors,
    sha256_file,
    start_held,
    write_model,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

runner = CliRunner()


def apply_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "gguf_recipe.cli", "apply", *(str(a) for a in args)]


def wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def test_sigkill_of_apply_leaves_no_worker(tmp_path: Path) -> None:
    """`recipe apply --threads 2` on a model big enough for worker processes, held once its first
    tensor is written (the workers are running), then SIGKILLed: every worker dies with it."""
    dims = {"n_layer": 1, "n_embd": 1024, "n_ff": 5120}
    model = write_model(tmp_path / "m.gguf", llama_tensors(1, **dims), **dims)  # type: ignore[arg-type]
    assert PROCESS_MIN_VALUES <= 3 * 1024 * 5120 + 3 * 1024 * 1024  # "auto" picks worker processes
    out = tmp_path / "o.gguf"
    proc, _ = start_held(apply_cmd("llama.cpp/Q8_0", model, "-o", out, "--threads", "2", "-q"), tmp_path)
    workers = children_of(proc.pid)
    assert len(workers) >= 2, workers
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL  # (not communicate: live workers hold its pipes)
    left = wait_gone(workers)
    for pid in left:  # do not leave them running when the test fails
        os.kill(pid, signal.SIGKILL)
    assert left == [], "worker processes outlived a SIGKILLed apply"
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    assert not out.exists()


@pytest.mark.parametrize("kernel", [True, False], ids=["prctl", "watchdog"])
def test_worker_dies_with_its_parent(tmp_path: Path, kernel: bool) -> None:
    """``die_with_parent``: the kernel's parent-death signal, and the watchdog thread alone (what
    other systems rely on), each end the child when its parent ends without a word."""
    script = f"""
import os, sys, time
from gguf_recipe.executor.parallel import die_with_parent
r, w = os.pipe()
parent = os.getpid()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # do not hold the test's pipes
    os.dup2(null, 2)
    die_with_parent(parent, kernel={kernel})
    os.write(w, b"x")
    time.sleep(120)
    os._exit(0)
os.read(r, 1)  # the child is armed
print(pid, flush=True)
os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout)
    left = wait_gone([child])
    if left:
        os.kill(child, signal.SIGKILL)
    assert left == []


def test_second_apply_while_the_first_runs(tmp_path: Path) -> None:
    """The first run holds the lock mid-run (its partial output and checkpoint exist). A second run on
    the same output, fresh or --resume, is refused and deletes or changes none of the first run's
    files; the first run then finishes normally."""
    model = write_model(tmp_path / "m.gguf", llama_tensors(2))
    out = tmp_path / "o.gguf"
    first, release = start_held(apply_cmd("llama.cpp/Q8_0", model, "-o", out, "-q"), tmp_path)
    hidden = sorted(n for n in listdir(tmp_path) if n.startswith("."))
    assert {".o.gguf.partial", ".o.gguf.checkpoint.json", ".o.gguf.lock"} <= set(hidden)
    before = {n: sha256_file(tmp_path / n) for n in hidden}
    for extra in ([], ["--resume"]):
        r = runner.invoke(app, ["apply", "llama.cpp/Q8_0", str(model), "-o", str(out), "-q", *extra])
        assert r.exit_code == 1, r.output
        assert "another run" in r.stderr and "Traceback" not in r.output
        assert {n: sha256_file(tmp_path / n) for n in hidden} == before
        assert not out.exists()
    release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    r = runner.invoke(app, ["apply", "llama.cpp/Q8_0", str(model), "-o", str(tmp_path / "ref.gguf"), "-q"])
    assert r.exit_code == 0, r.output
    assert sha256_file(out) == sha256_file(tmp_path / "ref.gguf")
    assert [n for n in listdir(tmp_path) if n.startswith(".")] == []


def test_hook_does_nothing_without_the_variable(tmp_path: Path) -> None:
    from gguf_recipe.executor import testhook

    assert os.environ.get(testhook.ENV) is None
    assert not testhook.wants("tensor-written")
    testhook.hold("tensor-written")  # returns at once
