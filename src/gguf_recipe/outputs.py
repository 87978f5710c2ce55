"""Writing outputs safely: an output never replaces an input of the same command, and text outputs
(plans, recipes, schemas) appear whole or not at all.

Every command that writes files passes its inputs and *every* path it may create, replace or delete
(for ``apply``: the shards, their temp files, the checkpoint and the lock) to :func:`check_outputs`.
Paths are compared resolved (symbolic links, ``..``) and, when both exist, by identity (hard links).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Input", "InputClobberError", "check_outputs", "write_text_atomic"]

# (what the input is, e.g. "the input model", its path)
Input = tuple[str, "str | os.PathLike[str]"]


class InputClobberError(ValueError):
    """An output path is one of the command's inputs."""


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_outputs(inputs: Iterable[Input], outputs: Iterable[str | os.PathLike[str]]) -> None:
    """Raise :class:`InputClobberError` naming both when an output would be written over an input."""
    ins = [(what, Path(p)) for what, p in inputs]
    for out in map(Path, outputs):
        for what, inp in ins:
            if _same(out, inp):
                shown = str(out) if out.name == inp.name else f"{out} (the same file as {inp})"
                raise InputClobberError(
                    f"refusing to write {shown}: it is {what} {inp}; inputs are never overwritten"
                )


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
