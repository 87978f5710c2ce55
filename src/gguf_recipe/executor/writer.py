"""Streaming GGUF writer: header computed up front, tensor data appended, temp file + atomic rename.

Every target size is known from the plan, so each shard's whole header (key/values and tensor infos
with their offsets) is written first and tensor data is appended in order with ggml's alignment
padding; nothing is buffered beyond the chunk being written. Output goes to hidden ``.NAME.partial``
files beside the targets, which are renamed into place only after the last byte is written and
synced. A JSON checkpoint beside them records how many tensors are complete, so an interrupted run
can be continued with ``resume=True`` and produce byte-identical files.

Shards follow llama.cpp's naming (``NAME-00001-of-00003.gguf``) and carry ``split.no``,
``split.count`` and ``split.tensors.count``; the first shard holds all other metadata.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from gguf import GGUFValueType

from ..outputs import make_folders, nearest_existing
from .errors import OutputError, ResumeError
from .gguf_format import (
    DEFAULT_ALIGNMENT,
    HEADER_FIXED_NBYTES,
    OutTensor,
    align_up,
    pack_header,
    pack_kv,
    tensor_info_nbytes,
)
from .metadata import split_kvs

try:  # pragma: no cover - platform dependent
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_VERSION",
    "OutputLayout",
    "ShardSpec",
    "StreamingWriter",
    "checkpoint_path",
    "lock_path",
    "plan_layout",
    "run_files",
    "shard_paths",
]

CHECKPOINT_VERSION = 1


def shard_paths(out_path: Path, n: int) -> list[Path]:
    """``out.gguf`` for one shard; ``out-00001-of-0000N.gguf``... for several (llama_split_path)."""
    if n <= 1:
        return [out_path]
    stem = out_path.name[: -len(".gguf")] if out_path.name.endswith(".gguf") else out_path.name
    return [out_path.with_name(f"{stem}-{i + 1:05d}-of-{n:05d}.gguf") for i in range(n)]


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def checkpoint_path(out_path: Path) -> Path:
    return out_path.with_name(f".{out_path.name}.checkpoint.json")


def _checkpoint_tmp(out_path: Path) -> Path:
    return out_path.with_name(f".{out_path.name}.checkpoint.json.tmp")


def lock_path(out_path: Path) -> Path:
    return out_path.with_name(f".{out_path.name}.lock")


@dataclass(frozen=True)
class ShardSpec:
    path: Path
    temp: Path
    header: bytes
    first_tensor: int  # index of its first tensor in the run's tensor list
    tensors: tuple[OutTensor, ...]
    offsets: tuple[int, ...]  # data-section offsets
    size: int  # complete file size
    alignment: int = DEFAULT_ALIGNMENT

    def end_of(self, local_index: int) -> int:
        """File size once tensor ``local_index`` (in this shard) and its padding are written."""
        if local_index < 0:
            return len(self.header)
        return (
            len(self.header)
            + self.offsets[local_index]
            + align_up(self.tensors[local_index].nbytes, self.alignment)
        )


@dataclass(frozen=True)
class OutputLayout:
    out_path: Path
    shards: tuple[ShardSpec, ...]
    tensor_shard: tuple[int, ...]
    alignment: int

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s in self.shards:
            h.update(s.path.name.encode())
            h.update(s.header)
        return h.hexdigest()

    def in_place_target(self, index: int) -> tuple[Path, int] | None:
        """Where another process may write tensor ``index``'s data itself: (temp file, offset of the
        data). Only single-file outputs, whose temp file exists from :meth:`StreamingWriter.start` on
        (a later shard is created when the writer reaches it)."""
        if len(self.shards) != 1:
            return None
        s = self.shards[0]
        return s.temp, len(s.header) + s.offsets[index]

    @property
    def total_size(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.shards]


def run_files(layout: OutputLayout) -> list[Path]:
    """Every path a run of ``layout`` may create, replace or delete: the outputs, their temp files, the
    checkpoint (and its temp file) and the lock."""
    out = layout.out_path
    return [
        *layout.paths,
        *(s.temp for s in layout.shards),
        checkpoint_path(out),
        _checkpoint_tmp(out),
        lock_path(out),
    ]


def plan_layout(
    out_path: Path,
    kv_blobs: Sequence[bytes],
    tensors: Sequence[OutTensor],
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    max_shard_bytes: int | None = None,
    max_shard_tensors: int | None = None,
) -> OutputLayout:
    """Assign tensors to shards (a new shard when the shard's whole file, header included, would pass
    ``max_shard_bytes`` — a tensor larger than that gets a shard of its own — or every
    ``max_shard_tensors`` tensors) and compute every header."""
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError("max_shard_bytes must be positive")
    if max_shard_tensors is not None and max_shard_tensors <= 0:
        raise ValueError("max_shard_tensors must be positive")
    split_keys = sum(len(b) for b in split_kvs(0, 1, len(tensors)))
    # unpadded header bytes of an empty shard: the first holds the metadata, the others split keys
    first_head = HEADER_FIXED_NBYTES + sum(len(b) for b in kv_blobs) + split_keys
    other_head = HEADER_FIXED_NBYTES + split_keys
    if alignment != DEFAULT_ALIGNMENT:
        other_head += len(pack_kv("general.alignment", GGUFValueType.UINT32, alignment))
    groups: list[list[int]] = [[]]
    head, data = first_head, 0
    for i, t in enumerate(tensors):
        g = groups[-1]
        info, n = tensor_info_nbytes(t), align_up(t.nbytes, alignment)
        if g and (
            (max_shard_bytes is not None and align_up(head + info, alignment) + data + n > max_shard_bytes)
            or (max_shard_tensors is not None and len(g) >= max_shard_tensors)
        ):
            groups.append([])
            head, data = other_head, 0
        groups[-1].append(i)
        head, data = head + info, data + n
    n_shards = len(groups)
    if n_shards > 99999:
        raise ValueError(f"{n_shards} shards is more than llama.cpp's naming allows")
    finals = shard_paths(out_path, n_shards)
    shards: list[ShardSpec] = []
    tensor_shard: list[int] = []
    for si, idx in enumerate(groups):
        if n_shards == 1:
            blobs = list(kv_blobs)
        elif si == 0:
            blobs = [*kv_blobs, *split_kvs(si, n_shards, len(tensors))]
        else:
            blobs = split_kvs(si, n_shards, len(tensors))
            if alignment != DEFAULT_ALIGNMENT:
                blobs.insert(0, pack_kv("general.alignment", GGUFValueType.UINT32, alignment))
        shard_tensors = tuple(tensors[i] for i in idx)
        header, offsets = pack_header(blobs, shard_tensors, alignment)
        data = align_up(offsets[-1] + shard_tensors[-1].nbytes, alignment) if shard_tensors else 0
        shards.append(
            ShardSpec(
                finals[si], temp_path(finals[si]), header, idx[0] if idx else 0, shard_tensors,
                tuple(offsets), len(header) + data, alignment,
            )
        )  # fmt: skip
        tensor_shard.extend([si] * len(idx))
    return OutputLayout(out_path, tuple(shards), tuple(tensor_shard), alignment)


def _write_bytes(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to ``fd`` (the single place data reaches the disk; tests patch it)."""
    while data.nbytes:
        n = os.write(fd, data)
        data = data[n:]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class StreamingWriter:
    """Writes an :class:`OutputLayout` tensor by tensor. Not thread-safe: call from one thread.

    Deleting is confined to what this run owns: nothing before :meth:`start` holds the lock, then only
    the temp files and checkpoint it created (or adopted by resuming a checkpoint that matches it). A
    refused lock or a refused resume deletes nothing.
    """

    def __init__(self, layout: OutputLayout, *, run_key: str, durable: bool = True) -> None:
        self.layout = layout
        self.run_key = run_key
        self.durable = durable
        self.checkpoint = checkpoint_path(layout.out_path)
        self._shard = -1
        self._fd: int | None = None
        self._lock: IO[bytes] | None = None
        self._written = 0  # bytes of the current tensor so far
        self._tensor = -1
        self._owned: set[Path] = set()  # files this run created or adopted (only while locked)
        self._created_dirs: list[Path] = []  # missing output folders this run made, outermost first
        self.completed = 0

    # -- set-up ----------------------------------------------------------------------------------

    def preflight(self, *, overwrite: bool) -> None:
        """Refuse early: missing folder, existing outputs (unless ``overwrite``), too little space."""
        out_dir = nearest_existing(self.layout.out_path.parent)  # its missing folders are made by start()
        if not out_dir.is_dir():
            raise OutputError(f"cannot write {self.layout.out_path}: {out_dir} is not a folder")
        for s in self.layout.shards:
            if s.path.is_dir():
                raise OutputError(f"{s.path} is a folder; give a file name for the output")
        if not overwrite:
            existing = [s.path for s in self.layout.shards if s.path.exists()]
            if existing:
                raise OutputError(f"{existing[0]} exists (pass overwrite=True to replace it)")
        need = self.layout.total_size - sum(
            s.temp.stat().st_size for s in self.layout.shards if s.temp.exists()
        )
        free = shutil.disk_usage(out_dir).free
        if need > free:
            raise OutputError(
                f"not enough space in {out_dir}: the output needs {need} more bytes, {free} are free"
            )

    def _take_lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        path = lock_path(self.layout.out_path)
        f = open(path, "a+b")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the holder unlinks the lock file when it is done: a lock taken on an unlinked file is
            # no lock (a third run would create and lock a new one)
            if not os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                raise OSError(errno.EAGAIN, "lock file replaced")
        except OSError:
            f.close()
            raise OutputError(
                f"another run is writing {self.layout.out_path} (lock {path} is held)"
            ) from None
        self._lock = f

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                Path(self._lock.name).unlink()
            self._lock.close()
            self._lock = None
        self._owned.clear()

    def start(self, *, resume: bool) -> int:
        """Open the output (making its missing folders). Returns the index of the first tensor still to
        write (0 unless resuming)."""
        try:
            self._created_dirs = make_folders(self.layout.out_path.parent)
            self._take_lock()
            start = self._resume_point() if resume else 0
            # the lock is ours and the checkpoint (if resuming) matches: this run owns the output's
            # leftovers, to continue them or, starting over, to replace them as stale
            self._owned.update(self._leftovers())
            if start == 0:
                self._discard_owned()
            self.completed = start
            self._open_for(start, resume=start > 0)
            return start
        except BaseException:
            self.abort(keep_partial=False)  # only what this run created or adopted
            raise

    def _remove_created_folders(self) -> None:
        """Remove the folders this run made, innermost first, when they are empty (never anything else)."""
        for d in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        self._created_dirs.clear()

    def _resume_point(self) -> int:
        try:
            state: dict[str, Any] = json.loads(self.checkpoint.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise ResumeError(
                f"{self.checkpoint}: unreadable checkpoint ({exc}); delete it to start over"
            ) from None
        if state.get("version") != CHECKPOINT_VERSION or state.get("run_key") != self.run_key:
            raise ResumeError(
                f"{self.checkpoint} belongs to a different run (another plan, model, imatrix or shard "
                "setting); run without resume to start over"
            )
        if state.get("layout") != self.layout.fingerprint:
            raise ResumeError(
                f"{self.checkpoint}: the output layout changed; run without resume to start over"
            )
        done = int(state.get("completed", 0))
        n = len(self.layout.tensor_shard)
        if not 0 <= done <= n:
            raise ResumeError(f"{self.checkpoint}: corrupt checkpoint (completed = {done})")
        # every shard before the one holding tensor `done` must be complete; that one must hold its
        # header and the completed tensors (or not exist yet, when `done` is its first tensor)
        cur = self.layout.tensor_shard[done] if done < n else len(self.layout.shards) - 1
        for si, shard in enumerate(self.layout.shards[: cur + 1]):
            local = done - shard.first_tensor
            need = shard.size if (si < cur or done == n) else shard.end_of(local - 1)
            if si == cur and done < n and local == 0 and not shard.temp.exists():
                continue
            try:
                size = shard.temp.stat().st_size
                with open(shard.temp, "rb") as f:
                    head = f.read(len(shard.header))
            except OSError:
                raise ResumeError(f"{shard.temp} is missing; cannot resume (run without resume)") from None
            if size < need or head != shard.header:
                raise ResumeError(
                    f"{shard.temp} does not match the checkpoint ({size} bytes, need {need}); run without resume"
                )
        return done

    def _leftovers(self) -> list[Path]:
        """The temp files and checkpoint of an earlier run of this output."""
        return [*(s.temp for s in self.layout.shards), self.checkpoint]

    def _discard_owned(self) -> None:
        """Delete the files this run owns; nothing unless it holds the lock."""
        if self._lock is None and fcntl is not None:
            return
        for p in sorted(self._owned):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._owned.clear()

    def _open_for(self, tensor_index: int, *, resume: bool) -> None:
        n = len(self.layout.tensor_shard)
        si = self.layout.tensor_shard[tensor_index] if tensor_index < n else len(self.layout.shards) - 1
        self._open_shard(si, tensor_index, resume=resume)

    def _open_shard(self, si: int, tensor_index: int, *, resume: bool) -> None:
        shard = self.layout.shards[si]
        if resume and shard.temp.exists():
            # continue inside this shard: cut it back to the end of its last complete tensor
            local = min(tensor_index - shard.first_tensor, len(shard.tensors))
            end = shard.end_of(local - 1)
            fd = os.open(shard.temp, os.O_RDWR)
            os.ftruncate(fd, end)
            os.lseek(fd, end, os.SEEK_SET)
        else:
            self._owned.add(shard.temp)
            fd = os.open(shard.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_bytes(fd, memoryview(shard.header))
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        self._shard = si

    # -- writing ---------------------------------------------------------------------------------

    def begin_tensor(self, index: int) -> None:
        si = self.layout.tensor_shard[index]
        if si != self._shard:
            self._close_shard()
            self._open_shard(si, index, resume=False)
        self._tensor = index
        self._written = 0

    def write(self, data: np.ndarray[Any, Any] | bytes | memoryview) -> None:
        assert self._fd is not None
        mv = (
            np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
            if isinstance(data, np.ndarray)
            else memoryview(data)
        )
        shard = self.layout.shards[self._shard]
        expected = shard.tensors[self._tensor - shard.first_tensor].nbytes
        if self._written + mv.nbytes > expected:
            raise OutputError(
                f"internal error: tensor {shard.tensors[self._tensor - shard.first_tensor].name!r} got more "
                f"than its {expected} bytes"
            )
        _write_bytes(self._fd, mv)
        self._written += mv.nbytes

    def skip(self, nbytes: int) -> None:
        """``nbytes`` of the current tensor were written in place by another process: move past them."""
        assert self._fd is not None
        shard = self.layout.shards[self._shard]
        expected = shard.tensors[self._tensor - shard.first_tensor].nbytes
        if self._written + nbytes > expected:
            raise OutputError(
                f"internal error: tensor {shard.tensors[self._tensor - shard.first_tensor].name!r} got more "
                f"than its {expected} bytes"
            )
        os.lseek(self._fd, nbytes, os.SEEK_CUR)
        self._written += nbytes

    def end_tensor(self) -> None:
        assert self._fd is not None
        shard = self.layout.shards[self._shard]
        t = shard.tensors[self._tensor - shard.first_tensor]
        if self._written != t.nbytes:
            raise OutputError(
                f"internal error: tensor {t.name!r} got {self._written} of its {t.nbytes} bytes"
            )
        pad = align_up(t.nbytes, shard.alignment) - t.nbytes
        if pad:
            _write_bytes(self._fd, memoryview(bytes(pad)))
        self.completed = self._tensor + 1
        self._save_checkpoint()

    def _save_checkpoint(self) -> None:
        if self.durable and self._fd is not None:
            os.fdatasync(self._fd) if hasattr(os, "fdatasync") else os.fsync(self._fd)
        state = {
            "version": CHECKPOINT_VERSION,
            "run_key": self.run_key,
            "layout": self.layout.fingerprint,
            "completed": self.completed,
            "n_tensors": len(self.layout.tensor_shard),
        }
        tmp = _checkpoint_tmp(self.layout.out_path)
        self._owned.update((tmp, self.checkpoint))
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, self.checkpoint)

    def _close_shard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)

    # -- finishing -------------------------------------------------------------------------------

    def finalize(self) -> list[Path]:
        """Check sizes, sync, rename every temp file to its final name; remove the checkpoint."""
        if self.completed != len(self.layout.tensor_shard):
            raise OutputError("internal error: finalize before every tensor was written")
        self._close_shard()
        # shards that hold no tensor (only possible for an empty model) still need their header
        for si, s in enumerate(self.layout.shards):
            if not s.tensors and not s.temp.exists():
                self._open_shard(si, s.first_tensor, resume=False)
                self._close_shard()
        for s in self.layout.shards:
            size = s.temp.stat().st_size
            if size != s.size:
                raise OutputError(f"internal error: {s.temp} has {size} bytes, expected {s.size}")
        renamed: list[Path] = []
        try:
            for s in self.layout.shards:
                os.replace(s.temp, s.path)
                renamed.append(s.path)
        except BaseException:
            # a half-renamed set of shards is a partial output: take back what was renamed
            for p in renamed:
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        if self.durable:
            _fsync_dir(self.layout.out_path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.checkpoint.unlink()
        self.close()
        return [s.path for s in self.layout.shards]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._close_shard()
        self._release_lock()

    def abort(self, *, keep_partial: bool) -> None:
        """Close; unless ``keep_partial``, delete the temp files and checkpoint this run owns (none when
        it never got the lock or was refused a resume)."""
        with contextlib.suppress(OSError):
            self._close_shard()
        if not keep_partial:
            self._discard_owned()
        self._release_lock()
        if not keep_partial:
            self._remove_created_folders()


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
