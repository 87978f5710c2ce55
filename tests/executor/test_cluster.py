"""``recipe apply --cluster`` on a real Dask cluster: a scheduler and workers started here as separate
processes (``python -m dask scheduler`` / ``dask worker``) on localhost, and ``local:N``.

The output must be byte-identical to a local run; a worker SIGKILLed in the middle of a task must not
change that; an interrupted cluster run resumes; an unreachable scheduler or a worker that cannot open
the source fails with a clear error and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from distributed import Client
from typer.testing import CliRunner

import gguf_recipe
from gguf_recipe.cli import app
from gguf_recipe.executor import (
    ApplyInterrupted,
    ClusterError,
    NonFiniteError,
    SourceModel,
    apply_plan,
)
from gguf_recipe.executor.cluster import ClusterQuantizer, parse_cluster_address
from gguf_recipe.executor.testhook import ENV as HOLD_ENV
from gguf_recipe.plan import Plan
from helpers.executor import (
    N_EMBD,
    InterruptAt,
    T,
    interrupt_when_held,
    listdir,
    llama_tensors,
    make_plan,
    moe_model_with_expert_imatrix,
    write_model,
    write_wide_model,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/cwd, killpg")

SRC = str(Path(gguf_recipe.__file__).resolve().parents[1])  # the workers import this very code
START_TIMEOUT_S = 120.0
runner = CliRunner()

# a Q4_K_M-like mix: several k-quants, a legacy type, and copied norms (rows 256 and 512 wide)
MIX = {
    "token_embd.weight": T.Q4_K,
    "blk.0.attn_q.weight": T.Q4_K,
    "blk.0.attn_k.weight": T.Q5_K,
    "blk.0.attn_v.weight": T.Q6_K,
    "blk.0.ffn_down.weight": T.Q6_K,
    "blk.1.ffn_up.weight": T.Q4_0,
    "blk.1.attn_output.weight": T.Q8_0,
}
SMALL_CHUNKS = 64 * 256  # many tasks per tensor, so that many are in flight at once


@dataclass
class DaskCluster:
    """A scheduler and workers, each its own process group (a nanny's worker dies with it)."""

    folder: Path
    address: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _start(self, args: list[str], name: str, cwd: Path, env: Mapping[str, str] | None = None) -> int:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)
        p = subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
        )
        log.close()
        self.procs.append(p)
        return p.pid

    def start_scheduler(self) -> None:
        info = self.folder / "scheduler.json"
        info.unlink(missing_ok=True)  # not another scheduler's address
        self._start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--idle-timeout",  # gone by itself, should a test run be killed
                "600s",
                "--scheduler-file",
                str(info),
            ],
            "scheduler",
            self.folder,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.address:
            try:
                self.address = json.loads(info.read_text())["address"]
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline or self.procs[0].poll() is not None:
                    pytest.fail("the Dask scheduler did not start:\n" + self.log("scheduler"))
                time.sleep(0.05)

    def start_worker(
        self, name: str, cwd: Path, *, nanny: bool = True, env: Mapping[str, str] | None = None
    ) -> int:
        args = ["worker", self.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
        args += ["--death-timeout", "60"]  # gone with its scheduler, should a test run be killed
        args += ["--local-directory", str(self.folder / name)]
        args += ["--nworkers", "1"] if nanny else ["--no-nanny"]
        return self._start(args, name, cwd, env)

    def wait_for_workers(self, n: int) -> None:
        with Client(self.address, timeout=START_TIMEOUT_S, set_as_default=False) as c:  # type: ignore[no-untyped-call]
            c.wait_for_workers(n, timeout=START_TIMEOUT_S)

    def log(self, name: str) -> str:
        p = self.folder / f"{name}.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workers' working folder: not the client's (see test_worker_that_cannot_open_the_source)."""
    return tmp_path_factory.mktemp("worker-home")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, worker_home: Path) -> Iterator[str]:
    """A scheduler and two one-thread workers (with nannies, as `dask worker` runs by default)."""
    c = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        c.start_scheduler()
        c.start_worker("w1", worker_home)
        c.start_worker("w2", worker_home)
        c.wait_for_workers(2)
        yield c.address
    finally:
        c.stop()


