"""Layer 3: torch.library.opcheck on every registered op, torch.compile, and kernel properties
(bi == two calls with flips, thread-count independence, non-contiguous inputs, NaN propagation)."""

from __future__ import annotations

import pytest
import torch

from stmodels.ops import adaln_modulate, bi_selective_scan, selective_scan
from stmodels.ops.adaln.checks import canonical_adaln_args
from stmodels.ops.selective_scan.checks import canonical_scan_args
from tests._backends import backend_params, device_for

BACKENDS = backend_params("cpu", "cuda", "triton")


def _to(device, tensors: dict) -> dict:
    return {k: v.to(device) for k, v in tensors.items()}

pytestmark = pytest.mark.needs_ext


def scan_tensors(batch=2, dim=6, length=11, N=4, dtype=torch.float32, bi=False, groups=1):
    lead = (2,) if bi else ()
    return dict(
        u=torch.randn(*lead, batch, dim, length, dtype=dtype),
        delta=(torch.randn(*lead, batch, dim, length) * 0.5).to(dtype),
        A=-torch.rand(*lead, dim, N) - 0.1,
        B=torch.randn(*lead, batch, groups, N, length),
        C=torch.randn(*lead, batch, groups, N, length),
        D=torch.randn(*lead, dim),
        z=torch.randn(batch, dim, length, dtype=dtype),
        delta_bias=torch.randn(*lead, dim) * 0.3,
    )


def _opcheck_args(args):
    return tuple(args.tensors().values()) + (args.delta_softplus, args.reverse, args.bidirectional)


SCAN_OPCHECK_CASES = {
    "uni": dict(bi=False, extra=dict(initial_state=torch.randn(2, 6, 4)), reverse=True),
    "uni_minimal": dict(bi=False, drop=("D", "z", "delta_bias")),
    "bi": dict(bi=True),
    "bi_half": dict(bi=True, dtype=torch.bfloat16),
}


@pytest.mark.parametrize("name", list(SCAN_OPCHECK_CASES))
def test_opcheck_selective_scan(name):
    spec = SCAN_OPCHECK_CASES[name]
    tensors = scan_tensors(bi=spec["bi"], dtype=spec.get("dtype", torch.float32))
    for key in spec.get("drop", ()):
        tensors[key] = None
    tensors.update(spec.get("extra", {}))
    args = canonical_scan_args("opcheck", **tensors, delta_softplus=True, reverse=spec.get("reverse", False),
                               bidirectional=spec["bi"])
    inputs = [t.requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for t in _opcheck_args(args)]
    torch.library.opcheck(torch.ops.stmodels.selective_scan_fwd.default, tuple(inputs))
    out, last = torch.ops.stmodels.selective_scan_fwd(*[t.detach() if isinstance(t, torch.Tensor) else t for t in inputs])
    bwd_inputs = (torch.randn_like(out), torch.randn_like(last)) + tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs)
    torch.library.opcheck(torch.ops.stmodels.selective_scan_bwd.default, bwd_inputs)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_opcheck_adaln(per_token, affine):
    shape = (2, 5, 16) if per_token else (2, 16)
    args = canonical_adaln_args(torch.randn(2, 5, 16), torch.randn(*shape), torch.randn(*shape),
                                torch.randn(16) if affine else None, torch.randn(16) if affine else None)
    inputs = tuple(None if t is None else t.requires_grad_(True) for t in args.tensors().values()) + (args.eps,)
    torch.library.opcheck(torch.ops.stmodels.adaln_fwd.default, inputs)
    out, mean, rstd = torch.ops.stmodels.adaln_fwd(*[t.detach() if isinstance(t, torch.Tensor) else t for t in inputs])
    detached = [None if t is None else t.detach() for t in args.tensors().values()]
    x, _, scale, weight, bias = detached
    torch.library.opcheck(torch.ops.stmodels.adaln_bwd.default,
                          (torch.randn_like(out), x, scale, weight, bias, mean, rstd, per_token))


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda"))
def test_torch_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    device = device_for(backend)

    def step(u, delta, A, B, C, D, z, delta_bias, x, shift, scale):
        y = bi_selective_scan(u, delta, A, B, C, D, z, delta_bias, backend=backend)
        y2 = selective_scan(u[0], delta[0], A[0], B[0], C[0], D[0], z, delta_bias[0], True, backend=backend)
        h = adaln_modulate(x, shift, scale, backend=backend)
        return y.sum() + y2.square().sum() + h.square().sum()

    tensors = _to(device, scan_tensors(bi=True))
    leaves = {k: v.requires_grad_(True) for k, v in tensors.items()}
    x = torch.randn(2, 5, 16, device=device, requires_grad=True)
    shift = torch.randn(2, 16, device=device, requires_grad=True)
    scale = torch.randn(2, 16, device=device, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves.values(), x, shift, scale)
    loss.backward()
    eager_grads = [t.grad.clone() for t in (*leaves.values(), x, shift, scale)]
    for t in (*leaves.values(), x, shift, scale):
        t.grad = None
    step(*leaves.values(), x, shift, scale).backward()
    for eager, compiled_grad in zip((t.grad for t in (*leaves.values(), x, shift, scale)), eager_grads):
        torch.testing.assert_close(compiled_grad, eager)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bi_equals_two_calls_with_flips(backend):
    t = _to(device_for(backend), scan_tensors(bi=True, groups=2, batch=3))
    out = bi_selective_scan(**t, backend=backend)
    y_fwd = selective_scan(t["u"][0], t["delta"][0], t["A"][0], t["B"][0], t["C"][0], t["D"][0], None,
                           t["delta_bias"][0], True, backend=backend)
    flip = lambda x: x.flip(-1)  # noqa: E731
    y_bwd = flip(selective_scan(flip(t["u"][1]), flip(t["delta"][1]), t["A"][1], flip(t["B"][1]), flip(t["C"][1]),
                                t["D"][1], None, t["delta_bias"][1], True, backend=backend))
    torch.testing.assert_close(out, (y_fwd + y_bwd) * torch.nn.functional.silu(t["z"]), rtol=1e-5, atol=1e-5)


