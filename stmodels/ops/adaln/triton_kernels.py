"""Triton kernels of ``adaln_modulate`` (launched by :mod:`stmodels.ops.adaln.triton`).

Forward, one tile of ``BLOCK_R`` rows (tokens) x ``BLOCK_H = next_power_of_2(H)`` columns per program
(masked, so any H works): float32 mean and biased variance per row, then
``out = LayerNorm(x, eps; weight, bias) * (1 + scale) + shift`` in float32, stored in ``x``'s dtype.
The per-row float32 ``mean`` and ``rstd`` are saved for the backward.

Backward, program ``(b, chunk)`` walks a fixed run of the S tokens of sample ``b`` (``TILES`` tiles of
``BLOCK_R`` rows). With ``gy = dout * (1 + scale)``, ``g = gy * weight`` and ``xhat`` the normalised x:
``dx = rstd * (g - mean_H(g) - xhat * mean_H(g * xhat))`` per row; ``dshift = dout`` and
``dscale = dout * y_norm`` per token, or summed over S per sample; ``dweight = sum(gy * xhat)`` and
``dbias = sum(gy)`` over every row. Cross-row sums are deterministic without atomics: each program
writes its float32 partial sums to its own slot of a buffer, and ``torch.sum`` adds the slots in a
fixed order.

Only the warp count is autotuned; the tiling is chosen by the launcher from the shape alone, so the
summation order (and the bits) of the reductions do not depend on autotuning. Under Triton's
interpreter there is one config (autotuning would only time the interpreter).
"""

import triton
import triton.language as tl

from stmodels.ops._launch import INTERPRETING

__all__ = ["adaln_fwd_kernel", "adaln_bwd_kernel"]


def _configs(warps: tuple[int, ...]) -> list[triton.Config]:
    return [triton.Config({}, num_warps=4)] if INTERPRETING else [triton.Config({}, num_warps=w) for w in warps]


_KEY = ["BLOCK_R", "BLOCK_H", "PER_TOKEN", "HAS_WEIGHT", "HAS_BIAS"]


@triton.autotune(configs=_configs((1, 2, 4, 8)), key=_KEY)
@triton.jit
def adaln_fwd_kernel(
    x_ptr, shift_ptr, scale_ptr, weight_ptr, bias_ptr, out_ptr, mean_ptr, rstd_ptr,
    n_rows, S, H, eps,
    PER_TOKEN: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_H)
    row_ok = rows < n_rows
    col_ok = cols < H
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)  # B*S*H may pass 2**31
    offs = rows64[:, None] * H + cols[None, :]

    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # Rows whose max |x| passes 2^48 are normalised as x * s, s the power of two that brings that max
    # into [1, 2) (at least 2^-126): LayerNorm is scale-invariant up to eps (eps * s^2 with x * s),
    # so the squares cannot overflow and LayerNorm(1e20 x) equals LayerNorm(x). Other rows keep
    # s = 1, i.e. exactly the unscaled arithmetic. A row holding inf/NaN stays NaN.
    amax = tl.max(tl.abs(x), axis=1)
    expo = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF
    pow2 = ((254 - tl.minimum(expo, 253)) << 23).to(tl.float32, bitcast=True)
    s = tl.where(expo > 127 + 48, pow2, 1.0)
    xs = x * s[:, None]
    mean_s = tl.sum(xs, axis=1) / H
    # padded columns must not add (0 - mean)^2 to the variance
    xc = tl.where(mask, xs - mean_s[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / H
    # A scaled row with var > 0 has var >> eps * s^2; a constant one needs 1/sqrt(eps) itself (eps * s^2
    # underflows), which this form gives at s = 1 too.
    rstd = tl.where(var == 0.0, 1.0 / tl.sqrt_rn(eps + 0.0 * var), s / tl.sqrt_rn(var + eps * s * s))
    y = xc * (rstd / s)[:, None]
    mean = mean_s / s
    if HAS_WEIGHT:
        y = y * tl.load(weight_ptr + cols, mask=col_ok, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]

    if PER_TOKEN:
        mod_offs = offs
    else:
        mod_offs = (rows64 // S)[:, None] * H + cols[None, :]
    shift = tl.load(shift_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
    out = y * (1.0 + scale) + shift
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows64, mean, mask=row_ok)
    tl.store(rstd_ptr + rows64, rstd, mask=row_ok)


@triton.autotune(configs=_configs((2, 4, 8, 16)), key=_KEY)
@triton.jit
def adaln_bwd_kernel(
    dout_ptr, x_ptr, scale_ptr, weight_ptr, bias_ptr, mean_ptr, rstd_ptr,
    dx_ptr, dshift_ptr, dscale_ptr, dw_part_ptr, db_part_ptr,
    S, H, TILES,
    PER_TOKEN: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # dshift_ptr / dscale_ptr: (B, S, H) in x's dtype when PER_TOKEN, else float32 partials
    # (B, n_chunks, H); dw_part_ptr / db_part_ptr: float32 partials (B * n_chunks, H).
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    part = b.to(tl.int64) * tl.num_programs(1) + chunk
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H

    if HAS_WEIGHT:
        w = tl.load(weight_ptr + cols, mask=col_ok, other=0.0)[None, :]
    else:
        w = 1.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]
    else:
        bias = 0.0
    if not PER_TOKEN:
        one_plus_scale_b = 1.0 + tl.load(scale_ptr + b.to(tl.int64) * H + cols, mask=col_ok, other=0.0).to(tl.float32)

    acc_shift = tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32)
    acc_scale = tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_R, BLOCK_H), dtype=tl.float32)
    first = chunk * TILES * BLOCK_R
    for t in range(0, TILES):
        s = first + t * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = s < S
        rows64 = b.to(tl.int64) * S + s
        mask = row_ok[:, None] & col_ok[None, :]
        offs = rows64[:, None] * H + cols[None, :]

        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows64, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows64, mask=row_ok, other=0.0)
        # zero in the padding, so padded columns drop out of every sum below
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if PER_TOKEN:
            one_plus_scale = 1.0 + tl.load(scale_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            one_plus_scale = one_plus_scale_b[None, :]
        gy = dout * one_plus_scale
        g = gy * w
        mean_g = tl.sum(g, axis=1) / H
        mean_gx = tl.sum(g * xhat, axis=1) / H
        dx = rstd[:, None] * (g - mean_g[:, None] - xhat * mean_gx[:, None])
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)

        y_norm = xhat * w + bias
        if PER_TOKEN:
            tl.store(dshift_ptr + offs, dout.to(dshift_ptr.dtype.element_ty), mask=mask)
            tl.store(dscale_ptr + offs, (dout * y_norm).to(dscale_ptr.dtype.element_ty), mask=mask)
        else:
            acc_shift += dout
            acc_scale += dout * y_norm
        if HAS_WEIGHT:
            acc_w += gy * xhat
        if HAS_BIAS:
            acc_b += gy

    part_offs = part * H + cols
    if not PER_TOKEN:
        tl.store(dshift_ptr + part_offs, tl.sum(acc_shift, axis=0), mask=col_ok)
        tl.store(dscale_ptr + part_offs, tl.sum(acc_scale, axis=0), mask=col_ok)
    if HAS_WEIGHT:
        tl.store(dw_part_ptr + part_offs, tl.sum(acc_w, axis=0), mask=col_ok)
    if HAS_BIAS:
        tl.store(db_part_ptr + part_offs, tl.sum(acc_b, axis=0), mask=col_ok)
