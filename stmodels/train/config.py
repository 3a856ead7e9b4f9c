"""The training configuration: one JSON-serialisable dataclass, saved into every run's config.json."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["TrainConfig"]

_CHOICES = {
    "schedule": ("cosine", "onecycle", "constant"),
    "precision": ("fp32", "bf16", "fp16"),
}


@dataclasses.dataclass
class TrainConfig:
    """How :class:`~stmodels.train.Trainer` trains.

    Args:
        epochs: passes over the training set.
        max_steps: stop after this many optimiser steps in all (the schedule spans
            ``min(epochs * steps_per_epoch, max_steps)``); None: no cap.
        batch_size: samples per optimiser step over all processes (the global batch); each of
            ``W`` torchrun processes takes ``batch_size / W``.
        lr, weight_decay, betas: AdamW. Weight decay skips biases and norm weights (1-D tensors).
        schedule: ``"cosine"`` (linear warm-up, cosine decay to ``min_lr_ratio * lr``),
            ``"onecycle"`` (torch's OneCycleLR, warm-up as its rising phase) or ``"constant"``
            (after warm-up).
        warmup_steps: linear warm-up length; None: ``warmup_fraction`` of all steps.
        grad_clip: clip the global gradient norm to this; None or 0: no clipping.
        ema_decay: keep an exponential moving average of the weights (e.g. 0.999), used for
            evaluation, the best checkpoint and the exported model; None: no EMA.
        precision: ``"fp32"``, ``"bf16"`` (autocast on CPU and GPU) or ``"fp16"`` (autocast with a
            gradient scaler; GPU only).
        seed: fixes initialisation-independent randomness: data order, diffusion noise, dropout.
            Two runs with the same seed on the same machine give the same losses.
        num_workers: DataLoader worker processes.
        eval_every: evaluate (and save the best checkpoint) every this many epochs.
        eval_samples: evaluate on at most this many validation samples; None: all.
        checkpoint_every: also checkpoint every this many steps (for resuming long epochs);
            None: at the end of each epoch only.
        log_every: record the training losses every this many steps (``steps.csv``).
        pictures: write a PNG strip and a GIF of the first validation sample per evaluation.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        quiet: no progress bars and no per-epoch lines.
        find_unused_parameters: passed to DistributedDataParallel.
    """

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    warmup_steps: int | None = None
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    precision: str = "fp32"
    seed: int = 0
    num_workers: int = 0
    eval_every: int = 1
    eval_samples: int | None = None
    checkpoint_every: int | None = None
    log_every: int = 10
    pictures: bool = True
    device: str = "auto"
    quiet: bool = False
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        for field, choices in _CHOICES.items():
            if getattr(self, field) not in choices:
                raise ValueError(f"TrainConfig: `{field}` must be one of {choices}, got {getattr(self, field)!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: `{name}` must be a positive integer, got {value!r}")
        for name in ("max_steps", "checkpoint_every", "eval_samples", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (0 if name == "warmup_steps" else 1)):
                raise ValueError(f"TrainConfig: `{name}` must be None or a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "warmup_fraction", "min_lr_ratio", "grad_clip", "ema_decay"):
            value = getattr(self, name)
            if value is None and name in ("grad_clip", "ema_decay"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"TrainConfig: `{name}` must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig: `lr` must be a positive number, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig: `weight_decay` must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"TrainConfig: `grad_clip` must be None, 0 (no clipping) or a positive norm, "
                             f"got {self.grad_clip!r}")
        if self.seed < 0 or self.num_workers < 0 or int(self.seed) != self.seed or int(self.num_workers) != self.num_workers:
            raise ValueError(f"TrainConfig: `seed` and `num_workers` must be integers >= 0, got "
                             f"{self.seed!r}, {self.num_workers!r}")
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"TrainConfig: `betas` must be two numbers in [0, 1), got {self.betas!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig: `ema_decay` must be in (0, 1) or None, got {self.ema_decay!r}")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("TrainConfig: `warmup_fraction` must be in [0, 1) and `min_lr_ratio` in [0, 1]")
        self.betas = tuple(float(b) for b in self.betas)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}")
        return cls(**values)
