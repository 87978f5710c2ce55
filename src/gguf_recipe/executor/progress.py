"""Progress reporting: a per-tensor bar and an overall bar (bytes, rate, ETA) on a terminal (rich).

``apply_plan(progress=None)`` picks :class:`TerminalProgress` when stderr is a terminal and
:class:`NullProgress` otherwise; ``progress=True`` forces output (one line per tensor when not a
terminal), ``False`` silences it, and any object with the :class:`ProgressReporter` methods can be
passed instead (tests use that to interrupt a run at a chosen tensor).
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO, runtime_checkable

__all__ = [
    "LineProgress",
    "NullProgress",
    "ProgressReporter",
    "TerminalProgress",
    "format_bytes",
    "format_duration",
    "make_progress",
]


@runtime_checkable
class ProgressReporter(Protocol):
    def start(self, n_tensors: int, total_bytes: int, resumed_bytes: int) -> None: ...

    def tensor_start(self, index: int, name: str, nbytes: int, what: str) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def tensor_done(self, index: int, name: str) -> None: ...

    def finish(self, ok: bool) -> None: ...


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover


def format_duration(s: float) -> str:
    s = max(0, round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class NullProgress:
    def start(self, n_tensors: int, total_bytes: int, resumed_bytes: int) -> None:
        pass

    def tensor_start(self, index: int, name: str, nbytes: int, what: str) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def tensor_done(self, index: int, name: str) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass


class _Counting:
    """Shared bookkeeping: bytes done overall and for the current tensor, rate, ETA."""

    def __init__(self) -> None:
        self.n_tensors = 0
        self.total = 0
        self.done = 0
        self.resumed = 0
        self.t0 = time.monotonic()
        self.index = 0
        self.name = ""
        self.what = ""
        self.tensor_total = 0
        self.tensor_done_bytes = 0

    def start(self, n_tensors: int, total_bytes: int, resumed_bytes: int) -> None:
        self.n_tensors, self.total, self.done, self.resumed = (
            n_tensors,
            total_bytes,
            resumed_bytes,
            resumed_bytes,
        )
        self.t0 = time.monotonic()

    def tensor_start(self, index: int, name: str, nbytes: int, what: str) -> None:
        self.index, self.name, self.tensor_total, self.what = index, name, nbytes, what
        self.tensor_done_bytes = 0

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self.tensor_done_bytes += nbytes

    def rate(self) -> float:
        dt = time.monotonic() - self.t0
        return (self.done - self.resumed) / dt if dt > 0 else 0.0

    def eta(self) -> float | None:
        r = self.rate()
        return (self.total - self.done) / r if r > 0 else None


class TerminalProgress(_Counting):
    """Two live bars on a terminal (rich): the current tensor, and the whole run with its rate and ETA."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.table import Column

        super().__init__()
        self.min_interval = min_interval
        self._last = 0.0
        console = Console(file=stream if stream is not None else sys.stderr, force_terminal=True)
        # redrawn when this run says so (rate-limited), not from a refresh thread
        self._bars = Progress(
            # the name gives way to the numbers on a narrow terminal (cut, never wrapped)
            TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            BarColumn(bar_width=20),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,
            expand=True,
        )
        self._tensor = self._bars.add_task("", total=1, visible=False)
        self._total = self._bars.add_task("total", total=1)
        self._started = False

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        width = len(str(self.n_tensors))
        self._bars.update(
            self._tensor,
            description=f"[{self.index + 1:>{width}}/{self.n_tensors}] {self.name} {self.what}",
            total=max(self.tensor_total, 1),
            completed=self.tensor_done_bytes,
            visible=True,
        )
        self._bars.update(self._total, total=max(self.total, 1), completed=self.done)
        self._bars.refresh()

    def start(self, n_tensors: int, total_bytes: int, resumed_bytes: int) -> None:
        super().start(n_tensors, total_bytes, resumed_bytes)
        self._bars.start()
        self._started = True
        self._draw(force=True)

    def tensor_start(self, index: int, name: str, nbytes: int, what: str) -> None:
        super().tensor_start(index, name, nbytes, what)
        self._draw()

    def advance(self, nbytes: int) -> None:
        super().advance(nbytes)
        self._draw()

    def tensor_done(self, index: int, name: str) -> None:
        self._draw()

    def finish(self, ok: bool) -> None:
        if self._started:
            self._draw(force=True)
            self._bars.stop()
            self._started = False


class LineProgress(_Counting):
    """One line per tensor, for logs (``progress=True`` when stderr is not a terminal)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr

    def tensor_done(self, index: int, name: str) -> None:
        frac = self.done / self.total if self.total else 1.0
        self.stream.write(
            f"[{index + 1}/{self.n_tensors}] {name} {self.what} ({format_bytes(self.tensor_total)}) "
            f"- {frac * 100:.1f}% {format_bytes(self.rate())}/s\n"
        )
        self.stream.flush()

    def finish(self, ok: bool) -> None:
        pass


def make_progress(progress: bool | ProgressReporter | None, stream: TextIO | None = None) -> ProgressReporter:
    if isinstance(progress, ProgressReporter):
        return progress
    s = stream if stream is not None else sys.stderr
    tty = bool(getattr(s, "isatty", lambda: False)())
    if progress is None:
        return TerminalProgress(s) if tty else NullProgress()
    if progress:
        return TerminalProgress(s) if tty else LineProgress(s)
    return NullProgress()
