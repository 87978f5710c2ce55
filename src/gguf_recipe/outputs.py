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

from .errors import GGUFRecipeError

__all__ = [
    "Input",
    "InputClobberError",
    "OutputPathError",
    "check_output_path",
    "check_outputs",
    "make_folders",
    "nearest_existing",
    "write_text_atomic",
]

# (what the input is, e.g. "the input model", its path)
Input = tuple[str, "str | os.PathLike[str]"]


class InputClobberError(GGUFRecipeError, ValueError):
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


class OutputPathError(GGUFRecipeError, OSError):
    """An output cannot be written there (no such folder, a folder in the way, no permission...)."""


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` when a file can be written there, else :class:`OutputPathError` saying why."""
    p = Path(path)
    parent = p.parent
    if p.name in ("", ".", ".."):
        raise OutputPathError(f"cannot write {p}: it names a folder, not a file")
    holder = nearest_existing(parent)  # missing folders are made when the file is written
    if not holder.is_dir():
        raise OutputPathError(f"cannot write {p}: {holder} is not a folder")
    if p.is_dir():
        raise OutputPathError(f"cannot write {p}: it is a folder")
    if os.path.lexists(p) and not p.is_file():
        raise OutputPathError(f"cannot write {p}: it exists and is not a regular file")
    return p


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it into place. Raises
    :class:`OutputPathError` with a message naming the path when it cannot."""
    p = check_output_path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    made: list[Path] = []
    try:
        made = make_folders(p.parent)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError) and not isinstance(exc, OutputPathError):
            from .inputs import describe_os_error

            raise OutputPathError(f"cannot write {p}: {describe_os_error(exc)}") from exc
        raise


def nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists."""
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    return folder


def make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns the ones made, outermost first."""
    missing: list[Path] = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    for d in reversed(missing):
        d.mkdir()
        made.append(d)
    return made
