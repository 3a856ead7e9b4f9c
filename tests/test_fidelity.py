"""The fidelity study script runs end to end on a tiny budget and its report builds a docs page."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXED = {"copy last frame", "warp last frame (block matching)"}  # the baselines without parameters


@pytest.mark.slow
def test_fidelity_study_tiny_budget_writes_results_and_a_docs_page(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, str(REPO / "benchmarks" / "fidelity" / "run.py"), "--steps", "1", "--only",
               "DIFFUMA", "Mamba-only", "random conditioning", "--lrs", "1e-3", "2e-3", "--seeds", "2",
               "--eval-sequences", "2", "--datasets", "chdl", "--out", str(out), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    runs = {(r["model"], float(r["lr"]), int(r["seed"])) for r in rows if r["model"] not in FIXED}
    # the search (both rates, seed 0) for the searched models, then seed 1 at each chosen rate
    for model in ("DIFFUMA", "Mamba-only"):
        assert {(model, 1e-3, 0), (model, 2e-3, 0)} <= runs
    chosen = {r["model"]: float(r["lr"]) for r in rows if r["chosen"] == "True" and r["seed"] == "0"}
    assert ("DIFFUMA", chosen["DIFFUMA"], 1) in runs and ("Mamba-only", chosen["Mamba-only"], 1) in runs
    # random conditioning is not searched: DIFFUMA's rate, both seeds
    assert {lr for m, lr, _ in runs if m == "random conditioning"} == {chosen["DIFFUMA"]}
    assert {s for m, _, s in runs if m == "random conditioning"} == {0, 1}
    assert {"DIFFUMA, DDIM 10 steps", "DIFFUMA, DDIM 50 steps", *FIXED} <= {r["model"] for r in rows}
    assert {r["train_steps"] for r in rows if r["model"] not in FIXED} == {"1"}
    assert (out / "predictions_chdl.png").stat().st_size > 0
    assert len(list((out / "rows" / "chdl").glob("*.json"))) == 8  # 2 + 1 + 2 + 1 runs, and 2 of random conditioning
    # each run keeps its prediction of test sample 0 beside its rows: the figure needs no run folder
    assert len(list((out / "rows" / "chdl").glob("*.examples.npz"))) == 8
    shutil.rmtree(out / "chdl")
    setup = json.loads((out / "results.json").read_text())["setup"]
    assert setup["steps"] == {"chdl": 1} and setup["eval_sequences"] == 2

    # a second run reuses every finished run (no training): same rows
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0 and "lr=" not in again.stdout
    again_rows = list(csv.DictReader((out / "results.csv").open()))
    assert again_rows[:-2] == rows[:-2]  # the last two rows, the fixed baselines, are re-timed

    # a process that trains another data set (here: nothing of it) still reports this one's rows
    # and the budget's whole search, not its own `--lrs`
    other = command[:2] + ["--only", "none", "--lrs", "4e-3", "--steps", "1",
                                                   "--eval-sequences", "2", "--datasets", "mmnist",
                                                   "--out", str(out), "--quiet"]
    assert subprocess.run(other, capture_output=True, text=True, timeout=600, cwd=REPO).returncode == 0
    reported = list(csv.DictReader((out / "results.csv").open()))
    assert [r for r in reported if r["dataset"] == "chdl"][:-2] == rows[:-2]
    assert json.loads((out / "results.json").read_text())["setup"]["lrs"] == [1e-3, 2e-3, 4e-3]

    sys.path.insert(0, str(REPO))
    from benchmarks.fidelity.report import write_docs_page

    docs = tmp_path / "docs"
    page = write_docs_page(out, docs).read_text()
    assert "learning-rate search" in page and "not** the published" in page
    assert all(name in page for name in FIXED)
    assert "± " in page  # two seeds: mean and spread
    assert (docs / "_static" / "fidelity" / "predictions_chdl.png").exists()
    assert (out / "predictions_chdl.png").stat().st_size > 0


def _bare_study(tmp_path, **args):
    """A CHDL study of the CPU budget without its data sets: enough for the learning-rate bookkeeping."""
    import argparse

    sys.path.insert(0, str(REPO))
    from benchmarks.fidelity.run import BUDGETS, Study, variants

    study = Study.__new__(Study)
    study.dataset, study.budget, study.out = "chdl", BUDGETS["cpu"], tmp_path
    study.args = argparse.Namespace(**{"lrs": None, "seeds": None, "only_seeds": None, "only": None, **args})
    study.variants = {v.name: v for v in variants(study.budget, "chdl")}
    return study


def _finish(study, name, lr, selection_mse):
    path = study.rows_path(study.variants[name], lr, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": [{"model": name, "lr": lr, "selection_mse": selection_mse}]}))


def test_chosen_rate_waits_for_the_whole_search_unless_partial(tmp_path):
    study = _bare_study(tmp_path)
    _finish(study, "DIFFUMA", 1e-3, 2.0)
    _finish(study, "DIFFUMA", 2e-3, 1.0)
    assert study.chosen_lr("DIFFUMA") is None  # 4e-3 not run: no seeds or ablations planned yet
    assert study.plan("seeds") == []
    assert study.chosen_lr("DIFFUMA", partial=True) == 2e-3  # what the reports show meanwhile
    assert study.chosen_lr("random conditioning", partial=True) == 2e-3
    assert study.chosen_lr("ConvLSTM", partial=True) is None
    _finish(study, "DIFFUMA", 4e-3, 0.5)
    assert study.chosen_lr("DIFFUMA") == 4e-3 == study.chosen_lr("random conditioning")


def test_only_seeds_splits_the_seeds_phase(tmp_path):
    study = _bare_study(tmp_path, only_seeds=[1], only=["DIFFUMA", "random conditioning"])
    for lr in study.lrs():
        _finish(study, "DIFFUMA", lr, lr)
    assert {(v.name, lr, seed) for v, lr, seed in study.plan("seeds")} == {
        ("DIFFUMA", 1e-3, 1), ("random conditioning", 1e-3, 1)}


def test_empty_only_is_an_error_not_train_everything(capsys):
    sys.path.insert(0, str(REPO))
    from benchmarks.fidelity.run import main

    with pytest.raises(SystemExit) as stop:
        main(["--only"])
    assert stop.value.code == 2 and "--only needs model names" in capsys.readouterr().err


def test_comparison_names_the_best_baseline_and_the_best_trained_one():
    sys.path.insert(0, str(REPO))
    from benchmarks.fidelity.report import comparison

    def entry(model, group, mse, parameters):
        return {"dataset": "chdl", "model": model, "group": group, "mse": mse, "ssim": 0.5, "seeds": 2,
                "parameters": parameters}

    summary = [entry("DIFFUMA", "main", 7.0, 10), entry("SimVP (gSTA)", "baseline", 10.0, 10),
               entry("warp last frame (block matching)", "baseline", 8.0, 0),
               entry("copy last frame", "baseline", 1.0, 0)]  # copy-last never counts
    text = comparison(summary, "chdl")
    assert "12.5% lower than the best baseline's (warp last frame" in text and "falls short of" in text
    assert "best trained baseline (SimVP (gSTA), MSE 10.000) it is 30.0% lower" in text


def test_docs_page_says_so_when_a_data_set_has_no_ablations(tmp_path):
    """A data set with only baselines must not give Sphinx an empty table (a build error)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.fidelity.report import write_docs_page

    results = json.loads((REPO / "benchmarks" / "fidelity" / "results" / "cpu" / "results.json").read_text())
    rows = [r for r in results["rows"] if r["dataset"] == "chdl" and r["group"] == "baseline"]
    assert rows and not any(r["group"] == "ablation" for r in rows)
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"setup": results["setup"], "rows": rows}))
    page = write_docs_page(out, tmp_path / "docs").read_text()
    assert "Ablations: none has run on this data set yet." in page
    tables = page.split(".. list-table::")[1:]
    assert tables and all(table.count("   * - ") > 1 for table in tables)  # a header and at least one row
