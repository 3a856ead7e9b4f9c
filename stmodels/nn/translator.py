"""DIFFUMA's latent translator: bidirectional Mamba over the time-stacked latent grid.

The temporal path stacks the ``T_in`` frames' features into channels, as SimVP does (Gao et al.,
"SimVP: Simpler yet Better Video Prediction", 2022, Sec. 3; Tan et al., "SimVP v2", 2022), so each
output frame is a learned, input-dependent mix of every input frame at every location: the in- and
out-projections mix time per output frame, the Mamba gates and selective scans make that mix depend
on the input. The tokens are the ``H' x W'`` latent positions; each :class:`LatentMambaBlock` runs a
:class:`~stmodels.nn.mamba.BiMambaLayer` over them (both raster directions in one
``bi_selective_scan`` call), alternating row-major and column-major order from block to block so
vertical neighbours are adjacent in every other scan (the cross-scan idea of VMamba, Liu et al.,
2024, at no extra cost), followed by a convolutional feed-forward (Linear, 3x3 depthwise conv on the
grid, GELU, Linear) that gives the scans local spatial context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stmodels.nn._common import check_backend_name
from stmodels.nn.mamba import BiMambaLayer

__all__ = ["ConvFeedForward", "LatentMambaBlock", "LatentTranslator"]


class ConvFeedForward(nn.Module):
    """Pre-norm residual feed-forward with a 3x3 depthwise conv over the token grid.

    ``out = x + fc2(GELU(dwconv(fc1(LayerNorm(x)))))`` with the tokens laid out on an
    ``(H', W')`` grid in row-major order for the conv.

    Args:
        dim: token size.
        mlp_ratio: hidden width as a multiple of ``dim``.
        device, dtype: factory arguments of the parameters.

    Shape:
        x: (batch, H' * W', dim) with ``grid = (H', W')`` -> same shape.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        hidden = max(1, int(dim * mlp_ratio))
        self.dim, self.hidden = dim, hidden
        self.norm = nn.LayerNorm(dim, **factory)
        self.fc1 = nn.Linear(dim, hidden, **factory)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **factory)
        self.fc2 = nn.Linear(hidden, dim, **factory)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Apply the block to (batch, H' * W', dim) row-major tokens of a ``grid = (H', W')``."""
        height, width = grid
        h = self.fc1(self.norm(x))
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)
        h = rearrange(self.dwconv(h), "b c h w -> b (h w) c")
        return x + self.fc2(F.gelu(h))


class LatentMambaBlock(nn.Module):
    """One translator block: a :class:`BiMambaLayer` over the grid's tokens, then :class:`ConvFeedForward`.

    Args:
        dim: token size.
        column_major: scan the grid column by column (else row by row).
        d_state, d_conv, expand, direction, share_directions, backend: of the Mamba layer.
        mlp_ratio: of the feed-forward.
        device, dtype: factory arguments of the parameters.

    Shape:
        x: (batch, H' * W', dim) row-major tokens -> same shape.
    """

    def __init__(self, dim: int, column_major: bool = False, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 direction: str = "bidirectional", share_directions: bool = False, mlp_ratio: float = 4.0,
                 backend: str | None = None, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.column_major = bool(column_major)
        self.mamba = BiMambaLayer(dim, d_state=d_state, d_conv=d_conv, expand=expand, direction=direction,
                                  share_directions=share_directions, backend=backend, **factory)
        self.ffn = ConvFeedForward(dim, mlp_ratio, **factory)

    def extra_repr(self) -> str:
        return f"column_major={self.column_major}"

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Apply the block to (batch, H' * W', dim) row-major tokens of a ``grid = (H', W')``."""
        height, width = grid
        if self.column_major:
            x = rearrange(x, "b (h w) c -> b (w h) c", h=height, w=width)
            x = rearrange(self.mamba(x), "b (w h) c -> b (h w) c", h=height, w=width)
        else:
            x = self.mamba(x)
        return self.ffn(x, grid)


class LatentTranslator(nn.Module):
    """Time-stacked latent -> ``T_out`` frames of features, through ``depth`` :class:`LatentMambaBlock` s.

    ``in_proj: Linear(T_in * C, dim)`` per location, the blocks (row-major, column-major, ...),
    a final LayerNorm, ``out_proj: Linear(dim, T_out * C)``.

    Args:
        frames_in, frames_out: ``T_in`` and ``T_out``.
        channels: ``C`` of each frame's features.
        dim: token size of the blocks (SimVP's ``hid_T``).
        depth: number of blocks.
        d_state, d_conv, expand, direction, share_directions: of every Mamba layer.
        mlp_ratio: of every feed-forward.
        backend: scan backend of every Mamba layer (None: the global default).
        device, dtype: factory arguments of the parameters.

    Shape:
        features: (batch, T_in, C, H', W') -> (batch, T_out, C, H', W').
    """

    def __init__(self, frames_in: int, frames_out: int, channels: int, dim: int = 256, depth: int = 4,
                 d_state: int = 16, d_conv: int = 4, expand: int = 2, direction: str = "bidirectional",
                 share_directions: bool = False, mlp_ratio: float = 4.0, backend: str | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.frames_in, self.frames_out, self.channels, self.dim = frames_in, frames_out, channels, dim
        self._backend = check_backend_name(backend, type(self).__name__)
        self.in_proj = nn.Linear(frames_in * channels, dim, **factory)
        self.blocks = nn.ModuleList(
            LatentMambaBlock(dim, column_major=i % 2 == 1, d_state=d_state, d_conv=d_conv, expand=expand,
                             direction=direction, share_directions=share_directions, mlp_ratio=mlp_ratio,
                             backend=backend, **factory)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, **factory)
        self.out_proj = nn.Linear(dim, frames_out * channels, **factory)

    @property
    def layers(self) -> list[BiMambaLayer]:
        """The Mamba layers of every block."""
        return [block.mamba for block in self.blocks]

    @property
    def backend(self) -> str | None:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        self._backend = check_backend_name(value, type(self).__name__)
        for layer in self.layers:
            layer.backend = value

    def extra_repr(self) -> str:
        return (f"frames_in={self.frames_in}, frames_out={self.frames_out}, channels={self.channels}, "
                f"dim={self.dim}, depth={len(self.blocks)}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Translate (batch, T_in, C, H', W') features to (batch, T_out, C, H', W')."""
        _, _, _, height, width = features.shape
        tokens = self.in_proj(rearrange(features, "b t c h w -> b (h w) (t c)"))
        for block in self.blocks:
            tokens = block(tokens, (height, width))
        tokens = self.out_proj(self.norm(tokens))
        return rearrange(tokens, "b (h w) (t c) -> b t c h w", h=height, w=width, t=self.frames_out)
