"""Test configuration: markers are decided at collection, never by touching a device at import.

* ``needs_ext``: skipped when ``stmodels._C`` is not loaded (a STMODELS_SKIP_EXT=1 install).
* ``needs_cuda``: skipped unless torch sees a CUDA device.
* ``triton_interpret``: Triton kernels on the CPU; skipped unless triton is importable.

Without a CUDA device the Triton kernels can only run through Triton's interpreter, which reads
``TRITON_INTERPRET`` when a kernel is defined: so it is set here, before any stmodels module is
imported (a GPU machine keeps compiled Triton unless the caller sets it).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from stmodels import _ext  # noqa: E402

settings.register_profile(
    "stmodels",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("HYPOTHESIS_RANDOM", "0") != "1",
)
settings.load_profile("stmodels")


def pytest_collection_modifyitems(config, items):
    ext_missing = None if _ext.available() else _ext.load_error()
    has_cuda = torch.cuda.is_available()
    try:
        import triton  # noqa: F401

        has_triton = True
    except ImportError:
        has_triton = False
    for item in items:
        if ext_missing and "needs_ext" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"compiled extension missing: {ext_missing}"))
        if not has_cuda and "needs_cuda" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))
        if not has_triton and "triton_interpret" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="triton is not installed"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
