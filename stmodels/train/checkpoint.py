"""Checkpoints: a whole training state in one file, written so a crash never tears it.

``save_checkpoint`` serialises the state, records the SHA-256 of those bytes beside them, writes
both into a temporary file next to the destination, fsyncs it and renames it into place: after a
crash at any moment the previous checkpoint is still whole. ``load_checkpoint`` verifies the
checksum and names the file and the problem when a file is missing, truncated, altered (a flipped
bit) or not a stmodels checkpoint. Files of the first format (no checksum) still load.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from stmodels._fileio import atomic_write_bytes
from stmodels.errors import UserError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "stmodels-checkpoint/2"
_LEGACY_FORMAT = "stmodels-checkpoint/1"  # the state itself, without a checksum


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable, damaged or not written by this library."""


def _serialise(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _deserialise(data: bytes, path: Path, map_location) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, foreign objects
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts and lists) to ``path`` atomically,
    with a SHA-256 checksum of its serialised bytes."""
    # Serialised in memory first: a full disk then fails in our own write, as an OSError naming
    # the file, not inside torch's zip writer.
    payload = _serialise({"format": CHECKPOINT_FORMAT, **state})
    envelope = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    return atomic_write_bytes(path, _serialise(envelope))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors onto ``map_location``).

    Raises:
        CheckpointError: naming ``path`` when it is missing, unreadable, fails its checksum or is
            not a stmodels checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    outer = _deserialise(data, path, "cpu")
    if isinstance(outer, dict) and outer.get("format") == CHECKPOINT_FORMAT and "payload" in outer:
        payload = outer["payload"]
        if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
            raise CheckpointError(f"{path}: checksum mismatch; the file is damaged (altered after it was written)")
        state = _deserialise(payload, path, map_location)
    elif isinstance(outer, dict) and outer.get("format") == _LEGACY_FORMAT:
        state = _deserialise(data, path, map_location) if map_location != "cpu" else outer
    else:
        state = None
    if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, _LEGACY_FORMAT):
        raise CheckpointError(f"{path}: not a stmodels checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def require_entries(state: dict[str, Any], path: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Raise a CheckpointError naming ``path`` unless ``state`` holds every entry of ``names``."""
    missing = [name for name in names if name not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(map(repr, missing))}; it is damaged or "
                              "not a training state")
