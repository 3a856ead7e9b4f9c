"""The ``triton`` backend of ``adaln_modulate``: Triton kernels behind ``torch.ops.stmodels_triton``.

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
fixed order. The tiling is a function of the shape alone, never of the autotuned config, so the
summation order (and the bits) of the reductions do not depend on autotuning.

The ops are ``torch.library.custom_op``\\s (their own namespace: the Triton kernels share the CUDA
dispatch key with ``stmodels::adaln_*``) with fake kernels and autograd, so ``torch.compile`` sees
them as opaque nodes. They accept CPU tensors only when this module was imported under
``TRITON_INTERPRET=1`` (Triton's interpreter, read when the kernels are defined); the registry
guarantees that before calling.
"""

import os

import torch
import triton
import triton.language as tl

from stmodels.ops.adaln.checks import AdalnArgs, check_canonical_adaln

__all__ = ["MAX_HIDDEN", "adaln_triton_kernel", "adaln_fwd", "adaln_bwd"]

#: Largest H: a whole row lives in registers (as in Triton's LayerNorm tutorial).
MAX_HIDDEN = 16384

# The interpreter runs programs one after another in Python: few, large programs and a single
# autotune config (autotuning would only time the interpreter). Fixed at import, like the kernels.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Elements of one [BLOCK_R, BLOCK_H] tile: the register budget on GPU, the numpy batch when interpreting.
# (Module globals read at each call, so tests can shrink them to exercise multi-tile, multi-chunk runs.)
_FWD_TILE = 16384 if _INTERPRET else 4096
_BWD_TILE = 16384 if _INTERPRET else 2048
# Backward programs to aim for: on GPU enough to fill an H100 several times (more only grows the
# partial-sum buffers); when interpreting 1, i.e. one program per sample.
_BWD_PROGRAMS = 1 if _INTERPRET else 1024


def _configs(warps: tuple[int, ...]) -> list[triton.Config]:
    return [triton.Config({}, num_warps=4)] if _INTERPRET else [triton.Config({}, num_warps=w) for w in warps]


_KEY = ["BLOCK_R", "BLOCK_H", "PER_TOKEN", "HAS_WEIGHT", "HAS_BIAS"]


@triton.autotune(configs=_configs((1, 2, 4, 8)), key=_KEY)
@triton.jit
def _adaln_fwd_kernel(
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
def _adaln_bwd_kernel(
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


def _rows_per_tile(budget: int, block_h: int, rows: int) -> int:
    return max(1, min(triton.next_power_of_2(rows), budget // block_h))


def _bwd_tiling(batch: int, tokens: int, block_h: int) -> tuple[int, int, int]:
    """``(BLOCK_R, TILES, n_chunks)`` of the backward, from the shape alone (see the module doc)."""
    block_r = _rows_per_tile(_BWD_TILE, block_h, tokens)
    tiles_per_sample = triton.cdiv(tokens, block_r)
    tiles = min(tiles_per_sample, max(1, triton.cdiv(batch * tiles_per_sample, _BWD_PROGRAMS)))
    return block_r, tiles, triton.cdiv(tiles_per_sample, tiles)


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
    block_h = triton.next_power_of_2(hidden)
    block_r = _rows_per_tile(_FWD_TILE, block_h, n_rows)
    _adaln_fwd_kernel[(triton.cdiv(n_rows, block_r),)](
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
    block_h = triton.next_power_of_2(hidden)
    block_r, tiles, n_chunks = _bwd_tiling(batch, tokens, block_h)
    dx = torch.empty_like(x)
    if per_token:
        dshift, dscale = torch.empty_like(scale), torch.empty_like(scale)
    else:
        dshift, dscale = (torch.empty((batch, n_chunks, hidden), **f32) for _ in range(2))
    dw_part = torch.empty((batch * n_chunks, hidden), **f32) if weight is not None else torch.empty(0, **f32)
    db_part = torch.empty((batch * n_chunks, hidden), **f32) if bias is not None else torch.empty(0, **f32)
    if batch > 0:
        _adaln_bwd_kernel[(batch, n_chunks)](
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


@adaln_fwd.register_fake
def _(x, shift, scale, weight, bias, eps):
    check_canonical_adaln("adaln_fwd", x, shift, scale, weight, bias, eps)
    batch, tokens, _ = x.shape
    stats = x.new_empty((batch, tokens), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


@adaln_bwd.register_fake
def _(dout, x, scale, weight, bias, mean, rstd):
    def like(tensor):
        return x.new_empty((0,), dtype=torch.float32) if tensor is None else torch.empty_like(tensor)

    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale), like(weight), like(bias)


def _setup_context(ctx, inputs, output):
    x, _shift, scale, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, weight, bias, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    x, scale, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale, dweight, dbias = adaln_bwd(grad_out.contiguous(), x, scale, weight, bias, mean, rstd)
    return dx, dshift, dscale, None if weight is None else dweight, None if bias is None else dbias, None


adaln_fwd.register_autograd(_backward, setup_context=_setup_context)


def adaln_triton_kernel(args: AdalnArgs) -> torch.Tensor:
    """The ``triton`` backend on canonical :class:`AdalnArgs`; returns ``(B, S, H)`` in ``x``'s dtype."""
    return adaln_fwd(args.x, args.shift, args.scale, args.weight, args.bias, args.eps)[0]
