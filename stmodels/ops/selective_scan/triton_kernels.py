"""Triton kernels of the selective scan: forward, chunk-recomputing backward, bidirectional combine.

Launched by :mod:`stmodels.ops.selective_scan.triton`, which allocates every buffer and documents the
layouts. All tensors are contiguous in the canonical forms of ``csrc/ops.cpp``; a tensor shared by
both directions is read with a direction stride of 0, so direction programs need no copies.

Grid of the scan kernels: ``(directions, batch, G * blocks_per_group)``. A program owns ``BLOCK_D``
channels of one group (so its B/C gradient partials belong to a single group), holds the state
``h: (BLOCK_D, N_P)`` in float32 registers (``N_P`` = N rounded up to a power of two, masked) and walks
time by index: t = 0..L-1 for a forward direction, t = L-1..0 for a reversed one.

Only the warp count is autotuned: ``BLOCK_D`` sizes the partial buffers, so the launcher chooses it
before the launch. Under Triton's interpreter there is one config (autotuning would rerun the slow
interpreted kernel).
"""

from __future__ import annotations

import triton
import triton.language as tl

from stmodels.ops._launch import INTERPRETING

__all__ = ["scan_fwd_kernel", "scan_bwd_kernel", "combine_kernel"]

_CONFIGS = [triton.Config({}, num_warps=w) for w in ((4,) if INTERPRETING else (2, 4, 8))]
_KEY = ["N_P", "BLOCK_D", "B_VAR", "C_VAR", "HAS_Z", "CHUNK"]


@triton.jit
def _program_coords(dim, L, cpg, nblk, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr):
    k = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 offsets: batch * dim * L may pass 2**31
    blk = tl.program_id(2)
    grp = blk // nblk
    sub = blk % nblk
    dloc = sub * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dloc < cpg
    d = grp * cpg + dloc
    # Direction 1 of a bidirectional scan runs backward; REVERSE only occurs with one direction.
    rev = k + REVERSE
    row = (b * dim + d) * L  # offsets of (b, d, t=0) in a (batch, dim, L) tensor
    return k, b, grp, sub, d, dmask, rev, row


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    y_ptr, last_ptr, states_ptr,
    su_k, sdelta_k, sA_k, sB_k, sC_k, sD_k, sbias_k,
    batch, dim, L, N, G, cpg, nblk, n_chunks,
    REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
    GATE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, N_P: tl.constexpr,
):
    """Forward scan of one (direction, batch, channel block).

    Writes y_t (with D * u_t) per step: gated by silu(z) in ``y_ptr``'s dtype when ``GATE`` (one
    direction: this is ``out``), else ungated float32 into ``y_ptr[direction]`` for the combine
    kernel. Saves the state before every chunk of ``CHUNK`` scan steps into
    ``states: (directions, batch, dim, n_chunks, N)`` and the final state into ``last``.
    """
    k, b, grp, sub, d, dmask, rev, row = _program_coords(dim, L, cpg, nblk, REVERSE, BLOCK_D)
    n = tl.arange(0, N_P)
    nmask = n < N
    mask2 = dmask[:, None] & nmask[None, :]
    dn = d[:, None] * N + n[None, :]

    A = tl.load(A_ptr + k * sA_k + dn, mask=mask2, other=0.0).to(tl.float32)
    u_row = u_ptr + k * su_k + row
    delta_row = delta_ptr + k * sdelta_k + row
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + k * sbias_k + d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + k * sD_k + d, mask=dmask, other=0.0).to(tl.float32)
    # Variable B/C: one (N,) column per step, shared by the group; constant: (BLOCK_D, N) once.
    B_col = B_ptr + k * sB_k + ((b * G + grp) * N + n) * L
    C_col = C_ptr + k * sC_k + ((b * G + grp) * N + n) * L
    B_const = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    C_const = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    if not B_VAR:
        B_const = tl.load(B_ptr + k * sB_k + dn, mask=mask2, other=0.0).to(tl.float32)
    if not C_VAR:
        C_const = tl.load(C_ptr + k * sC_k + dn, mask=mask2, other=0.0).to(tl.float32)

    h = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + (b * dim + d[:, None]) * N + n[None, :], mask=mask2, other=0.0).to(tl.float32)
    state_off = ((k * batch + b) * dim + d[:, None]) * n_chunks * N + n[None, :]
    if GATE:
        y_row = y_ptr + row
    else:
        y_row = y_ptr + ((k * batch + b) * dim + d) * L

    for c in range(0, n_chunks):
        tl.store(states_ptr + state_off + c * N, h, mask=mask2)
        start = c * CHUNK
        steps = tl.minimum(L - start, CHUNK)
        for j in range(0, steps):
            i = start + j
            t = i + rev * (L - 1 - 2 * i)
            # Inlined, not a helper: the interpreter re-patches triton.language on every nested call.
            u_t = tl.load(u_row + t, mask=dmask, other=0.0).to(tl.float32)
            x = tl.load(delta_row + t, mask=dmask, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                # PyTorch's softplus (threshold 20); the clamp keeps exp finite in the unused branch.
                dt = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)
            else:
                dt = x
            if B_VAR:
                B_t = tl.load(B_col + t, mask=nmask, other=0.0).to(tl.float32)[None, :]
            else:
                B_t = B_const
            if C_VAR:
                C_t = tl.load(C_col + t, mask=nmask, other=0.0).to(tl.float32)[None, :]
            else:
                C_t = C_const
            h = tl.exp(dt[:, None] * A) * h + (dt * u_t)[:, None] * B_t
            y = tl.sum(h * C_t, axis=1) + Dv * u_t
            if GATE:
                if HAS_Z:
                    zt = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                    y = y * zt * (1.0 / (1.0 + tl.exp(-zt)))
            tl.store(y_row + t, y.to(y_row.dtype.element_ty), mask=dmask)
    tl.store(last_ptr + ((k * batch + b) * dim + d[:, None]) * N + n[None, :], h, mask=mask2)


