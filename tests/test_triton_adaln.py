"""The ``triton`` backend of ``adaln_modulate``: its custom ops (opcheck), its tilings, determinism,
torch.compile, and the kernel properties the CPU backend is held to in ``test_compiled_ops.py``.

Without a CUDA device these run through Triton's interpreter (``TRITON_INTERPRET=1``, set by
``conftest.py``) on CPU tensors at small shapes; on a GPU machine they run the compiled kernels.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stmodels.ops import BackendNotSupportedError, adaln_modulate
from stmodels.ops.adaln.checks import canonical_adaln_args
from tests._backends import device_for
from tests.test_backends_adaln import check_backend

pytestmark = pytest.mark.triton_interpret


def _triton_module():
    import stmodels.ops.adaln.triton as module

    return module


@contextlib.contextmanager
def tiling(fwd_tile: int, bwd_tile: int, bwd_programs: int):
    """Shrink the tiles (elements per [BLOCK_R, BLOCK_H] tile) and raise the backward's program target,
    so small shapes take the paths big shapes take on a GPU: several row tiles per program, several
    programs (chunks) per sample, a partial last tile."""
    with mock.patch.multiple(_triton_module(), _FWD_TILE=fwd_tile, _BWD_TILE=bwd_tile, _BWD_PROGRAMS=bwd_programs):
        yield


def _inputs(batch=2, tokens=5, hidden=13, per_token=False, affine=True, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mod_shape = (batch, tokens, hidden) if per_token else (batch, hidden)
    device = device_for("triton")

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    return dict(
        x=randn(batch, tokens, hidden, dtype=dtype) * 2 + 0.5,
        shift=randn(*mod_shape, dtype=dtype),
        scale=randn(*mod_shape, dtype=dtype) * 0.5,
        weight=randn(hidden) * 0.3 + 1 if affine else None,
        bias=randn(hidden) * 0.3 if affine else None,
    )


def _forward_backward(inputs, backend="triton", seed=1):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    out = adaln_modulate(**{k: leaves.get(k) for k in inputs}, backend=backend)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return [out, *torch.autograd.grad(out, list(leaves.values()), grad)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
def test_opcheck_triton_adaln(affine, per_token, dtype):
    module = _triton_module()
    args = canonical_adaln_args(**_inputs(tokens=3, hidden=7, per_token=per_token, affine=affine, dtype=dtype))
    inputs = tuple(None if t is None else t.requires_grad_(True) for t in args.tensors().values()) + (args.eps,)
    torch.library.opcheck(torch.ops.stmodels_triton.adaln_fwd.default, inputs)
    detached = [None if t is None else t.detach() for t in args.tensors().values()]
    out, mean, rstd = module.adaln_fwd(*detached, args.eps)
    x, _, scale, weight, bias = detached
    torch.library.opcheck(torch.ops.stmodels_triton.adaln_bwd.default,
                          (torch.randn_like(out), x, scale, weight, bias, mean, rstd))


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("tiles", ["default", "small"])
def test_repeated_runs_are_bitwise_equal(per_token, tiles):
    inputs = _inputs(batch=3, tokens=11, hidden=13, per_token=per_token)
    with tiling(16, 16, 64) if tiles == "small" else contextlib.nullcontext():
        if tiles == "small":  # the backward really splits each sample into several programs
            assert _triton_module()._bwd_tiling(3, 11, 16)[2] > 1
        first, second = _forward_backward(inputs), _forward_backward(inputs)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@settings(max_examples=10)
@given(batch=st.integers(1, 3), tokens=st.integers(1, 9), hidden=st.sampled_from([1, 3, 5, 7, 13, 31, 40]),
       per_token=st.booleans(), has_weight=st.booleans(), has_bias=st.booleans(),
       fwd_tile=st.sampled_from([1, 16, 64, 16384]), bwd_tile=st.sampled_from([1, 16, 64, 16384]),
       bwd_programs=st.sampled_from([1, 4, 64]), seed=st.integers(0, 2**16))
def test_any_tiling_matches_reference(batch, tokens, hidden, per_token, has_weight, has_bias, fwd_tile, bwd_tile,
                                      bwd_programs, seed):
    with tiling(fwd_tile, bwd_tile, bwd_programs):
        check_backend("triton", torch.float32, batch, tokens, hidden, per_token, has_weight, has_bias, seed=seed)


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
def test_torch_compile_fullgraph_matches_eager(per_token):
    torch._dynamo.reset()

    def step(x, shift, scale, weight, bias):
        return adaln_modulate(x, shift, scale, weight, bias, backend="triton").square().sum()

    leaves = [t.requires_grad_(True) for t in _inputs(per_token=per_token).values()]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*leaves)
    compiled_grads = torch.autograd.grad(loss, leaves)
    eager_loss = step(*leaves)
    eager_grads = torch.autograd.grad(eager_loss, leaves)
    torch.testing.assert_close(loss, eager_loss)
    for compiled_grad, eager in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager)


def test_non_contiguous_inputs_equal_contiguous():
    device = device_for("triton")
    x = torch.randn(2, 16, 6, device=device).transpose(1, 2)
    shift, scale = torch.randn(16, 2, device=device).t(), torch.randn(16, 2, device=device).t()
    assert not x.is_contiguous() and not shift.is_contiguous()
    torch.testing.assert_close(adaln_modulate(x, shift, scale, backend="triton"),
                               adaln_modulate(x.contiguous(), shift.contiguous(), scale.contiguous(), backend="triton"))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_nan_propagates_like_the_reference():
    device = device_for("triton")
    x = torch.randn(2, 3, 8, device=device)
    x[1, 2, 5] = float("inf")
    shift, scale = torch.randn(2, 8, device=device), torch.randn(2, 8, device=device)
    out = adaln_modulate(x, shift, scale, backend="triton")
    ref = adaln_modulate(x, shift, scale, backend="reference")
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[1, 2]).all()
    assert not torch.isnan(out[0]).any()


def test_hidden_limit_is_a_reason_not_a_crash():
    device = device_for("triton")
    limit = _triton_module().MAX_HIDDEN
    with pytest.raises(BackendNotSupportedError, match=f"H <= {limit}, got H = {limit + 1}"):
        adaln_modulate(torch.randn(1, 1, limit + 1, device=device), torch.randn(1, limit + 1, device=device),
                       torch.randn(1, limit + 1, device=device), backend="triton")


def test_empty_batch():
    inputs = _inputs(batch=0, tokens=3, hidden=5)
    out, *grads = _forward_backward(inputs)
    assert out.shape == (0, 3, 5)
    assert torch.equal(grads[3], torch.zeros(5, device=out.device))  # dweight: a sum over no rows


def test_importing_the_ops_does_not_import_the_triton_kernels():
    # The launcher states its limit and registers its custom ops at import; the kernels module (and
    # triton itself, ~1 s) load on the first launch.
    code = ("import sys, stmodels.ops; assert 'stmodels.ops.adaln.triton' in sys.modules; "
            "assert 'stmodels.ops.adaln.triton_kernels' not in sys.modules and 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
