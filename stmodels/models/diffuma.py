"""DIFFUMA: a bidirectional Mamba path for temporal dynamics plus a diffusion path for spatial detail.

Xie et al., "DIFFUMA: High-Fidelity Spatio-Temporal Video Prediction via Dual-Path Mamba and
Diffusion Enhancement", arXiv 2507.06738, 2025. The paper does not publish its sizes, noise
schedule or loss weight; every such value here is a documented, configurable default, not a claim
about the paper::

    Y_mamba, context, carried = mamba_encoder(X)      # carried: X[:, -1] warped along its motion
    dX               = head.single_pass(Y_mamba, context, cond=carried)   # one denoiser evaluation
    Y_hat            = Y_mamba + dX
    loss             = mse(Y_hat, Y) + lambda_diff * L_diff(Y, context)

The defaults are the choices the fidelity study measured (``docs/results.rst``): a time-stacked
latent translator of bidirectional Mamba blocks (``scan="latent"``) that also reads out a per-frame
velocity field, started from a block-matching estimate of the observed motion, along which the last
observed frame is warped into every output frame (``motion="warp"``, ``motion_radius`` pixels of
search per frame, ``motion_window`` the matching window; :mod:`stmodels.nn.motion`); the Mamba path
predicts the correction to that warped frame (``motion_gate=True`` also scales the warped frame by a
learned per-pixel gate). Then a unit-gain residual
(``prediction="residual"``) whose diffusion loss runs at noise levels matched to ``Y_mamba``'s error
(``noise_levels="matched"``), the last observed frame (warped, with ``motion="warp"``) concatenated
to the denoiser's input (``observed_input=True``), the context added to its tokens
(``context_tokens=True``) besides AdaLN, and attention across the predicted frames
(``attention="spacetime"``). During training the single
pass and the diffusion loss share one denoiser call (:meth:`ResidualDiffusionHead.training_pass`).
Models saved before these defaults (``scan="spacetime"`` with a fixed ``Linear(T_in, T_out)``, or
before ``motion``) do not load.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from stmodels.models.registry import ModelConfig, PretrainedMixin, register_model
from stmodels.nn.diffusion import ResidualDiffusionHead
from stmodels.nn.dit import DiTDenoiser
from stmodels.nn.encoder import MambaEncoder

__all__ = ["DIFFUMAConfig", "DIFFUMA"]

_CHOICES = {
    "noise_levels": ("uniform", "matched"),
    "diffusion": ("on", "off"),
    "context": ("learned", "random"),
    "sampler": ("single", "ddim"),
    "ddim_init": ("mamba", "noise"),
}


@dataclasses.dataclass
class DIFFUMAConfig(ModelConfig):
    """Every size and switch of :class:`DIFFUMA` (JSON-serialisable; see ``create_model``).

    Shapes: ``in_shape = (T_in, C, H, W)``, ``out_frames = T_out``; H and W divisible by
    ``2**num_downsamples`` and by ``patch_size``.
    Ablations: ``diffusion="off"`` is the Mamba-only model; ``context="random"`` conditions the
    denoiser on Gaussian noise of the context's shape instead of the temporal features;
    ``motion="none"``, ``observed_input=False``, ``context_tokens=False``, ``prediction="epsilon"``,
    ``noise_levels="uniform"``, ``attention="spatial"`` and ``scan="spacetime"`` switch off one new
    part each (``scan="spacetime"``, ``prediction="epsilon"``, ``noise_levels="uniform"``,
    ``observed_input=False``, ``context_tokens=False`` together are close to the first version).
    Inference: ``sampler="single"`` (one denoiser evaluation) or ``"ddim"`` (``ddim_steps`` steps,
    refining ``Y_mamba`` noised to ``ddim_start_step``, or from pure noise with ``ddim_init="noise"``).
    """

    in_shape: tuple[int, int, int, int] = (10, 1, 64, 64)
    out_frames: int = 10
    # temporal path
    hidden_channels: int = 32
    num_downsamples: int = 2
    mamba_depth: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    scan: str = "latent"
    motion: str = "warp"
    motion_radius: int = 2
    motion_window: int = 31
    motion_gate: bool = False
    direction: str = "bidirectional"
    share_directions: bool = False
    translator_dim: int = 256
    translator_mlp_ratio: float = 4.0
    # spatial path
    patch_size: int = 4
    dit_hidden: int = 96
    dit_depth: int = 4
    dit_heads: int = 4
    mlp_ratio: float = 4.0
    attention: str = "spacetime"
    conditioning: str = "token"
    observed_input: bool = True
    context_tokens: bool = True
    final_init_std: float = 1e-3
    # diffusion
    diffusion: str = "on"
    context: str = "learned"
    diffusion_steps: int = 1000
    schedule: str = "linear"
    prediction: str = "residual"
    noise_levels: str = "matched"
    noise_spread: float = 3.0
    t_star: int = 40
    lambda_diff: float = 0.1
    sampler: str = "single"
    ddim_steps: int = 50
    ddim_init: str = "mamba"
    ddim_start_step: int = 80
    # kernels
    backend: str | None = None

    def __post_init__(self):
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"DIFFUMAConfig: `{field}` must be one of {choices}, got {getattr(self, field)!r}")
        if len(tuple(self.in_shape)) != 4:
            raise ValueError(f"DIFFUMAConfig: `in_shape` must be (T_in, C, H, W), got {self.in_shape}")
        self.in_shape = tuple(int(v) for v in self.in_shape)
        if self.lambda_diff < 0:
            raise ValueError(f"DIFFUMAConfig: `lambda_diff` must be >= 0, got {self.lambda_diff}")


class DIFFUMA(PretrainedMixin, nn.Module):
    """The dual-path predictor. ``model(X)`` -> ``Y_hat``; ``model.compute_loss(X, Y)`` -> losses.

    Args:
        config: a :class:`DIFFUMAConfig` (see ``create_model`` for the named presets).
        device, dtype: factory arguments of the parameters.

    Shapes:
        X: (batch, T_in, C, H, W) frames in [0, 1]; Y and Y_hat: (batch, T_out, C, H, W).
    """

    def __init__(self, config: DIFFUMAConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        T_in, channels, height, width = config.in_shape
        factory = dict(device=device, dtype=dtype)
        self.mamba_encoder = MambaEncoder(
            in_shape=config.in_shape, out_frames=config.out_frames, hidden_channels=config.hidden_channels,
            num_downsamples=config.num_downsamples, depth=config.mamba_depth, d_state=config.d_state,
            d_conv=config.d_conv, expand=config.expand, scan=config.scan, direction=config.direction,
            share_directions=config.share_directions, motion=config.motion,
            motion_radius=config.motion_radius, motion_window=config.motion_window,
            motion_gate=config.motion_gate, translator_dim=config.translator_dim,
            mlp_ratio=config.translator_mlp_ratio, backend=config.backend, **factory,
        )
        self.head: ResidualDiffusionHead | None = None
        if config.diffusion == "on":
            scale = 2 ** config.num_downsamples
            denoiser = DiTDenoiser(
                frame_shape=(channels, height, width), frames=config.out_frames,
                context_channels=config.hidden_channels, context_size=(height // scale, width // scale),
                patch_size=config.patch_size, hidden=config.dit_hidden, depth=config.dit_depth,
                heads=config.dit_heads, mlp_ratio=config.mlp_ratio, attention=config.attention,
                conditioning=config.conditioning, cond_channels=channels if config.observed_input else 0,
                context_tokens=config.context_tokens, final_init_std=config.final_init_std,
                backend=config.backend, **factory,
            )
            self.head = ResidualDiffusionHead(
                denoiser, num_steps=config.diffusion_steps, schedule=config.schedule,
                prediction=config.prediction, t_star=config.t_star, noise_levels=config.noise_levels,
                noise_spread=config.noise_spread,
            )

    def _conditioning(self, context: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(context) if self.config.context == "random" else context

    def _observed(self, carried: torch.Tensor) -> torch.Tensor | None:
        """The denoiser's conditioning images, (batch, T_out, C, H, W): the last observed frame as the
        temporal path carried it into every output frame (warped along its motion with ``motion="warp"``)."""
        return carried if self.config.observed_input else None

    def forward(self, X: torch.Tensor, sampler: str | None = None, ddim_steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Predict ``T_out`` future frames.

        Args:
            X: (batch, T_in, C, H, W) observed frames.
            sampler: ``"single"`` or ``"ddim"``; default: the config's.
            ddim_steps: DDIM steps; default: the config's.
            generator: random source of DDIM's noise (a seed makes it deterministic).

        Returns:
            Y_hat: (batch, T_out, C, H, W).
        """
        self._check_input(X, "X", self.config.in_shape[0])
        y_mamba, context, carried = self.mamba_encoder(X, return_carried=True)
        if self.head is None:
            return y_mamba
        context = self._conditioning(context)
        cond = self._observed(carried)
        sampler = sampler or self.config.sampler
        if sampler == "single":
            return y_mamba + self.head.single_pass(y_mamba, context, cond=cond)
        if sampler != "ddim":
            raise ValueError(f"DIFFUMA: `sampler` must be 'single' or 'ddim', got {sampler!r}")
        steps = ddim_steps or self.config.ddim_steps
        if self.config.ddim_init == "mamba":
            start = self.config.ddim_start_step
            return self.head.ddim_sample(context, steps=min(steps, start + 1), init=y_mamba, start_step=start,
                                         generator=generator, cond=cond)
        return self.head.ddim_sample(context, shape=y_mamba.shape, steps=steps, generator=generator, cond=cond)

    def compute_loss(self, X: torch.Tensor, Y: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Training losses: ``loss = recon + lambda_diff * diff``.

        Args:
            X: (batch, T_in, C, H, W) observed frames.
            Y: (batch, T_out, C, H, W) ground-truth future frames.
            generator: random source of the diffusion loss's steps and noise.

        Returns:
            dict with scalar tensors ``loss``, ``recon`` (mse of the single-pass prediction),
            ``diff`` (the diffusion loss, 0 with ``diffusion="off"``) and ``prediction``, the
            detached single-pass prediction (batch, T_out, C, H, W).
        """
        self._check_input(X, "X", self.config.in_shape[0])
        self._check_input(Y, "Y", self.config.out_frames)
        y_mamba, context, carried = self.mamba_encoder(X, return_carried=True)
        if self.head is None:
            recon = F.mse_loss(y_mamba, Y)
            return {"loss": recon, "recon": recon.detach(), "diff": recon.new_zeros(()), "prediction": y_mamba.detach()}
        context = self._conditioning(context)
        cond = self._observed(carried)
        if self.config.lambda_diff > 0:
            delta, diff = self.head.training_pass(y_mamba, Y, context, cond=cond, generator=generator)
        else:  # no diffusion loss: no noisy half-batch to run
            delta, diff = self.head.single_pass(y_mamba, context, cond=cond), y_mamba.new_zeros((), dtype=torch.float32)
        prediction = y_mamba + delta
        recon = F.mse_loss(prediction, Y)
        loss = recon + self.config.lambda_diff * diff
        return {"loss": loss, "recon": recon.detach(), "diff": diff.detach(), "prediction": prediction.detach()}

    def extra_repr(self) -> str:
        c = self.config
        return (f"in_shape={c.in_shape}, out_frames={c.out_frames}, diffusion={c.diffusion!r}, "
                f"context={c.context!r}, sampler={c.sampler!r}, backend={c.backend!r}")


_PRESETS = {
    # Tests: a training step on CPU in well under a second.
    "diffuma_tiny": DIFFUMAConfig(
        in_shape=(4, 1, 16, 16), out_frames=4, hidden_channels=16, num_downsamples=1, mamba_depth=1,
        d_state=4, translator_dim=32, translator_mlp_ratio=2.0, patch_size=4, dit_hidden=32, dit_depth=1,
        dit_heads=2, mlp_ratio=2.0, diffusion_steps=100, t_star=5, ddim_start_step=40,
    ),
    # The CPU demo and study (32x32 dicing lanes; 64x64 Moving MNIST with num_downsamples=3, patch_size=8).
    "diffuma_small": DIFFUMAConfig(),
    # GPU: a wider translator and a DiT of depth 12 and hidden 384.
    "diffuma_base": DIFFUMAConfig(
        hidden_channels=64, mamba_depth=8, translator_dim=512, patch_size=2, dit_hidden=384, dit_depth=12,
        dit_heads=6,
    ),
}

for _name, _config in _PRESETS.items():
    register_model(_name, _config, DIFFUMA, description=f"DIFFUMA preset {_name}")
