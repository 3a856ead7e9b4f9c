"""Commands and options of the ``stmodels`` command line that deal with packaging and deployment:
``--backend`` (a runtime choice), ``train --config FILE``, ``models`` and ``export``. See :mod:`stmodels.cli`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# TrainConfig field -> the `train` option that sets it (the other fields are passed through as they are).
_TRAIN_OPTIONS = {
    "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "schedule": "schedule", "warmup_steps": "warmup_steps",
    "grad_clip": "grad_clip", "ema_decay": "ema", "precision": "precision", "seed": "seed",
    "num_workers": "workers", "eval_every": "eval_every", "eval_samples": "eval_samples",
    "checkpoint_every": "checkpoint_every", "device": "device", "quiet": "quiet",
}
# DataSpec field -> the `train` option that sets it (kind and root make --data).
_DATA_OPTIONS = {
    "in_frames": "in_frames", "out_frames": "out_frames", "size": "size", "train_sequences": "train_sequences",
    "val_sequences": "val_sequences", "stride": "stride", "seed": "data_seed",
}
# Entries a run's config.json records about the run itself; a config file may carry them, unused.
_RUN_RECORD_KEYS = {"world_size", "steps_per_epoch", "total_steps", "torch", "stmodels"}


# -- --backend --------------------------------------------------------------------------------------------

def _add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=None,
                        help="kernel backend of the model's ops: auto, reference, cpu, cuda or triton "
                             "(a runtime choice; default: $STMODELS_BACKEND, else auto)")


@contextlib.contextmanager
def _backend_choice(backend: str | None) -> Iterator[None]:
    """Within the command, ops of models built with ``backend=None`` use ``backend``.

    Set as ``STMODELS_BACKEND`` (restored afterwards) rather than a :func:`~stmodels.ops.use_backend`
    context, so it holds in every thread, also autograd's backward threads and any model."""
    if backend is None:
        yield
        return
    from stmodels.ops import backend_names

    if backend not in backend_names():
        raise ValueError(f"--backend: unknown backend {backend!r}; expected one of {', '.join(backend_names())}")
    previous = os.environ.get("STMODELS_BACKEND")
    os.environ["STMODELS_BACKEND"] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("STMODELS_BACKEND", None)
        else:
            os.environ["STMODELS_BACKEND"] = previous


# -- train: channels from the data, models that cannot train -----------------------------------------------

def _data_channels(data: str, model_channels: int) -> int | None:
    """The ``channels`` to ask of the data: a folder keeps its own (None), generated data gets the model's."""
    return None if data.startswith("chdl:") else model_channels


def _check_channels(data: str, overrides: dict[str, Any], data_channels: int) -> None:
    """An explicit ``in_shape`` whose channels differ from the data's is an error, never a conversion."""
    if "in_shape" in overrides and int(overrides["in_shape"][1]) != int(data_channels):
        raise ValueError(f"--data {data}: the frames have {data_channels} channel(s), but in_shape="
                         f"{list(overrides['in_shape'])} asks for {overrides['in_shape'][1]}; drop the in_shape "
                         f"override (channels are taken from the data) or convert the data")


def _refuse_untrainable(name: str, model) -> None:
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise ValueError(f"--model {name}: the model has no trainable parameters, so there is nothing to train; "
                         "evaluate it directly (stmodels.train.evaluate) as a baseline")


# -- train --config FILE ----------------------------------------------------------------------------------

def _add_config_option(train: argparse.ArgumentParser) -> None:
    train.add_argument("--config", default=None, metavar="FILE",
                       help="a YAML or JSON file with the sections model, model_config, train and data (a run's "
                            "config.json is one); options given on the command line override it")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``train --config`` file: JSON, or YAML for ``.yaml`` / ``.yml`` (needs PyYAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ValueError(f"--config {path}: reading YAML needs PyYAML: pip install stmodels[yaml] "
                             "(or use a .json file)") from exc
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--config {path}: not valid YAML ({exc})") from exc
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config {path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping with model / model_config / train / data, "
                         f"got {type(values).__name__}")
    return values


def _section(values: dict, name: str, path: str) -> dict:
    section = values.get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"--config {path}: `{name}` must be a mapping, got {type(section).__name__}")
    return section


