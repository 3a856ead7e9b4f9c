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
import hashlib
import json
import math
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from stmodels._fileio import atomic_write_bytes, atomic_write_text
from stmodels.errors import UserValueError

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


def _check_value(owner: str, name: str, kind: Any, value: Any, bounds: tuple | None) -> Any:
    """``value`` checked against the annotation ``kind`` (and inclusive ``bounds``), normalised."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)

    def fail(expected: str):
        shown = name if "`" in name else f"`{name}`"
        raise UserValueError(f"{owner}: {shown} must be {expected}, got {value!r}")

    if kind is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in arguments:
            return None
        others = [a for a in arguments if a is not type(None)]
        if len(others) == 1:
            return _check_value(owner, name, others[0], value, bounds)
        return value
    if origin is typing.Literal:
        if value not in arguments:
            fail(f"one of {arguments}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if not (hasattr(value, "__index__") and not isinstance(value, bool)):
                fail("an integer")
            value = int(value.__index__())
        low, high = bounds if bounds is not None else (0, None)
        if (low is not None and value < low) or (high is not None and value > high):
            fail(f"an integer in [{low}, {'inf' if high is None else high}]")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        value = float(value)
        if not math.isfinite(value):
            fail("a finite number")
        if bounds is not None:
            low, high = bounds
            if (low is not None and value < low) or (high is not None and value > high):
                fail(f"a number in [{'-inf' if low is None else low}, {'inf' if high is None else high}]")
        return value
    if kind is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            fail("a tuple")
        if len(arguments) == 2 and arguments[1] is Ellipsis:
            if not value:
                fail("a non-empty tuple")
            element_kinds = [arguments[0]] * len(value)
        else:
            if len(value) != len(arguments):
                fail(f"a tuple of {len(arguments)} values")
            element_kinds = list(arguments)
        # Tuple fields hold sizes (shapes, widths): integers in them are positive unless declared.
        element_bounds = bounds if bounds is not None else (1, None)
        return tuple(_check_value(owner, f"`{name}`[{i}]", k, v, element_bounds)
                     for i, (k, v) in enumerate(zip(element_kinds, value)))
    return value


@dataclasses.dataclass
class ModelConfig:
    """Base of every model config: a JSON-serialisable dataclass, validated at construction.

    Every field is checked against its annotation before the subclass's own ``__post_init__``
    runs (even when that one does not call ``super()``): ``int`` fields hold integers (not bools)
    >= 0, ``float`` fields finite numbers, ``bool`` and ``str`` fields their type, ``X | None``
    None or an ``X``, ``Literal[...]`` one of its values, and ``tuple[int, int, ...]`` fields
    tuples of that length (``tuple[int, ...]``: non-empty) of positive integers. A subclass
    tightens the bounds with ``field_ranges = {"name": (low, high)}`` (inclusive; None: open).
    Bad values raise a ``ValueError`` naming the class and field.
    """

    field_ranges: ClassVar[dict[str, tuple]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_validates_fields", False):
            def __post_init__(self, _own=own):
                ModelConfig._validate_fields(self)
                _own(self)

            __post_init__._validates_fields = True
            __post_init__.__doc__ = own.__doc__
            cls.__post_init__ = __post_init__

    def __post_init__(self) -> None:
        self._validate_fields()

    def _validate_fields(self) -> None:
        cls = type(self)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name in hints:
                value = _check_value(cls.__name__, field.name, hints[field.name], getattr(self, field.name),
                                     cls.field_ranges.get(field.name))
                object.__setattr__(self, field.name, value)

    def to_dict(self) -> dict[str, Any]:
        """The fields to save, all but :data:`~stmodels.models.registry.RUNTIME_FIELDS`."""
        return saved_fields(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        if not isinstance(values, dict):
            raise UserValueError(f"{cls.__name__}: expected a mapping of config fields, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserValueError(f"{cls.__name__}: unknown config fields {unknown}; known: {sorted(known)}")
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
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        The safetensors metadata carries a SHA-256 of the weights, which ``from_pretrained`` checks.
        """
        from safetensors.torch import save

        if not self.registered_name:
            raise ValueError("save_pretrained: the model was not built by create_model, so it has no registered name")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"model": self.registered_name, "config": self.config.to_dict()}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"sha256": weights_digest(state)}))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
        return directory


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``state``'s tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_json_file(path: Path, what: str) -> Any:
    """The JSON in ``path``, or a UserError naming the file (unreadable, not UTF-8, not JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserValueError(f"{what}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise UserValueError(f"{what}: {path} is not valid JSON ({exc})") from exc


def from_pretrained(directory: str | os.PathLike, device: str | torch.device | None = None, **overrides) -> nn.Module:
    """Rebuild a model saved by ``save_pretrained`` and load its weights (strictly).

    Config fields missing from ``config.json`` (a file written by an older version) are taken
    from the saved model's registered preset, never from the config class's defaults. The weights
    are checked against the SHA-256 in their metadata (files without one load unchecked).

    Args:
        directory: the folder with ``config.json`` and ``model.safetensors``.
        device: where to put the weights (default: CPU).
        overrides: config fields to replace that do not change parameter shapes (e.g. ``backend``).

    Returns:
        The model in eval mode (call ``.train()`` to fine-tune it).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(f"from_pretrained: {path} does not exist (expected files of save_pretrained)")
    meta = read_json_file(config_path, "from_pretrained")
    if not isinstance(meta, dict) or "model" not in meta or not isinstance(meta.get("config"), dict):
        raise UserValueError(f"from_pretrained: {config_path} lacks the 'model' and 'config' entries")
    name = meta["model"]
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UserValueError(f"from_pretrained: {config_path} names unknown model {name!r}; "
                             f"registered: {list_models()}")
    preset = _REGISTRY[name].config
    try:
        config = type(preset).from_dict({**preset.to_dict(), **saved_fields(meta["config"])}).replace(**overrides)
    except ValueError as exc:
        raise UserValueError(f"from_pretrained: {config_path}: {exc}") from exc
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            expected = (handle.metadata() or {}).get("sha256")
        weights = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise UserValueError(f"from_pretrained: {weights_path}: unreadable weights ({type(exc).__name__}: {exc})") \
            from exc
    if expected is not None and weights_digest(weights) != expected:
        raise UserValueError(f"from_pretrained: {weights_path}: checksum mismatch; the file is damaged")
    model = _REGISTRY[name].builder(config)
    model.registered_name = name
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise UserValueError(f"from_pretrained: {weights_path}: weights do not fit model {name!r}: {exc}") from exc
    if device is not None:
        model.to(device)
    return model.eval()
