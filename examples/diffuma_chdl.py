"""The main job: DIFFUMA against its Mamba-only ablation and two fixed baselines, on dicing-lane video.

Trains ``diffuma_<preset>`` and, with the same budget (the same optimiser steps, batches and data
order), the same model with ``diffusion="off"``; evaluates both and the two parameter-free baselines
(the last frame repeated, and the last frame carried along the block-matched velocity with DIFFUMA's
own search settings, ``warp_last``) on the held-out sequences; prints a table (MSE, MAE, SSIM, PSNR, inference ms/sample) and writes into
``--out``::

    results.md / results.csv / results.json    the table, with machine and budget
    strip_<model>.png                          inputs | truth | prediction | error, one test sample
    diffuma.gif                                that sample in time: truth next to DIFFUMA's frames
    loss_curves.png                            training reconstruction loss of both models
    runs/<model>/                              the training runs (checkpoints, logs, exported model)

The default (``--preset small``) uses the synthetic CHDL data (generated on the fly, no download)
and finishes in about 10 minutes on a 2-core CPU. ``--data DIR`` trains on your own CHDL-format
folder instead (``DIR/train``, ``DIR/test`` or ``DIR/val``; see docs/data.rst). ``--preset base``
is the GPU configuration. Interrupted? Run the same command again: finished runs are reused and an
interrupted one resumes from its last checkpoint.

    python examples/diffuma_chdl.py                     # CPU demo (make demo)
    python examples/diffuma_chdl.py --data /data/lanes  # your data
    python examples/diffuma_chdl.py --preset base       # GPU
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import sys
import time
from pathlib import Path

import torch

from stmodels._fileio import atomic_write_text
from stmodels.data import parse_data_spec
from stmodels.models import create_model
from stmodels.train import TrainConfig, Trainer, evaluate
from stmodels.train.visualize import plot_loss_curves, save_gif, save_strip

# Budgets. "small" fits the 10-minute CPU demo: 32x32 frames, 10 -> 10, 600 steps of batch 4, the
# preset's own defaults (benchmarks/fidelity measures each of them). "base" is the GPU configuration.
PRESETS = {
    "small": dict(model="diffuma_small", size=32, steps=600, batch_size=4, lr=2e-3, train_sequences=1000,
                  val_sequences=64, precision="fp32", ema=None, overrides={}),
    "base": dict(model="diffuma_base", size=64, steps=20000, batch_size=32, lr=5e-4, train_sequences=20000,
                 val_sequences=1000, precision="bf16", ema=0.999, overrides={}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--data", default=None, help="a CHDL-format folder (default: synthetic CHDL)")
    parser.add_argument("--out", default="outputs/diffuma_chdl", help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per model (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="frame size (default: the preset's)")
    parser.add_argument("--val-sequences", type=int, default=None, help="test sequences (synthetic data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def train_one(name, model, train_set, config, out_dir, spec):
    # No validation during training: every model is evaluated once, afterwards, the same way.
    trainer = Trainer(model, train_set, None, config, out_dir, data_spec=spec.to_dict())
    started = time.perf_counter()
    trainer.fit(resume="auto")
    print(f"{name}: {trainer.step} steps in {time.perf_counter() - started:.0f} s "
          f"(this session; the run folder is {out_dir})", flush=True)
    return trainer


def smoothed(points, window=25):
    """Trailing mean over ``window`` steps: per-batch losses are too noisy to compare by eye."""
    values = [v for _, v in points]
    return [(step, sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)))
            for i, (step, _) in enumerate(points)]


def write_tables(out, rows, header_lines):
    fields = ["model", "mse", "mae", "ssim", "psnr", "ms_per_sample", "parameters", "train_steps"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.json", json.dumps({"setup": header_lines, "results": rows}, indent=2) + "\n")
    table = ["| model | MSE | MAE | SSIM | PSNR | inference ms/sample | parameters |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['model']} | {r['mse']:.3f} | {r['mae']:.3f} | {r['ssim']:.4f} | {r['psnr']:.2f} | "
              f"{r['ms_per_sample']:.2f} | {r['parameters']:,} |" for r in rows]
    atomic_write_text(out / "results.md", "\n".join(["# DIFFUMA on dicing-lane video", "",
                                                     *[f"- {line}" for line in header_lines], "", *table]) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    preset = dict(PRESETS[args.preset])
    steps = args.steps or preset["steps"]
    batch_size = args.batch_size or preset["batch_size"]
    size = args.size or preset["size"]
    out = Path(args.out)
    probe = create_model(preset["model"])
    T_in, channels, _, _ = probe.config.in_shape
    spec = parse_data_spec(f"chdl:{args.data}" if args.data else "chdl-synthetic", in_frames=T_in,
                           out_frames=probe.config.out_frames, size=size, channels=channels,
                           train_sequences=preset["train_sequences"], val_sequences=args.val_sequences or preset["val_sequences"],
                           seed=args.seed)
    train_set, val_set = spec.build("train"), spec.build("val")
    inputs, targets = train_set[0]
    shape = dict(in_shape=tuple(inputs.shape), out_frames=targets.shape[0])
    config = TrainConfig(epochs=10**6, max_steps=steps, batch_size=batch_size, lr=preset["lr"],
                         ema_decay=preset["ema"], precision=preset["precision"], seed=args.seed,
                         pictures=False, device=args.device, quiet=args.quiet, log_every=1)
    print(f"data: {spec.kind}{' ' + spec.root if spec.root else ''}: {len(train_set)} training windows, "
          f"{len(val_set)} test windows of {tuple(inputs.shape)} -> {tuple(targets.shape)}; "
          f"{steps} steps of batch {batch_size} per model", flush=True)

    entries = [("DIFFUMA", "diffuma", {}), ("Mamba-only (diffusion off)", "mamba_only", {"diffusion": "off"})]
    results, examples, curves = [], {}, {}
    for label, slug, overrides in entries:
        torch.manual_seed(args.seed)  # the same initial weights for the shared parts of the two models
        model = create_model(preset["model"], **{**shape, **preset["overrides"], **overrides})
        trainer = train_one(label, model, train_set, config, out / "runs" / slug, spec)
        result = evaluate(trainer.eval_model, val_set, batch_size=16, device=trainer.device,
                          precision=config.precision)
        parameters = sum(p.numel() for p in model.parameters())
        results.append({"model": label, **result.metrics, "parameters": parameters, "train_steps": trainer.step})
        examples[slug] = result.example
        curves[label] = smoothed([(row["step"], row["recon"]) for row in trainer.step_rows])
    motion = {k: getattr(probe.config, k) for k in ("motion_radius", "motion_window")}
    for label, slug, overrides in (("copy last frame", "copy_last", {}),
                                   ("warp last frame (block matching)", "warp_last", motion)):
        result = evaluate(create_model(slug, **shape, **overrides), val_set, batch_size=16, device=trainer.device)
        results.append({"model": label, **result.metrics, "parameters": 0, "train_steps": 0})
        examples[slug] = result.example

    for slug, example in examples.items():
        save_strip(out / f"strip_{slug}.png", *example)
    save_gif(out / "diffuma.gif", *examples["diffuma"])
    plot_loss_curves(out / "loss_curves.png", curves, title="training reconstruction loss (MSE per pixel, mean of 25 steps)")
    device = trainer.device
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    setup = [f"data: {spec.kind}{' ' + spec.root if spec.root else ''}, {len(train_set)} training / "
             f"{len(val_set)} test windows, frames {tuple(inputs.shape)} -> {tuple(targets.shape)}",
             f"budget: {steps} optimiser steps of batch {batch_size} per model, same data order and seed",
             f"model: {preset['model']} ({args.preset} preset, overrides {preset['overrides']}); device: {device} ({machine}); torch {torch.__version__}",
             "metrics: OpenSTL conventions (MSE/MAE summed per frame, SSIM data range 1.0)"]
    write_tables(out, results, setup)

    print()
    for line in setup:
        print(line)
    header = f"{'model':<34} {'MSE':>9} {'MAE':>9} {'SSIM':>7} {'PSNR':>7} {'ms/sample':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['model']:<34} {r['mse']:9.3f} {r['mae']:9.3f} {r['ssim']:7.4f} {r['psnr']:7.2f} "
              f"{r['ms_per_sample']:10.2f}")
    print(f"\nwrote results.md, results.csv, strips, diffuma.gif and loss_curves.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
