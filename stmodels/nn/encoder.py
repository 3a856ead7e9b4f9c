"""DIFFUMA's temporal path: per-frame conv encoder, bidirectional Mamba over tokens, per-frame decoder.

Reference: Xie et al., "DIFFUMA: High-Fidelity Spatio-Temporal Video Prediction via Dual-Path Mamba
and Diffusion Enhancement", 2025 (the Mamba path); the spatial encoder/decoder follow SimVP's
(Gao et al., "SimVP: Simpler yet Better Video Prediction", 2022) strided conv stack with a skip from
the first, full-resolution level. The paper's exact sizes are not public; every size here is a
documented, configurable default (see ``docs/architecture.rst``).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stmodels.nn._common import check_backend_name
from stmodels.nn.mamba import DIRECTIONS, BiMambaLayer
from stmodels.nn.motion import MOTIONS, MotionWarp, estimate_velocity
from stmodels.nn.translator import LatentTranslator

__all__ = ["SpatialEncoder", "SpatialDecoder", "MambaEncoder"]

SCANS = ("latent", "spacetime", "time")


def _group_count(channels: int, num_groups: int) -> int:
    """The largest divisor of ``channels`` not above ``num_groups``, so any width gets a GroupNorm."""
    return max(g for g in range(1, min(channels, num_groups) + 1) if channels % g == 0)


def _check_positive(where: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{where}: `{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_divisible(where: str, shape: tuple[int, ...], height: int, width: int, levels: int) -> None:
    factor = 2**levels
    if height % factor or width % factor:
        raise ValueError(
            f"{where}: H={height} and W={width} must be divisible by 2**{levels}={factor} "
            f"(one halving per level); got shape {shape}"
        )


class _ConvBlock(nn.Module):
    """3x3 conv (optionally after 2x nearest upsampling) + GroupNorm + SiLU on (frames, C, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, upsample: bool, num_groups: int,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.upsample = upsample
        # No conv bias: GroupNorm subtracts each group's mean, which would cancel it (and its gradient).
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                              device=device, dtype=dtype)
        groups = _group_count(out_channels, num_groups)
        self.norm = nn.GroupNorm(groups, out_channels, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"upsample={self.upsample}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.silu(self.norm(self.conv(x)))


def _strides(levels: int) -> list[int]:
    # Level 0 keeps full resolution (the skip); each further pair halves once, as SimVP's [1, 2, 1, 2].
    return [1, 2] * levels if levels else [1]


class SpatialEncoder(nn.Module):
    """Per-frame conv stack: 3x3 conv + GroupNorm + SiLU blocks with strides ``1, 2, 1, 2, ...``.

    ``2 * num_downsamples`` blocks (one stride-1 block when ``num_downsamples == 0``); the first
    block's output, at full resolution, is returned as the skip for :class:`SpatialDecoder`.

    Args:
        in_channels: channels ``C`` of a frame.
        hidden_channels: channels ``C_hid`` of every block.
        num_downsamples: number of stride-2 blocks ``k``; H and W shrink by ``2**k``.
        num_groups: GroupNorm groups (the largest divisor of ``hidden_channels`` not above it).
        device, dtype: factory arguments of the parameters.

    Shape:
        x: (frames, C, H, W) with H, W divisible by ``2**k`` ->
        (features: (frames, C_hid, H / 2**k, W / 2**k), skip: (frames, C_hid, H, W)).
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_downsamples: int = 2, num_groups: int = 8,
                 device=None, dtype=None) -> None:
        super().__init__()
        where = type(self).__name__
        self.in_channels = _check_positive(where, "in_channels", in_channels)
        self.hidden_channels = _check_positive(where, "hidden_channels", hidden_channels)
        self.num_downsamples = _check_positive(where, "num_downsamples", num_downsamples, minimum=0)
        _check_positive(where, "num_groups", num_groups)
        channels = [in_channels] + [hidden_channels] * len(_strides(num_downsamples))
        self.blocks = nn.ModuleList(
            _ConvBlock(c_in, c_out, stride, False, num_groups, device=device, dtype=dtype)
            for c_in, c_out, stride in zip(channels[:-1], channels[1:], _strides(num_downsamples))
        )

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
                f"num_downsamples={self.num_downsamples}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode frames.

        Args:
            x: (frames, C, H, W).

        Returns:
            features: (frames, C_hid, H / 2**k, W / 2**k); skip: (frames, C_hid, H, W).
        """
        where = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{where}: expected (frames, C={self.in_channels}, H, W), got {tuple(x.shape)}")
        _check_divisible(where, tuple(x.shape), x.shape[-2], x.shape[-1], self.num_downsamples)
        skip = self.blocks[0](x)
        features = skip
        for block in self.blocks[1:]:
            features = block(features)
        return features, skip


class SpatialDecoder(nn.Module):
    """Mirror of :class:`SpatialEncoder`: (2x nearest upsample + 3x3 conv), 3x3 conv, ... then a 1x1 readout.

    Upsampling is nearest-neighbour followed by a 3x3 conv rather than a transposed conv, which avoids
    checkerboard artefacts (Odena et al., "Deconvolution and Checkerboard Artifacts", 2016) that
    cost SSIM. The skip (first-level encoder features) is added to the input of the last block, at
    full resolution, as in SimVP.

    Args:
        hidden_channels: channels ``C_hid`` of the features, the skip and every block.
        out_channels: channels ``C`` of an output frame.
        num_upsamples: number of 2x upsampling blocks ``k`` (the encoder's ``num_downsamples``).
        num_groups: GroupNorm groups (the largest divisor of ``hidden_channels`` not above it).
        device, dtype: factory arguments of the parameters.

    Shape:
        x: (frames, C_hid, H', W'), skip: (frames, C_hid, H' * 2**k, W' * 2**k) ->
        (frames, C, H' * 2**k, W' * 2**k).
    """

    def __init__(self, hidden_channels: int, out_channels: int, num_upsamples: int = 2, num_groups: int = 8,
                 device=None, dtype=None) -> None:
        super().__init__()
        where = type(self).__name__
        self.hidden_channels = _check_positive(where, "hidden_channels", hidden_channels)
        self.out_channels = _check_positive(where, "out_channels", out_channels)
        self.num_upsamples = _check_positive(where, "num_upsamples", num_upsamples, minimum=0)
        _check_positive(where, "num_groups", num_groups)
        upsamples = [s == 2 for s in reversed(_strides(num_upsamples))]
        self.blocks = nn.ModuleList(
            _ConvBlock(hidden_channels, hidden_channels, 1, up, num_groups, device=device, dtype=dtype)
            for up in upsamples
        )
        self.readout = nn.Conv2d(hidden_channels, out_channels, 1, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"hidden_channels={self.hidden_channels}, out_channels={self.out_channels}, "
                f"num_upsamples={self.num_upsamples}")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decode frames.

        Args:
            x: (frames, C_hid, H', W') features.
            skip: (frames, C_hid, H, W) first-level features, ``H = H' * 2**k``, ``W = W' * 2**k``.

        Returns:
            (frames, C, H, W).
        """
        where = type(self).__name__
        if x.dim() != 4 or x.shape[1] != self.hidden_channels:
            raise ValueError(
                f"{where}: expected x of shape (frames, C_hid={self.hidden_channels}, H', W'), "
                f"got {tuple(x.shape)}"
            )
        factor = 2**self.num_upsamples
        expected = (x.shape[0], self.hidden_channels, x.shape[2] * factor, x.shape[3] * factor)
        if tuple(skip.shape) != expected:
            raise ValueError(
                f"{where}: expected skip of shape {expected} for x of shape {tuple(x.shape)}, "
                f"got {tuple(skip.shape)}"
            )
        for block in self.blocks[:-1]:
            x = block(x)
        return self.readout(self.blocks[-1](x + skip))


def _stack_time(features: torch.Tensor) -> torch.Tensor:
    """(batch, T, C, H', W') -> (batch, H' * W', T * C): every frame's features per location."""
    return rearrange(features, "b t c h w -> b (h w) (t c)")


class MambaEncoder(nn.Module):
    """DIFFUMA's temporal path: frames -> (deterministic prediction ``Y_mamba``, ``context``).

    1. :class:`SpatialEncoder` on every input frame: (batch, T_in, C_hid, H', W') and the skip.
    2. Temporal mixing, by ``scan``:

       * ``"latent"`` (default): the frames are stacked into channels and a
         :class:`~stmodels.nn.translator.LatentTranslator` (``depth`` blocks of a bidirectional Mamba
         layer over the ``H' * W'`` latent positions, alternating row- and column-major order, plus a
         conv feed-forward, width ``translator_dim``) maps them to ``T_out`` frames of features.
         Each output frame is an input-dependent mix of every input frame, as in SimVP's
         translator, with the Mamba scans in place of its large-kernel convs.
       * ``"spacetime"``: ``depth`` :class:`BiMambaLayer` (d_model = C_hid) over one sequence of
         length ``T_in * H' * W'`` per sample, in time-major order (t, h, w), then a final LayerNorm;
         ``"time"``: the same over one sequence of length ``T_in`` per location. Then the frames are
         stacked into channels and ``readout: Linear(T_in * C_hid, T_out * C_hid)`` per location
         gives ``T_out`` frames (a separate weight for every output frame).

    3. ``context`` = those (batch, T_out, C_hid, H', W') features, the decoder's input and the
       diffusion path's conditioning.
    4. :class:`SpatialDecoder` on every output frame, with the last observed frame's first-level
       features as the skip (SimVP's rule for ``T_in != T_out``); with ``residual=True`` (default)
       the decoder predicts the change from the last observed frame,
       ``Y_mamba = x[:, -1:] + decoder(...)``; ``residual=False`` predicts frames directly.
       With ``motion="warp"`` the last observed frame is carried along a velocity field
       (:class:`~stmodels.nn.motion.MotionWarp`) before the residual is added,
       ``Y_mamba = warp(x[:, -1], (k + 1) * velocity_k) + decoder(...)``, so fine texture moves by
       sub-pixel amounts without being re-synthesised. ``velocity_k`` is the block-matching estimate
       of the input's motion (:func:`~stmodels.nn.motion.estimate_velocity`, ``motion_radius`` and
       ``motion_window``) plus a per-frame correction the decoder reads out (zero-initialised).
       A warp learned from zero through the bilinear sampling alone does not find the motion at
       this budget: its gradient is local and periodic texture makes it ambiguous.
       With ``motion_gate=True`` the decoder reads out one more channel per frame, a gate
       ``g = 2 * sigmoid(logit)`` (zero-initialised, so ``g = 1`` at the start) that scales the
       carried frame per pixel, ``Y_mamba = g * carried + decoder(...)``: where the carried content
       is wrong (a digit that bounced, two that crossed) removing it is a gate near zero, not a
       residual that must reproduce the wrong content's exact intensities with the opposite sign.

    Frames of another H and W than ``in_shape`` are accepted (the path is fully convolutional and the
    scans take any length) as long as both are divisible by ``2**num_downsamples``; ``T_in`` and ``C``
    must match ``in_shape``.

    Args:
        in_shape: (T_in, C, H, W) of the input sequences.
        out_frames: ``T_out``, the number of predicted frames.
        hidden_channels: ``C_hid``, the width of the conv stacks (and of the Mamba tokens for
            ``scan="spacetime"`` / ``"time"``).
        num_downsamples: stride-2 levels ``k`` of the spatial encoder; ``H' = H / 2**k``.
        depth: number of Mamba layers (translator blocks for ``scan="latent"``).
        d_state, d_conv, expand: the layers' state size, conv width and expansion.
        scan: ``"latent"`` (default), ``"spacetime"`` or ``"time"``; see step 2.
        direction: ``"bidirectional"`` (default) or ``"causal"`` for every layer.
        share_directions: one parameter set for both scan directions (bidirectional only).
        num_groups: GroupNorm groups of the conv stacks.
        residual: predict frames as a change from the last input frame (default) or directly.
        motion: ``"none"`` (default) or ``"warp"`` (carry the last input frame along a predicted
            velocity field; needs ``residual=True``); see step 4.
        motion_radius: largest motion per frame, in pixels, the block matching searches.
        motion_window: side of the box the block matching averages its cost over (odd).
        motion_gate: scale the carried frame by a learned per-pixel gate (needs ``residual=True``);
            see step 4.
        translator_dim: token size of the latent translator (``scan="latent"`` only).
        mlp_ratio: feed-forward width of the translator blocks, over ``translator_dim``.
        backend: scan backend of every layer (None: follow :func:`stmodels.ops.use_backend` /
            ``STMODELS_BACKEND``); setting ``encoder.backend`` later updates every layer.
        device, dtype: factory arguments of the parameters.

    Shape:
        x: (batch, T_in, C, H, W) -> (y_mamba: (batch, T_out, C, H, W),
        context: (batch, T_out, C_hid, H / 2**k, W / 2**k)), in the dtype of the parameters.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int, int],
        out_frames: int,
        hidden_channels: int = 64,
        num_downsamples: int = 2,
        depth: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan: str = "latent",
        direction: str = "bidirectional",
        share_directions: bool = False,
        num_groups: int = 8,
        residual: bool = True,
        motion: str = "none",
        motion_radius: int = 2,
        motion_window: int = 15,
        motion_gate: bool = False,
        translator_dim: int = 256,
        mlp_ratio: float = 4.0,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        where = type(self).__name__
        in_shape = tuple(in_shape)
        if len(in_shape) != 4:
            raise ValueError(f"{where}: `in_shape` must be (T_in, C, H, W), got {in_shape}")
        in_shape = tuple(
            _check_positive(where, f"in_shape {name}", value)
            for name, value in zip(("T_in", "C", "H", "W"), in_shape)
        )
        num_downsamples = _check_positive(where, "num_downsamples", num_downsamples, minimum=0)
        _check_divisible(where, in_shape, in_shape[2], in_shape[3], num_downsamples)
        if scan not in SCANS:
            raise ValueError(f"{where}: `scan` must be one of {SCANS}, got {scan!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"{where}: `direction` must be one of {DIRECTIONS}, got {direction!r}")
        if motion not in MOTIONS:
            raise ValueError(f"{where}: `motion` must be one of {MOTIONS}, got {motion!r}")
        if motion == "warp" and not residual:
            raise ValueError(f"{where}: `motion='warp'` carries the last frame and needs `residual=True`")
        if motion_gate and not residual:
            raise ValueError(f"{where}: `motion_gate=True` gates the carried last frame and needs `residual=True`")
        self.in_shape = in_shape
        self.out_frames = _check_positive(where, "out_frames", out_frames)
        self.hidden_channels = _check_positive(where, "hidden_channels", hidden_channels)
        self.num_downsamples = num_downsamples
        self.depth = _check_positive(where, "depth", depth)
        self.translator_dim = _check_positive(where, "translator_dim", translator_dim)
        self.scan = scan
        self.direction = direction
        self.share_directions = bool(share_directions)
        self.residual = bool(residual)
        self.motion = motion
        self.motion_gate = bool(motion_gate)
        self.motion_radius = _check_positive(where, "motion_radius", motion_radius)
        self.motion_window = _check_positive(where, "motion_window", motion_window)
        if self.motion_window % 2 == 0:
            raise ValueError(f"{where}: `motion_window` must be odd, got {motion_window}")
        self._backend = check_backend_name(backend, where)

        factory = {"device": device, "dtype": dtype}
        frames_in, channels = in_shape[0], in_shape[1]
        mamba = dict(d_state=d_state, d_conv=d_conv, expand=expand, direction=direction,
                     share_directions=share_directions, backend=backend)
        self.spatial_encoder = SpatialEncoder(channels, hidden_channels, num_downsamples, num_groups,
                                              **factory)
        if scan == "latent":
            self.translator = LatentTranslator(frames_in, out_frames, hidden_channels, translator_dim, depth,
                                               mlp_ratio=mlp_ratio, **mamba, **factory)
        else:
            self.layers = nn.ModuleList(BiMambaLayer(hidden_channels, **mamba, **factory) for _ in range(depth))
            self.norm = nn.LayerNorm(hidden_channels, **factory)
            self.readout = nn.Linear(frames_in * hidden_channels, out_frames * hidden_channels, **factory)
        # With motion="warp" the readout has two more channels per frame, the velocity (rows, columns),
        # and with motion_gate one more, the gate's logit; both zero-initialised, so that training
        # starts from the plain residual on the last frame carried along the block-matching estimate.
        readout_channels = channels + (2 if motion == "warp" else 0) + (1 if self.motion_gate else 0)
        self.spatial_decoder = SpatialDecoder(hidden_channels, readout_channels, num_downsamples, num_groups,
                                              **factory)
        self.warp = MotionWarp() if motion == "warp" else None
        with torch.no_grad():
            self.spatial_decoder.readout.weight[channels:].zero_()
            self.spatial_decoder.readout.bias[channels:].zero_()

    @property
    def mamba_layers(self) -> list[BiMambaLayer]:
        """Every :class:`BiMambaLayer` of the path (the translator's, or ``layers``)."""
        return self.translator.layers if self.scan == "latent" else list(self.layers)

    @property
    def backend(self) -> str | None:
        """The scan backend of every layer; assigning it updates them all."""
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        self._backend = check_backend_name(value, type(self).__name__)
        if self.scan == "latent":
            self.translator.backend = value
        for layer in self.mamba_layers:
            layer.backend = value

    def extra_repr(self) -> str:
        return (
            f"in_shape={self.in_shape}, out_frames={self.out_frames}, "
            f"hidden_channels={self.hidden_channels}, num_downsamples={self.num_downsamples}, "
            f"depth={self.depth}, scan={self.scan!r}, direction={self.direction!r}, "
            f"share_directions={self.share_directions}, residual={self.residual}, motion={self.motion!r}, "
            f"motion_gate={self.motion_gate}, "
            f"backend={self.backend!r}"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        where = type(self).__name__
        frames_in, channels = self.in_shape[:2]
        if x.dim() != 5 or x.shape[1] != frames_in or x.shape[2] != channels or x.shape[0] < 1:
            raise ValueError(
                f"{where}: expected input of shape (batch, T_in={frames_in}, C={channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        _check_divisible(where, tuple(x.shape), x.shape[-2], x.shape[-1], self.num_downsamples)

    def _mix(self, features: torch.Tensor) -> torch.Tensor:
        """The per-frame Mamba layers (``scan="spacetime"`` / ``"time"``): (batch, T_in, C_hid, H', W'), same out."""
        batch, frames, _, height, width = features.shape
        if self.scan == "spacetime":
            tokens = rearrange(features, "b t c h w -> b (t h w) c")
        else:
            tokens = rearrange(features, "b t c h w -> (b h w) t c")
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.norm(tokens)
        if self.scan == "spacetime":
            return rearrange(tokens, "b (t h w) c -> b t c h w", t=frames, h=height, w=width)
        return rearrange(tokens, "(b h w) t c -> b t c h w", b=batch, h=height, w=width)

    def _translate(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, T_in, C_hid, H', W') -> the context (batch, T_out, C_hid, H', W')."""
        if self.scan == "latent":
            return self.translator(features)
        _, _, _, height, width = features.shape
        mixed = self.readout(_stack_time(self._mix(features)))
        return rearrange(mixed, "b (h w) (t c) -> b t c h w", h=height, w=width, t=self.out_frames)

    def forward(self, x: torch.Tensor, return_carried: bool = False):
        """Predict ``T_out`` frames deterministically and return the diffusion path's conditioning.

        Args:
            x: (batch, T_in, C, H, W) observed frames (DIFFUMA uses values in [0, 1]).
            return_carried: also return the last observed frame as carried into every output frame.

        Returns:
            y_mamba: (batch, T_out, C, H, W), the temporal path's prediction.
            context: (batch, T_out, C_hid, H / 2**k, W / 2**k), the features at the decoder's input.
            carried (with ``return_carried=True``): (batch, T_out, C, H, W), the last observed frame
            warped along the predicted motion (``motion="warp"``) or repeated (``motion="none"``),
            times the gate with ``motion_gate=True``.
        """
        self._check_input(x)
        batch = x.shape[0]
        features, skip = self.spatial_encoder(x.flatten(0, 1))
        context = self._translate(features.unflatten(0, (batch, -1)))
        # The last observed frame's first-level features serve every output frame (SimVP's T_in != T_out rule).
        skip = skip.unflatten(0, (batch, -1))[:, -1:].expand(-1, self.out_frames, -1, -1, -1)
        decoded = self.spatial_decoder(context.flatten(0, 1), skip.flatten(0, 1)).unflatten(0, (batch, -1))
        carried = x[:, -1:].expand(-1, self.out_frames, -1, -1, -1)
        channels = self.in_shape[1]
        if self.warp is not None:
            # Source offset per frame = -(content velocity) + the learned correction.
            prior = -estimate_velocity(x, self.motion_radius, self.motion_window).to(decoded.dtype)
            carried, _ = self.warp(x[:, -1], prior.unsqueeze(1) + decoded[:, :, channels: channels + 2])
        if self.motion_gate:
            carried = carried * (2.0 * torch.sigmoid(decoded[:, :, -1:]))
        decoded = decoded[:, :, :channels]
        y_mamba = carried + decoded if self.residual else decoded
        return (y_mamba, context, carried) if return_carried else (y_mamba, context)
