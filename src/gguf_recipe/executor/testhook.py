"""A test hook: hold a run at a named point, so that signal and concurrency tests do not depend on timing.

With ``GGUF_RECIPE_TEST_HOLD=POINT:PATH`` in the environment, a run that reaches ``POINT`` writes
``PATH.reached`` (its pid) and waits until ``PATH`` exists (at most ``HOLD_LIMIT_S``, then goes on). A test
starts the run, waits for ``PATH.reached``, does what it needs to do while the run is held (a signal,
a second run), then creates ``PATH`` to let it go on. Each point holds once per process. Without the
variable nothing happens.

Points: ``tensor-written``: the run's first tensor is written and checkpointed (the lock is held, the
partial output and its checkpoint exist, worker processes are running when there are any).
``cluster-task``: a Dask worker process (started with the variable) has begun its first chunk task
(``gguf_recipe.executor.cluster.run_chunk``); ``PATH.reached`` holds the worker's pid.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["ENV", "hold", "wants"]

ENV = "GGUF_RECIPE_TEST_HOLD"
HOLD_LIMIT_S = 120.0
_held: set[str] = set()


def _spec() -> tuple[str, str] | None:
    spec = os.environ.get(ENV)
    if not spec or ":" not in spec:
        return None
    point, _, path = spec.partition(":")
    return point, path


def wants(point: str) -> bool:
    """Whether the run should stop at ``point`` (so the caller can first make its state visible)."""
    spec = _spec()
    return spec is not None and spec[0] == point and point not in _held


def hold(point: str) -> None:
    """Wait at ``point`` until the test lets the run go on (see the module's docstring)."""
    spec = _spec()
    if spec is None or spec[0] != point or point in _held:
        return
    _held.add(point)
    release = Path(spec[1])
    reached = release.with_name(release.name + ".reached")
    tmp = reached.with_name(reached.name + ".tmp")
    tmp.write_text(str(os.getpid()), encoding="utf-8")
    os.replace(tmp, reached)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.005)  # a signal arriving here is handled as anywhere else in the run
