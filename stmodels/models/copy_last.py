"""The copy-last-frame baseline: the future is the last observed frame, repeated.

It has no parameters and needs no training; any learned predictor should beat it, and on slowly
moving scenes it is a hard baseline for sharpness (its frames are real frames, never blurred).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.models.registry import ModelConfig, PretrainedMixin, register_model

__all__ = ["CopyLastFrame", "CopyLastFrameConfig"]


@dataclasses.dataclass
class CopyLastFrameConfig(ModelConfig):
    """``in_shape = (T_in, C, H, W)`` and ``out_frames = T_out``, as for every model."""

    in_shape: tuple[int, int, int, int] = (10, 1, 64, 64)
    out_frames: int = 10

    def __post_init__(self):
        if len(tuple(self.in_shape)) != 4 or self.out_frames < 1:
            raise ValueError(f"CopyLastFrameConfig: need in_shape (T_in, C, H, W) and out_frames >= 1, "
                             f"got {self.in_shape}, {self.out_frames}")
        self.in_shape = tuple(int(v) for v in self.in_shape)


class CopyLastFrame(PretrainedMixin, nn.Module):
    """``model(X)``: (batch, T_in, C, H, W) -> (batch, T_out, C, H, W), every frame ``X[:, -1]``."""

    def __init__(self, config: CopyLastFrameConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self._check_input(X, "X", self.config.in_shape[0])
        return X[:, -1:].expand(-1, self.config.out_frames, -1, -1, -1).contiguous()

    def compute_loss(self, X: torch.Tensor, Y: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The reconstruction error (nothing to learn: ``loss`` has no gradient)."""
        prediction = self(X)
        recon = F.mse_loss(prediction, Y)
        return {"loss": recon, "recon": recon, "diff": recon.new_zeros(()), "prediction": prediction}


register_model("copy_last", CopyLastFrameConfig(), CopyLastFrame, description="repeat the last observed frame")
