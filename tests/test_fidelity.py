"""The fidelity study script runs end to end on a tiny budget and its report builds a docs page."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fidelity_study_tiny_budget_writes_results_and_a_docs_page(tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, str(REPO / "benchmarks" / "fidelity" / "run.py"), "--steps", "1", "--only",
               "DIFFUMA", "Mamba-only", "--eval-sequences", "2", "--datasets", "chdl", "--out", str(out), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model"] for r in rows] == ["DIFFUMA", "DIFFUMA, DDIM 10 steps", "DIFFUMA, DDIM 50 steps",
                                          "Mamba-only", "copy last frame"]
    assert {r["train_steps"] for r in rows[:4]} == {"1"}
    assert (out / "predictions_chdl.png").stat().st_size > 0
    setup = json.loads((out / "results.json").read_text())["setup"]
    assert setup["steps"] == {"chdl": 1} and setup["eval_sequences"] == 2

    sys.path.insert(0, str(REPO))
    from benchmarks.fidelity.report import write_docs_page

    docs = tmp_path / "docs"
    page = write_docs_page(out, docs).read_text()
    assert "DIFFUMA's MSE is" in page and "copy last frame" in page and "not** the published" in page
    assert (docs / "_static" / "fidelity" / "predictions_chdl.png").exists()
