"""GPU benchmarks (skipped without CUDA): the shapes of docs/performance.rst, cuda vs triton vs
reference vs eager and the two-call-with-flips form, grouped so implementations sit side by side.

Run: `python -m pytest benchmarks/bench_gpu.py --benchmark-only` on a CUDA machine.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _cases():
    if not torch.cuda.is_available():
        return []
    from benchmarks._gpu_cases import adaln_cases, copy_bandwidth, scan_cases

    bandwidth = copy_bandwidth()
    return [*scan_cases(bandwidth), *adaln_cases(bandwidth)]


_CASES = _cases()


@pytest.mark.parametrize("case", range(len(_CASES)), ids=[f"{c[0]}|{c[1]}|{c[2]}" for c in _CASES])
def test_gpu(benchmark, case):
    op, label, impl, fn, floor, _ = _CASES[case]
    benchmark.group = f"{op} {label}"
    benchmark.extra_info["floor_ms"] = floor * 1e3 if floor else None

    def target():
        fn()
        torch.cuda.synchronize()
    try:
        target()
    except Exception as exc:  # a backend that cannot run this case (e.g. kernel not built)
        pytest.skip(f"{impl}: {str(exc).splitlines()[0]}")
    benchmark.pedantic(target, rounds=5 if impl == "reference" else 20, warmup_rounds=2)
