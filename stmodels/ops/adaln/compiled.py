"""The ``cpu`` and ``cuda`` backends of ``adaln_modulate``: ``torch.ops.stmodels.adaln_fwd/_bwd``.

The kernels are registered by ``csrc/adaln/`` (``adaln_cpu.cpp``, ``adaln_cuda.cu``); this module adds
their fake kernels and autograd (through :func:`stmodels.ops._registration.register_op_pair`), once,
when the extension loaded. Neither kernel has a shape limit beyond the checks.
"""

from __future__ import annotations

import torch

from stmodels import _ext
from stmodels.ops._backend import missing_kernel_reasons, register_kernel
from stmodels.ops._registration import register_op_pair
from stmodels.ops.adaln.checks import (AdalnArgs, adaln_grads_like, adaln_outputs_like, check_canonical_adaln,
                                      check_canonical_adaln_bwd)

__all__ = ["register", "adaln_compiled_kernel"]


def _fake_forward(x, shift, scale, weight, bias, eps):
    check_canonical_adaln("adaln_fwd", x, shift, scale, weight, bias, eps)
    return adaln_outputs_like(x)


def _fake_backward(dout, x, scale, weight, bias, mean, rstd, shift_per_token):
    check_canonical_adaln_bwd("adaln_bwd", dout, x, scale, weight, bias, mean, rstd, shift_per_token)
    return adaln_grads_like(x, scale, weight, bias)


def _setup_context(ctx, inputs, output):
    x, shift, scale, weight, bias, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, weight, bias, mean, rstd)
    ctx.shift_per_token = shift.dim() == 3
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad_out, grad_mean, grad_rstd):
    x, scale, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale, dweight, dbias = torch.ops.stmodels.adaln_bwd(
        grad_out.contiguous(), x, scale, weight, bias, mean, rstd, ctx.shift_per_token
    )
    return dx, dshift, dscale, None if weight is None else dweight, None if bias is None else dbias, None


def adaln_compiled_kernel(args: AdalnArgs) -> torch.Tensor:
    """Run the compiled op (CPU or CUDA kernel, by the device of the inputs)."""
    return torch.ops.stmodels.adaln_fwd(args.x, args.shift, args.scale, args.weight, args.bias, args.eps)[0]


def register(op: str) -> None:
    """Register the cpu and cuda kernels of ``op``, and the torch.library glue if the extension loaded."""
    if _ext.available():
        register_op_pair("stmodels::adaln_fwd", "stmodels::adaln_bwd", fake_forward=_fake_forward,
                         fake_backward=_fake_backward, setup_context=_setup_context, backward_fn=_backward)
    register_kernel(op, "cpu", adaln_compiled_kernel, missing=missing_kernel_reasons("adaln", "CPU"))
    register_kernel(op, "cuda", adaln_compiled_kernel, missing=missing_kernel_reasons("adaln", "CUDA"))
