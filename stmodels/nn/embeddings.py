"""Embeddings of the DiT denoiser: diffusion steps, 2-D patch positions and frame patches.

References: sinusoidal timestep features and their MLP as in DDPM (Ho et al., 2020) and DiT (Peebles
& Xie, "Scalable Diffusion Models with Transformers", 2023, Sec. 3.2); fixed 2-D sin-cos position
embedding as in MAE (He et al., 2022) and DiT; patch embedding as in ViT (Dosovitskiy et al., 2021).

Patch layout used throughout :mod:`stmodels.nn`: a frame of ``(C, H, W)`` becomes ``P = (H/p) * (W/p)``
tokens in row-major order (patch row, then patch column); a token's pixel vector is ordered
``(p_row, p_col, C)``, as DiT's ``unpatchify``.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

__all__ = [
    "timestep_embedding",
    "TimestepEmbedder",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "PatchEmbed",
    "patchify",
    "unpatchify",
]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) diffusion steps.

    Args:
        t: (batch,) integer or float steps.
        dim: number of features; an odd ``dim`` gets a trailing zero feature.
        max_period: the longest wavelength, in steps.

    Returns:
        (batch, dim) float32: ``[cos(t * f_k), sin(t * f_k)]`` with ``f_k = max_period^(-k / (dim//2))``,
        ``k = 0 .. dim//2 - 1``. Computed in float32 whatever the dtype of ``t``.
    """
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding: `t` must have shape (batch,), got {tuple(t.shape)}")
    if dim < 1:
        raise ValueError(f"timestep_embedding: `dim` must be positive, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1)
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, embedding.new_zeros(t.shape[0], 1)], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Diffusion step -> vector: sinusoidal features followed by ``Linear, SiLU, Linear`` (DiT).

    Args:
        hidden: output size.
        frequency_dim: number of sinusoidal features fed to the MLP.
        max_period: the longest wavelength of the sinusoidal features, in steps.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        hidden: int,
        frequency_dim: int = 256,
        max_period: float = 10000.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.hidden = hidden
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden, **factory),
            nn.SiLU(),
            nn.Linear(hidden, hidden, **factory),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DiT's initialisation of the timestep MLP.
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed steps.

        Args:
            t: (batch,) integer or float diffusion steps.

        Returns:
            (batch, hidden) in the parameters' dtype.
        """
        features = timestep_embedding(t, self.frequency_dim, self.max_period)
        return self.mlp(features.to(self.mlp[0].weight.dtype))

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, frequency_dim={self.frequency_dim}, max_period={self.max_period}"


def get_1d_sincos_pos_embed(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Fixed 1-D sin-cos features of positions.

    Args:
        dim: number of features, even.
        positions: (n,) positions.

    Returns:
        (n, dim) float64: ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"get_1d_sincos_pos_embed: `dim` must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    args = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def get_2d_sincos_pos_embed(hidden: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a ``grid_h x grid_w`` patch grid (MAE / DiT).

    The first half of the features encodes the patch row, the second half the patch column, so a
    non-square grid keeps each axis distinct.

    Args:
        hidden: number of features, divisible by 4.
        grid_h, grid_w: patch rows and columns.

    Returns:
        (grid_h * grid_w, hidden) float32, tokens in row-major (row, column) order.
    """
    if hidden % 4:
        raise ValueError(f"get_2d_sincos_pos_embed: `hidden` must be divisible by 4, got {hidden}")
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"get_2d_sincos_pos_embed: grid must be non-empty, got {grid_h} x {grid_w}")
    rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h)
    embedding = torch.cat(
        [get_1d_sincos_pos_embed(hidden // 2, rows), get_1d_sincos_pos_embed(hidden // 2, cols)], dim=1
    )
    return embedding.to(torch.float32)


class PatchEmbed(nn.Module):
    """Per-frame linear patch embedding: a ``Conv2d`` with kernel = stride = ``patch_size``.

    Args:
        in_channels: channels ``C`` of a frame.
        hidden: token size.
        patch_size: side ``p`` of the square patches; frame sides must be multiples of it.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        patch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"PatchEmbed: `patch_size` must be positive, got {patch_size}")
        self.in_channels = in_channels
        self.hidden = hidden
        self.patch_size = patch_size
        self.proj = nn.Conv2d(
            in_channels, hidden, kernel_size=patch_size, stride=patch_size, device=device, dtype=dtype
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DiT initialises the patch projection like a Linear layer (xavier over the flattened kernel).
        weight = self.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches of every frame.

        Args:
            x: (batch, T, C, H, W) with H and W multiples of ``patch_size``.

        Returns:
            (batch, T, P, hidden), ``P = (H/p) * (W/p)`` in row-major patch order.
        """
        if x.dim() != 5 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"PatchEmbed: `x` must have shape (batch, T, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        batch, frames, _, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"PatchEmbed: frame size {height} x {width} is not divisible by patch_size={p}")
        tokens = self.proj(x.reshape(batch * frames, self.in_channels, height, width))
        return rearrange(tokens, "(b t) d h w -> b t (h w) d", b=batch)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, hidden={self.hidden}, patch_size={self.patch_size}"


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut frames into flattened patches, the inverse of :func:`unpatchify`.

    Args:
        x: (batch, T, C, H, W) with H and W multiples of ``patch_size``.
        patch_size: side ``p`` of the square patches.

    Returns:
        (batch, T, P, p * p * C), each patch ordered ``(p_row, p_col, C)``.
    """
    height, width = x.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"patchify: frame size {height} x {width} is not divisible by patch_size={patch_size}")
    return rearrange(x, "b t c (h p) (w q) -> b t (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Reassemble frames from flattened patches.

    Args:
        x: (batch, T, P, p * p * C) with ``P = grid_h * grid_w`` in row-major order, each patch
            ordered ``(p_row, p_col, C)``.
        patch_size: side ``p`` of the square patches.
        channels: ``C``.
        grid_h, grid_w: patch rows and columns.

    Returns:
        (batch, T, C, grid_h * p, grid_w * p).
    """
    expected = (grid_h * grid_w, patch_size * patch_size * channels)
    if x.dim() != 4 or tuple(x.shape[2:]) != expected:
        raise ValueError(
            f"unpatchify: `x` must have shape (batch, T, {expected[0]}, {expected[1]}), got {tuple(x.shape)}"
        )
    return rearrange(
        x, "b t (h w) (p q c) -> b t c (h p) (w q)", h=grid_h, w=grid_w, p=patch_size, q=patch_size, c=channels
    )
