"""The fidelity study: DIFFUMA, its ablations and strong baselines at an equal training budget.

Every model trains for the same number of optimiser steps on the same batches (same seed, same
data order) of each data set, then is evaluated on the same held-out sequences: MSE, MAE, SSIM,
PSNR (OpenSTL conventions), parameters, training time and inference latency. DIFFUMA is also
evaluated with DDIM sampling (10 and 50 steps) instead of its single pass.

Models per data set: DIFFUMA (the reference configuration); the paper's ablations -- Mamba-only
(``diffusion="off"``), random conditioning (``context="random"``), ``lambda_diff`` in {0.1, 0.5, 1,
2, 5}, ``scan="time"`` instead of ``"spacetime"``; and the baselines ConvLSTM (OpenSTL's
configuration, narrower) and SimVP v2 with gSTA (narrower), plus copy-last-frame.

    python benchmarks/fidelity/run.py                 # CPU budget, about an hour on 2 cores
    python benchmarks/fidelity/run.py --gpu           # GPU budget
    python benchmarks/fidelity/run.py --docs          # also write docs/results.rst and its figures

Runs are resumable: each model's run folder keeps its checkpoints and its evaluation, so running
the same command again continues where it stopped and reuses what is finished.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stmodels._fileio import atomic_write_bytes, atomic_write_text  # noqa: E402
from stmodels.data import DataSpec  # noqa: E402
from stmodels.models import create_model  # noqa: E402
from stmodels.train import TrainConfig, Trainer, evaluate  # noqa: E402

# Budgets: the data, the step count and the model sizes per data set. Sizes are scaled down from the
# papers' so the CPU budget completes in about an hour; the GPU budget uses the full presets.
BUDGETS = {
    "cpu": {
        "batch_size": 4, "lr": 2e-3, "eval_sequences": 64, "device": "cpu",
        "steps": {"chdl": 500, "mmnist": 250},
        "datasets": {
            "chdl": dict(kind="chdl-synthetic", size=32, train_sequences=1000),
            "mmnist": dict(kind="mmnist", size=64, train_sequences=10000),
        },
        "diffuma": {"chdl": dict(model="diffuma_small", lambda_diff=0.1),
                    "mmnist": dict(model="diffuma_small", lambda_diff=0.1, num_downsamples=3, patch_size=8)},
        "convlstm": dict(num_hidden=(64, 64)),
        "simvp": dict(hid_S=32, hid_T=256, N_T=4, mlp_ratio=4.0),
    },
    "gpu": {
        "batch_size": 32, "lr": 5e-4, "eval_sequences": 1000, "device": "cuda",
        "steps": {"chdl": 20000, "mmnist": 20000},
        "datasets": {
            "chdl": dict(kind="chdl-synthetic", size=64, train_sequences=20000),
            "mmnist": dict(kind="mmnist", size=64, train_sequences=10000),
        },
        "diffuma": {"chdl": dict(model="diffuma_base"), "mmnist": dict(model="diffuma_base")},
        "convlstm": {},
        "simvp": {},
    },
}
LAMBDAS = (0.1, 0.5, 1.0, 2.0, 5.0)


def variants(budget: dict, dataset: str):
    """(name, group, registered model, overrides) of every trained model of a data set."""
    base = dict(budget["diffuma"][dataset])
    model = base.pop("model")
    main_lambda = base.get("lambda_diff", 1.0)
    yield "DIFFUMA", "main", model, base
    yield "ConvLSTM", "baseline", "convlstm", budget["convlstm"]
    yield "SimVP (gSTA)", "baseline", "simvp", budget["simvp"]
    yield "Mamba-only", "ablation", model, {**base, "diffusion": "off"}
    yield "random conditioning", "ablation", model, {**base, "context": "random"}
    yield 'scan="time"', "ablation", model, {**base, "scan": "time"}
    for value in LAMBDAS:
        if value != main_lambda:
            yield f"lambda_diff={value:g}", "ablation", model, {**base, "lambda_diff": value}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def train_and_evaluate(name, model_name, overrides, shape, data, budget, steps, run_dir, args):
    """Train (or resume, or reuse) one model and evaluate it; returns its result rows."""
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())["rows"]
    train_set, test_set = data
    torch.manual_seed(args.seed)
    model = create_model(model_name, **{**overrides, **shape})
    parameters = sum(p.numel() for p in model.parameters())
    config = TrainConfig(epochs=10**6, max_steps=steps, batch_size=budget["batch_size"],
                         lr=budget["lr"], seed=args.seed, pictures=False, quiet=args.quiet, log_every=10,
                         device=budget["device"], checkpoint_every=100,
                         precision="bf16" if budget["device"] == "cuda" else "fp32")
    trainer = Trainer(model, train_set, None, config, run_dir)
    started = time.perf_counter()
    trainer.fit(resume="auto")
    seconds = time.perf_counter() - started
    previous = run_dir / "train_seconds.json"  # time of earlier, interrupted sessions
    if previous.exists():
        seconds += json.loads(previous.read_text())["seconds"]
    atomic_write_text(previous, json.dumps({"seconds": seconds}))
    samplers = [("single pass", None, None)]
    if name == "DIFFUMA":
        samplers += [("DDIM 10 steps", "ddim", 10), ("DDIM 50 steps", "ddim", 50)]
    rows, examples = [], {}
    for label, sampler, ddim_steps in samplers:
        result = evaluate(trainer.eval_model, test_set, batch_size=16, device=trainer.device, sampler=sampler,
                          ddim_steps=ddim_steps, seed=args.seed)
        rows.append({"model": name if sampler is None else f"{name}, {label}", "sampler": label,
                     **result.metrics, "parameters": parameters, "train_steps": trainer.step,
                     "train_seconds": seconds})
        examples[rows[-1]["model"]] = result.example[2].numpy().tolist()
    atomic_write_text(done, json.dumps({"rows": rows, "examples": examples}))
    return rows


def figure(path, dataset, test_set, run_dirs, names):
    """Inputs, truth and each model's prediction for test sample 0, one row each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    inputs, targets = test_set[0]
    rows = [("input", inputs.numpy()), ("truth", targets.numpy())]
    for name, run_dir in zip(names, run_dirs):
        examples = json.loads((run_dir / "result.json").read_text())["examples"]
        for label, frames in examples.items():
            rows.append((label, np.asarray(frames, np.float32)))
    columns = max(len(frames) for _, frames in rows)
    fig = Figure(figsize=(columns * 0.9, len(rows) * 0.95))
    FigureCanvasAgg(fig)
    for r, (label, frames) in enumerate(rows):
        for c in range(columns):
            ax = fig.add_subplot(len(rows), columns, r * columns + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(frames):
                frame = np.clip(frames[c], 0, 1)
                ax.imshow(frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0), cmap="gray",
                          vmin=0, vmax=1)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"{dataset}: test sample 0", fontsize=9)
    fig.subplots_adjust(left=0.2, wspace=0.05, hspace=0.1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())


