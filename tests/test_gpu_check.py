"""benchmarks/gpu_check.sh and gpu_table.py keep working on the days without a GPU.

The dry run parses the arguments, collects the exact test selection the GPU run would use (which
must include cuda tests) and runs the table code on small CPU tensors, checking every output
against the reference.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(*args, out: Path):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


def test_dry_run_selects_cuda_tests_runs_the_table_and_passes(tmp_path):
    result = _run("--dry-run", out=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "PASS (dry run)"
    selected = re.search(r"selected (\d+) test ids, (\d+) of them cuda", result.stdout)
    assert selected and int(selected.group(2)) > 0
    assert "outputs vs reference: all match" in result.stdout
    assert (tmp_path / "gpu_table.md").read_text().count("| cpu |") >= 4


def test_unknown_argument_is_refused(tmp_path):
    result = _run("--bogus", out=tmp_path)
    assert result.returncode == 2 and "unknown argument '--bogus'" in result.stderr


def test_the_table_flags_an_output_that_differs_from_the_reference():
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu_table import check_output

    expected = torch.randn(4, 5)
    assert check_output(lambda: expected.clone(), expected) == ""
    assert check_output(lambda: expected * 1.1, expected).startswith("WRONG OUTPUT")
    assert check_output(lambda: torch.full_like(expected, float("nan")), expected).startswith("WRONG OUTPUT")
