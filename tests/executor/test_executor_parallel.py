"""Worker processes: the same bytes as quantizing in this process, errors that keep their meaning,
interrupt + resume, and the choice between processes and threads (a real Ctrl-C to the whole process
group is in test_executor_safety.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gguf_recipe import quants
from gguf_recipe.executor import (
    ApplyInterrupted,
    ExecutorError,
    NonFiniteError,
    SourceModel,
    apply_plan,
)
from gguf_recipe.executor.parallel import (
    PROCESS_MIN_VALUES,
    ChunkTask,
    InProcessQuantizer,
    ProcessQuantizer,
    make_quantizer,
)
from gguf_recipe.plan import Plan
from helpers.executor import (
    N_EMBD,
    InterruptAt,
    T,
    listdir,
    llama_tensors,
    make_plan,
    moe_model_with_expert_imatrix,
    write_model,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    # rows of 256 and 512: k-quant blocks are 256 wide
    tensors = llama_tensors(41, n_layer=4, n_embd=256, n_ff=512)
    return write_model(tmp_path / "m.gguf", tensors, n_layer=4)


def _both(plan: Plan, model: Path, tmp_path: Path, **kw: Any) -> tuple[bytes, bytes]:
    a = apply_plan(plan, model, tmp_path / "threads.gguf", progress=False, threads=1, **kw)
    b = apply_plan(
        plan, model, tmp_path / "procs.gguf", progress=False, threads=2, parallel="processes", **kw
    )
    return a.outputs[0].read_bytes(), b.outputs[0].read_bytes()


@pytest.mark.parametrize("chunk_values", [64, 1000, 1 << 22])
def test_processes_write_the_same_file(model: Path, tmp_path: Path, chunk_values: int) -> None:
    plan = make_plan(model, {"blk.0.ffn_down.weight": T.Q4_K}, default=T.Q8_0)
    a, b = _both(plan, model, tmp_path, chunk_values=chunk_values)
    assert a == b


def test_processes_with_imatrix_per_expert(tmp_path: Path) -> None:
    model, im, plan = moe_model_with_expert_imatrix(tmp_path)
    # chunks of 48 rows end mid-expert (128 rows each): every chunk must get its own expert's weights
    a, b = _both(plan, model, tmp_path, imatrix=im, chunk_values=48 * N_EMBD)
    assert a == b


def test_processes_requantize(tmp_path: Path) -> None:
    t = llama_tensors(43)
    q = quants.quantize(t.pop("blk.0.attn_q.weight"), T.Q8_0)
    model = write_model(tmp_path / "m.gguf", t, raw={"blk.0.attn_q.weight": (q, T.Q8_0)})
    plan = make_plan(model, {"blk.0.attn_q.weight": T.Q4_0})
    with pytest.warns(UserWarning):
        a, b = _both(plan, model, tmp_path, allow_requantize=True)
    assert a == b


def test_nan_found_by_a_worker_names_tensor_and_row(tmp_path: Path) -> None:
    tensors = llama_tensors(44)
    tensors["blk.1.ffn_up.weight"][17, 5] = np.nan
    model = write_model(tmp_path / "m.gguf", tensors)
    with pytest.raises(NonFiniteError, match=r"blk\.1\.ffn_up\.weight.*row 17, column 5"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False, parallel="processes")
    assert listdir(tmp_path) == ["m.gguf"]


def test_dead_worker_is_reported_and_leaves_nothing(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = quants.quantize

    def die(rows: np.ndarray, *a: object, **k: object) -> object:
        if rows.shape[1] == 512:  # ffn_down: the workers are forked with this patch in place
            os._exit(3)
        return real(rows, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(quants, "quantize", die)
    with pytest.raises(ExecutorError, match="worker process died"):
        apply_plan(make_plan(model), model, tmp_path / "o.gguf", progress=False, parallel="processes")
    assert listdir(tmp_path) == ["m.gguf"]


def test_interrupt_then_resume_with_processes(model: Path, tmp_path: Path) -> None:
    plan = make_plan(model, default=T.Q4_K)
    ref = apply_plan(plan, model, tmp_path / "ref.gguf", progress=False, threads=1).outputs[0]
    out = tmp_path / "o.gguf"
    kw = {"parallel": "processes", "threads": 2, "chunk_values": 16 * 64}
    with pytest.raises(ApplyInterrupted, match="resume"):
        apply_plan(plan, model, out, progress=InterruptAt(9), **kw)  # type: ignore[arg-type]
    assert not out.exists()
    res = apply_plan(plan, model, out, progress=False, resume=True, **kw)  # type: ignore[arg-type]
    assert res.resumed_tensors == 9
    assert out.read_bytes() == ref.read_bytes()


def test_auto_uses_processes_only_for_enough_work_on_several_cores(model: Path) -> None:
    with SourceModel(model) as src:
        assert isinstance(make_quantizer(src, 2, "auto", PROCESS_MIN_VALUES - 1), InProcessQuantizer)
        assert isinstance(make_quantizer(src, 1, "auto", PROCESS_MIN_VALUES), InProcessQuantizer)
        assert isinstance(make_quantizer(src, 2, "threads", PROCESS_MIN_VALUES), InProcessQuantizer)
        q = make_quantizer(src, 2, "auto", PROCESS_MIN_VALUES)
        try:
            assert isinstance(q, ProcessQuantizer)
        finally:
            q.close()
        with pytest.raises(ValueError, match="parallel"):
            make_quantizer(src, 2, "fibers", 0)  # type: ignore[arg-type]


def test_worker_results_and_memory_accounting(model: Path) -> None:
    with SourceModel(model) as src:
        info = src.tensors["blk.2.ffn_down.weight"]
        tasks = [ChunkTask(info.name, info.name, r, 8, T.Q4_K, None, False) for r in range(0, 64, 8)]
        here = InProcessQuantizer(src, 1)
        pool = ProcessQuantizer(src, 2)
        try:
            futures = [pool.submit(t) for t in tasks]
            for t, f in zip(tasks, futures, strict=True):
                assert np.array_equal(f.result(), here.submit(t))
        finally:
            pool.close()
        assert here.peak_rss_bytes() == 0
        # one peak per worker process that ran a task, summed
        assert pool.peak_rss_bytes() > 10 * 2**20
