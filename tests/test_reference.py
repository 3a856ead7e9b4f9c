"""Layer 1: each reference against a naive float64 loop, and gradcheck in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmodels.ops import adaln_modulate_ref, bi_selective_scan_ref, selective_scan_ref
from tests._naive import naive_adaln, naive_scan

f64 = torch.float64


def _scan_inputs(batch=2, dim=4, length=6, N=3, groups=None, constant_B=False, constant_C=False):
    u = torch.randn(batch, dim, length, dtype=f64)
    delta = torch.randn(batch, dim, length, dtype=f64) * 0.5
    A = -torch.rand(dim, N, dtype=f64) - 0.1
    shape = (dim, N) if constant_B else ((batch, N, length) if groups is None else (batch, groups, N, length))
    B = torch.randn(*shape, dtype=f64)
    shape = (dim, N) if constant_C else ((batch, N, length) if groups is None else (batch, groups, N, length))
    C = torch.randn(*shape, dtype=f64)
    D = torch.randn(dim, dtype=f64)
    z = torch.randn(batch, dim, length, dtype=f64)
    delta_bias = torch.randn(dim, dtype=f64) * 0.3
    h0 = torch.randn(batch, dim, N, dtype=f64)
    return u, delta, A, B, C, D, z, delta_bias, h0


def _grouped(t):
    return t.numpy() if t.dim() != 3 else t.unsqueeze(1).numpy()


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("form", ["plain", "groups", "constant_B", "constant_C"])
@pytest.mark.parametrize("optional", ["all", "none"])
def test_selective_scan_ref_matches_naive_loop(reverse, softplus, form, optional):
    u, delta, A, B, C, D, z, delta_bias, h0 = _scan_inputs(
        groups=2 if form == "groups" else None, constant_B=form == "constant_B", constant_C=form == "constant_C"
    )
    if optional == "none":
        D = z = delta_bias = h0 = None
    out, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, softplus, reverse, h0, return_last_state=True)
    np_ = (lambda t: None if t is None else t.numpy())
    expected, expected_last = naive_scan(
        u.numpy(), delta.numpy(), A.numpy(), _grouped(B), _grouped(C), np_(D), np_(z), np_(delta_bias),
        softplus, reverse, np_(h0),
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(last.numpy(), expected_last, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_direction", [True, False])
def test_bi_selective_scan_ref_matches_naive_loops(per_direction):
    inputs0 = _scan_inputs(batch=3, groups=2)
    inputs1 = _scan_inputs(batch=3, groups=2) if per_direction else inputs0
    u0, d0, A0, B0, C0, D0, z, db0, _ = inputs0
    u1, d1, A1, B1, C1, D1, _, db1, _ = inputs1
    if per_direction:
        stack = torch.stack
        out = bi_selective_scan_ref(stack([u0, u1]), stack([d0, d1]), stack([A0, A1]), stack([B0, B1]),
                                    stack([C0, C1]), stack([D0, D1]), z, stack([db0, db1]))
    else:
        out = bi_selective_scan_ref(u0, d0, A0, B0, C0, D0, z, db0)
    y0, _ = naive_scan(u0.numpy(), d0.numpy(), A0.numpy(), B0.numpy(), C0.numpy(), D0.numpy(), None,
                       db0.numpy(), True, False)
    y1, _ = naive_scan(u1.numpy(), d1.numpy(), A1.numpy(), B1.numpy(), C1.numpy(), D1.numpy(), None,
                       db1.numpy(), True, True)
    zz = z.numpy()
    expected = (y0 + y1) * zz / (1 + np.exp(-zz))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_adaln_ref_matches_naive_loop(per_token, affine):
    x = torch.randn(2, 5, 7, dtype=f64) * 3 + 1
    shape = (2, 5, 7) if per_token else (2, 7)
    shift, scale = torch.randn(*shape, dtype=f64), torch.randn(*shape, dtype=f64)
    weight = torch.randn(7, dtype=f64) if affine else None
    bias = torch.randn(7, dtype=f64) if affine else None
    out = adaln_modulate_ref(x, shift, scale, weight, bias, eps=1e-5)
    np_ = (lambda t: None if t is None else t.numpy())
    expected = naive_adaln(x.numpy(), shift.numpy(), scale.numpy(), np_(weight), np_(bias), eps=1e-5)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


def _requires_grad(tensors):
    return tuple(None if t is None else t.clone().requires_grad_(True) for t in tensors)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("form", ["groups", "constant"])
def test_selective_scan_ref_gradcheck(reverse, form):
    u, delta, A, B, C, D, z, delta_bias, h0 = _requires_grad(
        _scan_inputs(batch=1, dim=2, length=4, N=2, groups=2 if form == "groups" else None,
                     constant_B=form == "constant", constant_C=form == "constant")
    )

    def fn(u, delta, A, B, C, D, z, delta_bias, h0):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True, reverse, h0)

    assert torch.autograd.gradcheck(fn, (u, delta, A, B, C, D, z, delta_bias, h0))


def test_bi_selective_scan_ref_gradcheck():
    stack = torch.stack
    a, b = _scan_inputs(batch=1, dim=2, length=4, N=2), _scan_inputs(batch=1, dim=2, length=4, N=2)
    u, delta, A = _requires_grad((stack([a[0], b[0]]), a[1], stack([a[2], b[2]])))
    B, C, D, z, delta_bias = _requires_grad((a[3], stack([a[4], b[4]]), a[5], a[6], stack([a[7], b[7]])))

    def fn(u, delta, A, B, C, D, z, delta_bias):
        return bi_selective_scan_ref(u, delta, A, B, C, D, z, delta_bias)

    assert torch.autograd.gradcheck(fn, (u, delta, A, B, C, D, z, delta_bias))


@pytest.mark.parametrize("per_token", [False, True])
def test_adaln_ref_gradcheck(per_token):
    shape = (2, 3, 5) if per_token else (2, 5)
    x, shift, scale, weight, bias = _requires_grad((
        torch.randn(2, 3, 5, dtype=f64), torch.randn(*shape, dtype=f64), torch.randn(*shape, dtype=f64),
        torch.randn(5, dtype=f64), torch.randn(5, dtype=f64),
    ))
    assert torch.autograd.gradcheck(adaln_modulate_ref, (x, shift, scale, weight, bias))


def test_bi_equals_two_calls_with_flips_reference():
    a, b = _scan_inputs(groups=2), _scan_inputs(groups=2)
    stack = torch.stack
    out = bi_selective_scan_ref(stack([a[0], b[0]]), stack([a[1], b[1]]), stack([a[2], b[2]]), stack([a[3], b[3]]),
                                stack([a[4], b[4]]), stack([a[5], b[5]]), a[6], stack([a[7], b[7]]))
    y_fwd = selective_scan_ref(a[0], a[1], a[2], a[3], a[4], a[5], None, a[7], True)
    flip = lambda t: t.flip(-1)  # noqa: E731
    y_bwd = flip(selective_scan_ref(flip(b[0]), flip(b[1]), b[2], flip(b[3]), flip(b[4]), b[5], None, b[7], True))
    expected = (y_fwd + y_bwd) * torch.nn.functional.silu(a[6])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_bi_reads_overlapping_shape_per_direction():
    # With batch 2, B of shape (2, 2, N, L) fits both "per direction" and "shared, 2 groups";
    # the documented rule reads it per direction, the same as the explicit 5-D form.
    u, delta, A, _, C, D, z, delta_bias, _ = _scan_inputs(batch=2, dim=4)
    B = torch.randn(2, 2, 3, 6, dtype=f64)
    explicit = bi_selective_scan_ref(u, delta, A, B.unsqueeze(2), C, D, z, delta_bias)
    torch.testing.assert_close(bi_selective_scan_ref(u, delta, A, B, C, D, z, delta_bias), explicit)