@triton.jit
def combine_kernel(y_ptr, z_ptr, out_ptr, numel, HAS_Z: tl.constexpr, BLOCK: tl.constexpr):
    """out = (y[0] + y[1]) * silu(z) for y: (2, batch, dim, L) float32, in out's dtype (fixed order)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    y = tl.load(y_ptr + offs, mask=mask, other=0.0) + tl.load(y_ptr + numel + offs, mask=mask, other=0.0)
    if HAS_Z:
        zt = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = y * zt * (1.0 / (1.0 + tl.exp(-zt)))
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def scan_bwd_kernel(
    dout_ptr, dlast_ptr, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, y_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    su_k, sdelta_k, sA_k, sB_k, sC_k, sD_k, sbias_k,
    batch, dim, L, N, G, cpg, nblk, n_chunks,
    REVERSE: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_DLAST: tl.constexpr, B_VAR: tl.constexpr,
    C_VAR: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, N_P: tl.constexpr,
):
    """Backward of one (direction, batch, channel block): chunks in reverse scan order.

    Per chunk: reload the saved boundary state, recompute the chunk's states into this program's
    scratch slab ``(CHUNK + 1, BLOCK_D, N_P)`` (slot 0 = state before the chunk), then run the adjoint
    ``g = dL/dh_t`` backwards through the chunk. Every output is a per-program partial (float32) that
    the caller reduces with torch in a fixed order, so results are bitwise reproducible:

    * du, ddelta, y (ungated, for dz): (directions, batch, dim, L)
    * dA: (directions, batch, dim, N); dD, dbias: (directions, batch, dim)
    * dB/dC variable: (directions, batch, G, blocks_per_group, N, L) (summed over the block's
      channels); constant: (directions, batch, dim, N)
    * dh0: (batch, dim, N), the adjoint after the first scan step (one direction only)
    """
    k, b, grp, sub, d, dmask, rev, row = _program_coords(dim, L, cpg, nblk, REVERSE, BLOCK_D)
    n = tl.arange(0, N_P)
    nmask = n < N
    mask2 = dmask[:, None] & nmask[None, :]
    dn = d[:, None] * N + n[None, :]
    kb = k * batch + b

    A = tl.load(A_ptr + k * sA_k + dn, mask=mask2, other=0.0).to(tl.float32)
    u_row = u_ptr + k * su_k + row
    delta_row = delta_ptr + k * sdelta_k + row
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + k * sbias_k + d, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + k * sD_k + d, mask=dmask, other=0.0).to(tl.float32)
    B_col = B_ptr + k * sB_k + ((b * G + grp) * N + n) * L
    C_col = C_ptr + k * sC_k + ((b * G + grp) * N + n) * L
    B_const = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    C_const = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    if not B_VAR:
        B_const = tl.load(B_ptr + k * sB_k + dn, mask=mask2, other=0.0).to(tl.float32)
    if not C_VAR:
        C_const = tl.load(C_ptr + k * sC_k + dn, mask=mask2, other=0.0).to(tl.float32)

    part_row = (kb * dim + d) * L  # (k, b, d, t=0) in the (directions, batch, dim, L) partials
    # (k, b, group, sub-block, n, t=0) in the variable-B/C partials
    bc_col = ((kb * G + grp) * nblk + sub) * N * L + n * L
    state_off = (kb * dim + d[:, None]) * n_chunks * N + n[None, :]
    prog = (kb * tl.num_programs(2) + tl.program_id(2)) * (CHUNK + 1)
    slab = scratch_ptr + prog * BLOCK_D * N_P + tl.arange(0, BLOCK_D)[:, None] * N_P + n[None, :]

    g = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    if HAS_DLAST:  # d(last_state) (directions, batch, dim, N) is the adjoint after the last step
        g = tl.load(dlast_ptr + (kb * dim + d[:, None]) * N + n[None, :], mask=mask2, other=0.0)
    dA_acc = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    dB_acc = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    dC_acc = tl.zeros([BLOCK_D, N_P], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        start = c * CHUNK
        steps = tl.minimum(L - start, CHUNK)
        h = tl.load(states_ptr + state_off + c * N, mask=mask2, other=0.0)
        tl.store(slab, h)
        # Recompute the chunk's states exactly as the forward did (same operations, same order).
        for j in range(0, steps):
            i = start + j
            t = i + rev * (L - 1 - 2 * i)
            u_t = tl.load(u_row + t, mask=dmask, other=0.0).to(tl.float32)
            x = tl.load(delta_row + t, mask=dmask, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)
            else:
                dt = x
            if B_VAR:
                B_t = tl.load(B_col + t, mask=nmask, other=0.0).to(tl.float32)[None, :]
            else:
                B_t = B_const
            h = tl.exp(dt[:, None] * A) * h + (dt * u_t)[:, None] * B_t
            tl.store(slab + (j + 1) * BLOCK_D * N_P, h)
        # Each thread reads back what it stored; the barrier also orders the slab between chunks.
        tl.debug_barrier()
        for jj in range(0, steps):
            j = steps - 1 - jj
            i = start + j
            t = i + rev * (L - 1 - 2 * i)
            u_t = tl.load(u_row + t, mask=dmask, other=0.0).to(tl.float32)
            x = tl.load(delta_row + t, mask=dmask, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)
            else:
                dt = x
            if B_VAR:
                B_t = tl.load(B_col + t, mask=nmask, other=0.0).to(tl.float32)[None, :]
            else:
                B_t = B_const
            if C_VAR:
                C_t = tl.load(C_col + t, mask=nmask, other=0.0).to(tl.float32)[None, :]
            else:
                C_t = C_const
            h_t = tl.load(slab + (j + 1) * BLOCK_D * N_P)
            h_prev = tl.load(slab + j * BLOCK_D * N_P)
            dy = tl.load(dout_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
            if HAS_Z:
                zt = tl.load(z_ptr + row + t, mask=dmask, other=0.0).to(tl.float32)
                y = tl.sum(h_t * C_t, axis=1) + Dv * u_t
                tl.store(y_ptr + part_row + t, y, mask=dmask)
                dy = dy * zt * (1.0 / (1.0 + tl.exp(-zt)))
            decay = tl.exp(dt[:, None] * A)
            g = g + dy[:, None] * C_t
            dC_t = dy[:, None] * h_t
            dB_t = g * (dt * u_t)[:, None]
            if C_VAR:
                tl.store(dC_ptr + bc_col + t, tl.sum(tl.where(mask2, dC_t, 0.0), axis=0), mask=nmask)
            else:
                dC_acc += dC_t
            if B_VAR:
                tl.store(dB_ptr + bc_col + t, tl.sum(tl.where(mask2, dB_t, 0.0), axis=0), mask=nmask)
            else:
                dB_acc += dB_t
            gB = tl.sum(g * B_t, axis=1)
            g_decay = g * h_prev * decay
            ddt = tl.sum(g_decay * A, axis=1) + gB * u_t
            dA_acc += g_decay * dt[:, None]
            g = g * decay
            tl.store(du_ptr + part_row + t, gB * dt + Dv * dy, mask=dmask)
            if SOFTPLUS:
                ddt = tl.where(x <= 20.0, ddt * (1.0 / (1.0 + tl.exp(-x))), ddt)
            tl.store(ddelta_ptr + part_row + t, ddt, mask=dmask)
            dbias_acc += ddt
            dD_acc += dy * u_t
        tl.debug_barrier()

    kbd = kb * dim + d
    tl.store(dA_ptr + kbd[:, None] * N + n[None, :], dA_acc, mask=mask2)
    if not B_VAR:
        tl.store(dB_ptr + kbd[:, None] * N + n[None, :], dB_acc, mask=mask2)
    if not C_VAR:
        tl.store(dC_ptr + kbd[:, None] * N + n[None, :], dC_acc, mask=mask2)
    if HAS_D:
        tl.store(dD_ptr + kbd, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + kbd, dbias_acc, mask=dmask)
    if HAS_H0:
        tl.store(dh0_ptr + (b * dim + d[:, None]) * N + n[None, :], g, mask=mask2)
