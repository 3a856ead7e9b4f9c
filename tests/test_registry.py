"""The backend registry: auto selection, use_backend, STMODELS_BACKEND, availability reporting."""

from __future__ import annotations

import pytest
import torch

import stmodels
from stmodels import _ext
from stmodels.ops import BACKENDS, backend_names, current_backend, get_backend, use_backend
from stmodels.ops._backend import select_kernel
from stmodels.ops.adaln.checks import canonical_adaln_args


def _adaln_args(dtype=torch.float32):
    return canonical_adaln_args(torch.randn(1, 2, 4, dtype=dtype), torch.randn(1, 4, dtype=dtype),
                                torch.randn(1, 4, dtype=dtype))


def _selected(backend=None, dtype=torch.float32):
    args = _adaln_args(dtype)
    return select_kernel("adaln_modulate", backend, args, args.tensors(), "x")[0]


def test_names_and_descriptions():
    assert backend_names() == ("auto", "reference", "cpu", "cuda", "triton")
    for backend in BACKENDS.values():
        assert backend.description and backend.devices and backend.dtypes


def test_auto_picks_cpu_kernel_when_built_else_reference():
    assert _selected() == ("cpu" if _ext.available() else "reference")


def test_auto_falls_back_to_reference_for_float64():
    assert _selected(dtype=torch.float64) == "reference"


def test_use_backend_and_environment(monkeypatch):
    monkeypatch.delenv("STMODELS_BACKEND", raising=False)
    assert current_backend() == "auto"
    with use_backend("reference"):
        assert current_backend() == "reference"
        assert _selected() == "reference"
        assert _selected("auto") == "reference"
        with use_backend("auto"):
            assert current_backend() == "auto"
    monkeypatch.setenv("STMODELS_BACKEND", "reference")
    assert _selected() == "reference"
    with use_backend("auto"):
        assert current_backend() == "auto"


@pytest.mark.needs_ext
def test_explicit_cpu_backend_is_used():
    assert _selected("cpu") == "cpu"
    assert get_backend("cpu").is_available()


def test_reference_always_available_and_info_runs(capsys):
    from stmodels.info import backend_report, main

    rows = {(r["backend"], r["device"]): r for r in backend_report()}
    assert rows[("reference", "cpu")]["selective_scan"] and rows[("reference", "cpu")]["adaln_modulate"]
    assert rows[("cpu", "cpu")]["selective_scan"] == _ext.available()
    main()
    printed = capsys.readouterr().out
    assert "reference" in printed and stmodels.__version__ in printed


@pytest.mark.needs_ext
def test_build_info_is_recorded():
    info = _ext.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert "cxx_flags" in info and "with_cuda" in info


def test_compiled_backend_reports_a_binary_without_the_kernel():
    from stmodels.ops._backend import missing_kernel_reasons

    reasons = missing_kernel_reasons("no_such_op", "CPU")
    if not _ext.available():
        assert reasons == []  # the backend's availability already says the extension is missing
        return
    assert len(reasons) == 1 and "no CPU kernel for stmodels::no_such_op_fwd, stmodels::no_such_op_bwd" in reasons[0]
