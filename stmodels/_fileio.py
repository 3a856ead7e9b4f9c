"""Crash-safe file writes shared by every layer: data manifests, checkpoints, logs, pictures.

Each writer fills a temporary file in the destination's folder, flushes and fsyncs it, then
renames it over the destination (``os.replace`` is atomic on POSIX and Windows). A crash or a
kill at any point leaves either the old file or the new one, never a torn file; concurrent
writers (DataLoader workers, ranks) each replace the file whole.

The written file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the
umask), not ``mkstemp``'s private ``0o600``. A temporary file left by a killed writer
(``.NAME.<pid>.<random>.tmp`` whose process is gone) is removed by the next write of ``NAME``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "remove_stale_temporaries"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: os.PathLike | str) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that were killed; returns them.

    Only files named ``.<name>.<pid>.<random>.tmp`` whose ``pid`` is not a live process (and is
    not this process) are removed, so a concurrent writer's file is never touched.
    """
    path = Path(path)
    removed = []
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        middle = candidate.name[len(path.name) + 2 : -len(".tmp")]
        pid_text, _, _ = middle.partition(".")
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _process_alive(int(pid_text)):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:  # already gone (another process cleaned it) or not ours to remove: best effort
            pass
    return removed


def atomic_write(path: os.PathLike | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(stream)`` on a temporary binary file next to ``path``, then rename it to ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(handle, 0o666 & ~_current_umask())
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    return atomic_write(path, lambda stream: stream.write(data))


def atomic_write_text(path: os.PathLike | str, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see the module docstring)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