@pytest.fixture
def wide(tmp_path: Path) -> Path:
    return write_wide_model(tmp_path / "m.gguf", 41)


def local_bytes(plan: object, model: Path, out: Path, **kw: object) -> bytes:
    res = apply_plan(plan, model, out, progress=False, threads=1, **kw)  # type: ignore[arg-type]
    return res.outputs[0].read_bytes()


# ------------------------------------------------------------------------------------- same bytes


def test_cluster_writes_the_local_bytes(cluster: str, wide: Path, tmp_path: Path) -> None:
    plan = make_plan(wide, MIX, default=T.Q8_0)
    ref = local_bytes(plan, wide, tmp_path / "local.gguf")
    res = apply_plan(
        plan, wide, tmp_path / "c.gguf", progress=False, cluster=cluster, chunk_values=SMALL_CHUNKS
    )
    assert res.outputs[0].read_bytes() == ref
    assert res.cluster is not None and "2 worker(s)" in res.cluster
    assert res.peak_rss_bytes > 0  # the workers' peaks are reported back
    assert listdir(tmp_path) == ["c.gguf", "local.gguf", "m.gguf"]


def test_cluster_imatrix_weights_reach_each_expert(cluster: str, tmp_path: Path) -> None:
    model, im, plan = moe_model_with_expert_imatrix(tmp_path)
    # chunks of 48 rows end mid-expert (128 rows each): each task must carry its own expert's weights
    kw = {"imatrix": im, "chunk_values": 48 * N_EMBD}
    ref = local_bytes(plan, model, tmp_path / "local.gguf", **kw)
    res = apply_plan(plan, model, tmp_path / "c.gguf", progress=False, cluster=cluster, **kw)  # type: ignore[arg-type]
    assert res.outputs[0].read_bytes() == ref


def test_cli_q4_k_m_on_the_cluster(cluster: str, wide: Path, tmp_path: Path) -> None:
    local = runner.invoke(app, ["apply", "llama.cpp/Q4_K_M", str(wide), "-o", str(tmp_path / "l.gguf"), "-q"])
    assert local.exit_code == 0, local.output
    args = ["apply", "llama.cpp/Q4_K_M", str(wide), "-o", str(tmp_path / "c.gguf"), "--cluster", cluster]
    r = runner.invoke(app, [*args, "--chunk-values", str(SMALL_CHUNKS)])
    assert r.exit_code == 0, r.output
    assert f"the Dask cluster at {cluster}: 2 worker(s)" in r.output
    assert (tmp_path / "c.gguf").read_bytes() == (tmp_path / "l.gguf").read_bytes()


def test_ctrl_c_on_a_local_cluster_then_resume(wide: Path, tmp_path: Path) -> None:
    """`recipe apply --cluster local:2` (the console script), Ctrl-C to its whole process group once
    its first tensor is written: it keeps the checkpoint, its LocalCluster's workers go quietly, and
    --resume on a new local:2 cluster finishes the local run's file."""
    local = runner.invoke(app, ["apply", "llama.cpp/Q4_K_M", str(wide), "-o", str(tmp_path / "l.gguf"), "-q"])
    assert local.exit_code == 0, local.output
    out = tmp_path / "c.gguf"
    cmd = [sys.executable, "-m", "gguf_recipe.cli", "apply", "llama.cpp/Q4_K_M", str(wide), "-o", str(out)]
    cmd += ["--cluster", "local:2", "--chunk-values", str(SMALL_CHUNKS)]
    child, _, stderr = interrupt_when_held(cmd, tmp_path, whole_group=True)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "--resume" in stderr and not out.exists()
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    assert "1 resumed" in r.stdout
    assert "a local Dask cluster at tcp://127.0.0.1:" in r.stdout and "2 worker(s)" in r.stdout
    assert out.read_bytes() == (tmp_path / "l.gguf").read_bytes()


