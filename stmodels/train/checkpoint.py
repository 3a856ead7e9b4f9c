"""Checkpoints: a whole training state in one file, written so a crash never tears it.

``save_checkpoint`` serialises into a temporary file next to the destination, fsyncs it and
renames it into place: after a crash at any moment the previous checkpoint is still whole.
``load_checkpoint`` names the file and the problem when a file is missing, truncated or not a
stmodels checkpoint.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from stmodels._fileio import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "stmodels-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not written by this library."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, nested dicts and lists) to ``path`` atomically."""
    payload = {"format": CHECKPOINT_FORMAT, **state}
    return atomic_write(path, lambda stream: torch.save(payload, stream))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors onto ``map_location``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, foreign objects
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a stmodels checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state
