"""The ``stmodels`` command line (also ``python -m stmodels``): ``data make-chdl``, ``train``, ``eval``,
``predict``, ``export``, ``models``, ``info``.

Run ``stmodels <command> --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
from pathlib import Path

from stmodels._cli_extra import (  # the packaging-side commands and options, in their own module
    _add_backend_option,
    _add_config_option,
    _add_export_command,
    _add_models_command,
    _backend_choice,
    _check_channels,
    _cmd_export,
    _cmd_models,
    _data_channels,
    _refuse_untrainable,
    _reparse_with_config_file,
)
from stmodels.errors import UserError

__all__ = ["main"]


# -- argument types: numbers are checked when parsed; zero is a value, never "use the default" -------------


def _integer(low: int | None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _number(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value <= low if open_low else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if open_low else '>='} {low}, got {value:g}")
        if high is not None and (value >= high if open_high else value > high):
            raise argparse.ArgumentTypeError(f"must be {'<' if open_high else '<='} {high}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


_positive = _integer(1)
_non_negative = _integer(0)
_any_integer = _integer(None)


def _or_default(value, default):
    return default if value is None else value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="chdl-synthetic",
                       help="chdl:DIR (a CHDL-format folder), chdl-synthetic (default) or mmnist")
    group.add_argument("--in-frames", type=_positive, default=None, help="observed frames (default: the model's)")
    group.add_argument("--out-frames", type=_positive, default=None, help="predicted frames (default: the model's)")
    group.add_argument("--size", type=_positive, default=None,
                       help="frame size (default: the model's; for chdl:DIR frames are resized to it)")
    group.add_argument("--train-sequences", type=_positive, default=None, help="generated training sequences")
    group.add_argument("--val-sequences", type=_positive, default=None, help="generated validation sequences")
    group.add_argument("--stride", type=_positive, default=None, help="frames between windows of a sequence")
    group.add_argument("--data-seed", type=_non_negative, default=None, help="seed of the generated data")


def _parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value  # a bare string such as scan=time
    return overrides


def _cmd_make_chdl(args) -> int:
    from stmodels.data import make_chdl_folder

    splits = {"train": args.sequences, "test": _or_default(args.test_sequences, max(1, args.sequences // 5))}
    out = make_chdl_folder(args.out, frames=args.frames, size=args.size, seed=args.seed, splits=splits,
                           channels=args.channels, bit_depth=args.bit_depth, overwrite=args.overwrite)
    print(f"wrote {sum(splits.values())} sequences of {args.frames} frames ({args.size}x{args.size}) to {out}")
    return 0


def _cmd_train(args) -> int:
    from stmodels.data import parse_data_spec
    from stmodels.models import create_model
    from stmodels.train import TrainConfig, Trainer

    import torch

    overrides = _parse_overrides(args.set)
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite exclude each other (continue the run, or move it aside)")
    _check_device(args.device)
    torch.manual_seed(args.seed)  # the initial weights, like everything else in the run, follow --seed
    probe = create_model(args.model, **overrides)
    _refuse_untrainable(args.model, probe)  # before anything is written
    if args.overwrite:
        _move_run_aside(Path(args.out))
    _check_writable_folder(Path(args.out), "--out")
    T_in, channels, height, _ = probe.config.in_shape
    spec = parse_data_spec(
        args.data, in_frames=_or_default(args.in_frames, T_in),
        out_frames=_or_default(args.out_frames, probe.config.out_frames), size=_or_default(args.size, height),
        channels=_data_channels(args.data, channels), train_sequences=args.train_sequences,
        val_sequences=args.val_sequences, stride=args.stride, seed=args.data_seed,
        **getattr(args, "data_extra", {}),
    )
    train_set, val_set = spec.build("train"), spec.build("val")
    inputs, targets = train_set[0]
    _check_channels(args.data, overrides, inputs.shape[1])
    overrides.update(in_shape=tuple(inputs.shape), out_frames=targets.shape[0])
    torch.manual_seed(args.seed)
    model = create_model(args.model, **overrides)
    config = TrainConfig(**getattr(args, "train_extra", {}),
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_steps=args.warmup_steps,
        grad_clip=None if args.grad_clip == 0 else args.grad_clip, ema_decay=args.ema, precision=args.precision, seed=args.seed,
        num_workers=args.workers, eval_every=args.eval_every, eval_samples=args.eval_samples,
        checkpoint_every=args.checkpoint_every, device=args.device, quiet=args.quiet,
    )
    trainer = Trainer(model, train_set, val_set, config, args.out, data_spec=spec.to_dict())
    try:
        history = trainer.fit(resume="auto" if args.resume else False)
    finally:
        trainer.context.shutdown()
    if trainer.context.is_main and history:
        last = history[-1]
        shown = ", ".join(f"{k} {last[k]:.4g}" for k in ("val_mse", "val_ssim", "val_psnr") if k in last)
        print(f"done: {trainer.step} steps, {shown}; run folder {args.out}")
    return 0


def _check_device(device: str) -> None:
    """A one-line error for a device this torch cannot use (torch itself raises AssertionError)."""
    import torch

    try:
        kind = torch.device("cuda" if device == "auto" else device).type
    except RuntimeError as exc:
        raise UserError(f"--device {device!r}: not a device ({exc})") from None
    if kind == "cuda" and device != "auto" and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: this torch ({torch.__version__}) sees no CUDA device; use --device cpu")


def _move_run_aside(out: Path) -> None:
    """--overwrite: rename an existing, non-empty run folder to OUT.old-<time>; nothing is deleted."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        aside = out.with_name(f"{out.name}.old-{stamp}" + (f"-{attempt}" if attempt else ""))
        if not aside.exists():
            break
    os.rename(out, aside)
    print(f"moved the old run {out} aside to {aside}", file=sys.stderr)


