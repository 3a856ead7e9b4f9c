"""adaln_modulate benchmarks: backends side by side with eager layer_norm + modulate.

Run: `make bench` or `python -m pytest benchmarks/bench_adaln.py --benchmark-only`.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks._peers import eager_adaln
from benchmarks._shapes import ADALN_CPU, adaln_inputs, requiring_grad
from stmodels import _ext
from stmodels.ops import adaln_modulate


def _call(impl):
    if impl == "eager":
        return eager_adaln
    return lambda **t: adaln_modulate(**t, backend=impl)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("form", ["per_sample", "per_token"])
@pytest.mark.parametrize("impl", ["cpu", "reference", "eager"])
def test_adaln_cpu(benchmark, impl, form, mode):
    if impl == "cpu" and not _ext.available():
        pytest.skip(_ext.load_error())
    shape = ADALN_CPU
    benchmark.group = (f"adaln_modulate cpu {shape['batch']}x{shape['tokens']}x{shape['hidden']} "
                       f"{str(shape['dtype'])[6:]} {form} {mode}")
    tensors = adaln_inputs(**shape, per_token=form == "per_token")
    fn = _call(impl)
    if mode == "fwd":
        def target():
            with torch.no_grad():
                return fn(**tensors)
    else:
        leaves = requiring_grad(tensors)
        grad = torch.randn_like(tensors["x"])

        def target():
            fn(**leaves).backward(grad)
            for leaf in leaves.values():
                leaf.grad = None
    benchmark.pedantic(target, rounds=30, warmup_rounds=3)
