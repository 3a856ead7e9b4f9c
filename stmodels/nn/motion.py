"""Motion-compensated prediction: carry the last observed frame along a predicted displacement field.

A predictor that only mixes features at a coarse latent resolution cannot move fine texture by a
sub-pixel amount; a warp can. :class:`MotionWarp` turns per-output-frame velocity fields (predicted
by the temporal path's decoder) into displacements and resamples the last observed frame with them,
so that a constant translation is carried over every predicted frame exactly, and only what the
warp cannot explain (new content entering at the border, changing objects) is left to the residual.
See ``docs/architecture.rst`` (the temporal path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MOTIONS", "warp_frames", "estimate_velocity", "MotionWarp"]

MOTIONS = ("none", "warp")


def warp_frames(frames: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp frames: ``out[..., y, x] = frames[..., y + flow_y, x + flow_x]`` (bilinear).

    Positions outside the frame read the nearest border pixel. The flow is in pixels, so a constant
    field ``(0, -1)`` moves the content one pixel to the right.

    Args:
        frames: (N, C, H, W).
        flow: (N, 2, H, W), channel 0 the row (y) and channel 1 the column (x) offset of the source.

    Returns:
        (N, C, H, W), differentiable in both ``frames`` and ``flow``.
    """
    if frames.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or flow.shape[0] != frames.shape[0] \
            or flow.shape[2:] != frames.shape[2:]:
        raise ValueError(f"warp_frames: expected frames (N, C, H, W) and flow (N, 2, H, W); "
                         f"got {tuple(frames.shape)} and {tuple(flow.shape)}")
    _, _, height, width = frames.shape
    rows = torch.arange(height, device=flow.device, dtype=flow.dtype).view(1, height, 1)
    cols = torch.arange(width, device=flow.device, dtype=flow.dtype).view(1, 1, width)
    # grid_sample's normalised coordinates with align_corners=True: -1 and 1 are the outer pixel centres.
    source_y = (rows + flow[:, 0]) * (2.0 / max(height - 1, 1)) - 1.0
    source_x = (cols + flow[:, 1]) * (2.0 / max(width - 1, 1)) - 1.0
    grid = torch.stack((source_x, source_y), dim=-1)
    return F.grid_sample(frames, grid.to(frames.dtype), mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def estimate_velocity(frames: torch.Tensor, radius: int = 2, window: int = 15) -> torch.Tensor:
    """Block matching between consecutive frames: the content's velocity per pixel, in pixels per frame.

    For every integer offset ``d`` with ``|d_y|, |d_x| <= radius`` the squared difference between
    frame ``t`` and frame ``t - 1`` moved by ``d`` is averaged over every consecutive pair and over a
    ``window x window`` box; the offset of least cost, refined to sub-pixel by a parabola through its
    neighbours on each axis, is the velocity. Averaging the pairs assumes the velocity is steady over
    the input; what it misses is left to the learned correction of :class:`MotionWarp`'s caller.
    No gradient flows through the estimate.

    Args:
        frames: (batch, T, C, H, W) with T >= 2.
        radius: the largest displacement per frame searched, in pixels.
        window: side of the box the cost is averaged over (odd; larger is steadier on periodic texture).

    Returns:
        (batch, 2, H, W): (rows, columns) displacement of the content per frame.
    """
    if frames.dim() != 5 or frames.shape[1] < 2:
        raise ValueError(f"estimate_velocity: expected frames (batch, T >= 2, C, H, W), got {tuple(frames.shape)}")
    batch, steps, channels, height, width = frames.shape
    later = frames[:, 1:].flatten(0, 1)
    earlier = F.pad(frames[:, :-1].flatten(0, 1), (radius,) * 4, mode="replicate")
    side = 2 * radius + 1
    costs = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            # earlier[y - dy, x - dx]: where the content now at (y, x) was one frame ago if it moved by d.
            moved = earlier[:, :, radius - dy: radius - dy + height, radius - dx: radius - dx + width]
            costs.append((later - moved).square().sum(1))
    cost = torch.stack(costs, 1).unflatten(0, (batch, steps - 1)).mean(1)  # (batch, side * side, H, W)
    # The box mean as two 1-D means (the same numbers, window / 2 times fewer additions).
    half = window // 2
    cost = F.avg_pool2d(cost, (window, 1), stride=1, padding=(half, 0), count_include_pad=False)
    cost = F.avg_pool2d(cost, (1, window), stride=1, padding=(0, half), count_include_pad=False)
    best = cost.argmin(1, keepdim=True)  # (batch, 1, H, W), index dy_index * side + dx_index
    iy, ix = best // side, best % side

    def refined(index: torch.Tensor, step: int) -> torch.Tensor:
        """The offset on one axis (``step`` = that axis's stride in the flat index), refined by the
        parabola through the cost one offset either side (the search's edge moves the centre in)."""
        centre = index.clamp(1, side - 2)
        flat = best + (centre - index) * step
        lo, mid, hi = (cost.gather(1, flat + k * step) for k in (-1, 0, 1))
        curvature = (lo - 2 * mid + hi).clamp(min=1e-12)
        shift = (0.5 * (lo - hi) / curvature).clamp(-1.0, 1.0)
        return (centre - radius).to(frames.dtype) + shift

    return torch.cat((refined(iy, side), refined(ix, 1)), 1)


class MotionWarp(nn.Module):
    """Displacements from per-frame velocities, and the last observed frame carried along them.

    Output frame ``k`` (0-based) is ``k + 1`` frames after the last observed one, so its source offset
    is ``(k + 1) * velocity_k``: a constant velocity needs the same field in every output frame, and a
    small (zero-initialised) field already reaches the far frames. Each output frame keeps its own
    field, so accelerating or turning motion stays expressible.

    Shape:
        last: (batch, C, H, W), velocity: (batch, T_out, 2, H, W) in pixels per frame ->
        (carried: (batch, T_out, C, H, W), flow: (batch, T_out, 2, H, W) in pixels).
    """

    def forward(self, last: torch.Tensor, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames = velocity.shape[:2]
        if last.dim() != 4 or velocity.dim() != 5 or velocity.shape[2] != 2 or last.shape[0] != batch:
            raise ValueError(f"{type(self).__name__}: expected last (batch, C, H, W) and velocity "
                             f"(batch, T_out, 2, H, W); got {tuple(last.shape)} and {tuple(velocity.shape)}")
        steps = torch.arange(1, frames + 1, device=velocity.device, dtype=velocity.dtype).view(1, frames, 1, 1, 1)
        flow = velocity * steps
        source = last.unsqueeze(1).expand(-1, frames, -1, -1, -1).flatten(0, 1)
        carried = warp_frames(source, flow.flatten(0, 1)).unflatten(0, (batch, frames))
        return carried, flow
