"""Crash-safe file writes shared by every layer: data manifests, checkpoints, logs, pictures.

Each writer fills a temporary file in the destination's folder, flushes and fsyncs it, then
renames it over the destination (``os.replace`` is atomic on POSIX and Windows). A crash or a
kill at any point leaves either the old file or the new one, never a torn file; concurrent
writers (DataLoader workers, ranks) each replace the file whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def atomic_write(path: os.PathLike | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(stream)`` on a temporary binary file next to ``path``, then rename it to ``path``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