def _check_writable_folder(folder: Path, what: str) -> None:
    """Fail before any work when ``folder`` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {folder}: folder is not writable")


def _metrics_table(rows: list[tuple[str, dict]]) -> str:
    header = f"{'model':<28} {'MSE':>9} {'MAE':>9} {'SSIM':>7} {'PSNR':>7} {'ms/sample':>10}"
    lines = [header, "-" * len(header)]
    for name, m in rows:
        lines.append(f"{name:<28} {m['mse']:9.3f} {m['mae']:9.3f} {m['ssim']:7.4f} {m['psnr']:7.2f} "
                     f"{m.get('ms_per_sample', float('nan')):10.2f}")
    return "\n".join(lines)


def _cmd_eval(args) -> int:
    from stmodels._fileio import atomic_write_text
    from stmodels.data import DataSpec, parse_data_spec
    from stmodels.train import evaluate, resolve_device
    from stmodels.train.runs import load_run

    _check_device(args.device)
    device = resolve_device(args.device)
    model, config = load_run(args.run, args.checkpoint, device)
    _check_writable_folder(Path(args.run), "--run")
    if args.data:
        T_in, channels, height, _ = model.config.in_shape
        spec = parse_data_spec(args.data, in_frames=T_in, out_frames=model.config.out_frames, size=height,
                               channels=channels)
    else:
        if not isinstance(config.get("data"), dict):
            raise UserError(f"{Path(args.run) / 'config.json'}: the run records no data spec (it was not made by "
                            "`stmodels train`); pass --data")
        try:
            spec = DataSpec.from_dict(config["data"])
        except (TypeError, ValueError) as exc:
            raise UserError(f"{Path(args.run) / 'config.json'}: bad data spec ({exc})") from None
    if args.split is not None:
        if spec.kind != "chdl":
            raise UserError(f"--split {args.split!r}: only folder data (chdl:DIR) has splits, not {spec.kind}")
        spec.val_split = args.split
    dataset = spec.build("val")
    result = evaluate(model, dataset, batch_size=args.batch_size, device=device, max_samples=args.samples,
                      sampler=args.sampler, ddim_steps=args.steps, seed=args.seed, data_range=args.data_range)
    label = config["model"] + (f" ({args.sampler}" + (f", {args.steps} steps)" if args.steps else ")")
                               if args.sampler else "")
    print(_metrics_table([(label, result.metrics)]))
    print(f"{result.samples} samples of {spec.kind}" + (f" ({spec.root})" if spec.root else ""))
    name = "eval" + (f"_{args.sampler}" if args.sampler else "") + (f"{args.steps}" if args.steps else "")
    record = {"model": config["model"], "checkpoint": args.checkpoint, "sampler": args.sampler, "steps": args.steps,
              "samples": result.samples, "data": spec.to_dict(), "data_range": args.data_range, **result.metrics}
    path = atomic_write_text(Path(args.run) / f"{name}.json", json.dumps(record, indent=2) + "\n")
    print(f"saved {path}")
    return 0


def _cmd_predict(args) -> int:
    from stmodels.train import resolve_device
    from stmodels.train.predict import predict_folder
    from stmodels.train.runs import load_run

    _check_device(args.device)
    device = resolve_device(args.device)
    model, _ = load_run(args.run, args.checkpoint, device)
    _check_writable_folder(Path(args.output), "--output")
    written = predict_folder(model, args.input, args.output, device=device, sampler=args.sampler,
                             ddim_steps=args.steps, seed=args.seed, batch_size=args.batch_size,
                             precision=args.precision)
    for name in written:
        print(f"{name}: {Path(args.output) / name}")
    print(f"predicted {len(written)} sequence(s) into {args.output}")
    return 0


def _add_version_option(parser: argparse.ArgumentParser) -> None:
    from stmodels import __version__

    parser.add_argument("--version", action="version", version=f"stmodels {__version__}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stmodels", description="Spatio-temporal prediction models and kernels.")
    _add_version_option(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="backends per device and the extension's build metadata")

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    make = data.add_parser("make-chdl", help="write synthetic CHDL sequences in the CHDL folder format")
    make.add_argument("--out", required=True, help="folder to create")
    make.add_argument("--sequences", type=_positive, default=100, help="training sequences (default 100)")
    make.add_argument("--test-sequences", type=_non_negative, default=None, help="test sequences (default a fifth)")
    make.add_argument("--frames", type=_positive, default=20, help="frames per sequence (default 20)")
    make.add_argument("--size", type=_positive, default=64, help="frame height and width (default 64)")
    make.add_argument("--channels", type=int, default=1, choices=(1, 3))
    make.add_argument("--bit-depth", type=int, default=8, choices=(8, 16))
    make.add_argument("--seed", type=_non_negative, default=0)
    make.add_argument("--overwrite", action="store_true",
                      help="replace a dataset folder written by make-chdl (any other folder is refused)")

    train = commands.add_parser("train", help="train a registered model")
    train.add_argument("--model", default="diffuma_small", help="registered model name (see stmodels.models)")
    _add_data_options(train)
    train.add_argument("--out", required=True, help="run folder (checkpoints, logs, pictures, model)")
    train.add_argument("--epochs", type=_positive, default=10)
    train.add_argument("--max-steps", type=_positive, default=None, help="stop after this many optimiser steps")
    train.add_argument("--batch-size", type=_positive, default=16, help="global batch over all processes")
    train.add_argument("--lr", type=_number(0, open_low=True), default=1e-3)
    train.add_argument("--weight-decay", type=_number(0), default=0.05)
    train.add_argument("--schedule", default="cosine", choices=("cosine", "onecycle", "constant"))
    train.add_argument("--warmup-steps", type=_non_negative, default=None)
    train.add_argument("--grad-clip", type=_number(0), default=1.0, help="0 disables clipping")
    train.add_argument("--ema", type=_number(0, 1, open_low=True, open_high=True), default=None, metavar="DECAY", help="EMA of weights, e.g. 0.999")
    train.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    train.add_argument("--seed", type=_non_negative, default=0)
    train.add_argument("--workers", type=_non_negative, default=0, help="DataLoader worker processes")
    train.add_argument("--eval-every", type=_positive, default=1, help="epochs between evaluations")
    train.add_argument("--eval-samples", type=_positive, default=None, help="cap on validation samples")
    train.add_argument("--checkpoint-every", type=_positive, default=None, help="also checkpoint every N steps")
    train.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt if present "
                       "(the options that define the run must match the saved run)")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an existing run folder, after moving the old run aside to OUT.old-<time>")
    train.add_argument("--backend", default=None,
                       help="kernel backend of the model's ops (a runtime choice, not saved with the model)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="model config override, e.g. --set scan=time --set lambda_diff=0.5")
    train.add_argument("--device", default="auto")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluation = commands.add_parser("eval", help="evaluate a run's model and save the metric table")
    evaluation.add_argument("--run", required=True, help="run folder written by `stmodels train`")
    evaluation.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    evaluation.add_argument("--sampler", default=None, choices=("single", "ddim"))
    evaluation.add_argument("--steps", type=_positive, default=None, help="DDIM steps")
    evaluation.add_argument("--data", default=None, help="evaluate on other data (default: the run's)")
    evaluation.add_argument("--split", default=None,
                            help="the folder split to evaluate (chdl:DIR data; default: val, else test)")
    evaluation.add_argument("--samples", type=_positive, default=None, help="cap on evaluated samples")
    evaluation.add_argument("--batch-size", type=_positive, default=16)
    evaluation.add_argument("--data-range", type=_number(0, open_low=True), default=1.0, help="SSIM data range (2.0: OpenSTL's)")
    evaluation.add_argument("--seed", type=_non_negative, default=0, help="seed of DDIM's noise")
    evaluation.add_argument("--device", default="auto")
    _add_backend_option(evaluation)

    predict = commands.add_parser("predict", help="predict future frames of your own sequences (no ground truth)")
    predict.add_argument("--run", required=True, help="run folder written by `stmodels train`")
    predict.add_argument("--input", required=True,
                         help="a folder of sequences (sub-folders of frames or .npy files), or one sequence's frames")
    predict.add_argument("--output", required=True, help="folder for the predicted PNG frames and GIFs")
    predict.add_argument("--checkpoint", default="best")
    predict.add_argument("--sampler", default=None, choices=("single", "ddim"))
    predict.add_argument("--steps", type=_positive, default=None)
    predict.add_argument("--seed", type=_non_negative, default=0)
    predict.add_argument("--batch-size", type=_positive, default=8)
    predict.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    predict.add_argument("--device", default="auto")
    _add_backend_option(predict)
    _add_config_option(train)
    _add_models_command(commands)
    _add_export_command(commands)
    for command in (make, train, evaluation, predict):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of every error")
    return parser


def _one_line(exc: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for a bug (which keeps its traceback)."""
    text = str(exc)
    if "in DataLoader worker process" in text and "Original Traceback" in text:
        # torch re-raises a worker's exception with the worker's traceback in the message; the last
        # line is "ErrorType: message".
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
        if not isinstance(exc, (UserError, ValueError, OSError)):
            return None
    if isinstance(exc, (UserError, ValueError)):
        return text
    if isinstance(exc, OSError) and exc.errno is not None:
        where = exc.filename if exc.filename is not None else ""
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or text)
        return f"{where}: {reason}" if where else reason
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError)):
        return text
    if isinstance(exc, UnicodeEncodeError):
        return f"cannot print non-ASCII text on this terminal ({exc.reason})"
    return None


def _safe_stdout() -> None:
    # A non-UTF-8 terminal must not turn a successful run into a failure when a path is printed.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a detached or closed stream: keep it as it is
                pass


def main(argv: list[str] | None = None) -> int:
    _safe_stdout()
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from stmodels.info import main as info_main

        info_main()
        return 0
    handlers = {"data": _cmd_make_chdl, "train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict,
                "models": _cmd_models, "export": _cmd_export}
    debug = getattr(args, "debug", False) or bool(os.environ.get("STMODELS_DEBUG"))
    try:
        if getattr(args, "config", None):
            args = _reparse_with_config_file(parser, argv, args.config)
        with _backend_choice(getattr(args, "backend", None)):
            return handlers[args.command](args)
    except Exception as exc:
        # Expected failures (bad input, a damaged file, a full disk): one line naming the file or
        # argument, exit 2. Anything else is a bug and keeps its traceback; --debug shows it always.
        message = None if debug else _one_line(exc)
        if message is None:
            raise
        print(f"stmodels {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