def _scan_grads(tensors, bi, backend="cpu"):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items()}
    fn = bi_selective_scan if bi else selective_scan
    out = fn(**leaves, delta_softplus=True, backend=backend)
    grads = torch.autograd.grad(out, list(leaves.values()), torch.ones_like(out))
    return [out, *grads]


@pytest.mark.parametrize("bi", [False, True])
def test_scan_results_do_not_depend_on_thread_count(bi):
    tensors = scan_tensors(batch=3, dim=37, length=70, bi=bi)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _scan_grads(tensors, bi)
        torch.set_num_threads(max(2, threads))
        many = _scan_grads(tensors, bi)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_calls_are_bitwise_identical(backend, bi):
    """Every backend is deterministic: the same call twice gives the same bits, outputs and gradients."""
    device = device_for(backend)
    tensors = _to(device, scan_tensors(batch=2, dim=9, length=21, bi=bi, groups=3))
    for a, b in zip(_scan_grads(tensors, bi, backend), _scan_grads(tensors, bi, backend)):
        assert torch.equal(a, b)
    x, shift, scale = (torch.randn(*s, device=device) for s in ((3, 70, 40), (3, 40), (3, 40)))
    weight, bias = torch.randn(40, device=device), torch.randn(40, device=device)

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, shift, scale, weight, bias)]
        out = adaln_modulate(*leaves, backend=backend)
        return [out, *torch.autograd.grad(out, leaves, torch.ones_like(out))]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


def test_adaln_results_do_not_depend_on_thread_count():
    x, shift, scale = torch.randn(4, 300, 40), torch.randn(4, 40), torch.randn(4, 40)
    weight, bias = torch.randn(40), torch.randn(40)
    threads = torch.get_num_threads()

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, shift, scale, weight, bias)]
        out = adaln_modulate(*leaves, backend="cpu")
        return [out, *torch.autograd.grad(out, leaves, torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))]

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, threads))
        many = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_equal_contiguous(backend):
    device = device_for(backend)
    t = _to(device, scan_tensors(batch=2, dim=5, length=9))
    strided = {k: (v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() >= 2 else v) for k, v in t.items()}
    assert not strided["u"].is_contiguous()
    torch.testing.assert_close(selective_scan(**strided, backend=backend), selective_scan(**t, backend=backend))
    x = torch.randn(2, 16, 6, device=device).transpose(1, 2)
    shift, scale = torch.randn(16, 2, device=device).t(), torch.randn(16, 2, device=device).t()
    torch.testing.assert_close(adaln_modulate(x, shift, scale, backend=backend),
                               adaln_modulate(x.contiguous(), shift.contiguous(), scale.contiguous(), backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_like_the_reference(backend):
    device = device_for(backend)
    t = scan_tensors(batch=1, dim=3, length=8)
    t["u"][0, 1, 4] = float("nan")
    t = _to(device, t)
    out = selective_scan(**t, delta_softplus=True, backend=backend)
    ref = selective_scan(**t, delta_softplus=True, backend="reference")
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()
    x = torch.randn(2, 3, 8)
    x[1, 2, 5] = float("inf")
    x = x.to(device)
    shift, scale = torch.randn(2, 8, device=device), torch.randn(2, 8, device=device)
    out = adaln_modulate(x, shift, scale, backend=backend)
    ref = adaln_modulate(x, shift, scale, backend="reference")
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[1, 2]).all()
