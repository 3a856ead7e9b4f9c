"""The ``triton`` backend of the selective scan: custom ops ``stmodels_triton::scan_fwd`` / ``scan_bwd``.

The kernels live in :mod:`stmodels.ops.selective_scan.triton_kernels`, imported (with triton) on the
first launch: importing triton costs about a second. This module, imported with the front door,
allocates their buffers, launches them, reduces their partials and states the backend's limit
(:data:`MAX_STATE_SIZE`) for the registry.

Design:

* Grid ``(directions, batch, G * ceil((dim / G) / BLOCK_D))``: one program per direction, batch and
  block of channels inside one group. Both directions of ``bi_selective_scan`` run in the same launch;
  shared inputs are read through a direction stride of 0. Direction 1 walks t = L-1..0 by index.
* The state (BLOCK_D, N_P) stays in float32 registers; only the state before every ``CHUNK`` scan
  steps is saved, ``states: (directions, batch, dim, ceil(L / CHUNK), N)`` float32, so the memory kept
  for the backward is O(batch * dim * N * L / CHUNK).
* Bidirectional output: each direction writes its ungated y (float32) to ``y: (2, batch, dim, L)``;
  a second, elementwise kernel writes ``out = (y[0] + y[1]) * silu(z)`` once, in u's dtype. The sum
  has a fixed order, so the output is deterministic. One direction gates and writes ``out`` in the
  scan kernel itself.
* Backward: chunks in reverse scan order; the chunk's states are recomputed from its saved boundary
  state into a per-program scratch slab, then the adjoint recurrence runs backwards. Every reduction
  (over batch and time for A, D, delta_bias and constant B/C; over the channels of a group for
  variable B/C; over directions for shared inputs) goes through per-program float32 partials summed
  by torch in a fixed order: no atomics, bitwise reproducible, so the backend is deterministic.
"""

from __future__ import annotations

import torch

from stmodels.ops._backend import register_kernel
from stmodels.ops._launch import INTERPRETING, cdiv, next_power_of_2, on_device
from stmodels.ops._registration import register_op_pair
from stmodels.ops.selective_scan.checks import ScanArgs, check_canonical_scan, scan_grads_like, scan_outputs_like

__all__ = ["scan_triton_kernel", "scan_fwd", "scan_bwd", "MAX_STATE_SIZE", "CHUNK_SIZE", "BLOCK_D", "chunk_size",
           "register"]

#: Largest state size N the kernels hold in registers (N is padded to a power of two).
MAX_STATE_SIZE = 256

#: Scan steps between saved states; None picks the default (8 under the interpreter, so that small
#: test sequences span several chunks, 64 on a GPU). Tests may set it to exercise other chunkings.
CHUNK_SIZE: int | None = None


#: Channels per program; None picks from N (see ``_Layout``). Tests set it small so that a group
#: spans several programs and the cross-program reductions of the backward are exercised.
BLOCK_D: int | None = None


def chunk_size() -> int:
    """Scan steps per chunk of the backward recomputation (see :data:`CHUNK_SIZE`)."""
    return CHUNK_SIZE if CHUNK_SIZE is not None else (8 if INTERPRETING else 64)