# ------------------------------------------------------------------------------------ failures


def test_error_on_a_worker_keeps_its_meaning(cluster: str, tmp_path: Path) -> None:
    tensors = llama_tensors(44)
    tensors["blk.1.ffn_up.weight"][17, 5] = np.nan
    model = write_model(tmp_path / "m.gguf", tensors)
    with pytest.raises(NonFiniteError, match=r"blk\.1\.ffn_up\.weight.*row 17, column 5"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False, cluster=cluster)
    assert listdir(tmp_path) == ["m.gguf"]


def test_worker_that_cannot_open_the_source(
    cluster: str, worker_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path only the client sees: /proc/self/cwd/... names the client's folder in the client and the
    workers' own (another) folder in each worker, as a model on a disk the workers do not mount."""
    model = write_model(tmp_path / "only-here.gguf", llama_tensors(45))
    monkeypatch.chdir(tmp_path)
    seen = "/proc/self/cwd/only-here.gguf"
    with pytest.raises(ClusterError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ cannot open the source") as e:
        apply_plan(make_plan(model), seen, tmp_path / "o.gguf", progress=False, cluster=cluster)
    assert seen in str(e.value) and "a filesystem they all share" in str(e.value)
    assert listdir(tmp_path) == ["only-here.gguf"]


def test_worker_that_sees_another_file_at_the_path(
    cluster: str, worker_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_model(tmp_path / "differs.gguf", llama_tensors(46))
    write_model(worker_home / "differs.gguf", llama_tensors(46, n_layer=2), n_layer=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClusterError, match=r"sees another file at /proc/self/cwd/differs\.gguf"):
        apply_plan(
            make_plan(model),
            "/proc/self/cwd/differs.gguf",
            tmp_path / "o.gguf",
            progress=False,
            cluster=cluster,
        )
    assert listdir(tmp_path) == ["differs.gguf"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_scheduler_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.gguf", llama_tensors(47))
    make_plan(model).save(tmp_path / "p.json")
    address = f"tcp://127.0.0.1:{_closed_port()}"
    # the console script's code path, with a short connection timeout (10 s by default)
    script = (
        "import sys, gguf_recipe.executor.cluster as c; c.CONNECT_TIMEOUT_S = 1.0; "
        "from gguf_recipe.cli import main; main()"
    )
    args = ["apply", "p.json", "m.gguf", "-o", "o.gguf", "--cluster", address, "-q"]
    p = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"error: cannot reach the Dask scheduler at {address}")
    assert sorted(os.listdir(tmp_path)) == ["m.gguf", "p.json"]


def test_cluster_address_forms() -> None:
    assert parse_cluster_address("local:3") == ("local", 3)
    assert parse_cluster_address("local") == ("local", os.cpu_count() or 1)
    assert parse_cluster_address("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", 0)
    for bad in ("local:0", "local:x", " "):
        with pytest.raises(ValueError):
            parse_cluster_address(bad)
    r = runner.invoke(app, ["apply", "a", "b", "-o", "c.gguf", "--cluster", "local:0"])
    assert r.exit_code == 2 and "local:N" in r.output
    r = runner.invoke(app, ["apply", "a", "b", "-o", "c.gguf", "--cluster", "local:2", "--threads", "2"])
    assert r.exit_code == 2 and "--threads is for local runs" in r.output


# --------------------------------------------------------------------------- a worker dies, resume


class HeldRun:
    """A scheduler, a worker A that holds in its first task (the test hook; no nanny, so a killed A
    stays dead) and ``plain`` ordinary workers, and apply_plan running on them in a thread."""

    def __init__(self, tmp_path: Path, *, plain: int, before_workers: Callable[[str], None]) -> None:
        self.cluster = DaskCluster(tmp_path / "dask")
        self.cluster.folder.mkdir()
        self.release = tmp_path / "release"
        self.failure: list[BaseException] = []
        self.thread: threading.Thread | None = None
        self.cluster.start_scheduler()
        before_workers(self.cluster.address)
        env = {HOLD_ENV: f"cluster-task:{self.release}"}
        self.held_worker = self.cluster.start_worker("a", tmp_path, nanny=False, env=env)
        for i in range(plain):
            self.cluster.start_worker(f"plain{i}", tmp_path)
        self.cluster.wait_for_workers(1 + plain)

    def start(self, plan: Plan, model: Path, out: Path) -> None:
        """Start the run; return once worker A holds in a task of it."""

        def run() -> None:
            try:
                apply_plan(
                    plan, model, out, progress=False, cluster=self.cluster.address, chunk_values=SMALL_CHUNKS
                )
            except BaseException as exc:
                self.failure.append(exc)

        self.thread = threading.Thread(target=run)
        self.thread.start()
        reached = self.release.with_name(self.release.name + ".reached")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not reached.exists():
            assert self.thread.is_alive(), self.failure
            assert time.monotonic() < deadline, "worker A never started a task:\n" + self.cluster.log("a")
            time.sleep(0.01)  # polling a state: worker A waits for us
        assert int(reached.read_text()) == self.held_worker

    def finish(self) -> None:
        """Let worker A (if alive) go on and wait for the run."""
        self.release.touch()
        assert self.thread is not None
        self.thread.join(timeout=START_TIMEOUT_S)
        assert not self.thread.is_alive()

    def stop(self) -> None:
        self.release.touch()
        self.cluster.stop()


def test_worker_killed_in_a_task_does_not_change_the_file(wide: Path, tmp_path: Path) -> None:
    """Worker A is SIGKILLed while it holds in a task and the run goes on: Dask gives A's tasks to
    worker B and the file is the local one. (Before any worker joined, the scheduler is refused.)"""

    def refused_without_workers(address: str) -> None:
        with SourceModel(wide) as src, pytest.raises(ClusterError, match="has no workers"):
            ClusterQuantizer(address, src, workers_timeout_s=0.5)

    plan = make_plan(wide, MIX, default=T.Q8_0)
    ref = local_bytes(plan, wide, tmp_path / "local.gguf")
    out = tmp_path / "c.gguf"
    held = HeldRun(tmp_path, plain=1, before_workers=refused_without_workers)
    try:
        held.start(plan, wide, out)
        os.kill(held.held_worker, signal.SIGKILL)
        held.finish()
    finally:
        held.stop()
    assert not held.failure, held.failure
    assert out.read_bytes() == ref


def test_scheduler_lost_mid_run_fails_cleanly(wide: Path, tmp_path: Path) -> None:
    plan = make_plan(wide, MIX, default=T.Q8_0)
    out = tmp_path / "c.gguf"
    held = HeldRun(tmp_path, plain=0, before_workers=lambda address: None)
    try:
        held.start(plan, wide, out)
        os.killpg(held.cluster.procs[0].pid, signal.SIGKILL)  # the scheduler
        held.finish()
    finally:
        held.stop()
    assert len(held.failure) == 1 and isinstance(held.failure[0], ClusterError), held.failure
    assert "connection to its scheduler" in str(held.failure[0])
    assert listdir(tmp_path) == ["dask", "m.gguf", "release", "release.reached"]


def test_interrupted_cluster_run_resumes_to_the_same_file(cluster: str, wide: Path, tmp_path: Path) -> None:
    plan = make_plan(wide, MIX, default=T.Q8_0)
    ref = local_bytes(plan, wide, tmp_path / "local.gguf")
    out = tmp_path / "c.gguf"
    kw = {"cluster": cluster, "chunk_values": SMALL_CHUNKS}
    with pytest.raises(ApplyInterrupted, match="resume"):
        apply_plan(plan, wide, out, progress=InterruptAt(9), **kw)  # type: ignore[arg-type]
    assert not out.exists()
    res = apply_plan(plan, wide, out, progress=False, resume=True, **kw)  # type: ignore[arg-type]
    assert res.resumed_tensors == 9
    assert out.read_bytes() == ref
