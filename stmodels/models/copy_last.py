"""Baselines without parameters: copy the last frame, or carry it along the observed motion.

``copy_last``: the future is the last observed frame, repeated. Any learned predictor should beat
it, and on slowly moving scenes it is a hard baseline for sharpness (its frames are real frames).
``warp_last``: the last observed frame carried along the block-matching estimate of the input's
velocity (:func:`stmodels.nn.motion.estimate_velocity`), frame ``k`` by ``k + 1`` frames of motion;
on steadily translating scenes (the dicing lanes) it is the bar a learned predictor must clear to
show it models more than the translation. Neither needs training.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.models.registry import ModelConfig, PretrainedMixin, register_model
from stmodels.nn.motion import MotionWarp, estimate_velocity

__all__ = ["CopyLastFrame", "CopyLastFrameConfig", "WarpLastFrame", "WarpLastFrameConfig"]


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


@dataclasses.dataclass
class WarpLastFrameConfig(CopyLastFrameConfig):
    """Shapes as :class:`CopyLastFrameConfig`; ``motion_radius`` and ``motion_window`` as DIFFUMA's."""

    motion_radius: int = 2
    motion_window: int = 31

    def __post_init__(self):
        super().__post_init__()
        if self.motion_radius < 1 or self.motion_window < 1 or self.motion_window % 2 == 0:
            raise ValueError(f"WarpLastFrameConfig: need motion_radius >= 1 and an odd motion_window >= 1, "
                             f"got {self.motion_radius}, {self.motion_window}")


class WarpLastFrame(CopyLastFrame):
    """``model(X)``: (batch, T_in, C, H, W) -> (batch, T_out, C, H, W), ``X[:, -1]`` warped by
    ``(k + 1)`` times the estimated velocity into output frame ``k``."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self._check_input(X, "X", self.config.in_shape[0])
        velocity = estimate_velocity(X, self.config.motion_radius, self.config.motion_window)
        frames = self.config.out_frames
        carried, _ = MotionWarp()(X[:, -1], -velocity.unsqueeze(1).expand(-1, frames, -1, -1, -1))
        return carried.clamp(0.0, 1.0)


register_model("copy_last", CopyLastFrameConfig(), CopyLastFrame, description="repeat the last observed frame")
register_model("warp_last", WarpLastFrameConfig(), WarpLastFrame,
               description="carry the last observed frame along the block-matched velocity")
