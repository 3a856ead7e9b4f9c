"""Predicting the future of a user's own sequences, which have no ground truth."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stmodels._fileio import atomic_write_bytes
from stmodels.data import CHDLFolder
from stmodels.data._io import IMAGE_SUFFIXES, encode_png
from stmodels.train.evaluate import autocast_context, forward_options
from stmodels.train.visualize import save_sequence_gif

__all__ = ["predict_folder"]


def _open_sequences(input_dir: Path, in_frames: int, size: tuple[int, int], channels: int, staging: Path):
    """A CHDLFolder of context-only windows over ``input_dir``: a folder of sequences (sub-folders
    of frames, or .npy files), or a single sequence's frames (linked into ``staging``)."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder not found")
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in input_dir.iterdir() if p.is_file()):
        split = staging / "input"
        split.mkdir(parents=True)
        os.symlink(input_dir.resolve(), split / input_dir.name)
        return CHDLFolder(staging, "input", in_frames, 0, resize=size, channels=channels)
    return CHDLFolder(input_dir.parent, input_dir.name, in_frames, 0, resize=size, channels=channels)


@torch.no_grad()
def predict_folder(model: nn.Module, input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                   device: torch.device | str = "cpu", sampler: str | None = None, ddim_steps: int | None = None,
                   seed: int = 0, batch_size: int = 8, precision: str = "fp32") -> list[str]:
    """Predict ``T_out`` frames after the last ``T_in`` frames of every sequence in ``input_dir``.

    Frames are converted to the model's channels and resized to its frame size (as training data
    is). For each sequence ``S`` it writes ``output_dir/S/pred_0000.png ...`` (8-bit) and
    ``output_dir/S.gif`` (the context, then the prediction).

    Args:
        model: a trained model; ``model.config.in_shape = (T_in, C, H, W)`` fixes the input.
        input_dir: a folder of sequences in the CHDL layout (sub-folders of frames, or ``.npy``
            files of (T, H, W) / (T, C, H, W)), or one folder of frames.
        output_dir: created if needed.
        sampler, ddim_steps, seed: DIFFUMA's inference sampler (see :func:`~stmodels.train.evaluate`).

    Returns:
        The names of the predicted sequences.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict_folder: batch_size must be a positive integer, got {batch_size!r}")
    T_in, channels, height, width = model.config.in_shape
    device = torch.device(device)
    options = forward_options(model, sampler, ddim_steps, seed, device)
    output_dir = Path(output_dir)
    staging = Path(tempfile.mkdtemp(prefix="stmodels-predict-"))
    try:
        dataset = _open_sequences(Path(input_dir), T_in, (height, width), channels, staging)
        names = dataset.sequences
        contexts = []
        for name in names:
            frames = dataset.manifest[name]["num_frames"]
            contexts.append(torch.from_numpy(dataset.read_frames(name, frames - T_in, T_in)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    model.eval()
    for start in range(0, len(names), batch_size):
        batch = torch.stack(contexts[start : start + batch_size]).to(device)
        with autocast_context(device, precision):
            predictions = model(batch, **options).float().clamp(0, 1).cpu()
        for name, context, prediction in zip(names[start:], batch.cpu(), predictions):
            folder = output_dir / name
            for step, frame in enumerate(prediction.numpy()):
                pixels = np.floor(frame.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
                atomic_write_bytes(folder / f"pred_{step:04d}.png", encode_png(pixels))
            save_sequence_gif(output_dir / f"{name}.gif", context, prediction)
    return names
