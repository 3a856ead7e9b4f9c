"""The Trainer: AdamW with a warm-up schedule, clipping, EMA, mixed precision, DDP, checkpoints.

Every source of randomness during training is a function of ``(seed, rank, step)`` (the data order
of ``(seed, epoch)``), so a run interrupted at any checkpoint and resumed reproduces the
uninterrupted run exactly, and two runs with the same seed on the same machine give the same
losses. Files of a run (rank 0 only)::

    RUN/config.json            model, training and data configs
    RUN/metrics.csv            one row per epoch (train losses, validation metrics, lr, timing)
    RUN/steps.csv              training losses every ``log_every`` steps
    RUN/checkpoints/last.pt    the whole training state, every epoch (and every ``checkpoint_every`` steps)
    RUN/checkpoints/best.pt    the evaluation weights with the lowest validation MSE
    RUN/model/                 those weights as ``save_pretrained`` output (``from_pretrained`` loads it)
    RUN/pictures/              a PNG strip and a GIF of a validation sample per evaluation
    RUN/tensorboard/           when tensorboard is installed
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stmodels.errors import UserError
from stmodels.train.checkpoint import CheckpointError, load_checkpoint, require_entries, save_checkpoint
from stmodels.train.config import TrainConfig
from stmodels.train.distributed import DistributedContext, ShardedBatchSampler, init_distributed
from stmodels.train.ema import ModelEMA
from stmodels.train.evaluate import EvalResult, autocast_context, evaluate
from stmodels.train.run_log import RunLog

__all__ = ["RunMismatchError", "Trainer", "WarmupCosine"]

# Options that define what a run is: resuming with any of them changed is refused.
_RUN_DEFINING_TRAIN = ("batch_size", "lr", "weight_decay", "betas", "schedule", "warmup_steps", "warmup_fraction",
                       "min_lr_ratio", "grad_clip", "ema_decay", "precision", "seed")
# Model config fields that may change on resume: they select kernels, not what is computed.
_FREE_MODEL_FIELDS = ("backend",)


class RunMismatchError(UserError, FileExistsError):
    """The run folder holds a different run (or any run, when not resuming)."""


def _comparable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for every run-defining option that differs."""
    differences = []

    def compare(label, old, new):
        old, new = _comparable(old), _comparable(new)
        if old != new:
            differences.append(f"{label}: {old!r} -> {new!r}")

    compare("model", saved.get("model"), current.get("model"))
    old_model, new_model = saved.get("model_config") or {}, current.get("model_config") or {}
    for name in sorted(set(old_model) | set(new_model)):
        if name not in _FREE_MODEL_FIELDS:
            compare(f"model {name}", old_model.get(name), new_model.get(name))
    old_data, new_data = saved.get("data") or {}, current.get("data") or {}
    for name in sorted(set(old_data) | set(new_data)):
        compare(f"data {name}", old_data.get(name), new_data.get(name))
    old_train, new_train = saved.get("train") or {}, current.get("train") or {}
    for name in _RUN_DEFINING_TRAIN:
        compare(name, old_train.get(name), new_train.get(name))
    compare("world_size", saved.get("world_size"), current.get("world_size"))
    # epochs / max_steps: the learning-rate schedule spans total_steps, so a longer or shorter run
    # would continue on a schedule that does not fit it.
    compare("total_steps (from epochs and max_steps)", saved.get("total_steps"), current.get("total_steps"))
    return differences


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine (or constant) to ``floor``."""

    def __init__(self, total: int, warmup: int, floor: float, cosine: bool = True) -> None:
        self.total, self.warmup, self.floor, self.cosine = total, warmup, floor, cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _LossModule(nn.Module):
    """Routes ``compute_loss`` through ``forward`` so DistributedDataParallel sees the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs, targets, generator):
        return self.model.compute_loss(inputs, targets, generator=generator)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Train a model that has ``compute_loss(X, Y, generator=None) -> {"loss", ...}`` and ``model(X)``.

    Args:
        model: e.g. ``create_model("diffuma_small")``; its ``registered_name`` and ``config`` (when
            present) go into the run's files so ``stmodels eval`` can rebuild it.
        train_set: items ``(inputs: (T_in, C, H, W), targets: (T_out, C, H, W))``. A ``set_epoch``
            method, when present, is called before each epoch (Moving MNIST redraws sequences).
        val_set: the same kind of items for evaluation and the best checkpoint; None: no evaluation.
        config: a :class:`TrainConfig`.
        out_dir: the run folder (created); None: write nothing (no checkpoints, logs or pictures).
        data_spec: a JSON-serialisable description of the data, saved in ``config.json``.
        callbacks: objects with optional ``on_step_end(trainer)`` / ``on_epoch_end(trainer, row)``.
        context: the distributed context; default: :func:`init_distributed` (torchrun or one process).
    """

    def __init__(self, model: nn.Module, train_set: Dataset, val_set: Dataset | None = None,
                 config: TrainConfig | None = None, out_dir: str | Path | None = None, *,
                 data_spec: dict[str, Any] | None = None, callbacks: Sequence[Any] = (),
                 context: DistributedContext | None = None) -> None:
        if not callable(getattr(model, "compute_loss", None)):
            raise TypeError(f"Trainer: {type(model).__name__} has no compute_loss(X, Y, generator) method")
        self.config = config or TrainConfig()
        self.context = context or init_distributed(self.config.device)
        self.device = self.context.device
        cfg, ctx = self.config, self.context
        if cfg.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("Trainer: precision 'fp16' needs a CUDA device; use 'bf16' on the CPU")
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"Trainer: batch_size {cfg.batch_size} (the global batch) must be a multiple of "
                             f"the {ctx.world_size} processes")
        self.model = model.to(self.device)
        self.train_set, self.val_set = train_set, val_set
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data_spec = data_spec
        self.callbacks = list(callbacks)
        self.sampler = ShardedBatchSampler(len(train_set), cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        loss_module = _LossModule(self.model)
        if ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            loss_module = nn.parallel.DistributedDataParallel(
                loss_module, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters)
        self.loss_module = loss_module
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=cfg.betas)
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_fraction * self.total_steps)
        warmup = min(warmup, max(0, self.total_steps - 1))
        if cfg.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=cfg.lr, total_steps=max(2, self.total_steps),
                pct_start=max(warmup, 1) / max(2, self.total_steps), cycle_momentum=False)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, WarmupCosine(self.total_steps, warmup, cfg.min_lr_ratio, cfg.schedule == "cosine"))
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.generator = torch.Generator(self.device)
        # Whether out_dir already holds a run: looked at by every rank before rank 0 writes anything.
        self._saved_run_config = self._read_saved_run_config()
        self._holds_run = self._saved_run_config is not None or self._last_checkpoint_exists()
        self.context.barrier()
        self.log = RunLog(self.out_dir, enabled=ctx.is_main) if self.out_dir is not None else None

        # Progress, all restored by resume.
        self.epoch = 0  # the epoch in progress (or the next one)
        self.batch_in_epoch = 0  # batches of that epoch already trained
        self.step = 0  # optimiser steps so far
        self.epoch_sums = {"loss": 0.0, "recon": 0.0, "diff": 0.0, "batches": 0, "seconds": 0.0}
        self._pending = torch.zeros(3, device=self.device)  # this rank's loss sums not yet in epoch_sums
        self._pending_batches = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.step_rows: list[dict[str, Any]] = []
        self.last_eval: EvalResult | None = None

    # -- files -------------------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    @property
    def eval_model(self) -> nn.Module:
        """The EMA of the weights when enabled, else the model; evaluation and export use it."""
        return self.ema.module if self.ema is not None else self.model

    def run_config(self) -> dict[str, Any]:
        return {
            "model": getattr(self.model, "registered_name", None),
            "model_config": self.model.config.to_dict() if hasattr(self.model, "config") else None,
            "train": self.config.to_dict(),
            "data": self.data_spec,
            "world_size": self.context.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "torch": str(torch.__version__),
        }

    def _last_checkpoint_exists(self) -> bool:
        return self.checkpoint_dir is not None and (self.checkpoint_dir / "last.pt").exists()

    def _read_saved_run_config(self) -> dict[str, Any] | None:
        if self.out_dir is None or not (self.out_dir / "config.json").exists():
            return None
        from stmodels.train.runs import read_run_config

        return read_run_config(self.out_dir)

    def _check_same_run(self, saved: dict[str, Any] | None, source: Path) -> None:
        if not isinstance(saved, dict):
            return
        differences = run_differences(saved, self.run_config())
        if differences:
            raise RunMismatchError(f"{source}: the run was made with other options; resuming it with these would "
                                   f"mix two runs ({'; '.join(differences)}). Use the run's options, or a new "
                                   "--out (or --overwrite to move the old run aside)")

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict() if self.ema else None,
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "epoch_sums": dict(self.epoch_sums), "best": dict(self.best),
            "history": list(self.history), "step_rows": list(self.step_rows),
            "run": self.run_config(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
        require_entries(state, source, ("model", "optimizer", "scheduler", "epoch", "batch_in_epoch", "step",
                                        "epoch_sums", "best", "history", "step_rows"))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if not state.get("ema"):
                raise CheckpointError("the checkpoint has no EMA weights but this run has ema_decay set")
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.epoch_sums, self.best = dict(state["epoch_sums"]), dict(state["best"])
        self.history, self.step_rows = list(state["history"]), list(state["step_rows"])

    def save(self, name: str = "last.pt") -> Path | None:
        """Write the whole training state to ``RUN/checkpoints/<name>`` (rank 0)."""
        if self.checkpoint_dir is None or not self.context.is_main:
            return None
        path = save_checkpoint(self.checkpoint_dir / name, self.state_dict())
        self.log.write_tables(self.history, self.step_rows)
        return path

    def resume(self, path: str | Path | None = None) -> None:
        """Restore the state of ``path`` (default ``RUN/checkpoints/last.pt``) on every rank."""
        if path is None:
            if self.checkpoint_dir is None:
                raise CheckpointError("Trainer.resume: this trainer has no out_dir, so no checkpoint to resume")
            path = self.checkpoint_dir / "last.pt"
        state = load_checkpoint(path, map_location=self.device)
        self._check_same_run(state.get("run"), Path(path))
        try:
            self.load_state_dict(state, path)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, UserError):
                raise
            raise CheckpointError(f"{path}: does not fit this trainer ({type(exc).__name__}: {exc})") from exc

    def _save_best(self, result: EvalResult) -> None:
        self.best = {"val_mse": result.metrics["mse"], "epoch": self.epoch, "step": self.step}
        if self.checkpoint_dir is None or not self.context.is_main:
            return
        weights = {k: v.detach().cpu() for k, v in self.eval_model.state_dict().items()}
        save_checkpoint(self.checkpoint_dir / "best.pt",
                        {"model": weights, "metrics": result.metrics, **self.best, "run": self.run_config()})
        self._export()

    def _export(self) -> None:
        if getattr(self.model, "registered_name", None) and hasattr(self.model, "save_pretrained"):
            exported = self.eval_model
            exported.registered_name = self.model.registered_name
            exported.save_pretrained(self.out_dir / "model")

    # -- training ----------------------------------------------------------------------------------------

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimiser step; returns this rank's (loss, recon, diff) as a device tensor (no sync)."""
        cfg = self.config
        seed = _step_seed(cfg.seed, self.context.rank, self.step)
        torch.manual_seed(seed)  # dropout, random conditioning
        self.generator.manual_seed(seed ^ 0x5DEECE66D)  # diffusion steps and noise
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with autocast_context(self.device, cfg.precision):
            out = self.loss_module(inputs, targets, self.generator)
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return torch.stack([loss.detach().float(), out.get("recon", loss).detach().float(),
                            out.get("diff", torch.zeros_like(loss)).detach().float()])

    def _reduced(self, values: torch.Tensor, what: str) -> list[float]:
        """Mean over ranks, as floats (the only host sync of the loop, every ``log_every`` steps)."""
        values = self.context.mean(values).tolist()
        if not all(math.isfinite(v) for v in values):
            raise FloatingPointError(f"Trainer: non-finite loss {values} ({what}, epoch {self.epoch + 1}); "
                                     "lower lr, enable grad_clip or use fp32")
        return values

    def _fold_pending(self) -> None:
        """Add the losses summed since the last fold into ``epoch_sums`` (every rank calls it)."""
        if self._pending_batches:
            values = self._reduced(self._pending, f"steps up to {self.step}")
            for name, value in zip(("loss", "recon", "diff"), values):
                self.epoch_sums[name] += value
            self.epoch_sums["batches"] += self._pending_batches
        self._pending = torch.zeros(3, device=self.device)
        self._pending_batches = 0

    def _progress(self, **kwargs):
        from tqdm.auto import tqdm

        disabled = self.config.quiet or not self.context.is_main or not sys.stderr.isatty()
        return tqdm(disable=disabled, dynamic_ncols=True, **kwargs)

    def run_evaluation(self) -> EvalResult | None:
        """Evaluate the evaluation weights on the validation set (rank 0; others wait)."""
        if self.val_set is None:
            return None
        result = None
        if self.context.is_main:
            result = evaluate(self.eval_model, self.val_set, batch_size=self.config.batch_size,
                              device=self.device, max_samples=self.config.eval_samples,
                              precision=self.config.precision, seed=self.config.seed)
            if self.config.pictures and self.out_dir is not None:
                from stmodels.train.visualize import save_gif, save_strip

                name = self.out_dir / "pictures" / f"epoch_{self.epoch + 1:04d}"
                save_strip(name.with_suffix(".png"), *result.example)
                save_gif(name.with_suffix(".gif"), *result.example)
        self.context.barrier()
        return result

    def fit(self, resume: bool | str | Path = False) -> list[dict[str, Any]]:
        """Train to ``epochs`` (or ``max_steps``) and return the per-epoch rows of ``metrics.csv``.

        Args:
            resume: True: continue from ``RUN/checkpoints/last.pt`` (an error if missing);
                ``"auto"``: continue when it exists, else start; a path: continue from that file;
                False: start from scratch.
        """
        cfg = self.config
        if resume == "auto":
            resume = self._last_checkpoint_exists()
            if not resume and self._saved_run_config is not None:
                # Started but killed before its first checkpoint: the same run may start again.
                self._check_same_run(self._saved_run_config, self.out_dir / "config.json")
        elif not resume and self._holds_run:
            raise RunMismatchError(f"{self.out_dir}: already holds a run; resume it (--resume), or choose a new "
                                   "folder (or --overwrite to move the old run aside)")
        if resume:
            self.resume(None if resume is True else resume)
        if self.log is not None:
            self.log.write_config(self.run_config())
        epochs = min(cfg.epochs, math.ceil(self.total_steps / self.steps_per_epoch))  # max_steps may cut it short
        epochs_bar = self._progress(total=epochs, initial=self.epoch, desc="epochs", position=0)
        self._epochs_bar = epochs_bar
        try:
            while self.epoch < cfg.epochs and self.step < self.total_steps:
                self._run_epoch()
            self._finish()
        finally:
            epochs_bar.close()
            if self.log is not None:
                self.log.close()
        return self.history

    def _run_epoch(self) -> None:
        cfg = self.config
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                            pin_memory=self.device.type == "cuda")
        bar = self._progress(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                             desc=f"epoch {self.epoch + 1}", leave=False, position=1)
        started = time.perf_counter()
        try:
            for inputs, targets in loader:
                values = self._train_step(inputs, targets)
                self._pending += values
                self._pending_batches += 1
                self.step += 1
                self.batch_in_epoch += 1
                if self.step % cfg.log_every == 0:
                    losses = dict(zip(("loss", "recon", "diff"), self._reduced(values, f"step {self.step}")))
                    row = {"step": self.step, "epoch": self.epoch + 1, **losses, "lr": self.scheduler.get_last_lr()[0]}
                    self.step_rows.append(row)
                    if self.log is not None:
                        self.log.scalars("train", row, self.step)
                    bar.set_postfix(loss=f"{losses['loss']:.4g}", refresh=False)
                bar.update(1)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.epoch_sums["seconds"] += time.perf_counter() - started
                    started = time.perf_counter()
                    self._fold_pending()
                    self.save()
                for callback in self.callbacks:
                    if hasattr(callback, "on_step_end"):
                        callback.on_step_end(self)
                if self.step >= self.total_steps:
                    break
        finally:
            bar.close()
        self.epoch_sums["seconds"] += time.perf_counter() - started
        self._fold_pending()
        self._end_epoch()

    def _end_epoch(self) -> None:
        cfg = self.config
        sums = self.epoch_sums
        batches = max(1, sums["batches"])
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.scheduler.get_last_lr()[0],
               "train_loss": sums["loss"] / batches, "train_recon": sums["recon"] / batches,
               "train_diff": sums["diff"] / batches, "epoch_seconds": sums["seconds"],
               "samples_per_second": sums["batches"] * cfg.batch_size / max(sums["seconds"], 1e-9)}
        last_epoch = self.epoch + 1 >= cfg.epochs or self.step >= self.total_steps
        if (self.epoch + 1) % cfg.eval_every == 0 or last_epoch:
            result = self.run_evaluation()
            if result is not None:
                self.last_eval = result
                row.update({f"val_{k}": v for k, v in result.metrics.items()})
                if not self.best or result.metrics["mse"] < self.best["val_mse"]:
                    self._save_best(result)
        self.history.append(row)
        if self.log is not None:
            self.log.scalars("epoch", row, self.step)
        self.epoch += 1
        self.batch_in_epoch = 0
        if getattr(self, "_epochs_bar", None) is not None:
            self._epochs_bar.update(1)
        self.epoch_sums = {"loss": 0.0, "recon": 0.0, "diff": 0.0, "batches": 0, "seconds": 0.0}
        self.save()
        if self.context.is_main and not cfg.quiet:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
            # tqdm.write prints above the live bars, so the line stays on screen after they are gone.
            from tqdm.auto import tqdm

            tqdm.write(f"epoch {row['epoch']} step {row['step']}/{self.total_steps}: {shown}", file=sys.stdout)
        for callback in self.callbacks:
            if hasattr(callback, "on_epoch_end"):
                callback.on_epoch_end(self, row)

    def _finish(self) -> None:
        # Without validation there is no best: export the final weights instead.
        if self.val_set is None and self.out_dir is not None and self.context.is_main:
            self._export()
        self.context.barrier()
