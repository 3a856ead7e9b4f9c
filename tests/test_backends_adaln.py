"""Layer 2: every adaln_modulate backend against the reference, outputs and every gradient."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels.ops import adaln_modulate
from tests._backends import DTYPES, backend_params, device_for, dtype_id
from tests._tolerances import assert_matches

OP = "adaln_modulate"
_TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
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


ALL_BACKENDS = [pytest.param("reference", id="reference"), *BACKENDS]


def _formula(x, shift, scale, weight, bias, eps):
    """The documented formula in float64, term by term: ((xhat * w) + b) * (1 + scale) + shift."""
    x64 = x.double()
    mean = x64.mean(-1, keepdim=True)
    var = (x64 - mean).square().mean(-1, keepdim=True)
    y = (x64 - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    if scale.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]
    return y * (1 + scale.double()) + shift.double()


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_adaln_infinite_modulation_follows_the_formula(backend, per_token):
    """inf in scale / shift / weight / bias propagates exactly as the formula (no folded w * (1 + s))."""
    device = device_for(backend)
    g = torch.Generator().manual_seed(1)
    B, S, H = 2, 3, 40  # H > one vector and with a tail on every CPU ISA
    x = torch.randn(B, S, H, generator=g)
    mod = (B, S, H) if per_token else (B, H)
    shift, scale = torch.randn(*mod, generator=g), torch.randn(*mod, generator=g) * 0.5
    weight, bias = torch.randn(H, generator=g), torch.randn(H, generator=g)
    scale[..., 3] = float("inf")
    scale[..., 4] = float("-inf")
    shift[..., 5] = float("inf")
    weight[6] = float("inf")
    bias[7] = float("-inf")
    scale[..., 8] = -1.0          # 1 + scale = 0 against an infinite bias: NaN by the formula
    bias[8] = float("inf")
    expected = _formula(x, shift, scale, weight, bias, 1e-6)
    out = adaln_modulate(*(t.to(device) for t in (x, shift, scale, weight, bias)), backend=backend).cpu()
    assert torch.equal(torch.isnan(out), torch.isnan(expected)), "NaN pattern differs from the formula"
    inf = torch.isinf(expected)
    assert torch.equal(torch.isinf(out), inf) and torch.equal(out[inf], expected[inf].float())
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out[finite].double(), expected[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("hidden", [7, 40, 383])
@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_adaln_large_values_do_not_overflow(backend, per_token, hidden, dtype):
    """LayerNorm(1e20 x) == LayerNorm(x): the variance is formed without overflowing float32."""
    device = device_for(backend)
    g = torch.Generator().manual_seed(2)
    B, S = 2, 3
    x = (torch.randn(B, S, hidden, generator=g) + 0.5).to(dtype)
    x[1, 2] = 1.5  # a constant row: zero variance, where only eps keeps 1/sqrt(var + eps) finite
    mod = (B, S, hidden) if per_token else (B, hidden)
    shift, scale = (torch.randn(*mod, generator=g).to(dtype) for _ in range(2))
    weight, bias = torch.randn(hidden, generator=g), torch.randn(hidden, generator=g)
    eps = 1e-12  # negligible against the variance at either magnitude
    expected = _formula(x, shift, scale, weight, bias, eps)
    # 2**67 ~ 1.5e20 (exact in float32 and bfloat16, which share float32's range) overflows the
    # float32 squares; one row of the batch sits at 2**100 ~ 1.3e30 next to ordinary rows.
    big = x * 2.0**67
    big[0, 1] = x[0, 1] * 2.0**100
    out = adaln_modulate(*(t.to(device) for t in (big, shift, scale)), weight.to(device), bias.to(device),
                         eps=eps, backend=backend).cpu()
    assert torch.isfinite(out).all()
    in_dtype = adaln_modulate(x, shift, scale, weight, bias, eps=eps, backend="reference")
    tol = 2 * (in_dtype.double() - expected).abs().max().item() + (1e-5 if dtype == torch.float32 else 1e-2)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)


# Hidden sizes across the kernels' forms: H = 1, a non-multiple of every vector width (383), the
# vectorised multi-warp rows (1024, 2048) and rows too long for registers (8200: the uncached
# kernels). Interpreted Triton takes the small ones; GPU backends take all.
BOUNDARY_H = (1, 383, 1024, 2048, 8200)


def _boundary_params():
    params = []
    for backend in BACKENDS:
        name = backend.values[0]
        hidden = (1, 383) if name == "triton" and _TRITON_INTERPRETED else BOUNDARY_H
        for H in hidden:
            for dtype in DTYPES:
                params.append(pytest.param(name, H, dtype, marks=backend.marks, id=f"{name}-H{H}-{dtype_id(dtype)}"))
    return params


@pytest.mark.parametrize(("backend", "hidden", "dtype"), _boundary_params())
@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
def test_adaln_boundary_hidden_sizes(backend, hidden, dtype, per_token):
    check_backend(backend, dtype, batch=2, tokens=3, hidden=hidden, per_token=per_token, has_weight=True,
                  has_bias=True)
