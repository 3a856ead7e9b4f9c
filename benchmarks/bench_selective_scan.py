"""Selective-scan benchmarks: backends side by side, with pure-PyTorch peers.

Run: `make bench` or `python -m pytest benchmarks/bench_selective_scan.py --benchmark-only`.
Groups hold one (op, mode, shape, dtype) each, so backends and peers sit side by side; the summary
at the end prints every entry's slowdown against the fastest of its group.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks._peers import mambapy_bi_scan
from benchmarks._shapes import SCAN_CPU, requiring_grad, scan_inputs
from stmodels import _ext
from stmodels.ops import bi_selective_scan, selective_scan

IMPLEMENTATIONS = ["cpu", "reference", "mambapy_two_calls"]


def _skip_unavailable(impl):
    if impl == "cpu" and not _ext.available():
        pytest.skip(_ext.load_error())
    if impl.startswith("mambapy"):
        pytest.importorskip("mambapy")


def _bi_call(impl):
    if impl == "mambapy_two_calls":
        return mambapy_bi_scan
    return lambda **t: bi_selective_scan(**t, delta_softplus=True, backend=impl)


def _label(shape, mode):
    return f"{shape['batch']}x{shape['dim']}x{shape['length']} N={shape['N']} {str(shape['dtype'])[6:]} {mode}"


def _run(benchmark, fn, tensors, mode):
    if mode == "fwd":
        def target():
            with torch.no_grad():
                return fn(**tensors)
        benchmark.pedantic(target, rounds=7, warmup_rounds=1)
    else:
        leaves = requiring_grad(tensors)

        def target():
            out = fn(**leaves)
            out.backward(torch.ones_like(out))
            for leaf in leaves.values():
                leaf.grad = None
        benchmark.pedantic(target, rounds=7, warmup_rounds=1)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bi_selective_scan_cpu(benchmark, impl, mode):
    _skip_unavailable(impl)
    benchmark.group = f"bi_selective_scan cpu {_label(SCAN_CPU, mode)}"
    _run(benchmark, _bi_call(impl), scan_inputs(**SCAN_CPU), mode)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_selective_scan_cpu(benchmark, impl, mode):
    _skip_unavailable(impl)
    benchmark.group = f"selective_scan cpu {_label(SCAN_CPU, mode)}"
    tensors = {k: (v if k == "z" else v[0]) for k, v in scan_inputs(**SCAN_CPU).items()}
    _run(benchmark, lambda **t: selective_scan(**t, delta_softplus=True, backend=impl), tensors, mode)