def write_csv(path, rows):
    fields = ["dataset", "group", "model", "sampler", "mse", "mae", "ssim", "psnr", "ms_per_sample",
              "parameters", "train_steps", "train_seconds"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU budget")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/fidelity/results/<budget>)")
    parser.add_argument("--datasets", nargs="+", default=["chdl", "mmnist"], choices=["chdl", "mmnist"])
    parser.add_argument("--steps", type=int, default=None, help="override the budget's optimiser steps")
    parser.add_argument("--only", nargs="*", default=None, help="train only these model names")
    parser.add_argument("--eval-sequences", type=int, default=None, help="override the held-out sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", action="store_true", help="write docs/results.rst and its figures")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    budget_name = "gpu" if args.gpu else "cpu"
    budget = BUDGETS[budget_name]
    out = Path(args.out or ROOT / "benchmarks" / "fidelity" / "results" / budget_name)
    all_rows, steps_used = [], {}
    for dataset in args.datasets:
        steps = steps_used[dataset] = args.steps or budget["steps"][dataset]
        eval_sequences = args.eval_sequences or budget["eval_sequences"]
        spec = DataSpec(**budget["datasets"][dataset], val_sequences=eval_sequences, seed=args.seed)
        data = (spec.build("train"), spec.build("val"))
        inputs, targets = data[0][0]
        shape = dict(in_shape=tuple(inputs.shape), out_frames=targets.shape[0])
        names, run_dirs = [], []
        for name, group, model_name, overrides in variants(budget, dataset):
            if args.only and name not in args.only:
                continue
            run_dir = out / dataset / slug(name)
            print(f"[{dataset}] {name}: {model_name} {overrides}", flush=True)
            rows = train_and_evaluate(name, model_name, overrides, shape, data, budget, steps, run_dir, args)
            all_rows += [{"dataset": dataset, "group": group, **row} for row in rows]
            names.append(name)
            run_dirs.append(run_dir)
        copy_last = evaluate(create_model("copy_last", **shape), data[1], batch_size=16)
        all_rows.append({"dataset": dataset, "group": "baseline", "model": "copy last frame", "sampler": "",
                         **copy_last.metrics, "parameters": 0, "train_steps": 0, "train_seconds": 0.0})
        figure(out / f"predictions_{dataset}.png", dataset, data[1],
               [d for n, d in zip(names, run_dirs) if n in ("DIFFUMA", "ConvLSTM", "SimVP (gSTA)", "Mamba-only")],
               [n for n in names if n in ("DIFFUMA", "ConvLSTM", "SimVP (gSTA)", "Mamba-only")])
    write_csv(out / "results.csv", all_rows)
    machine = (torch.cuda.get_device_name() if budget["device"] == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    setup = {"budget": budget_name, "steps": steps_used, "batch_size": budget["batch_size"],
             "machine": machine, "torch": str(torch.__version__), "date": time.strftime("%Y-%m-%d"),
             "datasets": budget["datasets"], "eval_sequences": args.eval_sequences or budget["eval_sequences"]}
    atomic_write_text(out / "results.json", json.dumps({"setup": setup, "rows": all_rows}, indent=1) + "\n")
    print_table(all_rows)
    if args.docs:
        from benchmarks.fidelity.report import write_docs_page

        write_docs_page(out, ROOT / "docs")
    return 0


def print_table(rows):
    header = f"{'data':<7} {'model':<32} {'MSE':>9} {'MAE':>9} {'SSIM':>7} {'PSNR':>7} {'ms/smp':>8} {'params':>9} {'train s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['dataset']:<7} {r['model']:<32} {r['mse']:9.3f} {r['mae']:9.3f} {r['ssim']:7.4f} {r['psnr']:7.2f} "
              f"{r['ms_per_sample']:8.2f} {r['parameters']:9,d} {r['train_seconds']:8.0f}")


if __name__ == "__main__":
    raise SystemExit(main())
