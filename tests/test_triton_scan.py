"""The Triton selective scan: custom-op checks, determinism, chunking, torch.compile, lazy import.

Runs on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest when no CUDA
device is visible), or on a GPU. Shapes stay small: the interpreter runs every program in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from stmodels.ops import BackendNotSupportedError, bi_selective_scan, selective_scan
from stmodels.ops.selective_scan.checks import canonical_scan_args
from tests._backends import device_for
from tests.test_backends_scan import ScanCase, check_backend

pytestmark = pytest.mark.triton_interpret

DEVICE = device_for("triton")
CHUNK = 8


@pytest.fixture
def triton_scan(monkeypatch):
    """The backend module, with CHUNK scan steps per saved state."""
    from stmodels.ops.selective_scan import triton as module

    monkeypatch.setattr(module, "CHUNK_SIZE", CHUNK)
    return module


@pytest.fixture
def narrow_blocks(triton_scan, monkeypatch):
    """Two channels per program: a group of several channels spans several programs."""
    monkeypatch.setattr(triton_scan, "BLOCK_D", 2)
    return triton_scan


def scan_tensors(batch=2, dim=5, length=11, N=4, dtype=torch.float32, bi=False, groups=1, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(DEVICE)

    lead = (2,) if bi else ()
    return dict(
        u=randn(*lead, batch, dim, length).to(dtype),
        delta=randn(*lead, batch, dim, length, scale=0.5).to(dtype),
        A=-torch.rand(*lead, dim, N, generator=generator).to(DEVICE) - 0.1,
        B=randn(*lead, batch, groups, N, length),
        C=randn(batch, groups, N, length),  # shared by both directions in the bidirectional case
        D=randn(*lead, dim),
        z=randn(batch, dim, length).to(dtype),
        delta_bias=randn(dim, scale=0.3),
    )


def _op_inputs(args, chunk):
    return tuple(args.tensors().values()) + (args.delta_softplus, args.reverse, args.bidirectional, chunk)


OPCHECK_CASES = {
    "uni_reverse_initial_state": dict(bi=False, reverse=True, initial_state=True),
    "uni_minimal": dict(bi=False, drop=("D", "z", "delta_bias")),
    "bi_groups": dict(bi=True, groups=2),
    "bi_bfloat16": dict(bi=True, dtype=torch.bfloat16),
}


@pytest.mark.parametrize("name", list(OPCHECK_CASES))
def test_opcheck_triton_scan_ops(name):
    spec = OPCHECK_CASES[name]
    tensors = scan_tensors(batch=1, dim=4, length=6, N=3, bi=spec["bi"], groups=spec.get("groups", 1),
                           dtype=spec.get("dtype", torch.float32))
    for key in spec.get("drop", ()):
        tensors[key] = None
    if spec.get("initial_state"):
        tensors["initial_state"] = torch.randn(1, 4, 3).to(DEVICE)
    args = canonical_scan_args("opcheck", **tensors, delta_softplus=True, reverse=spec.get("reverse", False),
                               bidirectional=spec["bi"])
    import stmodels.ops.selective_scan.triton  # noqa: F401  (registers the ops)

    inputs = tuple(t.requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                   for t in _op_inputs(args, 4))  # chunks of 4: L = 6 spans 2
    torch.library.opcheck(torch.ops.stmodels_triton.scan_fwd.default, inputs)
    detached = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs)
    out, last, states = torch.ops.stmodels_triton.scan_fwd(*detached)
    tensor_args, flags = detached[:9], detached[9:]
    torch.library.opcheck(torch.ops.stmodels_triton.scan_bwd.default,
                          (torch.randn_like(out), torch.randn_like(last), *tensor_args, states, *flags))


def _out_and_grads(tensors, bi, seed=1):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items()}
    fn = bi_selective_scan if bi else selective_scan
    out = fn(**leaves, delta_softplus=True, backend="triton")
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return [out, *torch.autograd.grad(out, list(leaves.values()), grad_out)]


@pytest.mark.parametrize("bi", [False, True])
def test_runs_are_bitwise_identical(narrow_blocks, bi):
    # Groups of 4 channels in blocks of 2: each B/C gradient sums the partials of 2 programs.
    tensors = scan_tensors(batch=1, dim=8, length=13, N=3, bi=bi, groups=2)
    first = _out_and_grads(tensors, bi)
    second = _out_and_grads(tensors, bi)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", [
    ScanCase(batch=1, dim=5, length=3 * CHUNK + 5, N=4, reverse=True, has_initial_state=True),
    ScanCase(batch=1, dim=6, length=3 * CHUNK + 5, N=3, B_form="groups", C_form="constant", bidirectional=True,
             per_direction=frozenset({"A", "B", "delta"})),
], ids=["uni", "bi"])
def test_sequence_spanning_several_chunks(triton_scan, case):
    # Under the interpreter a program takes up to 64 channels: one block per group here.
    assert -(-case.length // CHUNK) == 4
    check_backend(case, torch.float32, "triton")


@pytest.mark.parametrize("case", [
    # 3 channels per group in blocks of 2: the second block of each group is half masked.
    ScanCase(batch=1, dim=6, length=CHUNK + 3, N=3, B_form="groups", C_form="groups", groups=2,
             has_initial_state=True),
    ScanCase(batch=1, dim=5, length=CHUNK + 3, N=5, B_form="constant", bidirectional=True,
             per_direction=frozenset({"A", "C", "D"})),
    ScanCase(batch=3, dim=8, length=5, N=3, B_form="groups", C_form="groups", groups=2, bidirectional=True,
             per_direction=frozenset({"u", "B"})),
], ids=["uni_groups", "bi_constant_B", "bi_groups"])
def test_groups_spanning_several_programs(narrow_blocks, case):
    check_backend(case, torch.float32, "triton")


def test_saves_only_chunk_boundary_states(triton_scan):
    batch, dim, length, N = 1, 5, 3 * CHUNK + 5, 4
    tensors = scan_tensors(batch=batch, dim=dim, length=length, N=N)
    tensors["initial_state"] = torch.randn(batch, dim, N).to(DEVICE)
    leaves = {k: v.requires_grad_(True) for k, v in tensors.items()}
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = selective_scan(**leaves, delta_softplus=True, backend="triton")
    n_chunks = -(-length // CHUNK)
    states = [t for t in saved if t.dim() == 5]
    assert [tuple(t.shape) for t in states] == [(1, batch, dim, n_chunks, N)]
    # Nothing saved holds a state per time step: the inputs are the largest saved tensors.
    assert max(t.numel() for t in saved) == batch * dim * length
    # Each saved state is the state after c * CHUNK steps, as the reference computes it.
    for c in range(n_chunks):
        if c == 0:
            expected = tensors["initial_state"]
        else:
            prefix = {k: (v[..., : c * CHUNK] if v.dim() == 3 and v.shape[-1] == length else v)
                      for k, v in tensors.items()}
            prefix["B"] = tensors["B"][..., : c * CHUNK]
            prefix["C"] = tensors["C"][..., : c * CHUNK]
            _, expected = selective_scan(**prefix, delta_softplus=True, return_last_state=True,
                                         backend="reference")
        torch.testing.assert_close(states[0][0, :, :, c], expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # the backward recomputes from exactly these states
    assert all(t.grad is not None for t in leaves.values())


def test_torch_compile_fullgraph_matches_eager(triton_scan):
    torch._dynamo.reset()
    tensors = scan_tensors(batch=1, dim=4, length=11, N=3, bi=True, groups=2)
    initial_state = torch.randn(1, 4, 3).to(DEVICE)

    def step(u, delta, A, B, C, D, z, delta_bias, h0):
        y = bi_selective_scan(u, delta, A, B, C, D, z, delta_bias, backend="triton")
        y2, last = selective_scan(u[0], delta[0], A[0], B[0], C, D[0], None, delta_bias, True, True, h0,
                                  return_last_state=True, backend="triton")
        return y.square().sum() + (y2 * z).sum() + last.sum()

    leaves = [t.requires_grad_(True) for t in (*tensors.values(), initial_state.requires_grad_(True))]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves)
    loss.backward()
    compiled_grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    eager_loss = step(*leaves)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss)
    for compiled_grad, t in zip(compiled_grads, leaves):
        torch.testing.assert_close(compiled_grad, t.grad)


def test_nan_propagates_like_the_reference():
    tensors = scan_tensors(batch=1, dim=3, length=10)
    tensors["u"][0, 1, 4] = float("nan")
    out = bi_selective_scan(**tensors, backend="triton")
    ref = bi_selective_scan(**tensors, backend="reference")
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()


def test_unsupported_state_size_lists_the_reason(triton_scan):
    tensors = scan_tensors(batch=1, dim=2, length=3, N=257)
    assert triton_scan.MAX_STATE_SIZE == 256  # the limit lives once, next to the launcher
    with pytest.raises(BackendNotSupportedError, match=r"state sizes N <= 256, got N=257"):
        selective_scan(**tensors, backend="triton")


def test_importing_stmodels_does_not_import_triton():
    code = ("import sys, stmodels, stmodels.ops, stmodels.ops.selective_scan; "
            "assert 'triton' not in sys.modules, 'triton imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TRITON_INTERPRET": "1"})
