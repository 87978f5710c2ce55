"""Progress reporting: a per-tensor bar and an overall bar (bytes, rate, ETA) on a terminal.

``apply_plan(progress=None)`` picks :class:`TerminalProgress` when stderr is a terminal and
:class:`NullProgress` otherwise; ``progress=True`` forces output (one line per tensor when not a
terminal), ``False`` silences it, and any object with the :class:`ProgressReporter` methods can be
passed instead (tests use that to interrupt a run at a chosen tensor).
"""

from __future__ import annotations

import shutil
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


def _bar(frac: float, width: int) -> str:
    frac = min(max(frac, 0.0), 1.0)
    full = int(frac * width)
    return (
        "█" * full
        + ("▌" if frac * width - full >= 0.5 else "")
        + " " * (width - full - (frac * width - full >= 0.5))
    )


class TerminalProgress(_Counting):
    """Two self-redrawing lines on a terminal: the current tensor, and the whole run."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._drawn = False

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        width = shutil.get_terminal_size((100, 20)).columns
        bar_w = max(10, min(30, width - 70))
        tfrac = self.tensor_done_bytes / self.tensor_total if self.tensor_total else 1.0
        frac = self.done / self.total if self.total else 1.0
        eta = self.eta()
        line1 = (
            f"[{self.index + 1:>{len(str(self.n_tensors))}}/{self.n_tensors}] {_bar(tfrac, bar_w)} "
            f"{format_bytes(self.tensor_done_bytes)}/{format_bytes(self.tensor_total)} {self.name} {self.what}"
        )
        line2 = (
            f"total {_bar(frac, bar_w)} {frac * 100:5.1f}% {format_bytes(self.done)}/{format_bytes(self.total)} "
            f"{format_bytes(self.rate())}/s ETA {format_duration(eta) if eta is not None else '?'}"
        )
        out = ("\x1b[1A\r\x1b[2K" if self._drawn else "") + line1[:width] + "\n\r\x1b[2K" + line2[:width]
        self.stream.write(out)
        self.stream.flush()
        self._drawn = True

    def start(self, n_tensors: int, total_bytes: int, resumed_bytes: int) -> None:
        super().start(n_tensors, total_bytes, resumed_bytes)
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
        if self._drawn:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


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
