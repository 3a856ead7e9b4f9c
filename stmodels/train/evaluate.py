"""Evaluation and prediction loops shared by the Trainer, the command line and the examples."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from stmodels.metrics import MetricAccumulator

__all__ = ["EvalResult", "autocast_context", "evaluate", "forward_options"]


def autocast_context(device: torch.device, precision: str):
    """bf16 / fp16 autocast on ``device``, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward_options(model: nn.Module, sampler: str | None, steps: int | None, seed: int,
                    device: torch.device) -> dict:
    """Keyword arguments selecting a sampler for models that have one (DIFFUMA), checked up front."""
    if sampler is None and steps is None:
        return {}
    accepted = inspect.signature(model.forward).parameters
    if "sampler" not in accepted:
        raise ValueError(f"{type(model).__name__} has no sampler to choose; drop --sampler/--steps for this model")
    options = {"sampler": sampler}
    if steps is not None:
        options["ddim_steps"] = steps
    if sampler == "ddim" and "generator" in accepted:
        options["generator"] = torch.Generator(device).manual_seed(seed)
    return options


@dataclasses.dataclass
class EvalResult:
    """Metrics of one evaluation.

    Attributes:
        metrics: ``mse``, ``mae``, ``ssim``, ``psnr`` (OpenSTL conventions, see
            :mod:`stmodels.metrics`) and ``ms_per_sample``, the model's inference time per sample
            (batches after the first, which pays for warm-up, when there are several).
        samples: the number of samples evaluated.
        example: ``(inputs, targets, prediction)`` of the first sample, each (T, C, H, W) on the CPU.
    """

    metrics: dict[str, float]
    samples: int
    example: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    max_samples: int | None = None,
    sampler: str | None = None,
    ddim_steps: int | None = None,
    seed: int = 0,
    precision: str = "fp32",
    data_range: float = 1.0,
    num_workers: int = 0,
) -> EvalResult:
    """Predict every item of ``dataset`` with ``model(X)`` and accumulate the metrics.

    Args:
        model: maps ``X: (batch, T_in, C, H, W)`` to ``(batch, T_out, C, H, W)``; put in eval mode
            for the call and restored afterwards.
        dataset: items ``(inputs, targets)``.
        batch_size: samples per forward call.
        device: where to run (default: the model's parameters' device, else CPU).
        max_samples: evaluate the first ``max_samples`` items only.
        sampler, ddim_steps: DIFFUMA's inference sampler (``"single"`` or ``"ddim"``) and steps.
        seed: seed of the DDIM noise.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast.
        data_range: SSIM's data range (1.0; 2.0 reproduces OpenSTL's published SSIM).
        num_workers: DataLoader workers.
    """
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    if max_samples is not None and max_samples < len(dataset):
        dataset = Subset(dataset, range(max_samples))
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty")
    options = forward_options(model, sampler, ddim_steps, seed, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    accumulator = MetricAccumulator(data_range=data_range)
    timings, example = [], None
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with autocast_context(device, precision):
                prediction = model(inputs, **options)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timings.append((time.perf_counter() - start, inputs.shape[0]))
            prediction = prediction.float().cpu()
            accumulator.update(prediction, targets)
            if example is None:
                example = (inputs[0].cpu(), targets[0], prediction[0])
    finally:
        model.train(was_training)
    measured = timings[1:] if len(timings) > 1 else timings
    metrics = accumulator.compute()
    metrics["ms_per_sample"] = 1e3 * sum(t for t, _ in measured) / sum(n for _, n in measured)
    return EvalResult(metrics, len(dataset), example)
