"""The ``cpu`` and ``cuda`` backends of ``adaln_modulate``: ``torch.ops.stmodels.adaln_fwd/_bwd``.

Registers fake kernels and autograd around the compiled ops, once, when the extension loaded.
"""

from __future__ import annotations

import torch

from stmodels import _ext
from stmodels.ops._backend import missing_kernel_reasons, register_kernel
from stmodels.ops.adaln.checks import AdalnArgs, check_canonical_adaln, check_canonical_adaln_bwd

__all__ = ["register", "adaln_compiled_kernel"]


def _fake_forward(x, shift, scale, weight, bias, eps):
    check_canonical_adaln("adaln_fwd", x, shift, scale, weight, bias, eps)
    batch, tokens, _ = x.shape
    stats = x.new_empty((batch, tokens), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _fake_backward(dout, x, scale, weight, bias, mean, rstd, shift_per_token):
    check_canonical_adaln_bwd("adaln_bwd", dout, x, scale, weight, bias, mean, rstd, shift_per_token)
    def like(tensor):
        return dout.new_empty((0,), dtype=torch.float32) if tensor is None else torch.empty_like(tensor)

    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale), like(weight), like(bias)


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


_registered = False


def _register_torch_library() -> None:
    global _registered
    if _registered:
        return
    torch.library.register_fake("stmodels::adaln_fwd")(_fake_forward)
    torch.library.register_fake("stmodels::adaln_bwd")(_fake_backward)
    torch.library.register_autograd("stmodels::adaln_fwd", _backward, setup_context=_setup_context)
    _registered = True


def adaln_compiled_kernel(args: AdalnArgs) -> torch.Tensor:
    """Run the compiled op (CPU or CUDA kernel, by the device of the inputs)."""
    return torch.ops.stmodels.adaln_fwd(args.x, args.shift, args.scale, args.weight, args.bias, args.eps)[0]


def register(op: str) -> None:
    """Register the cpu and cuda kernels of ``op``, and the torch.library glue if the extension loaded."""
    if _ext.available():
        _register_torch_library()
    register_kernel(op, "cpu", adaln_compiled_kernel, missing=missing_kernel_reasons("adaln", "CPU"))
    register_kernel(op, "cuda", adaln_compiled_kernel, missing=missing_kernel_reasons("adaln", "CUDA"))
