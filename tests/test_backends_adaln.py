"""Layer 2: every adaln_modulate backend against the reference, outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels.ops import adaln_modulate
from tests._backends import DTYPES, backend_params, device_for, dtype_id
from tests._tolerances import assert_matches

OP = "adaln_modulate"
BACKENDS = backend_params("cpu", "triton", "cuda")


def _make(batch, tokens, hidden, per_token, has_weight, has_bias, dtype, device, generator):
    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=generator) * scale + shift).to(device)

    def lowp(t):
        return t.to(dtype).float()

    mod_shape = (batch, tokens, hidden) if per_token else (batch, hidden)
    return {
        # an offset and a spread that differ per row exercise the mean/variance arithmetic
        "x": lowp(randn(batch, tokens, hidden, scale=2.0, shift=0.5) * torch.rand(batch, tokens, 1, generator=generator).to(device) * 3),
        "shift": lowp(randn(*mod_shape, scale=0.5)),
        "scale": lowp(randn(*mod_shape, scale=0.5)),
        "weight": randn(hidden, scale=0.3, shift=1.0) if has_weight else None,
        "bias": randn(hidden, scale=0.3) if has_bias else None,
    }


def _run(inputs, backend, grad_out, eps):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    out = adaln_modulate(**{k: leaves.get(k) for k in inputs}, eps=eps, backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(out.dtype))
    return out, dict(zip(leaves, grads))


def check_backend(backend, dtype, batch=2, tokens=5, hidden=24, per_token=False, has_weight=False,
                  has_bias=False, eps=1e-6, seed=0):
    """Backend vs the float64 reference (and the reference in ``dtype``), by the tolerance rule."""
    device = device_for(backend)
    generator = torch.Generator().manual_seed(seed)
    inputs32 = _make(batch, tokens, hidden, per_token, has_weight, has_bias, dtype, device, generator)
    grad_out = torch.randn(batch, tokens, hidden, generator=generator).to(dtype).to(device)
    inputs = {k: (v.to(dtype) if v is not None and k in ("x", "shift", "scale") else v) for k, v in inputs32.items()}
    expected = _run({k: None if v is None else v.double() for k, v in inputs.items()}, "reference",
                    grad_out.double(), eps)
    in_dtype = _run(inputs, "reference", grad_out, eps)
    actual = _run(inputs, backend, grad_out, eps)
    assert actual[0].dtype == dtype
    assert_matches(OP, dtype, "fwd", "out", actual[0], expected[0], in_dtype[0])
    for name, grad in actual[1].items():
        assert grad.shape == inputs[name].shape and grad.dtype == inputs[name].dtype, name
        assert_matches(OP, dtype, "bwd", f"d{name}", grad, expected[1][name], in_dtype[1][name])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_adaln_matches_reference(backend, per_token, affine, dtype):
    check_backend(backend, dtype, per_token=per_token, has_weight=affine in ("weight", "both"),
                  has_bias=affine in ("bias", "both"))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40)
@given(batch=st.integers(1, 3), tokens=st.integers(1, 17), hidden=st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 33, 64, 383]),
       per_token=st.booleans(), has_weight=st.booleans(), has_bias=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-5, 1e-2]), seed=st.integers(0, 2**16))
def test_adaln_hypothesis(backend, batch, tokens, hidden, per_token, has_weight, has_bias, eps, seed):
    check_backend(backend, torch.float32, batch, tokens, hidden, per_token, has_weight, has_bias, eps, seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaln_constant_rows(backend):
    # A constant row has zero variance: the output is shift + bias*(1+scale), finite for eps > 0.
    device = device_for(backend)
    x = torch.full((2, 3, 16), 4.0, device=device)
    shift, scale = torch.randn(2, 16, device=device), torch.randn(2, 16, device=device)
    out = adaln_modulate(x, shift, scale, backend=backend)
    torch.testing.assert_close(out, shift[:, None].expand_as(out))
