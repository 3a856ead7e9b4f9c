"""The ``cpu`` and ``cuda`` backends: the compiled ``torch.ops.stmodels.selective_scan_fwd/_bwd``.

The C++/CUDA kernels are registered by ``csrc/selective_scan/``; this module adds what PyTorch needs
around them (through :func:`stmodels.ops._registration.register_op_pair`), once, and only when the
extension loaded: fake (meta) kernels, so ``torch.compile`` and ``torch.library.opcheck`` can trace
them, and autograd, whose backward calls the ``_bwd`` op of the same device. The CUDA kernels' limit
(:data:`CUDA_MAX_STATE_SIZE`) is stated here, next to their registration.
"""

from __future__ import annotations

import torch

from stmodels import _ext
from stmodels.ops._backend import missing_kernel_reasons, register_kernel
from stmodels.ops._registration import register_op_pair
from stmodels.ops.selective_scan.checks import ScanArgs, check_canonical_scan, scan_grads_like, scan_outputs_like

__all__ = ["register", "scan_compiled_kernel"]

_INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _fake_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, bidirectional):
    check_canonical_scan("selective_scan_fwd", u, delta, A, B, C, D, z, delta_bias, initial_state,
                         delta_softplus, reverse, bidirectional)
    return scan_outputs_like(u, A, bidirectional)


def _fake_backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse,
                   bidirectional):
    args = check_canonical_scan("selective_scan_bwd", u, delta, A, B, C, D, z, delta_bias, initial_state,
                                delta_softplus, reverse, bidirectional)
    _check_grads(dout, dlast_state, args)
    return scan_grads_like(u, delta, A, B, C, D, z, delta_bias, initial_state)


def _check_grads(dout, dlast_state, args: ScanArgs) -> None:
    """dout like out, dlast_state (optional) like last_state, as the compiled backward checks."""
    out_shape = (args.batch, args.dim, args.length)
    if tuple(dout.shape) != out_shape or dout.dtype != args.u.dtype:
        raise ValueError(f"selective_scan_bwd: `dout` must have shape {out_shape} and dtype {args.u.dtype}, "
                         f"got {tuple(dout.shape)} {dout.dtype}")
    if dlast_state is None:
        return
    state_shape = ((2,) if args.bidirectional else ()) + (args.batch, args.dim, args.state_size)
    if tuple(dlast_state.shape) != state_shape or dlast_state.dtype != torch.float32:
        raise ValueError(f"selective_scan_bwd: `dlast_state` must have the shape of last_state {state_shape} "
                         f"and dtype float32, got {tuple(dlast_state.shape)} {dlast_state.dtype}")


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, bidirectional = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state)
    ctx.flags = (delta_softplus, reverse, bidirectional)


def _backward(ctx, grad_out, grad_last_state):
    saved = ctx.saved_tensors
    # last_state is differentiable: its gradient seeds the adjoint after the last step.
    dlast = None if grad_last_state is None else grad_last_state.float().contiguous()
    grads = torch.ops.stmodels.selective_scan_bwd(grad_out.contiguous(), dlast, *saved, *ctx.flags)
    # Absent optional inputs get no gradient (the op returns empty placeholders for them).
    result = [None if tensor is None else grad for tensor, grad in zip(saved, grads)]
    return (*result, None, None, None)


def scan_compiled_kernel(args: ScanArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the compiled op (the CPU or CUDA kernel, chosen by the device of the inputs)."""
    return torch.ops.stmodels.selective_scan_fwd(
        *(args.tensors()[name] for name in _INPUT_NAMES),
        args.delta_softplus, args.reverse, args.bidirectional,
    )


#: Largest state size N of the CUDA kernels (csrc/selective_scan/selective_scan_cuda.cu checks it too).
CUDA_MAX_STATE_SIZE = 64


def _cuda_reasons(args: ScanArgs) -> list[str]:
    if args.state_size > CUDA_MAX_STATE_SIZE:
        return [f"`cuda` supports state sizes N <= {CUDA_MAX_STATE_SIZE}, got N={args.state_size}"]
    return []


def register(op: str) -> None:
    """Register the cpu and cuda kernels of ``op``, and the torch.library glue if the extension loaded."""
    if _ext.available():
        register_op_pair("stmodels::selective_scan_fwd", "stmodels::selective_scan_bwd", fake_forward=_fake_forward,
                         fake_backward=_fake_backward, setup_context=_setup_context, backward_fn=_backward)
    register_kernel(op, "cpu", scan_compiled_kernel, missing=missing_kernel_reasons("selective_scan", "CPU"))
    register_kernel(op, "cuda", scan_compiled_kernel, extra_reasons=_cuda_reasons,
                    missing=missing_kernel_reasons("selective_scan", "CUDA"))