class _Layout:
    """Launch geometry of one call, from the canonical shapes."""

    def __init__(self, u, A, B, C, bidirectional: bool):
        self.directions = 2 if bidirectional else 1
        self.batch, self.dim, self.length = u.shape[-3:]
        self.N = A.shape[-1]
        self.B_var = B.dim() >= 4
        self.C_var = C.dim() >= 4
        self.groups = B.shape[-3] if self.B_var else (C.shape[-3] if self.C_var else 1)
        self.per_group = self.dim // self.groups
        self.N_P = next_power_of_2(self.N)
        # Bound the register tile (BLOCK_D x N_P); the interpreter prefers fewer, wider programs.
        budget = 4096 if INTERPRETING else 2048
        cap = 64 if INTERPRETING else 32
        self.block_d = max(1, min(next_power_of_2(self.per_group), cap, budget // self.N_P))
        if BLOCK_D is not None:
            self.block_d = BLOCK_D
        self.blocks_per_group = cdiv(self.per_group, self.block_d)
        self.grid = (self.directions, self.batch, self.groups * self.blocks_per_group)


def _direction_stride(tensor: torch.Tensor | None, shared_rank: int, bidirectional: bool) -> int:
    """Stride of the leading direction axis, 0 for a tensor shared by both directions."""
    if tensor is None or not bidirectional or tensor.dim() == shared_rank:
        return 0
    return tensor.stride(0)


def _strides(u, delta, A, B, C, D, delta_bias, bidirectional: bool):
    B_rank = 4 if B.dim() >= 4 else 2
    C_rank = 4 if C.dim() >= 4 else 2
    return (
        _direction_stride(u, 3, bidirectional), _direction_stride(delta, 3, bidirectional),
        _direction_stride(A, 2, bidirectional), _direction_stride(B, B_rank, bidirectional),
        _direction_stride(C, C_rank, bidirectional), _direction_stride(D, 1, bidirectional),
        _direction_stride(delta_bias, 1, bidirectional),
    )


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _common(lay: _Layout, n_chunks: int, chunk: int):
    return dict(
        batch=lay.batch, dim=lay.dim, L=lay.length, N=lay.N, G=lay.groups, cpg=lay.per_group,
        nblk=lay.blocks_per_group, n_chunks=n_chunks, B_VAR=lay.B_var, C_VAR=lay.C_var, CHUNK=chunk,
        BLOCK_D=lay.block_d, N_P=lay.N_P,
    )


@torch.library.custom_op("stmodels_triton::scan_fwd", mutates_args=(), device_types=("cuda", "cpu"))
def scan_fwd(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, delta_softplus: bool, reverse: bool, bidirectional: bool,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward scan on canonical arguments (see ``csrc/ops.cpp``).

    Returns:
        out: (batch, dim, L) in u's dtype.
        last_state: (batch, dim, N), or (2, batch, dim, N) when bidirectional; float32.
        states: (directions, batch, dim, ceil(L / chunk), N) float32, the state before each chunk of
        the scan order (saved for the backward).
    """
    u, delta, A, B, C, D, z, delta_bias, initial_state = _contiguous(
        u, delta, A, B, C, D, z, delta_bias, initial_state)
    lay = _Layout(u, A, B, C, bidirectional)
    n_chunks = cdiv(lay.length, chunk)
    states = u.new_empty((lay.directions, lay.batch, lay.dim, n_chunks, lay.N), dtype=torch.float32)
    last_shape = (2, lay.batch, lay.dim, lay.N) if bidirectional else (lay.batch, lay.dim, lay.N)
    last = u.new_empty(last_shape, dtype=torch.float32)
    out = u.new_empty((lay.batch, lay.dim, lay.length))
    gate_here = lay.directions == 1
    y = out if gate_here else u.new_empty((2, lay.batch, lay.dim, lay.length), dtype=torch.float32)
    from stmodels.ops.selective_scan.triton_kernels import combine_kernel, scan_fwd_kernel

    with on_device(u):
        scan_fwd_kernel[lay.grid](
            u, delta, A, B, C, D, z, delta_bias, initial_state, y, last, states,
            *_strides(u, delta, A, B, C, D, delta_bias, bidirectional),
            REVERSE=reverse, SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, HAS_H0=initial_state is not None, GATE=gate_here,
            **_common(lay, n_chunks, chunk),
        )
        if not gate_here:
            numel = out.numel()
            block = 1024
            combine_kernel[(cdiv(numel, block),)](y, z, out, numel, HAS_Z=z is not None, BLOCK=block)
    return out, last, states


def _fake_forward(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, bidirectional,
                  chunk):
    check_canonical_scan("selective_scan_fwd", u, delta, A, B, C, D, z, delta_bias, initial_state,
                         delta_softplus, reverse, bidirectional)
    batch, dim, length = u.shape[-3:]
    directions = 2 if bidirectional else 1
    states = u.new_empty((directions, batch, dim, cdiv(length, chunk), A.shape[-1]), dtype=torch.float32)
    return (*scan_outputs_like(u, A, bidirectional), states)


def _reduce(partial: torch.Tensor, like: torch.Tensor, shared_rank: int, bidirectional: bool) -> torch.Tensor:
    """Sum a direction-leading float32 partial over the directions of a shared input; cast like it."""
    if not bidirectional:
        return partial[0].to(like.dtype)
    if like.dim() == shared_rank:  # shared by both directions: fixed order, direction 0 + direction 1
        return (partial[0] + partial[1]).to(like.dtype)
    return partial.to(like.dtype)


@torch.library.custom_op("stmodels_triton::scan_bwd", mutates_args=(), device_types=("cuda", "cpu"))
def scan_bwd(
    dout: torch.Tensor, dlast: torch.Tensor | None, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
    C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None, states: torch.Tensor, delta_softplus: bool, reverse: bool,
    bidirectional: bool, chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`scan_fwd` from ``dout: (batch, dim, L)``, ``dlast`` (the gradient of
    ``last_state``, float32 of its shape, or None for zero) and the saved chunk states.

    Returns one gradient per input (u, delta, A, B, C, D, z, delta_bias, initial_state), shaped and
    typed like it; an absent optional input gets an empty float32 tensor.
    """
    dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states = _contiguous(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states)
    lay = _Layout(u, A, B, C, bidirectional)
    n_chunks = states.shape[3]
    nd, batch, dim, length, N = lay.directions, lay.batch, lay.dim, lay.length, lay.N
    f32 = dict(dtype=torch.float32)
    per_time = (nd, batch, dim, length)
    du = u.new_empty(per_time, **f32)
    ddelta = u.new_empty(per_time, **f32)
    y = u.new_empty(per_time if z is not None else (0,), **f32)
    dA = u.new_empty((nd, batch, dim, N), **f32)
    bc_var_shape = (nd, batch, lay.groups, lay.blocks_per_group, N, length)
    dB = u.new_empty(bc_var_shape if lay.B_var else (nd, batch, dim, N), **f32)
    dC = u.new_empty(bc_var_shape if lay.C_var else (nd, batch, dim, N), **f32)
    dD = u.new_empty((nd, batch, dim) if D is not None else (0,), **f32)
    dbias = u.new_empty((nd, batch, dim) if delta_bias is not None else (0,), **f32)
    dh0 = u.new_empty((batch, dim, N) if initial_state is not None else (0,), **f32)
    programs = nd * batch * lay.grid[2]
    scratch = u.new_empty((programs, chunk + 1, lay.block_d, lay.N_P), **f32)
    from stmodels.ops.selective_scan.triton_kernels import scan_bwd_kernel

    with on_device(u):
        scan_bwd_kernel[lay.grid](
            dout, dlast, u, delta, A, B, C, D, z, delta_bias, states, scratch,
            du, ddelta, y, dA, dB, dC, dD, dbias, dh0,
            *_strides(u, delta, A, B, C, D, delta_bias, bidirectional),
            REVERSE=reverse, SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, HAS_H0=initial_state is not None, HAS_DLAST=dlast is not None,
            **_common(lay, n_chunks, chunk),
        )

    def empty():  # a fresh placeholder each: custom-op outputs may not alias one another
        return u.new_empty((0,), **f32)

    bi = bidirectional
    grads_B_C = []
    for grad, tensor, var in ((dB, B, lay.B_var), (dC, C, lay.C_var)):
        # Variable: sum the channel blocks of each group; constant: sum over batch.
        grad = grad.sum(3) if var else grad.sum(1)
        grads_B_C.append(_reduce(grad, tensor, 4 if var else 2, bi))
    if z is not None:
        y_total = y[0] + y[1] if bi else y[0]
        zf = z.float()
        sig = torch.sigmoid(zf)
        dz = (dout.float() * y_total * sig * (1 + zf * (1 - sig))).to(z.dtype)
    else:
        dz = empty()
    return (
        _reduce(du, u, 3, bi), _reduce(ddelta, delta, 3, bi), _reduce(dA.sum(1), A, 2, bi),
        *grads_B_C,
        _reduce(dD.sum(1), D, 1, bi) if D is not None else empty(),
        dz,
        _reduce(dbias.sum(1), delta_bias, 1, bi) if delta_bias is not None else empty(),
        dh0.to(initial_state.dtype) if initial_state is not None else empty(),
    )


def _fake_backward(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states, delta_softplus,
                   reverse, bidirectional, chunk):
    return scan_grads_like(u, delta, A, B, C, D, z, delta_bias, initial_state)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, bidirectional, chunk = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, output[2])
    ctx.flags = (delta_softplus, reverse, bidirectional, chunk)
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, grad_out, grad_last_state, grad_states):
    *saved, states = ctx.saved_tensors
    # last_state is differentiable: its gradient seeds the adjoint after the last step.
    dlast = None if grad_last_state is None else grad_last_state.float().contiguous()
    grads = scan_bwd(grad_out.contiguous(), dlast, *saved, states, *ctx.flags)
    # Absent optional inputs get no gradient (the op returns empty placeholders for them).
    result = [None if tensor is None else grad for tensor, grad in zip(saved, grads)]
    return (*result, None, None, None, None)


def scan_triton_kernel(args: ScanArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Triton scan on canonical arguments; returns ``(out, last_state)`` like every backend."""
    out, last_state, _ = torch.ops.stmodels_triton.scan_fwd(
        args.u, args.delta, args.A, args.B, args.C, args.D, args.z, args.delta_bias, args.initial_state,
        args.delta_softplus, args.reverse, args.bidirectional, chunk_size(),
    )
    return out, last_state


def triton_reasons(args: ScanArgs) -> list[str]:
    """Why the triton kernels cannot run ``args`` (empty when they can)."""
    if args.state_size > MAX_STATE_SIZE:
        return [f"`triton` supports state sizes N <= {MAX_STATE_SIZE}, got N={args.state_size}"]
    return []


def register(op: str) -> None:
    """Register the ``triton`` kernel of ``op`` and the custom ops' fake kernels and autograd."""
    register_op_pair("stmodels_triton::scan_fwd", "stmodels_triton::scan_bwd", fake_forward=_fake_forward,
                     fake_backward=_fake_backward, setup_context=_setup_context, backward_fn=_backward)
    register_kernel(op, "triton", scan_triton_kernel, extra_reasons=triton_reasons)
