"""SimVP v2 with the gated spatiotemporal attention (gSTA) translator.

Tan et al., "SimVP: Towards Simple yet Powerful Spatiotemporal Predictive Learning", arXiv
2211.12509, 2022 (SimVP v2), as OpenSTL's ``SimVP_Model(model_type="gSTA")`` (Tan et al., "OpenSTL: A
Comprehensive Benchmark of Spatio-Temporal Predictive Learning", NeurIPS 2023)::

    z, skip = encoder(X)            # per frame: N_S ConvSC blocks, strides 1, 2, 1, 2, ...
    z       = translator(z)         # frames folded into channels: (batch, T_in*hid_S, H', W')
                                    #   -> N_T gSTA blocks -> (batch, T_out*hid_S, H', W')
    Y_hat   = decoder(z, skip)      # per frame: N_S ConvSC blocks (PixelShuffle upsampling),
                                    #   the skip added before the last one, a 1x1 conv to C

A ConvSC block is 3x3 conv, GroupNorm(2), SiLU. A gSTA block (``GASubBlock``) is
``x + ls1 * attn(BN(x))`` then ``x + ls2 * MixMlp(BN(x))``, where ``attn`` is 1x1 conv, GELU, the
spatial gating unit (5x5 depthwise, 7x7 depthwise with dilation 3, 1x1 conv to ``(f, g)``,
``sigmoid(g) * f``), 1x1 conv, plus its own shortcut; MixMlp is 1x1 conv, 3x3 depthwise conv, GELU,
1x1 conv; ``ls1``, ``ls2`` are layer scales initialised to 1e-2. As OpenSTL's ``MidMetaNet``, the
first block runs at ``T_in*hid_S`` channels and is followed by a 1x1 reduction to ``hid_T``; the last
runs at ``hid_T`` and is followed by a 1x1 expansion (here to ``T_out*hid_S``).

Choices and differences from OpenSTL:

* Upsampling is OpenSTL's newer ConvSC: a 3x3 conv to ``4 * hid_S`` channels and PixelShuffle(2).
* ``T_in != T_out``: the translator's last 1x1 projection gives ``T_out*hid_S`` channels, and the
  decoder's skip is the last observed frame's, repeated ``T_out`` times (OpenSTL supports only
  ``T_in == T_out``, where frame ``t`` takes the skip of input frame ``t``; that case is exact).
* ``mlp_ratio`` defaults to 8, as OpenSTL's SimVP passes for gSTA (46.8M parameters at its Moving MNIST sizes).
* Stochastic depth rates rise linearly from 0 to ``drop_path`` over the N_T blocks; OpenSTL uses
  ``linspace(1e-2, drop_path)``, which gives its blocks a small non-zero rate even at ``drop_path=0``.
* Any ``N_S >= 1`` works (``N_S // 2`` downsamplings); OpenSTL's stride list silently drops a block
  for odd ``N_S``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.models.registry import ModelConfig, PretrainedMixin, register_model

__all__ = ["SimVPConfig", "SimVP", "ConvSC", "GASubBlock"]


@dataclasses.dataclass
class SimVPConfig(ModelConfig):
    """Every size of :class:`SimVP` (JSON-serialisable; see ``create_model``).

    Shapes: ``in_shape = (T_in, C, H, W)``, ``out_frames = T_out``; H and W divisible by
    ``2 ** (N_S // 2)``; ``hid_S`` even (GroupNorm with 2 groups).
    """

    in_shape: tuple[int, int, int, int] = (10, 1, 64, 64)
    out_frames: int = 10
    hid_S: int = 64
    hid_T: int = 512
    N_S: int = 4
    N_T: int = 8
    mlp_ratio: float = 8.0
    drop: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self):
        name = type(self).__name__
        if len(tuple(self.in_shape)) != 4 or min(tuple(self.in_shape)) < 1:
            raise ValueError(f"{name}: `in_shape` must be (T_in, C, H, W) of positive sizes, got {self.in_shape}")
        self.in_shape = tuple(int(v) for v in self.in_shape)
        if self.out_frames < 1:
            raise ValueError(f"{name}: `out_frames` must be >= 1, got {self.out_frames}")
        if self.hid_S < 2 or self.hid_S % 2:
            raise ValueError(f"{name}: `hid_S` must be even and >= 2 (GroupNorm with 2 groups), got {self.hid_S}")
        if self.hid_T < 1:
            raise ValueError(f"{name}: `hid_T` must be >= 1, got {self.hid_T}")
        if self.N_S < 1:
            raise ValueError(f"{name}: `N_S` must be >= 1, got {self.N_S}")
        if self.N_T < 2:
            raise ValueError(f"{name}: `N_T` must be >= 2 (a reducing and an expanding block), got {self.N_T}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"{name}: `mlp_ratio` must be > 0, got {self.mlp_ratio}")
        for field in ("drop", "drop_path"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{name}: `{field}` must be in [0, 1), got {getattr(self, field)}")
        scale = 2 ** (self.N_S // 2)
        _, _, height, width = self.in_shape
        if height % scale or width % scale:
            raise ValueError(f"{name}: H and W of in_shape {self.in_shape} must be divisible by "
                             f"2 ** (`N_S` // 2) = {scale}")


def _strides(blocks: int) -> list[int]:
    return [2 if i % 2 else 1 for i in range(blocks)]


class ConvSC(nn.Module):
    """3x3 conv (stride 2 to downsample, or to 4x channels + PixelShuffle(2) to upsample), GroupNorm(2), SiLU.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H * s, W * s) with s = 1/2, 1 or 2.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False, upsample: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        if upsample:
            self.conv = nn.Sequential(nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1, **factory),
                                      nn.PixelShuffle(2))
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2 if downsample else 1, padding=1, **factory)
        self.norm = nn.GroupNorm(2, out_channels, **factory)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # OpenSTL's BasicConv2d initialisation
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class _DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability ``rate`` (training only)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class _SpatialGating(nn.Module):
    """Large-kernel attention, gated: 5x5 depthwise, 7x7 depthwise dilation 3 (a 21x21 field), ``sigmoid(g) * f``."""

    def __init__(self, dim: int, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, **factory)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, dilation=3, groups=dim, **factory)
        self.conv1 = nn.Conv2d(dim, 2 * dim, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.conv1(self.conv_spatial(self.conv0(x))).chunk(2, dim=1)
        return torch.sigmoid(g) * f


class GASubBlock(nn.Module):
    """One gSTA block (OpenSTL's ``GASubBlock``): gated attention and MixMlp, each pre-BN, layer-scaled.

    Args:
        dim: channels.
        mlp_ratio: MixMlp hidden width over ``dim``.
        drop: dropout inside MixMlp.
        drop_path: stochastic depth rate of both residual branches.
        init_value: initial layer scale.
        device, dtype: factory arguments of the parameters.

    Shapes: (N, dim, H, W) -> (N, dim, H, W).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0,
                 init_value: float = 1e-2, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.BatchNorm2d(dim, **factory)
        self.proj_1 = nn.Conv2d(dim, dim, 1, **factory)
        self.gating = _SpatialGating(dim, **factory)
        self.proj_2 = nn.Conv2d(dim, dim, 1, **factory)
        self.norm2 = nn.BatchNorm2d(dim, **factory)
        self.fc1 = nn.Conv2d(dim, hidden, 1, **factory)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **factory)
        self.fc2 = nn.Conv2d(hidden, dim, 1, **factory)
        self.dropout = nn.Dropout(drop)
        self.drop_path = _DropPath(drop_path)
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), init_value, **factory))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), init_value, **factory))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # OpenSTL's fan-out initialisation
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        # The attention keeps its own shortcut inside the layer-scaled branch, as OpenSTL's SpatialAttention.
        return self.proj_2(self.gating(F.gelu(self.proj_1(x)))) + x

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.dwconv(self.fc1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self._attention(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self._mlp(self.norm2(x)))


class SimVP(PretrainedMixin, nn.Module):
    """The SimVP v2 (gSTA) predictor. ``model(X)`` -> ``Y_hat``; ``model.compute_loss(X, Y)`` -> losses.

    Args:
        config: a :class:`SimVPConfig` (see ``create_model("simvp", ...)``).
        device, dtype: factory arguments of the parameters.

    Shapes:
        X: (batch, T_in, C, H, W) frames in [0, 1]; Y and Y_hat: (batch, T_out, C, H, W).
    """

    def __init__(self, config: SimVPConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = dict(device=device, dtype=dtype)
        T_in, channels, _, _ = config.in_shape
        hid_S, hid_T, N_T = config.hid_S, config.hid_T, config.N_T
        strides = _strides(config.N_S)
        self.encoder = nn.ModuleList(
            ConvSC(channels if i == 0 else hid_S, hid_S, downsample=s == 2, **factory) for i, s in enumerate(strides)
        )
        self.decoder = nn.ModuleList(ConvSC(hid_S, hid_S, upsample=s == 2, **factory) for s in reversed(strides))
        self.readout = nn.Conv2d(hid_S, channels, 1, **factory)

        rates = torch.linspace(0.0, config.drop_path, N_T).tolist()
        widths = [T_in * hid_S] + [hid_T] * (N_T - 1)
        self.translator = nn.ModuleList(
            GASubBlock(width, config.mlp_ratio, config.drop, rate, **factory) for width, rate in zip(widths, rates)
        )
        out_channels = config.out_frames * hid_S
        # 1x1 projections after the first and last blocks, only where the width changes (as MidMetaNet).
        self.reduction = nn.Conv2d(T_in * hid_S, hid_T, 1, **factory) if T_in * hid_S != hid_T else nn.Identity()
        self.expansion = nn.Conv2d(hid_T, out_channels, 1, **factory) if hid_T != out_channels else nn.Identity()

    def _translate(self, z: torch.Tensor) -> torch.Tensor:
        z = self.reduction(self.translator[0](z))
        for block in self.translator[1:]:
            z = block(z)
        return self.expansion(z)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Predict ``T_out`` future frames in one pass.

        Args:
            X: (batch, T_in, C, H, W) observed frames.

        Returns:
            Y_hat: (batch, T_out, C, H, W).
        """
        self._check_input(X, "X", self.config.in_shape[0])
        batch, T_in, channels, height, width = X.shape
        T_out = self.config.out_frames
        z = X.reshape(batch * T_in, channels, height, width)
        z = skip = self.encoder[0](z)
        for block in self.encoder[1:]:
            z = block(z)
        z = self._translate(z.reshape(batch, -1, *z.shape[-2:]))
        z = z.reshape(batch * T_out, self.config.hid_S, *z.shape[-2:])
        if T_out != T_in:
            skip = skip.unflatten(0, (batch, T_in))[:, -1:].expand(-1, T_out, -1, -1, -1).flatten(0, 1)
        for block in self.decoder[:-1]:
            z = block(z)
        z = self.readout(self.decoder[-1](z + skip))
        return z.reshape(batch, T_out, channels, height, width)

    def compute_loss(self, X: torch.Tensor, Y: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Training losses: ``loss = recon = MSE(model(X), Y)``.

        Args:
            X: (batch, T_in, C, H, W) observed frames.
            Y: (batch, T_out, C, H, W) ground-truth future frames.
            generator: unused (SimVP draws no noise; dropout and drop path use the global RNG).

        Returns:
            dict with scalar tensors ``loss``, ``recon`` (its detached value), ``diff`` (0) and
            ``prediction``, the detached prediction (batch, T_out, C, H, W).
        """
        self._check_input(X, "X", self.config.in_shape[0])
        self._check_input(Y, "Y", self.config.out_frames)
        prediction = self(X)
        recon = F.mse_loss(prediction, Y)
        return {"loss": recon, "recon": recon.detach(), "diff": recon.new_zeros(()), "prediction": prediction.detach()}

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_shape={c.in_shape}, out_frames={c.out_frames}, hid_S={c.hid_S}, hid_T={c.hid_T}, "
                f"N_S={c.N_S}, N_T={c.N_T}, mlp_ratio={c.mlp_ratio}")


# OpenSTL's Moving MNIST sizes (configs/mmnist/simvp/SimVP_gSTA.py); smaller budgets override
# hid_S, hid_T, N_S and N_T, e.g. ``create_model("simvp", hid_S=32, hid_T=256, N_T=4)``.
register_model("simvp", SimVPConfig(), SimVP, description="SimVP v2 with gSTA (Tan et al. 2022), OpenSTL sizes")
