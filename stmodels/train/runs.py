"""Reading a finished (or interrupted) run folder back: its configs, its model, its data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stmodels.errors import UserValueError
from stmodels.train.checkpoint import CheckpointError, load_checkpoint, require_entries

__all__ = ["load_run", "read_run_config"]


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` a :class:`~stmodels.train.Trainer` wrote into ``run_dir``."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run folder written by `stmodels train`?")
    from stmodels.models.registry import read_json_file

    config = read_json_file(path, "run config")
    if not isinstance(config, dict):
        raise UserValueError(f"{path}: expected a JSON object (the run's configs), got {type(config).__name__}")
    return config


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best", device: str | torch.device = "cpu",
             **overrides) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's model with trained weights, in eval mode.

    Args:
        run_dir: the run folder.
        checkpoint: ``"best"`` (lowest validation MSE; the evaluation weights, EMA when enabled)
            or ``"last"`` (the latest training state's evaluation weights), or a checkpoint path.
        device: where to put the model.
        overrides: model config fields that keep parameter shapes (e.g. ``backend``, ``sampler``).

    Returns:
        ``(model, run_config)``.
    """
    from stmodels.models import create_model

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if not isinstance(config.get("model"), str) or not config["model"]:
        raise ValueError(f"{run_dir / 'config.json'}: the run's model was not a registered model, so it "
                         "cannot be rebuilt by name; load its checkpoint yourself")
    if checkpoint in ("best", "last"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if checkpoint == "best" and not path.exists():
            path = run_dir / "checkpoints" / "last.pt"  # runs without validation have no best
    else:
        path = Path(checkpoint)
    state = load_checkpoint(path)
    require_entries(state, path, ("model",))
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    from stmodels.models.registry import saved_fields  # drops the runtime `backend` older runs saved

    model_fields = config.get("model_config") or {}
    if not isinstance(model_fields, dict):
        raise UserValueError(f"{run_dir / 'config.json'}: `model_config` must be an object")
    try:
        model = create_model(config["model"], **{**saved_fields(model_fields), **overrides})
    except ValueError as exc:
        raise UserValueError(f"{run_dir / 'config.json'}: {exc}") from exc
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {config['model']!r}: {exc}") from exc
    return model.to(device).eval(), config
