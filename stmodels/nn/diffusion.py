"""DDPM noise schedules and DIFFUMA's residual diffusion head.

References: DDPM (Ho et al., 2020; linear betas, Eq. 4 ``q(x_t | x_0)``), improved DDPM (Nichol &
Dhariwal, 2021, Eq. 17; cosine schedule), v-prediction (Salimans & Ho, "Progressive Distillation",
2022, Sec. 4), DDIM (Song et al., 2021, Eq. 12), DIFFUMA (Xie et al., arXiv 2507.06738, 2025) for the
single-pass residual. Steps are integers ``t = 0 .. num_steps - 1``; ``abar_t`` is the cumulative
product of ``1 - beta`` up to and including step ``t``.

Prediction types and their targets for ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

* ``"epsilon"``: ``eps``;
* ``"v"``: ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``;
* ``"x0"``: ``x0``;
* ``"residual"``: ``x0 - x_t / sqrt(abar_t)``, the correction that turns the rescaled sample into the
  clean one (``= -sqrt((1 - abar_t) / abar_t) eps``). It makes DIFFUMA's single pass a unit-gain
  residual: with ``x_t = sqrt(abar_t*) Y_mamba`` the output *is* ``dX`` (see
  :meth:`ResidualDiffusionHead.single_pass`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NoiseSchedule", "ResidualDiffusionHead", "SCHEDULE_KINDS", "PREDICTION_TYPES", "NOISE_LEVELS",
           "ddim_timesteps"]

SCHEDULE_KINDS = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v", "x0", "residual")
#: How :meth:`ResidualDiffusionHead.diffusion_loss` draws its steps: ``"uniform"`` over every step
#: (DDPM), or ``"matched"`` to the error of a reference prediction (the single pass's input).
NOISE_LEVELS = ("uniform", "matched")

# Improved DDPM's offset and beta clip for the cosine schedule (Nichol & Dhariwal, 2021, Sec. 3.2).
_COSINE_OFFSET = 0.008
_COSINE_MAX_BETA = 0.999


def _check_prediction(owner: str, prediction: str) -> None:
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{owner}: `prediction` must be one of {PREDICTION_TYPES}, got {prediction!r}")


def _randn(shape, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (a CPU generator also seeds CUDA runs)."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


class NoiseSchedule(nn.Module):
    """A DDPM variance schedule and the conversions between prediction types.

    Computed in float64, stored as non-persistent buffers (derived from the arguments, so not part of
    a checkpoint) in ``dtype`` (float32 by default): ``betas``, ``alphas_cumprod``,
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, each ``(num_steps,)``.

    Args:
        num_steps: number of diffusion steps.
        kind: ``"linear"`` (betas evenly spaced from ``beta_start`` to ``beta_end``, DDPM) or
            ``"cosine"`` (``abar(t) = cos^2((t/num_steps + s) / (1 + s) * pi/2)`` normalised,
            ``s = 0.008``, betas clipped at 0.999; improved DDPM).
        beta_start, beta_end: the linear schedule's first and last beta (ignored by ``"cosine"``).
        device, dtype: of the buffers.
    """

    def __init__(
        self,
        num_steps: int = 1000,
        kind: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"NoiseSchedule: `num_steps` must be positive, got {num_steps}")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"NoiseSchedule: `kind` must be one of {SCHEDULE_KINDS}, got {kind!r}")
        if kind == "linear" and not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"NoiseSchedule: need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}"
            )
        self.num_steps = num_steps
        self.kind = kind
        self.beta_start = beta_start
        self.beta_end = beta_end

        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        else:
            steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
            abar = torch.cos((steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
            betas = (1 - abar[1:] / abar[:-1]).clamp(max=_COSINE_MAX_BETA)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        store = {"device": device, "dtype": dtype or torch.float32}
        self.register_buffer("betas", betas.to(**store), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(**store), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().to(**store), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt().to(**store), persistent=False
        )

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` shaped to broadcast against ``like``.

        Args:
            t: (batch,) integer steps in ``[0, num_steps)``.
            like: (batch, ...) tensor whose rank, dtype and device the coefficients take.

        Returns:
            Two (batch, 1, ..., 1) tensors in ``like``'s dtype.
        """
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dim() != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(
                f"NoiseSchedule: `t` must be integer steps of shape (batch,) = ({like.shape[0]},), "
                f"got {t.dtype} {tuple(t.shape)}"
            )
        index = t.to(device=self.alphas_cumprod.device, dtype=torch.long)
        view = (-1,) + (1,) * (like.dim() - 1)

        def gather(values: torch.Tensor) -> torch.Tensor:
            return values[index].to(device=like.device, dtype=like.dtype).reshape(view)

        return gather(self.sqrt_alphas_cumprod), gather(self.sqrt_one_minus_alphas_cumprod)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean samples to step ``t``: ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0: (batch, ...) clean samples.
            t: (batch,) integer steps.
            noise: same shape as ``x0``.

        Returns:
            (batch, ...) like ``x0``.
        """
        signal, sigma = self.coefficients(t, x0)
        return signal * x0 + sigma * noise

    def prediction_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str = "epsilon"
    ) -> torch.Tensor:
        """What a model of the given prediction type should output for ``q_sample(x0, t, noise)``.

        Args:
            x0: (batch, ...) clean samples.
            noise: same shape, the noise of ``x_t``.
            t: (batch,) integer steps.
            prediction: ``"epsilon"``, ``"v"`` or ``"x0"``.

        Returns:
            (batch, ...): ``noise``, ``sqrt(abar_t) noise - sqrt(1 - abar_t) x0``, ``x0`` or
            ``-sqrt(1 - abar_t) / sqrt(abar_t) noise`` (residual).
        """
        _check_prediction("NoiseSchedule.prediction_target", prediction)
        if prediction == "epsilon":
            return noise
        if prediction == "x0":
            return x0
        signal, sigma = self.coefficients(t, x0)
        if prediction == "residual":
            return -(sigma / signal) * noise
        return signal * noise - sigma * x0

    def predict_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor, prediction: str = "epsilon"
    ) -> torch.Tensor:
        """Clean-sample estimate from a model output.

        Args:
            x_t: (batch, ...) samples at step ``t``.
            t: (batch,) integer steps.
            output: same shape as ``x_t``, the model output of type ``prediction``.
            prediction: ``"epsilon"``, ``"v"`` or ``"x0"``.

        Returns:
            (batch, ...): ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` for epsilon,
            ``sqrt(abar) x_t - sqrt(1 - abar) v`` for v, the output itself for x0,
            ``x_t / sqrt(abar) + output`` for residual.
        """
        _check_prediction("NoiseSchedule.predict_x0", prediction)
        if prediction == "x0":
            return output
        signal, sigma = self.coefficients(t, x_t)
        if prediction == "residual":
            return x_t / signal + output
        if prediction == "epsilon":
            return (x_t - sigma * output) / signal
        return signal * x_t - sigma * output

    def predict_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, output: torch.Tensor, prediction: str = "epsilon"
    ) -> torch.Tensor:
        """Noise estimate from a model output.

        Args:
            x_t: (batch, ...) samples at step ``t``.
            t: (batch,) integer steps.
            output: same shape as ``x_t``, the model output of type ``prediction``.
            prediction: ``"epsilon"``, ``"v"`` or ``"x0"``.

        Returns:
            (batch, ...): the output itself for epsilon, ``sqrt(1 - abar) x_t + sqrt(abar) v`` for v,
            ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)`` for x0, ``-sqrt(abar) / sqrt(1 - abar) output``
            for residual.
        """
        _check_prediction("NoiseSchedule.predict_eps", prediction)
        if prediction == "epsilon":
            return output
        signal, sigma = self.coefficients(t, x_t)
        if prediction == "v":
            return sigma * x_t + signal * output
        if prediction == "residual":
            return -(signal / sigma) * output
        return (x_t - signal * output) / sigma

    def steps_for_noise_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """The first steps whose noise-to-signal ratio ``sqrt(1 - abar_t) / sqrt(abar_t)`` reaches ``ratio``.

        Args:
            ratio: (batch,) non-negative ratios (any float dtype and device).

        Returns:
            (batch,) long steps in ``[0, num_steps)`` on ``ratio``'s device (clamped at the ends).
        """
        table = (self.sqrt_one_minus_alphas_cumprod / self.sqrt_alphas_cumprod).double()
        steps = torch.searchsorted(table, ratio.detach().double().to(table.device).contiguous())
        return steps.clamp(0, self.num_steps - 1).to(ratio.device)

    def extra_repr(self) -> str:
        text = f"num_steps={self.num_steps}, kind={self.kind!r}"
        if self.kind == "linear":
            text += f", beta_start={self.beta_start}, beta_end={self.beta_end}"
        return text


def ddim_timesteps(start_step: int, steps: int) -> list[int]:
    """The integer steps a DDIM run visits, from ``start_step`` down to 0, evenly spaced.

    Args:
        start_step: the first (noisiest) step.
        steps: number of network evaluations wanted; at most ``start_step + 1`` distinct steps exist.

    Returns:
        Strictly decreasing steps, ``[start_step, ..., 0]`` (just ``[start_step]`` for ``steps=1``).
    """
    if steps < 1:
        raise ValueError(f"ddim_timesteps: `steps` must be positive, got {steps}")
    if start_step < 0:
        raise ValueError(f"ddim_timesteps: `start_step` must be >= 0, got {start_step}")
    grid = torch.linspace(start_step, 0, min(steps, start_step + 1), dtype=torch.float64).round().long()
    return torch.unique_consecutive(grid).tolist()


class ResidualDiffusionHead(nn.Module):
    """DIFFUMA's diffusion path: a context-conditioned denoiser and a DDPM schedule.

    The denoiser is any module called as ``denoiser(x_t, t, context)`` with ``x_t: (batch, T, C, H, W)``,
    ``t: (batch,)`` long steps, returning ``(batch, T, C, H, W)`` of the prediction type (e.g.
    :class:`~stmodels.nn.dit.DiTDenoiser`); when the methods get conditioning images ``cond`` it is
    called as ``denoiser(x_t, t, context, cond=cond)``. ``head(y_mamba, context)`` is :meth:`single_pass`.

    With ``prediction="residual"`` the single pass is a unit-gain residual (a zero output gives
    ``dX = 0``, a unit output a unit correction), and with ``noise_levels="matched"`` the diffusion
    loss trains the same output, ``Y - x_t / sqrt(abar_t)``, at noise levels near the error of the
    prediction the single pass corrects: the two losses ask the same thing of the network.

    Args:
        denoiser: the network.
        num_steps: diffusion steps of the schedule.
        schedule: ``"linear"`` or ``"cosine"`` (see :class:`NoiseSchedule`).
        prediction: what the denoiser predicts: ``"epsilon"`` (default), ``"v"`` or ``"x0"``.
        t_star: the small step at which :meth:`single_pass` treats the temporal prediction as a noisy
            sample, and the default starting step of a refining :meth:`ddim_sample`.
        beta_start, beta_end: the linear schedule's first and last beta.
        noise_levels: ``"uniform"`` (DDPM: every step equally likely) or ``"matched"``: per sample,
            the step whose noise-to-signal ratio ``sqrt(1 - abar) / sqrt(abar)`` equals the RMS error
            of the reference prediction times a log-uniform factor in ``[1 / noise_spread,
            noise_spread]`` (see :meth:`diffusion_loss`).
        noise_spread: the spread of matched noise levels, ``>= 1``.
        device: of the schedule buffers; defaults to the denoiser's parameters' device.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        num_steps: int = 1000,
        schedule: str = "linear",
        prediction: str = "epsilon",
        t_star: int = 20,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        noise_levels: str = "uniform",
        noise_spread: float = 2.0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_prediction("ResidualDiffusionHead", prediction)
        if noise_levels not in NOISE_LEVELS:
            raise ValueError(f"ResidualDiffusionHead: `noise_levels` must be one of {NOISE_LEVELS}, got {noise_levels!r}")
        if not math.isfinite(noise_spread) or noise_spread < 1:
            raise ValueError(f"ResidualDiffusionHead: `noise_spread` must be a finite float >= 1, got {noise_spread}")
        if not 0 <= t_star < num_steps:
            raise ValueError(f"ResidualDiffusionHead: need 0 <= t_star < num_steps={num_steps}, got {t_star}")
        if device is None:
            first = next(denoiser.parameters(), None)
            device = None if first is None else first.device
        self.denoiser = denoiser
        self.schedule = NoiseSchedule(num_steps, schedule, beta_start, beta_end, device=device)
        self.prediction = prediction
        self.t_star = t_star
        self.noise_levels = noise_levels
        self.noise_spread = float(noise_spread)

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def _steps(self, value: int, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), value, dtype=torch.long, device=device)

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, context, cond: torch.Tensor | None) -> torch.Tensor:
        if cond is None:
            return self.denoiser(x_t, t, context)
        return self.denoiser(x_t, t, context, cond=cond)

    def _draw_steps(self, y: torch.Tensor, reference: torch.Tensor | None,
                    generator: torch.Generator | None) -> torch.Tensor:
        """(batch,) long steps of the diffusion loss (see :meth:`diffusion_loss`)."""
        batch = y.shape[0]
        source = generator.device if generator is not None else y.device
        if self.noise_levels == "uniform":
            return torch.randint(0, self.num_steps, (batch,), generator=generator, device=source).to(y.device)
        if reference is None:
            raise ValueError("diffusion_loss: noise_levels='matched' needs the `reference` prediction")
        error = (y.detach().float() - reference.detach().float()).square().flatten(1).mean(1).sqrt()
        spread = math.log(self.noise_spread)
        factor = torch.exp((torch.rand(batch, generator=generator, device=source) * 2 - 1) * spread)
        return self.schedule.steps_for_noise_ratio(error * factor.to(y.device))

    def _noised(self, y: torch.Tensor, reference: torch.Tensor | None, generator: torch.Generator | None):
        """(x_t, t, target) of one diffusion-loss draw on clean frames ``y``."""
        t = self._draw_steps(y, reference, generator)
        noise = _randn(y.shape, generator, y.device, y.dtype)
        x_t = self.schedule.q_sample(y, t, noise)
        return x_t, t, self.schedule.prediction_target(y, noise, t, self.prediction)

    def diffusion_loss(
        self, y: torch.Tensor, context: torch.Tensor, generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None, reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoising loss on ground-truth frames (DDPM's simple loss for the prediction type).

        Draws a step ``t`` per sample (``noise_levels="uniform"``: ``U{0, .., num_steps - 1}``;
        ``"matched"``: the step whose ``sqrt(1 - abar_t) / sqrt(abar_t)`` is the RMS of
        ``y - reference`` times a log-uniform factor in ``[1/noise_spread, noise_spread]``) and
        ``eps ~ N(0, I)`` (from ``generator`` if given), forms
        ``x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps`` and returns the mean squared error of
        ``denoiser(x_t, t, context)`` against the target of the prediction type.

        Args:
            y: (batch, T, C, H, W) ground-truth frames.
            context: (batch, T, C_ctx, H', W') conditioning; gradients flow into it.
            generator: random source for ``t`` and ``eps``.
            cond: (batch, T, C_cond, H, W) conditioning images for the denoiser, or None.
            reference: (batch, T, C, H, W) the prediction whose error sets matched noise levels
                (no gradient flows into it).

        Returns:
            Scalar float32 loss.
        """
        x_t, t, target = self._noised(y, reference, generator)
        output = self._denoise(x_t, t, context, cond)
        return F.mse_loss(output.float(), target.float())

    def _single_pass_input(self, y_mamba: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction != "residual":
            return y_mamba
        # x_t / sqrt(abar) = y_mamba, so x0_hat = y_mamba + output: the output is dX itself.
        signal, _ = self.schedule.coefficients(t, y_mamba)
        return signal * y_mamba

    def _single_pass_steps(self, t_star: int | None, batch: int, device: torch.device) -> torch.Tensor:
        step = self.t_star if t_star is None else t_star
        if not 0 <= step < self.num_steps:
            raise ValueError(f"single_pass: need 0 <= t_star < {self.num_steps}, got {step}")
        return self._steps(step, batch, device)

    def single_pass(
        self, y_mamba: torch.Tensor, context: torch.Tensor, t_star: int | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The residual correction from one denoiser evaluation at ``t_star``.

        Treats ``y_mamba`` as a sample at step ``t*`` and returns ``dX = x0_hat - y_mamba``.
        With ``prediction="residual"`` the denoiser sees ``x_t = sqrt(abar_t*) y_mamba`` (so that
        ``x_t / sqrt(abar_t*) = y_mamba``) and ``x0_hat = y_mamba + output``: ``dX`` is the output
        itself, a unit-gain residual, and a zero-output denoiser gives ``dX = 0``. For the other
        types the denoiser sees ``x_t = y_mamba`` and ``x0_hat`` is
        :meth:`NoiseSchedule.predict_x0`; a zero output then gives ``dX = (1/sqrt(abar) - 1) y_mamba``
        for epsilon, ``(sqrt(abar) - 1) y_mamba`` for v and ``-y_mamba`` for x0.

        Args:
            y_mamba: (batch, T, C, H, W) the temporal path's prediction.
            context: (batch, T, C_ctx, H', W') conditioning.
            t_star: overrides the head's ``t_star`` for this call.
            cond: (batch, T, C_cond, H, W) conditioning images for the denoiser, or None.

        Returns:
            dX: (batch, T, C, H, W). Gradients flow to y_mamba, context and the denoiser.
        """
        t = self._single_pass_steps(t_star, y_mamba.shape[0], y_mamba.device)
        x_t = self._single_pass_input(y_mamba, t)
        output = self._denoise(x_t, t, context, cond).to(y_mamba.dtype)
        if self.prediction == "residual":
            return output
        return self.schedule.predict_x0(x_t, t, output, self.prediction) - y_mamba

    def training_pass(
        self, y_mamba: torch.Tensor, y: torch.Tensor, context: torch.Tensor,
        cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`single_pass` and :meth:`diffusion_loss` (reference ``y_mamba``) in one denoiser call.

        The two inputs are stacked along the batch, so the network runs once per training step on
        ``2 * batch`` samples instead of twice.

        Args:
            y_mamba: (batch, T, C, H, W) the temporal path's prediction.
            y: (batch, T, C, H, W) ground-truth frames.
            context: (batch, T, C_ctx, H', W') conditioning (gradients flow in from both halves).
            cond: (batch, T, C_cond, H, W) conditioning images, or None.
            generator: random source of the diffusion loss.

        Returns:
            (dX: (batch, T, C, H, W), the scalar float32 diffusion loss).
        """
        batch = y_mamba.shape[0]
        t_single = self._single_pass_steps(None, batch, y_mamba.device)
        x_t, t, target = self._noised(y, y_mamba, generator)
        inputs = torch.cat([self._single_pass_input(y_mamba, t_single), x_t.to(y_mamba.dtype)])
        both = lambda value: None if value is None else torch.cat([value, value])  # noqa: E731
        output = self._denoise(inputs, torch.cat([t_single, t]), both(context), both(cond)).to(y_mamba.dtype)
        single, noisy = output[:batch], output[batch:]
        if self.prediction == "residual":
            delta = single
        else:
            delta = self.schedule.predict_x0(inputs[:batch], t_single, single, self.prediction) - y_mamba
        return delta, F.mse_loss(noisy.float(), target.float())

    def forward(self, y_mamba: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """:meth:`single_pass` (same arguments and returns)."""
        return self.single_pass(y_mamba, context)

    @torch.no_grad()
    def ddim_sample(
        self,
        context: torch.Tensor,
        shape: tuple[int, ...] | torch.Size | None = None,
        steps: int = 50,
        init: torch.Tensor | None = None,
        start_step: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM sampling (Song et al., 2021, Eq. 12), from pure noise or refining a prediction.

        Visits ``steps`` evenly spaced steps from the start down to 0 (:func:`ddim_timesteps`), one
        denoiser evaluation each; the last update goes to ``abar = 1``, i.e. returns the final
        ``x0`` estimate. ``eta = 0`` is deterministic given the starting sample; ``eta = 1`` matches
        DDPM's posterior variance. Runs without gradients.

        Args:
            context: (batch, T, C_ctx, H', W') conditioning.
            shape: (batch, T, C, H, W) of the samples; needed when ``init`` is None.
            steps: number of denoiser evaluations (at most ``start_step + 1``).
            init: (batch, T, C, H, W) a prediction to refine (e.g. ``y_mamba``): noised to
                ``start_step`` with noise from ``generator``. None: start from pure noise at the
                last step.
            start_step: the step ``init`` is noised to (default ``t_star``); with ``init=None``
                the default is ``num_steps - 1``.
            eta: DDIM stochasticity, ``>= 0``.
            generator: random source of every noise draw; the same seed gives the same samples.
            cond: (batch, T, C_cond, H, W) conditioning images for every denoiser call, or None.

        Returns:
            (batch, T, C, H, W) samples in ``init``'s dtype and device, else ``context``'s (else the
            schedule's, for a non-tensor context).
        """
        if eta < 0:
            raise ValueError(f"ddim_sample: `eta` must be >= 0, got {eta}")
        if init is None:
            if shape is None:
                raise ValueError("ddim_sample: give `shape` (batch, T, C, H, W) when `init` is None")
            start = self.num_steps - 1 if start_step is None else start_step
            like = context if isinstance(context, torch.Tensor) and context.is_floating_point() else None
            like = self.schedule.alphas_cumprod if like is None else like
            x = _randn(tuple(shape), generator, like.device, like.dtype)
        else:
            start = self.t_star if start_step is None else start_step
        if not 0 <= start < self.num_steps:
            raise ValueError(f"ddim_sample: need 0 <= start_step < {self.num_steps}, got {start}")
        if init is not None:
            noise = _randn(init.shape, generator, init.device, init.dtype)
            x = self.schedule.q_sample(init, self._steps(start, init.shape[0], init.device), noise)

        # Python floats (one host copy of the schedule) keep the per-step scalars exact and device-free;
        # the same sqrt buffers as q_sample, so with exact predictions and eta=0 each update lands on
        # q_sample(x0, t_next, eps) exactly.
        signals = self.schedule.sqrt_alphas_cumprod.double().cpu().tolist()
        sigmas = self.schedule.sqrt_one_minus_alphas_cumprod.double().cpu().tolist()
        timesteps = ddim_timesteps(start, steps)
        for index, step in enumerate(timesteps):
            last = index + 1 == len(timesteps)
            t = self._steps(step, x.shape[0], x.device)
            output = self._denoise(x, t, context, cond).to(x.dtype)
            x0 = self.schedule.predict_x0(x, t, output, self.prediction)
            eps = self.schedule.predict_eps(x, t, output, self.prediction)
            following = None if last else timesteps[index + 1]
            signal_prev, sigma_prev = (1.0, 0.0) if last else (signals[following], sigmas[following])
            abar, abar_prev = signals[step] ** 2, signal_prev**2
            sigma = eta * math.sqrt(max(sigma_prev**2 / sigmas[step] ** 2 * (1 - abar / abar_prev), 0.0))
            direction = sigma_prev if sigma == 0 else math.sqrt(max(sigma_prev**2 - sigma**2, 0.0))
            x = signal_prev * x0 + direction * eps
            if sigma > 0:
                x = x + sigma * _randn(x.shape, generator, x.device, x.dtype)
        return x

    def extra_repr(self) -> str:
        return (f"prediction={self.prediction!r}, t_star={self.t_star}, noise_levels={self.noise_levels!r}, "
                f"noise_spread={self.noise_spread}")
