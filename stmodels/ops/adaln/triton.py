"""The ``triton`` backend of ``adaln_modulate``: custom ops ``stmodels_triton::adaln_fwd`` / ``adaln_bwd``.

This module sizes the tiles, allocates the outputs, launches the kernels of
:mod:`stmodels.ops.adaln.triton_kernels` (imported, with triton, on the first launch: importing triton
costs about a second) and reduces their partial sums. Its limit (:data:`MAX_HIDDEN`) is what the
registry reports when a call cannot run here.

The ops are ``torch.library.custom_op``\\s (their own namespace: the Triton kernels share the CUDA
dispatch key with ``stmodels::adaln_*``) with fake kernels and autograd, so ``torch.compile`` sees
them as opaque nodes. They accept CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's
interpreter, read when the kernels are defined); the registry guarantees that before calling.
"""

from __future__ import annotations

import torch

from stmodels.ops._backend import register_kernel
from stmodels.ops._launch import INTERPRETING, cdiv, next_power_of_2, on_device
from stmodels.ops._registration import register_op_pair
from stmodels.ops.adaln.checks import AdalnArgs, adaln_grads_like, adaln_outputs_like, check_canonical_adaln

__all__ = ["MAX_HIDDEN", "adaln_triton_kernel", "adaln_fwd", "adaln_bwd", "register"]

#: Largest H: a whole row lives in registers (as in Triton's LayerNorm tutorial).
MAX_HIDDEN = 16384

# Elements of one [BLOCK_R, BLOCK_H] tile: the register budget on GPU, the numpy batch when interpreting.
# (Module globals read at each call, so tests can shrink them to exercise multi-tile, multi-chunk runs.)
_FWD_TILE = 16384 if INTERPRETING else 4096
_BWD_TILE = 16384 if INTERPRETING else 2048
# Backward programs to aim for: on GPU enough to fill an H100 several times (more only grows the
# partial-sum buffers); when interpreting 1, i.e. one program per sample.
_BWD_PROGRAMS = 1 if INTERPRETING else 1024