def config_file_defaults(values: dict[str, Any], path: str) -> dict[str, Any]:
    """The ``train`` option defaults a config file sets (``train_extra`` / ``data_extra``: fields
    without an option, passed to :class:`~stmodels.train.TrainConfig` / the data spec)."""
    import dataclasses

    from stmodels.data import DataSpec
    from stmodels.models.registry import saved_fields
    from stmodels.train import TrainConfig

    unknown = sorted(set(values) - {"model", "model_config", "train", "data"} - _RUN_RECORD_KEYS)
    if unknown:
        raise ValueError(f"--config {path}: unknown entries {unknown}; expected model, model_config, train, data")
    defaults: dict[str, Any] = {}
    if values.get("model"):
        defaults["model"] = str(values["model"])
    model_config = saved_fields(_section(values, "model_config", path))
    defaults["set"] = [f"{key}={json.dumps(value)}" for key, value in model_config.items()]

    train = _section(values, "train", path)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(train) - known:
        raise ValueError(f"--config {path}: unknown train fields {sorted(set(train) - known)}")
    defaults["train_extra"] = {k: v for k, v in train.items() if k not in _TRAIN_OPTIONS}
    defaults.update({_TRAIN_OPTIONS[k]: v for k, v in train.items() if k in _TRAIN_OPTIONS})
    if defaults.get("grad_clip", 1.0) is None:
        defaults["grad_clip"] = 0.0  # the option's "no clipping"

    data = dict(_section(values, "data", path))
    known = {f.name for f in dataclasses.fields(DataSpec)}
    if set(data) - known:
        raise ValueError(f"--config {path}: unknown data fields {sorted(set(data) - known)}")
    kind, root = data.pop("kind", None), data.pop("root", None)
    data.pop("channels", None)  # channels follow the data (folders) or the model's in_shape (generated)
    if kind:
        defaults["data"] = f"chdl:{root}" if kind == "chdl" else kind
    defaults["data_extra"] = {k: v for k, v in data.items() if k not in _DATA_OPTIONS and v is not None}
    defaults.update({_DATA_OPTIONS[k]: v for k, v in data.items() if k in _DATA_OPTIONS})
    return defaults


def _reparse_with_config_file(parser: argparse.ArgumentParser, argv: list[str] | None, path: str):
    """Parse ``argv`` again with the config file's values as the ``train`` defaults: given options win."""
    import sys

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = subparsers.choices["train"]
    train.set_defaults(**config_file_defaults(load_config_file(path), path))
    return parser.parse_args(sys.argv[1:] if argv is None else argv)


# -- models -----------------------------------------------------------------------------------------------

def _add_models_command(commands) -> None:
    commands.add_parser("models", help="list the registered models (names for --model and create_model)")


def _cmd_models(args) -> int:
    from stmodels.models import list_models, model_config
    from stmodels.models.registry import model_description

    rows = [(name, model_config(name), model_description(name)) for name in list_models()]
    width = max(len(name) for name, _, _ in rows)
    for name, config, description in rows:
        shape = getattr(config, "in_shape", None)
        frames = getattr(config, "out_frames", None)
        shape_text = f"in_shape {list(shape)} -> {frames} frames" if shape is not None else ""
        print(f"{name:<{width}}  {shape_text:<36} {description}")
    return 0


# -- export -----------------------------------------------------------------------------------------------

def _add_export_command(commands) -> None:
    export = commands.add_parser("export", help="write a run's model as a torch.export program and an "
                                                "AOTInductor package (CPU) for deployment")
    export.add_argument("--run", required=True, help="run folder written by `stmodels train`")
    export.add_argument("--out", required=True, metavar="FILE",
                        help="the torch.export program (.pt2); the AOTInductor package goes beside it as "
                             "FILE's stem + '.aoti.pt2'")
    export.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    export.add_argument("--batch-size", type=int, default=1, help="the batch size the program is traced for")
    export.add_argument("--no-aoti", action="store_true", help="only the torch.export program (no C++ compile)")
    export.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_backend_option(export)


def _cmd_export(args) -> int:
    from stmodels.export import export_run

    written = export_run(args.run, args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                         aoti=not args.no_aoti, overwrite=args.overwrite)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0
