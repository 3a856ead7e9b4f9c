"""Layer 2: every selective-scan backend against the reference, outputs and every gradient."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels.ops import selective_scan
from stmodels.ops._backend import select_kernel
from stmodels.ops.selective_scan.checks import canonical_scan_args
from tests._backends import DTYPES, LOW_PRECISION, backend_params, device_for, dtype_id
from tests._tolerances import assert_matches

OP = "selective_scan"
BACKENDS = backend_params("cpu", "triton", "cuda")

# Triton's interpreter runs every program serially in Python, about 20 ms per scan step and program
# (forward + backward), so on the CPU the triton backend gets fewer, shorter hypothesis cases and a
# shorter "long" sequence (still many chunks); compiled Triton on a GPU keeps the full sizes.
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
ALL_LENGTHS = (1, 2, 3, 7, 16, 31, 64, 100)
INTERPRETED_LENGTHS = (1, 2, 3, 7, 16, 17)


@dataclass(frozen=True)
class ScanCase:
    batch: int = 2
    dim: int = 6
    length: int = 9
    N: int = 3
    B_form: str = "variable"  # variable | groups | constant
    C_form: str = "variable"
    groups: int = 2
    bc_float32: bool = False  # B, C in float32 while u is low precision
    has_D: bool = True
    has_z: bool = True
    has_delta_bias: bool = True
    softplus: bool = True
    reverse: bool = False
    has_initial_state: bool = False
    bidirectional: bool = False
    per_direction: frozenset = frozenset()  # names with a leading direction axis (bidirectional)


def _make(case: ScanCase, dtype: torch.dtype, device, generator: torch.Generator):
    """Inputs of ``case`` as float32 tensors (rounded through ``dtype`` where that dtype applies)."""

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=generator) * scale + shift

    def lowp(t):
        return t.to(dtype).float()

    def maybe_dir(name, make):
        if case.bidirectional and name in case.per_direction:
            return torch.stack([make(), make()])
        return make()

    b, d, L, N = case.batch, case.dim, case.length, case.N

    def bc(form):
        if form == "constant":
            return randn(d, N)
        if form == "groups":
            return randn(b, case.groups, N, L)
        return randn(b, N, L)

    bc_round = (lambda t: t) if case.bc_float32 else lowp
    inputs = {
        "u": maybe_dir("u", lambda: lowp(randn(b, d, L))),
        # softplus makes any delta positive; without it, feed positive step sizes as Mamba does.
        "delta": maybe_dir("delta", lambda: lowp(
            randn(b, d, L, scale=0.5, shift=-0.5) if case.softplus
            else torch.rand(b, d, L, generator=generator) * 0.5 + 0.05)),
        "A": maybe_dir("A", lambda: -torch.rand(d, N, generator=generator) - 0.2),
        "B": maybe_dir("B", lambda: bc_round(bc(case.B_form))),
        "C": maybe_dir("C", lambda: bc_round(bc(case.C_form))),
        "D": maybe_dir("D", lambda: randn(d)) if case.has_D else None,
        "z": lowp(randn(b, d, L)) if case.has_z else None,
        "delta_bias": maybe_dir("delta_bias", lambda: randn(d, scale=0.3)) if case.has_delta_bias else None,
        "initial_state": randn(b, d, N) if case.has_initial_state else None,
    }
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}


def _cast(inputs, case: ScanCase, dtype):
    """Low-precision copies of the activations (u, delta, z; B and C unless bc_float32)."""
    names = {"u", "delta", "z"} | (set() if case.bc_float32 else {"B", "C"})
    return {k: (v.to(dtype) if (v is not None and k in names) else v) for k, v in inputs.items()}


def _run(case: ScanCase, inputs, backend, grad_out, grad_last):
    """Output, last_state and the gradients of ``<out, grad_out> + <last_state, grad_last>``.

    ``last_state`` is differentiable on every backend, so its gradient is part of every comparison.
    ``bi_selective_scan`` does not return its per-direction states; they are reached through the
    selected backend kernel on the same canonical arguments (the front door is a thin call of it).
    """
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    args = {k: leaves.get(k) for k in inputs}
    if case.bidirectional:
        args.pop("initial_state")
        scan_args = canonical_scan_args("bi_selective_scan", **args, initial_state=None,
                                        delta_softplus=case.softplus, reverse=False, bidirectional=True)
        _, kernel = select_kernel(OP, backend, scan_args, scan_args.tensors(), "u")
        out, last = kernel(scan_args)
    else:
        out, last = selective_scan(**args, delta_softplus=case.softplus, reverse=case.reverse,
                                   return_last_state=True, backend=backend)
    grads = torch.autograd.grad((out, last), list(leaves.values()),
                                (grad_out.to(out.dtype), grad_last.to(last.dtype)))
    return out, last, dict(zip(leaves, grads))


def check_backend(case: ScanCase, dtype: torch.dtype, backend: str, seed: int = 0):
    """Backend vs the float64 reference (and the reference in ``dtype``), by the tolerance rule."""
    device = device_for(backend)
    generator = torch.Generator().manual_seed(seed)
    inputs32 = _make(case, dtype, device, generator)
    grad_out = torch.randn(case.batch, case.dim, case.length, generator=generator).to(dtype).to(device)
    state_shape = ((2,) if case.bidirectional else ()) + (case.batch, case.dim, case.N)
    grad_last = torch.randn(state_shape, generator=generator).to(device)
    inputs = _cast(inputs32, case, dtype) if dtype in LOW_PRECISION else inputs32
    inputs64 = {k: None if v is None else v.double() for k, v in inputs.items()}
    expected = _run(case, inputs64, "reference", grad_out.double(), grad_last.double())
    in_dtype = _run(case, inputs, "reference", grad_out, grad_last)
    actual = _run(case, inputs, backend, grad_out, grad_last)
    assert actual[0].dtype == dtype and actual[0].shape == expected[0].shape
    assert_matches(OP, dtype, "fwd", "out", actual[0], expected[0], in_dtype[0])
    assert actual[1].dtype == torch.float32 and actual[1].shape == expected[1].shape
    assert_matches(OP, dtype, "fwd", "last_state", actual[1], expected[1], in_dtype[1])
    for name, grad in actual[2].items():
        assert grad.shape == inputs[name].shape and grad.dtype == inputs[name].dtype, name
        assert_matches(OP, dtype, "bwd", f"d{name}", grad, expected[2][name], in_dtype[2][name])


UNI_CASES = {
    "all_flags": ScanCase(),
    "minimal": ScanCase(has_D=False, has_z=False, has_delta_bias=False, softplus=False),
    "reverse": ScanCase(reverse=True),
    "initial_state": ScanCase(has_initial_state=True),
    "initial_state_reverse": ScanCase(has_initial_state=True, reverse=True, has_z=False),
    "groups": ScanCase(B_form="groups", C_form="groups", groups=3),
    "constant_B": ScanCase(B_form="constant"),
    "constant_C": ScanCase(C_form="constant"),
    "constant_BC_no_z": ScanCase(B_form="constant", C_form="constant", has_z=False),
    "bc_float32": ScanCase(bc_float32=True),
    "no_softplus": ScanCase(softplus=False),
    "L1": ScanCase(length=1, has_initial_state=True),
    "odd_sizes": ScanCase(batch=1, dim=7, length=13, N=5),
}

BI_CASES = {
    "per_direction_all": ScanCase(bidirectional=True, per_direction=frozenset({"u", "delta", "A", "B", "C", "D", "delta_bias"})),
    "shared_all": ScanCase(bidirectional=True),
    "mixed": ScanCase(bidirectional=True, batch=3, per_direction=frozenset({"A", "C", "delta_bias"}), B_form="groups", C_form="groups"),
    "per_direction_constant_B": ScanCase(bidirectional=True, B_form="constant", per_direction=frozenset({"B", "u"})),
    "minimal": ScanCase(bidirectional=True, has_D=False, has_z=False, has_delta_bias=False, softplus=False,
                        per_direction=frozenset({"A"})),
    "L1_odd": ScanCase(bidirectional=True, batch=3, dim=5, length=1, N=7, per_direction=frozenset({"delta", "B"})),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(UNI_CASES), ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_scan_matches_reference(backend, case, dtype):
    check_backend(UNI_CASES[case], dtype, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", list(BI_CASES), ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bi_selective_scan_matches_reference(backend, case, dtype):
    check_backend(BI_CASES[case], dtype, backend)


@st.composite
def scan_cases(draw, bidirectional: bool, lengths=ALL_LENGTHS, max_dim: int = 12):
    dim = draw(st.integers(1, max_dim))
    divisors = [g for g in range(1, dim + 1) if dim % g == 0]
    names = ["u", "delta", "A", "B", "C", "D", "delta_bias"]
    B_form = draw(st.sampled_from(["variable", "groups", "constant"]))
    C_form = draw(st.sampled_from(["variable", "groups", "constant"]))
    if {B_form, C_form} == {"variable", "groups"}:
        C_form = B_form  # variable B and C share one group count
    return ScanCase(
        batch=draw(st.integers(1, 3)),
        dim=dim,
        length=draw(st.sampled_from(lengths)),
        N=draw(st.integers(1, 20)),
        B_form=B_form,
        C_form=C_form,
        groups=draw(st.sampled_from(divisors)),
        has_D=draw(st.booleans()),
        has_z=draw(st.booleans()),
        has_delta_bias=draw(st.booleans()),
        softplus=draw(st.booleans()),
        reverse=False if bidirectional else draw(st.booleans()),
        has_initial_state=False if bidirectional else draw(st.booleans()),
        bidirectional=bidirectional,
        per_direction=frozenset(n for n in names if bidirectional and draw(st.booleans())),
    )


def _avoid_ambiguity(case: ScanCase) -> ScanCase:
    # With batch 2, a shared B/C of 2 groups has the shape of a per-direction one, and the
    # bidirectional op reads it per direction (see checks.py); keep the generated case unambiguous.
    if case.bidirectional and case.batch == 2 and case.groups == 2:
        return replace(case, batch=3)
    return case


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda"))
@settings(max_examples=30)
@given(case=scan_cases(bidirectional=False), seed=st.integers(0, 2**16))
def test_selective_scan_hypothesis(backend, case, seed):
    check_backend(case, torch.float32, backend, seed)


@pytest.mark.parametrize("backend", backend_params("cpu", "cuda"))
@settings(max_examples=30)
@given(case=scan_cases(bidirectional=True), seed=st.integers(0, 2**16))
def test_bi_selective_scan_hypothesis(backend, case, seed):
    check_backend(_avoid_ambiguity(case), torch.float32, backend, seed)


_TRITON_CASES = dict(lengths=INTERPRETED_LENGTHS, max_dim=6) if TRITON_INTERPRETED else {}


@pytest.mark.parametrize("backend", backend_params("triton"))
@settings(max_examples=4 if TRITON_INTERPRETED else 30)
@given(case=scan_cases(bidirectional=False, **_TRITON_CASES), seed=st.integers(0, 2**16))
def test_selective_scan_hypothesis_triton(backend, case, seed):
    check_backend(case, torch.float32, backend, seed)


@pytest.mark.parametrize("backend", backend_params("triton"))
@settings(max_examples=4 if TRITON_INTERPRETED else 30)
@given(case=scan_cases(bidirectional=True, **_TRITON_CASES), seed=st.integers(0, 2**16))
def test_bi_selective_scan_hypothesis_triton(backend, case, seed):
    check_backend(_avoid_ambiguity(case), torch.float32, backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_long_sequence(backend, bidirectional):
    length = 133 if backend == "triton" and TRITON_INTERPRETED else 4096
    case = ScanCase(batch=1, dim=3, length=length, N=4, bidirectional=bidirectional,
                    has_initial_state=not bidirectional, per_direction=frozenset({"A", "B"}))
    check_backend(case, torch.float32, backend)


# Boundary cases of the kernels' blocking: CUDA chunks of 256/1024 steps (partial last chunks, one
# step past), sequences beyond the 8192-step checkpoint range, N across warp/lane multiples up to
# the CUDA limit of 64, and Triton's larger N. The CPU kernel is fast enough for the short ones;
# interpreted Triton gets tiny ones; the long ones are selected for the GPU backends only.
BOUNDARY_L = (1, 255, 256, 257, 1023, 1025, 3000, 9000)
BOUNDARY_N = (1, 16, 33, 64)


def _boundary_params():
    params = []
    for backend in BACKENDS:
        name = backend.values[0]
        if name == "cuda":
            grid = [(L, N) for L in BOUNDARY_L for N in BOUNDARY_N]
        elif name == "triton" and TRITON_INTERPRETED:
            grid = [(1, 1), (17, 33), (9, 64)]
        elif name == "triton":
            grid = [(L, N) for L in BOUNDARY_L for N in BOUNDARY_N + (100, 256)]
        else:  # cpu
            grid = [(1, 1), (255, 33), (257, 1), (1025, 33), (256, 64)]
        params += [pytest.param(name, L, N, marks=backend.marks, id=f"{name}-L{L}-N{N}") for L, N in grid]
    return params


@pytest.mark.parametrize(("backend", "length", "N"), _boundary_params())
def test_scan_boundary_shapes(backend, length, N):
    # dim 5: not a multiple of any channel block; z and per-direction A/B exercise every path.
    check_backend(ScanCase(batch=1, dim=5, length=length, N=N, has_initial_state=True), torch.float32, backend)
    check_backend(ScanCase(batch=1, dim=5, length=length, N=N, bidirectional=True,
                           per_direction=frozenset({"A", "B"})), torch.float32, backend)
