"""The documentation site builds with Sphinx, warnings as errors, as `make docs` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    out = tmp_path / "html"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, f"sphinx failed ({result.returncode}):\n{result.stderr}\n{result.stdout}"
    assert (out / "index.html").is_file()
    api = out / "api.html"
    assert api.is_file()
    assert "bi_selective_scan" in api.read_text(encoding="utf-8")
