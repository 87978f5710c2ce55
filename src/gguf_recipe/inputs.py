"""Reading input files safely: only regular files, bounded, with a message that says what is wrong.

Every input (recipe, plan, model, imatrix) goes through :func:`check_input_file` or
:func:`read_input_bytes`. A folder, a FIFO, a device such as ``/dev/zero``, a socket, a symbolic link
loop or an unreadable file is refused with one clear message instead of "no such file", a read that
never ends (``/dev/zero``) or one that blocks forever (a FIFO with no writer). The file is opened
without blocking and checked on the open descriptor, so it cannot be swapped between check and read.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

from .errors import GGUFRecipeError

__all__ = ["InputFileError", "check_input_file", "describe_os_error", "open_input", "read_input_bytes"]


class InputFileError(GGUFRecipeError, ValueError):
    """An input path that is not a readable regular file (or is larger than allowed)."""


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def describe_os_error(exc: OSError) -> str:
    """Words for an OSError about a path: 'no such file', 'a symbolic link loop', 'permission denied'."""
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is not a folder"
    if exc.errno == errno.ENAMETOOLONG:
        return "the name is too long"
    return exc.strerror or str(exc)


def _what(what: str, path: Path) -> str:
    return f"{what} {path}" if what else str(path)


def _check_stat(st: os.stat_result, path: Path, what: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{_what(what, path)}: is {_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise InputFileError(
            f"{_what(what, path)}: {st.st_size} bytes is more than the {max_bytes} bytes allowed"
        )


def check_input_file(path: str | os.PathLike[str], what: str = "", *, max_bytes: int | None = None) -> Path:
    """``path`` when it names a regular file (symbolic links followed), else :class:`InputFileError`
    saying what it is instead. ``what`` names the input in the message (``"the imatrix"``)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise InputFileError(f"{_what(what, p)}: {describe_os_error(exc)}") from None
    _check_stat(st, p, what, max_bytes)
    return p


def read_input_bytes(path: str | os.PathLike[str], what: str = "", *, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``), else :class:`InputFileError`."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputFileError(f"{_what(what, p)}: {describe_os_error(exc)}") from None
    try:
        st = os.fstat(fd)
        _check_stat(st, p, what, max_bytes)
        with io.FileIO(fd, closefd=False) as f:
            return f.readall()  # a regular file: the read ends (one buffer, sized from fstat)
    except OSError as exc:
        raise InputFileError(f"{_what(what, p)}: cannot read: {describe_os_error(exc)}") from None
    finally:
        os.close(fd)


def open_input(path: str | os.PathLike[str], what: str = "") -> io.BufferedReader:
    """``path`` opened for reading when it is a regular file (checked on the open descriptor, opened
    without blocking on a FIFO), else :class:`InputFileError`."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputFileError(f"{_what(what, p)}: {describe_os_error(exc)}") from None
    try:
        _check_stat(os.fstat(fd), p, what, None)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
