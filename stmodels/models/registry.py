"""Model registry, configs and weights on disk.

``create_model(name, **overrides)`` builds a registered model from its preset config with fields
replaced; ``in_shape=(T_in, C, H, W)`` and ``out_frames=T_out`` follow OpenSTL's convention.
``model.save_pretrained(dir)`` writes ``config.json`` (the registered name and the config) and
``model.safetensors``; ``from_pretrained(dir)`` rebuilds the model and loads the weights exactly.

Runtime fields (:data:`RUNTIME_FIELDS`, e.g. ``backend``) choose how a model runs, not what it
is: they are accepted by ``create_model`` and ``from_pretrained`` but never written to a saved
config, and a saved config that has them (files of older versions) loads with their value ignored.
A model saved on one backend therefore loads and runs on any.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stmodels._fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "ModelConfig",
    "PretrainedMixin",
    "register_model",
    "create_model",
    "from_pretrained",
    "list_models",
    "model_config",
    "model_description",
    "RUNTIME_FIELDS",
    "saved_fields",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

#: Config fields that choose how a model runs (its kernel backend), not what it computes. They are
#: left out of every saved config, ignored when read from one, and set by ``create_model(..., backend=)``,
#: ``from_pretrained(..., backend=)``, :func:`stmodels.ops.use_backend` or ``STMODELS_BACKEND``.
RUNTIME_FIELDS = ("backend",)


def saved_fields(values: dict[str, Any] | None) -> dict[str, Any]:
    """A saved config's fields without the runtime ones (which older files may still carry)."""
    return {k: v for k, v in (values or {}).items() if k not in RUNTIME_FIELDS}


@dataclasses.dataclass
class ModelConfig:
    """Base of every model config: a JSON-serialisable dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """The fields to save, all but :data:`~stmodels.models.registry.RUNTIME_FIELDS`."""
        return saved_fields(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config fields {unknown}; known: {sorted(known)}")
        converted = {}
        for name, value in values.items():
            # JSON has no tuples: restore the tuple-typed shape fields.
            if isinstance(value, list) and "tuple" in str(known[name].type):
                value = tuple(value)
            converted[name] = value
        return cls(**converted)

    def replace(self, **overrides):
        return self.from_dict({**dataclasses.asdict(self), **overrides})


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[[ModelConfig], nn.Module]
    config: ModelConfig
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, config: ModelConfig, builder: Callable[[ModelConfig], nn.Module], description: str = ""):
    """Register a named preset: ``builder(config)`` builds the model."""
    if name in _REGISTRY:
        raise ValueError(f"register_model: {name!r} is already registered")
    _REGISTRY[name] = _Entry(builder, config, description)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def model_description(name: str) -> str:
    """The one-line description ``name`` was registered with."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name].description


def model_config(name: str, **overrides) -> ModelConfig:
    """The preset config of ``name`` with ``overrides`` applied."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name].config.replace(**overrides)


def create_model(name: str, pretrained: bool | str | os.PathLike = False, **overrides) -> nn.Module:
    """Build the registered model ``name``; keyword overrides replace fields of its preset config.

    Args:
        name: a name from :func:`list_models`.
        pretrained: False (fresh weights), or a folder written by ``save_pretrained`` (a run's
            ``RUN/model``, or the run folder itself) to load, in eval mode, with ``overrides`` that
            keep parameter shapes (e.g. ``backend``). stmodels publishes no downloadable weights, so
            True is an error.
        overrides: config fields, e.g. ``in_shape``, ``out_frames``, ``backend``.

    Example:
        >>> model = create_model("diffuma_tiny", in_shape=(4, 1, 32, 48), out_frames=6)
    """
    if pretrained is True:
        raise ValueError(f"create_model({name!r}, pretrained=True): stmodels has no downloadable weights; "
                         "train a model (stmodels train) and pass pretrained=DIR, a folder written by "
                         "save_pretrained (a run's RUN/model)")
    if pretrained is not False and pretrained is not None:
        directory = Path(pretrained)
        if not (directory / CONFIG_FILE).is_file() and (directory / "model" / CONFIG_FILE).is_file():
            directory = directory / "model"  # a run folder: its exported model
        model = from_pretrained(directory, **overrides)
        if model.registered_name != name:
            raise ValueError(f"create_model({name!r}, pretrained={str(pretrained)!r}): that folder holds a "
                             f"{model.registered_name!r} model, not {name!r}")
        return model
    config = model_config(name, **overrides)
    model = _REGISTRY[name].builder(config)
    model.registered_name = name
    return model


class PretrainedMixin:
    """``save_pretrained(dir)`` for registered models (they keep ``self.config`` and ``registered_name``)."""

    config: ModelConfig
    registered_name: str | None = None

    def _check_input(self, X: torch.Tensor, name: str, frames: int) -> None:
        """Raise a ValueError naming ``name`` unless ``X`` is (batch, frames, C, H, W) of ``config.in_shape``."""
        expected = (frames,) + tuple(self.config.in_shape[1:])
        if X.dim() != 5 or tuple(X.shape[1:]) != expected:
            raise ValueError(
                f"{type(self).__name__}: `{name}` must have shape (batch, {', '.join(map(str, expected))}) "
                f"(batch, T, C, H, W), got {tuple(X.shape)}"
            )

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed)."""
        from safetensors.torch import save

        if not self.registered_name:
            raise ValueError("save_pretrained: the model was not built by create_model, so it has no registered name")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"model": self.registered_name, "config": self.config.to_dict()}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(state))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
        return directory


def from_pretrained(directory: str | os.PathLike, device: str | torch.device | None = None, **overrides) -> nn.Module:
    """Rebuild a model saved by ``save_pretrained`` and load its weights (strictly).

    Args:
        directory: the folder with ``config.json`` and ``model.safetensors``.
        device: where to put the weights (default: CPU).
        overrides: config fields to replace that do not change parameter shapes (e.g. ``backend``).

    Returns:
        The model in eval mode (call ``.train()`` to fine-tune it).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(f"from_pretrained: {path} does not exist (expected files of save_pretrained)")
    meta = json.loads(config_path.read_text())
    if "model" not in meta or "config" not in meta:
        raise ValueError(f"from_pretrained: {config_path} lacks the 'model' and 'config' entries")
    name = meta["model"]
    if name not in _REGISTRY:
        raise ValueError(f"from_pretrained: {config_path} names unknown model {name!r}; registered: {list_models()}")
    config = type(_REGISTRY[name].config).from_dict(saved_fields(meta["config"])).replace(**overrides)
    model = _REGISTRY[name].builder(config)
    model.registered_name = name
    model.load_state_dict(load_file(str(weights_path), device=str(device or "cpu")), strict=True)
    if device is not None:
        model.to(device)
    return model.eval()
