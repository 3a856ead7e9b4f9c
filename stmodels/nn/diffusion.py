"""DDPM noise schedules and DIFFUMA's residual diffusion head.

References: DDPM (Ho et al., 2020; linear betas, Eq. 4 ``q(x_t | x_0)``), improved DDPM (Nichol &
Dhariwal, 2021, Eq. 17; cosine schedule), v-prediction (Salimans & Ho, "Progressive Distillation",
2022, Sec. 4), DDIM (Song et al., 2021, Eq. 12), DIFFUMA (Xie et al., arXiv 2507.06738, 2025) for the
single-pass residual. Steps are integers ``t = 0 .. num_steps - 1``; ``abar_t`` is the cumulative
product of ``1 - beta`` up to and including step ``t``.

Prediction types and their targets for ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

* ``"epsilon"``: ``eps``;
* ``"v"``: ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``;
* ``"x0"``: ``x0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NoiseSchedule", "ResidualDiffusionHead", "SCHEDULE_KINDS", "PREDICTION_TYPES", "ddim_timesteps"]

SCHEDULE_KINDS = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v", "x0")

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
            (batch, ...): ``noise``, ``sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` or ``x0``.
        """
        _check_prediction("NoiseSchedule.prediction_target", prediction)
        if prediction == "epsilon":
            return noise
        if prediction == "x0":
            return x0
        signal, sigma = self.coefficients(t, x0)
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
            ``sqrt(abar) x_t - sqrt(1 - abar) v`` for v, the output itself for x0.
        """
        _check_prediction("NoiseSchedule.predict_x0", prediction)
        if prediction == "x0":
            return output
        signal, sigma = self.coefficients(t, x_t)
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
            ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)`` for x0.
        """
        _check_prediction("NoiseSchedule.predict_eps", prediction)
        if prediction == "epsilon":
            return output
        signal, sigma = self.coefficients(t, x_t)
        if prediction == "v":
            return sigma * x_t + signal * output
        return (x_t - signal * output) / sigma

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
    :class:`~stmodels.nn.dit.DiTDenoiser`). ``head(y_mamba, context)`` is :meth:`single_pass`.

    Args:
        denoiser: the network.
        num_steps: diffusion steps of the schedule.
        schedule: ``"linear"`` or ``"cosine"`` (see :class:`NoiseSchedule`).
        prediction: what the denoiser predicts: ``"epsilon"`` (default), ``"v"`` or ``"x0"``.
        t_star: the small step at which :meth:`single_pass` treats the temporal prediction as a noisy
            sample, and the default starting step of a refining :meth:`ddim_sample`.
        beta_start, beta_end: the linear schedule's first and last beta.
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
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_prediction("ResidualDiffusionHead", prediction)
        if not 0 <= t_star < num_steps:
            raise ValueError(f"ResidualDiffusionHead: need 0 <= t_star < num_steps={num_steps}, got {t_star}")
        if device is None:
            first = next(denoiser.parameters(), None)
            device = None if first is None else first.device
        self.denoiser = denoiser
        self.schedule = NoiseSchedule(num_steps, schedule, beta_start, beta_end, device=device)
        self.prediction = prediction
        self.t_star = t_star

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def _steps(self, value: int, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), value, dtype=torch.long, device=device)

    def diffusion_loss(
        self, y: torch.Tensor, context: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The denoising loss on ground-truth frames (DDPM's simple loss for the prediction type).

        Draws ``t ~ U{0, .., num_steps - 1}`` per sample and ``eps ~ N(0, I)`` (from ``generator`` if
        given), forms ``x_t = sqrt(abar_t) y + sqrt(1 - abar_t) eps`` and returns the mean squared
        error of ``denoiser(x_t, t, context)`` against the target of the prediction type.

        Args:
            y: (batch, T, C, H, W) ground-truth frames.
            context: (batch, T, C_ctx, H', W') conditioning; gradients flow into it.
            generator: random source for ``t`` and ``eps``.

        Returns:
            Scalar float32 loss.
        """
        batch = y.shape[0]
        source = generator.device if generator is not None else y.device
        t = torch.randint(0, self.num_steps, (batch,), generator=generator, device=source).to(y.device)
        noise = _randn(y.shape, generator, y.device, y.dtype)
        x_t = self.schedule.q_sample(y, t, noise)
        target = self.schedule.prediction_target(y, noise, t, self.prediction)
        output = self.denoiser(x_t, t, context)
        return F.mse_loss(output.float(), target.float())

    def single_pass(
        self, y_mamba: torch.Tensor, context: torch.Tensor, t_star: int | None = None
    ) -> torch.Tensor:
        """The residual correction from one denoiser evaluation at ``t_star``.

        Treats ``y_mamba`` as a sample at step ``t*``: ``eps_hat`` from the denoiser output,
        ``x0_hat = (y_mamba - sqrt(1 - abar_t*) eps_hat) / sqrt(abar_t*)``, ``dX = x0_hat - y_mamba``.
        For v and x0 prediction ``x0_hat`` uses the equivalent closed form of
        :meth:`NoiseSchedule.predict_x0`. Note that a freshly built (zero-output) denoiser gives
        ``dX = (1/sqrt(abar) - 1) y_mamba`` for epsilon, ``(sqrt(abar) - 1) y_mamba`` for v (both
        small at a small ``t*``) and ``-y_mamba`` for x0 prediction.

        Args:
            y_mamba: (batch, T, C, H, W) the temporal path's prediction.
            context: (batch, T, C_ctx, H', W') conditioning.
            t_star: overrides the head's ``t_star`` for this call.

        Returns:
            dX: (batch, T, C, H, W). Gradients flow to y_mamba, context and the denoiser.
        """
        step = self.t_star if t_star is None else t_star
        if not 0 <= step < self.num_steps:
            raise ValueError(f"single_pass: need 0 <= t_star < {self.num_steps}, got {step}")
        t = self._steps(step, y_mamba.shape[0], y_mamba.device)
        output = self.denoiser(y_mamba, t, context)
        x0_hat = self.schedule.predict_x0(y_mamba, t, output.to(y_mamba.dtype), self.prediction)
        return x0_hat - y_mamba

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
            output = self.denoiser(x, t, context).to(x.dtype)
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
        return f"prediction={self.prediction!r}, t_star={self.t_star}"
