"""``last_state`` is differentiable on every backend (docs/ops.rst, selective_scan).

The docs' chunked example (a sequence cut in two, the halves chained through ``last_state`` /
``initial_state``) must give the gradients of the unchunked scan: the gradient reaching the first
half flows back through the state, so a backend that dropped d(last_state) gets the first half's
gradients wrong (by tens of percent) while its forward stays exact.
"""

from __future__ import annotations

import pytest
import torch

from stmodels.ops import selective_scan
from tests._backends import backend_params, device_for

BACKENDS = [pytest.param("reference", id="reference"), *backend_params("cpu", "triton", "cuda")]


def _inputs(device, length=12, batch=2, dim=4, N=3, dtype=torch.float32, seed=3):
    g = torch.Generator().manual_seed(seed)
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) * 0.5,
        "A": -torch.rand(dim, N, generator=g) - 0.2,
        "B": torch.randn(batch, N, length, generator=g),
        "C": torch.randn(batch, N, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.3,
        "initial_state": torch.randn(batch, dim, N, generator=g),
    }
    return {k: v.to(device, dtype).requires_grad_(True) for k, v in t.items()}


def _time_slice(name, tensor, sl):
    return tensor[..., sl] if name in ("u", "delta", "B", "C", "z") else tensor


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_equals_unchunked_gradients(backend, reverse):
    device = device_for(backend)
    x = _inputs(device)
    length, cut = x["u"].shape[-1], 5
    grad_out = torch.randn(x["u"].shape, generator=torch.Generator().manual_seed(4)).to(device)
    grad_last = torch.randn(x["initial_state"].shape, generator=torch.Generator().manual_seed(5)).to(device)

    whole, last = selective_scan(**x, delta_softplus=True, reverse=reverse, return_last_state=True,
                                 backend=backend)
    full = torch.autograd.grad((whole, last), list(x.values()), (grad_out, grad_last))

    # Scan order: the first chunk is the start of time forward, the end of time when reversed.
    first_sl, second_sl = (slice(cut, length), slice(0, cut)) if reverse else (slice(0, cut), slice(cut, length))
    first_args = {k: _time_slice(k, v, first_sl) for k, v in x.items()}
    first, h = selective_scan(**first_args, delta_softplus=True, reverse=reverse, return_last_state=True,
                              backend=backend)
    second_args = {k: _time_slice(k, v, second_sl) for k, v in x.items() if k != "initial_state"}
    second, last2 = selective_scan(**second_args, initial_state=h, delta_softplus=True, reverse=reverse,
                                   return_last_state=True, backend=backend)
    chunked_out = torch.cat((second, first) if reverse else (first, second), dim=-1)
    torch.testing.assert_close(chunked_out, whole, rtol=1e-5, atol=1e-5)
    chunked = torch.autograd.grad((chunked_out, last2), list(x.values()), (grad_out, grad_last))
    for name, a, b in zip(x, chunked, full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_state_gradient_alone(backend):
    """A loss on last_state only (out unused) still reaches every input, as on the reference."""
    device = device_for(backend)
    x = _inputs(device, length=9)
    _, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)
    grads = torch.autograd.grad(last.square().sum(), list(x.values()), allow_unused=True)
    y = _inputs(device, length=9)
    _, last_ref = selective_scan(**y, delta_softplus=True, return_last_state=True, backend="reference")
    expected = torch.autograd.grad(last_ref.square().sum(), list(y.values()), allow_unused=True)
    for name, a, b in zip(x, grads, expected):
        if name in ("C", "D", "z"):  # read-out only: they shape out, never the state
            assert a is None or torch.count_nonzero(a) == 0
            continue
        assert a is not None and torch.count_nonzero(a) > 0, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")


def test_gradcheck_float64_with_last_state():
    x = _inputs("cpu", length=5, batch=1, dim=2, N=2, dtype=torch.float64, seed=6)
    names, leaves = list(x), list(x.values())
    for reverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda *t, r=reverse: selective_scan(**dict(zip(names, t)), delta_softplus=True, reverse=r,
                                                 return_last_state=True, backend="reference"),
            leaves)
