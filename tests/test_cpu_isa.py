"""STMODELS_CPU_ISA: every CPU kernel build of both ops against the reference (csrc/cpu_isa.h).

The variable caps the instruction set of the CPU kernels and is read on every call, so one machine
tests each build its CPU runs: the scan and AdaLN, forward and backward, on shapes with a vector
tail (AdaLN H = 40; a scan with dim 19, L = 37, N = 5), by the tolerance rule of the layer-2 tests
(their own check_backend). torch.ops.stmodels.cpu_kernel_build shows which build a call runs.
"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from stmodels import _ext
from tests._backends import dtype_id
from tests.test_backends_adaln import check_backend as check_adaln
from tests.test_backends_scan import ScanCase
from tests.test_backends_scan import check_backend as check_scan

pytestmark = pytest.mark.needs_ext

# The CPU features each build needs (the -m flags of setup.py's ISA_FLAGS; csrc/cpu_isa.h checks
# the same list at run time).
NEEDS = {
    "generic": set(),
    "avx2": {"avx2", "fma", "f16c"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"},
}
BUILDS = list(NEEDS)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _runnable(build: str) -> bool:
    """Whether this CPU runs `build` and the binary has it (non-x86 builds have generic only)."""
    if build == "generic":
        return True
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return False
    return NEEDS[build] <= _cpu_flags() and build in _ext.build_info().get("isa_variants", [])


@pytest.fixture(params=BUILDS)
def cpu_isa(request, monkeypatch):
    """Each build in turn, forced through STMODELS_CPU_ISA (skipped where the CPU lacks it)."""
    build = request.param
    if not _runnable(build):
        pytest.skip(f"this CPU or binary has no {build} build")
    monkeypatch.setenv("STMODELS_CPU_ISA", build)
    return build


def kernel_build(op: str, dtype: torch.dtype) -> str:
    return torch.ops.stmodels.cpu_kernel_build(op, dtype)


SCAN_CASES = {
    "uni": ScanCase(batch=2, dim=19, length=37, N=5),
    "reverse_initial_state": ScanCase(batch=2, dim=19, length=37, N=5, reverse=True,
                                      has_initial_state=True),
    "bi": ScanCase(batch=2, dim=19, length=37, N=5, bidirectional=True,
                   per_direction=frozenset({"A", "B", "delta_bias"})),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("case", list(SCAN_CASES), ids=str)
def test_scan_build_matches_reference(cpu_isa, case, dtype):
    assert kernel_build("selective_scan", dtype) == cpu_isa
    check_scan(SCAN_CASES[case], dtype, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("affine", ["none", "both"])
def test_adaln_build_matches_reference(cpu_isa, per_token, affine, dtype):
    assert kernel_build("adaln", dtype) == cpu_isa
    check_adaln("cpu", dtype, batch=2, tokens=5, hidden=40, per_token=per_token,
                has_weight=affine == "both", has_bias=affine == "both")


def test_default_pick_follows_each_ops_preference(monkeypatch):
    """Unset: the scan runs its widest build; AdaLN avx2 for float32/float16, avx512 for bfloat16
    (the measured preferences, csrc/adaln/adaln_cpu.cpp), each only where the CPU has it."""
    monkeypatch.delenv("STMODELS_CPU_ISA", raising=False)
    widest = next(b for b in reversed(BUILDS) if _runnable(b))
    assert kernel_build("selective_scan", torch.float32) == widest
    assert kernel_build("adaln", torch.bfloat16) == widest
    narrow = "avx2" if _runnable("avx2") else widest
    assert kernel_build("adaln", torch.float32) == narrow
    assert kernel_build("adaln", torch.float16) == narrow


def test_request_above_the_cpu_takes_the_best_below(monkeypatch):
    monkeypatch.setenv("STMODELS_CPU_ISA", "avx512")
    best = next(b for b in reversed(BUILDS) if _runnable(b))
    assert kernel_build("adaln", torch.float32) == best
    assert kernel_build("selective_scan", torch.float32) == best


def test_unknown_value_is_an_error(monkeypatch):
    monkeypatch.setenv("STMODELS_CPU_ISA", "sse9")
    x = torch.randn(1, 2, 8)
    with pytest.raises(RuntimeError, match="STMODELS_CPU_ISA: unknown value 'sse9'"):
        torch.ops.stmodels.adaln_fwd(x, torch.zeros(1, 8), torch.zeros(1, 8), None, None, 1e-6)
    with pytest.raises(RuntimeError, match="STMODELS_CPU_ISA: unknown value 'sse9'"):
        kernel_build("selective_scan", torch.float32)