def _rows_per_tile(budget: int, block_h: int, rows: int) -> int:
    return max(1, min(next_power_of_2(rows), budget // block_h))


def _bwd_tiling(batch: int, tokens: int, block_h: int) -> tuple[int, int, int]:
    """``(BLOCK_R, TILES, n_chunks)`` of the backward, from the shape alone (see the module doc)."""
    block_r = _rows_per_tile(_BWD_TILE, block_h, tokens)
    tiles_per_sample = cdiv(tokens, block_r)
    tiles = min(tiles_per_sample, max(1, cdiv(batch * tiles_per_sample, _BWD_PROGRAMS)))
    return block_r, tiles, cdiv(tiles_per_sample, tiles)


# The same argument lists as the C++ stmodels::adaln_fwd/_bwd, except that the backward reads the
# shift/scale form from `scale` instead of a flag.
_FWD_SCHEMA = ("(Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, float eps)"
               " -> (Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor dout, Tensor x, Tensor scale, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd)"
               " -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("stmodels_triton::adaln_fwd", mutates_args=(), device_types=("cuda", "cpu"),
                         schema=_FWD_SCHEMA)
def adaln_fwd(x, shift, scale, weight, bias, eps):
    """Forward on canonical arguments (see ``checks.py``): contiguous ``x (B, S, H)``; ``shift, scale``
    ``(B, H)`` or ``(B, S, H)`` in ``x``'s dtype; ``weight, bias`` ``(H,)`` float32 or None.

    Returns ``out (B, S, H)`` in ``x``'s dtype, ``mean, rstd (B, S)`` float32.
    """
    batch, tokens, hidden = x.shape
    out = torch.empty_like(x)
    mean = x.new_empty((batch, tokens), dtype=torch.float32)
    rstd = torch.empty_like(mean)
    n_rows = batch * tokens
    if n_rows == 0:
        return out, mean, rstd
    from stmodels.ops.adaln.triton_kernels import adaln_fwd_kernel

    block_h = next_power_of_2(hidden)
    block_r = _rows_per_tile(_FWD_TILE, block_h, n_rows)
    with on_device(x):
        adaln_fwd_kernel[(cdiv(n_rows, block_r),)](
            x, shift, scale, x if weight is None else weight, x if bias is None else bias, out, mean, rstd,
            n_rows, tokens, hidden, eps,
            PER_TOKEN=shift.dim() == 3, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            BLOCK_R=block_r, BLOCK_H=block_h,
        )
    return out, mean, rstd


@torch.library.custom_op("stmodels_triton::adaln_bwd", mutates_args=(), device_types=("cuda", "cpu"),
                         schema=_BWD_SCHEMA)
def adaln_bwd(dout, x, scale, weight, bias, mean, rstd):
    """Backward: ``dout`` (B, S, H) contiguous in ``x``'s dtype, the forward's inputs and statistics.

    Returns ``dx`` like ``x``, ``dshift, dscale`` like ``scale`` (the form of ``shift``/``scale`` is
    ``scale``'s), ``dweight, dbias`` (H,) float32, or empty (0,) float32 where there is no weight/bias.
    """
    batch, tokens, hidden = x.shape
    per_token = scale.dim() == 3
    f32 = dict(device=x.device, dtype=torch.float32)
    block_h = next_power_of_2(hidden)
    block_r, tiles, n_chunks = _bwd_tiling(batch, tokens, block_h)
    dx = torch.empty_like(x)
    if per_token:
        dshift, dscale = torch.empty_like(scale), torch.empty_like(scale)
    else:
        dshift, dscale = (torch.empty((batch, n_chunks, hidden), **f32) for _ in range(2))
    dw_part = torch.empty((batch * n_chunks, hidden), **f32) if weight is not None else torch.empty(0, **f32)
    db_part = torch.empty((batch * n_chunks, hidden), **f32) if bias is not None else torch.empty(0, **f32)
    if batch > 0:
        from stmodels.ops.adaln.triton_kernels import adaln_bwd_kernel

        with on_device(x):
            adaln_bwd_kernel[(batch, n_chunks)](
                dout, x, scale, x if weight is None else weight, x if bias is None else bias, mean, rstd,
                dx, dshift, dscale, dw_part if weight is not None else dx, db_part if bias is not None else dx,
                tokens, hidden, tiles,
                PER_TOKEN=per_token, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                BLOCK_R=block_r, BLOCK_H=block_h,
            )
    if not per_token:
        dshift, dscale = dshift.sum(dim=1).to(scale.dtype), dscale.sum(dim=1).to(scale.dtype)
    dweight = dw_part.sum(dim=0) if weight is not None else dw_part
    dbias = db_part.sum(dim=0) if bias is not None else db_part
    return dx, dshift, dscale, dweight, dbias


def _fake_forward(x, shift, scale, weight, bias, eps):
    check_canonical_adaln("adaln_fwd", x, shift, scale, weight, bias, eps)
    return adaln_outputs_like(x)


def _fake_backward(dout, x, scale, weight, bias, mean, rstd):
    return adaln_grads_like(x, scale, weight, bias)


def _setup_context(ctx, inputs, output):
    x, _shift, scale, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    x, scale, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale, dweight, dbias = adaln_bwd(grad_out.contiguous(), x, scale, weight, bias, mean, rstd)
    return dx, dshift, dscale, None if weight is None else dweight, None if bias is None else dbias, None


def adaln_triton_kernel(args: AdalnArgs) -> torch.Tensor:
    """The ``triton`` backend on canonical :class:`AdalnArgs`; returns ``(B, S, H)`` in ``x``'s dtype."""
    return adaln_fwd(args.x, args.shift, args.scale, args.weight, args.bias, args.eps)[0]


def triton_reasons(args: AdalnArgs) -> list[str]:
    """Why the triton kernels cannot run ``args`` (empty when they can)."""
    hidden = args.x.shape[-1]
    if hidden <= MAX_HIDDEN:
        return []
    return [f"`triton` keeps a whole row in registers: H <= {MAX_HIDDEN}, got H = {hidden}"]


def register(op: str) -> None:
    """Register the ``triton`` kernel of ``op`` and the custom ops' fake kernels and autograd."""
    register_op_pair("stmodels_triton::adaln_fwd", "stmodels_triton::adaln_bwd", fake_forward=_fake_forward,
                     fake_backward=_fake_backward, setup_context=_setup_context, backward_fn=_backward)
    register_kernel(op, "triton", adaln_triton_kernel, extra_reasons=triton_reasons)
