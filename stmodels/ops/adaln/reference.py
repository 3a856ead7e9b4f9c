"""Reference ``adaln_modulate``: LayerNorm fused with DiT's adaptive shift and scale.

DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023, Sec. 3.2, adaLN-Zero)
modulates a LayerNorm'd token stream with per-sample (or, here, optionally per-token) shift and
scale: ``out = LayerNorm(x, eps; weight, bias) * (1 + scale) + shift``. LayerNorm: Ba et al., 2016,
with biased variance as ``torch.nn.functional.layer_norm``, computed so that it cannot
overflow for large finite x (see :func:`layer_norm`).

Mean and variance in float32 (float64 for float64 inputs); output in ``x``'s dtype; gradients from
autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stmodels.ops.adaln.checks import AdalnArgs

__all__ = ["adaln_reference_kernel"]


#: Rows whose largest |x| reaches this are rescaled by a power of two first (float32 squares
#: overflow from |x - mean| ~ 1.8e19).
_LARGE = 2.0**48


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``F.layer_norm`` over the last axis whose statistics cannot overflow.

    Rows whose max ``|x|`` reaches ``2**48`` are first scaled by the power of two that brings that
    max into ``[1, 2)``: exact, and LayerNorm is scale-invariant (up to eps), so
    ``LayerNorm(1e20 x) == LayerNorm(x)`` instead of NaN from float32 squares that overflow. Every
    other row is multiplied by exactly 1, so its bits are ``F.layer_norm``'s. No data-dependent
    Python branch: the function traces under ``torch.export`` and ``torch.compile``.
    """
    hidden = (x.shape[-1],)
    with torch.no_grad():
        amax = x.abs().amax(dim=-1, keepdim=True)
        large = torch.isfinite(amax) & (amax >= _LARGE)
        exponent = torch.floor(torch.log2(torch.where(large, amax, torch.ones_like(amax))))
        scale = torch.where(large, torch.exp2(-exponent), torch.ones_like(amax))
    return F.layer_norm(x * scale, hidden, weight, bias, eps=eps)


def adaln_reference_kernel(args: AdalnArgs) -> torch.Tensor:
    """Reference backend on canonical arguments; returns ``(batch, S, H)`` in ``x``'s dtype."""
    compute = torch.float64 if args.x.dtype == torch.float64 else torch.float32
    x = args.x.to(compute)
    normalized = layer_norm(
        x,
        None if args.weight is None else args.weight.to(compute),
        None if args.bias is None else args.bias.to(compute),
        args.eps,
    )
    shift = args.shift.to(compute)
    scale = args.scale.to(compute)
    if not args.per_token:
        shift = shift[:, None, :]
        scale = scale[:, None, :]
    return (normalized * (1 + scale) + shift).to(args.x.dtype)
