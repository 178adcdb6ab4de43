"""Atomic file writes and small helpers shared by every layer of the toolkit."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator:
    """Open ``path`` for writing through ``path.tmp<pid>``; rename on success, delete on error.

    A reader never sees a half-written file, and a run killed mid-write leaves the previous
    version (or nothing) behind. An existing directory at ``path`` is refused up front.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file name", path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Build a directory in ``path.tmp`` and swap it in for ``path`` on success (the old one is
    removed only then): a reader sees the old directory or the new one, never a partial one."""
    import shutil

    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
