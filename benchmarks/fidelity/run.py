"""The fidelity study: DIFFUMA, its ablations and strong baselines at an equal training budget.

Every model trains for the same number of optimiser steps of the same batch size on the same data
(same data order for the same seed), then is evaluated on the same held-out test sequences: MSE,
MAE, SSIM, PSNR (OpenSTL conventions), parameters, training seconds per step and inference latency.

The study runs in three phases, each resumable:

1. ``search``: every searched model (DIFFUMA, SimVP, ConvLSTM, Mamba-only) at each learning rate of
   the budget's search (three values), seed 0. Each model's learning rate is chosen by its MSE on a
   separate *selection* set (other sequences than the test set), never on the test set.
2. ``seeds``: the headline models (DIFFUMA, SimVP, Mamba-only, random conditioning) again at their
   chosen learning rate with the other seeds (random conditioning takes DIFFUMA's rate).
3. ``ablations``: DIFFUMA with one part switched off at a time (and the first version's parts), at
   DIFFUMA's chosen rate, seed 0.

::

    python benchmarks/fidelity/run.py                         # CPU budget, every phase
    python benchmarks/fidelity/run.py --phase search --datasets chdl
    python benchmarks/fidelity/run.py --gpu                   # GPU budget
    python benchmarks/fidelity/run.py --docs                  # also write docs/results.rst and figures
    python benchmarks/fidelity/run.py --only none --docs      # train nothing: tables, figures, page
    python benchmarks/fidelity/run.py --phase seeds --only DIFFUMA --only-seeds 1   # split a phase

Each finished run leaves a small ``rows/<dataset>/<run>.json`` in the results folder, and its
prediction of test sample 0 for the figure in ``<run>.examples.npz`` (both committed with the
results), so a later session skips what is done, and draws the figure, even without the run
folders; an unfinished run resumes from its checkpoint. ``results.csv`` holds one row per model, seed and learning rate.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from stmodels._fileio import atomic_write_bytes, atomic_write_text  # noqa: E402
from stmodels.data import DataSpec  # noqa: E402
from stmodels.models import create_model  # noqa: E402
from stmodels.train import TrainConfig, Trainer, evaluate  # noqa: E402

# The seed of the selection set's sequences: other sequences than the test set's (seed 0).
SELECTION_SEED = 1000

# Budgets: the data, the step count, the learning-rate search and the model sizes per data set.
# Baselines use OpenSTL's Moving MNIST configurations, narrowed for the CPU budget (the widths are
# given here and in docs/results.rst); the GPU budget uses the full sizes.
BUDGETS = {
    "cpu": {
        "batch_size": 4, "eval_sequences": 64, "device": "cpu",
        "steps": {"chdl": 2000, "mmnist": 1000},
        "lrs": (1e-3, 2e-3, 4e-3), "seeds": (0, 1),
        "datasets": {
            "chdl": dict(kind="chdl-synthetic", size=32, train_sequences=2000),
            "mmnist": dict(kind="mmnist", size=64, train_sequences=10000),
        },
        "diffuma": {"chdl": dict(model="diffuma_small"),
                    # Digits move up to 3.6 px per frame and several move independently: a wider
                    # search and a digit-sized matching window.
                    "mmnist": dict(model="diffuma_small", num_downsamples=3, patch_size=8, motion_radius=4,
                                   motion_window=15)},
        # OpenSTL: 4 x 128 hidden, 5x5 filters, patch 4; here 2 x 64.
        "convlstm": dict(num_hidden=(64, 64)),
        # OpenSTL: hid_S 64, hid_T 512, N_T 8, mlp_ratio 8; here 32, 256, 4, 4.
        "simvp": dict(hid_S=32, hid_T=256, N_T=4, mlp_ratio=4.0),
    },
    "gpu": {
        "batch_size": 32, "eval_sequences": 1000, "device": "cuda",
        "steps": {"chdl": 20000, "mmnist": 20000},
        "lrs": (2.5e-4, 5e-4, 1e-3), "seeds": (0, 1, 2),
        "datasets": {
            "chdl": dict(kind="chdl-synthetic", size=64, train_sequences=20000),
            "mmnist": dict(kind="mmnist", size=64, train_sequences=10000),
        },
        "diffuma": {"chdl": dict(model="diffuma_base"), "mmnist": dict(model="diffuma_base")},
        "convlstm": {},
        "simvp": {},
    },
}

PHASES = ("search", "seeds", "ablations")
WARP_LAST = "warp last frame (block matching)"


@dataclass(frozen=True, eq=False)
class Variant:
    """One trained model of the study."""

    name: str
    group: str  # "main", "baseline" or "ablation"
    model: str  # registered model name
    overrides: dict = field(default_factory=dict)
    searched: bool = False  # gets its own learning-rate search
    headline: bool = False  # trained with every seed
    lr_from: str | None = None  # takes this variant's chosen learning rate


def variants(budget: dict, dataset: str) -> list[Variant]:
    """Every trained model of a data set, in table order."""
    base = dict(budget["diffuma"][dataset])
    model = base.pop("model")

    def ablation(name, **changes):
        return Variant(name, "ablation", model, {**base, **changes}, lr_from="DIFFUMA")

    # Moving MNIST: the latent one downsampling finer (16x16 from 64x64, SimVP's latent size).
    finer = [ablation("finer latent (num_downsamples 2)", num_downsamples=2)] if dataset == "mmnist" else []
    # A candidate part, off in the presets until measured: a learned per-pixel gate on the carried frame.
    gate = [ablation("with motion gate (motion_gate=True)", motion_gate=True)]
    return [
        Variant("DIFFUMA", "main", model, base, searched=True, headline=True),
        Variant("SimVP (gSTA)", "baseline", "simvp", budget["simvp"], searched=True, headline=True),
        Variant("ConvLSTM", "baseline", "convlstm", budget["convlstm"], searched=True),
        Variant("Mamba-only", "ablation", model, {**base, "diffusion": "off"}, searched=True, headline=True),
        Variant("random conditioning", "ablation", model, {**base, "context": "random"}, headline=True,
                lr_from="DIFFUMA"),
        ablation("no motion warp", motion="none"),
        ablation("no observed frame in the denoiser", observed_input=False),
        ablation("no context in the tokens", context_tokens=False),
        ablation("attention within frames", attention="spatial"),
        ablation("epsilon single pass (old gain)", prediction="epsilon"),
        ablation("uniform noise levels", noise_levels="uniform"),
        ablation("lambda_diff=0", lambda_diff=0.0),
        ablation("lambda_diff=1", lambda_diff=1.0),
        ablation('scan="spacetime" (per-frame tokens)', scan="spacetime"),
        ablation('scan="time"', scan="time"),
        ablation("first version's parts", scan="spacetime", prediction="epsilon", noise_levels="uniform",
                 observed_input=False, context_tokens=False, attention="spatial", final_init_std=0.0),
        *finer,
        *gate,
    ]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def run_name(variant: Variant, lr: float, seed: int) -> str:
    return f"{slug(variant.name)}__lr{lr:g}__s{seed}"


class Study:
    """Trains, evaluates and records the runs of one data set."""

    def __init__(self, dataset: str, budget: dict, out: Path, args) -> None:
        self.dataset, self.budget, self.out, self.args = dataset, budget, out, args
        self.steps = args.steps or budget["steps"][dataset]
        self.eval_sequences = args.eval_sequences or budget["eval_sequences"]
        spec = dict(budget["datasets"][dataset], val_sequences=self.eval_sequences)
        self.train_set = DataSpec(**spec, seed=0).build("train")
        self.test_set = DataSpec(**spec, seed=0).build("val")
        self.selection_set = DataSpec(**spec, seed=SELECTION_SEED).build("val")
        inputs, targets = self.train_set[0]
        self.shape = dict(in_shape=tuple(inputs.shape), out_frames=targets.shape[0])
        self.variants = {v.name: v for v in variants(budget, dataset)}

    def rows_path(self, variant: Variant, lr: float, seed: int) -> Path:
        return self.out / "rows" / self.dataset / f"{run_name(variant, lr, seed)}.json"

    def examples_path(self, variant: Variant, lr: float, seed: int) -> Path:
        """Test sample 0 as each of the run's samplers predicted it (float16, beside the rows, so the
        figure survives the run folder)."""
        return self.out / "rows" / self.dataset / f"{run_name(variant, lr, seed)}.examples.npz"

    def finished(self, variant: Variant, lr: float, seed: int) -> dict | None:
        path = self.rows_path(variant, lr, seed)
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, variant: Variant, lr: float, seed: int) -> dict:
        """Train (or resume, or reuse) one run and evaluate it; returns its record."""
        done = self.finished(variant, lr, seed)
        if done is not None:
            return done
        run_dir = self.out / self.dataset / run_name(variant, lr, seed)
        print(f"[{self.dataset}] {variant.name} lr={lr:g} seed={seed}: {variant.model} {variant.overrides}",
              flush=True)
        torch.manual_seed(seed)
        model = create_model(variant.model, **{**variant.overrides, **self.shape})
        parameters = sum(p.numel() for p in model.parameters())
        device = self.budget["device"]
        config = TrainConfig(epochs=10**6, max_steps=self.steps, batch_size=self.budget["batch_size"], lr=lr,
                             seed=seed, pictures=False, quiet=self.args.quiet, log_every=10, device=device,
                             checkpoint_every=100, precision="bf16" if device == "cuda" else "fp32")
        trainer = Trainer(model, self.train_set, None, config, run_dir)
        started = time.perf_counter()
        trainer.fit(resume="auto")
        seconds = time.perf_counter() - started
        previous = run_dir / "train_seconds.json"  # time of earlier, interrupted sessions
        if previous.exists():
            seconds += json.loads(previous.read_text())["seconds"]
        atomic_write_text(previous, json.dumps({"seconds": seconds}))
        selection = evaluate(trainer.eval_model, self.selection_set, batch_size=16, device=trainer.device,
                             seed=seed)
        samplers = [("single pass", None, None)]
        if variant.name == "DIFFUMA":
            samplers += [("DDIM 10 steps", "ddim", 10), ("DDIM 50 steps", "ddim", 50)]
        rows, examples = [], {}
        for label, sampler, ddim_steps in samplers:
            result = evaluate(trainer.eval_model, self.test_set, batch_size=16, device=trainer.device,
                              sampler=sampler, ddim_steps=ddim_steps, seed=seed)
            name = variant.name if sampler is None else f"{variant.name}, {label}"
            rows.append({"dataset": self.dataset, "group": variant.group, "model": name, "sampler": label,
                         **result.metrics, "parameters": parameters, "train_steps": trainer.step,
                         "train_seconds": seconds, "s_per_step": seconds / max(trainer.step, 1), "lr": lr,
                         "seed": seed, "selection_mse": selection.metrics["mse"]})
            examples[name] = result.example[2].numpy().astype(np.float16)
        record = {"rows": rows}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **examples)
        atomic_write_bytes(self.examples_path(variant, lr, seed), buffer.getvalue())
        atomic_write_text(self.rows_path(variant, lr, seed), json.dumps(record, indent=1) + "\n")
        return record

    def chosen_lr(self, name: str, partial: bool = False) -> float | None:
        """The searched learning rate with the lowest selection-set MSE.

        None until the search is done; with ``partial=True`` (what the reports use while a search is
        unfinished; the results page shows which rates ran) the best of the rates finished so far.
        Training plans search ``--lrs`` (when given); the reports always search the budget's rates,
        so a process that ran a subset of them marks the same rows as chosen as any other.
        """
        variant = self.variants[name]
        if variant.lr_from:
            return self.chosen_lr(variant.lr_from, partial)
        rates = self.budget["lrs"] if partial else self.lrs()
        records = [self.finished(variant, lr, 0) for lr in rates]
        if partial:
            records = [r for r in records if r is not None]
        if not records or any(r is None for r in records):
            return None
        best = min(records, key=lambda r: r["rows"][0]["selection_mse"])
        return best["rows"][0]["lr"]

    def lrs(self) -> tuple[float, ...]:
        return tuple(self.args.lrs or self.budget["lrs"])

    def wanted(self, variant: Variant) -> bool:
        return not self.args.only or variant.name in self.args.only

    def plan(self, phase: str) -> list[tuple[Variant, float, int]]:
        """The runs of one phase whose learning rate is known."""
        runs = []
        for variant in self.variants.values():
            if not self.wanted(variant):
                continue
            if phase == "search" and variant.searched:
                runs += [(variant, lr, 0) for lr in self.lrs()]
            lr = self.chosen_lr(variant.name)
            if lr is None:
                continue
            if phase == "seeds" and variant.headline:
                runs += [(variant, lr, seed) for seed in self.seeds()]
            if phase == "ablations" and variant.group == "ablation" and not variant.searched:
                runs.append((variant, lr, 0))
        unique = {(variant.name, lr, seed): (variant, lr, seed) for variant, lr, seed in runs}
        return list(unique.values())

    def seeds(self) -> tuple[int, ...]:
        seeds = tuple(range(self.args.seeds)) if self.args.seeds else tuple(self.budget["seeds"])
        wanted = self.args.only_seeds
        return tuple(s for s in seeds if s in wanted) if wanted else seeds

    def records(self) -> list[dict]:
        """Every finished run's rows, marking the runs at each model's chosen learning rate."""
        rows = []
        for path in sorted((self.out / "rows" / self.dataset).glob("*.json")):
            for row in json.loads(path.read_text())["rows"]:
                base = row["model"].split(",")[0]
                chosen = self.chosen_lr(base, partial=True) if base in self.variants else None
                rows.append({**row, "chosen": chosen is not None and row["lr"] == chosen})
        return rows


FIELDS = ["dataset", "group", "model", "sampler", "mse", "mae", "ssim", "psnr", "ms_per_sample", "parameters",
          "train_steps", "train_seconds", "s_per_step", "lr", "seed", "selection_mse", "chosen"]


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU budget")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/fidelity/results/<budget>)")
    parser.add_argument("--datasets", nargs="+", default=["chdl", "mmnist"], choices=["chdl", "mmnist"])
    parser.add_argument("--phase", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--steps", type=int, default=None, help="override the budget's optimiser steps")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="override the learning-rate search")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds of the headline models")
    parser.add_argument("--only-seeds", type=int, nargs="+", default=None,
                        help="in the seeds phase, train only these seeds (to split one phase between processes)")
    parser.add_argument("--only", nargs="*", default=None, help="train only these model names")
    parser.add_argument("--eval-sequences", type=int, default=None, help="override the held-out sequences")
    parser.add_argument("--docs", action="store_true", help="write docs/results.rst and its figures")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.only == []:
        parser.error("--only needs model names (or `none` to train nothing and only report)")
    budget_name = "gpu" if args.gpu else "cpu"
    budget = BUDGETS[budget_name]
    out = Path(args.out or ROOT / "benchmarks" / "fidelity" / "results" / budget_name)
    all_rows, steps_used = [], {}
    # Train only `--datasets`, but report every data set with finished rows: results.csv/json and the
    # page always hold every finished row, whichever subset (or rates, `--lrs`) this process ran.
    for dataset in (d for d in budget["datasets"] if d in args.datasets or (out / "rows" / d).is_dir()):
        study = Study(dataset, budget, out, args)
        steps_used[dataset] = study.steps
        if dataset in args.datasets:
            for phase in args.phase:
                for variant, lr, seed in study.plan(phase):
                    study.run(variant, lr, seed)
        all_rows += study.records()
        # The baselines without parameters: the last frame repeated, and carried along the block-matched
        # velocity with DIFFUMA's own search settings.
        motion = {k: v for k, v in budget["diffuma"][dataset].items() if k.startswith("motion_")}
        for label, name, overrides in (("copy last frame", "copy_last", {}), (WARP_LAST, "warp_last", motion)):
            fixed = evaluate(create_model(name, **overrides, **study.shape), study.test_set, batch_size=16)
            all_rows.append({"dataset": dataset, "group": "baseline", "model": label, "sampler": "",
                             **fixed.metrics, "parameters": 0, "train_steps": 0, "train_seconds": 0.0,
                             "s_per_step": 0.0, "lr": 0.0, "seed": 0, "selection_mse": float("nan"),
                             "chosen": True})
        from benchmarks.fidelity.report import figure

        figure(out / f"predictions_{dataset}.png", dataset, study, all_rows)
    write_csv(out / "results.csv", all_rows)
    machine = (torch.cuda.get_device_name() if budget["device"] == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads per run")
    setup = {"budget": budget_name, "steps": steps_used, "batch_size": budget["batch_size"],
             "lrs": list(budget["lrs"]), "machine": machine, "torch": str(torch.__version__),
             "date": time.strftime("%Y-%m-%d"), "datasets": budget["datasets"],
             "eval_sequences": args.eval_sequences or budget["eval_sequences"],
             "sizes": {"convlstm": budget["convlstm"], "simvp": budget["simvp"]}}
    atomic_write_text(out / "results.json", json.dumps({"setup": setup, "rows": all_rows}, indent=1) + "\n")
    from benchmarks.fidelity.report import print_summary, write_docs_page

    print_summary(all_rows)
    if args.docs:
        write_docs_page(out, ROOT / "docs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
