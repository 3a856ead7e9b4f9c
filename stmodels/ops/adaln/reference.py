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


#: Rows whose largest |x| reaches this get their statistics in float64 (float32 squares overflow
#: from |x - mean| ~ 1.8e19).
_LARGE = 2.0**48


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``F.layer_norm`` over the last axis whose statistics cannot overflow.

    Rows whose max ``|x|`` reaches ``2**48`` are normalised in float64, which has the range for any
    float32 row, so ``LayerNorm(1e20 x) == LayerNorm(x)`` (up to eps) instead of NaN; every other
    row takes ``F.layer_norm`` in ``x``'s dtype unchanged. Each path sees the other's rows as zeros,
    so neither produces NaN that autograd would mask.
    """
    hidden = (x.shape[-1],)
    with torch.no_grad():
        amax = x.abs().amax(dim=-1, keepdim=True)
        large = torch.isfinite(amax) & (amax >= _LARGE)
    if x.dtype == torch.float64 or not bool(large.any()):
        return F.layer_norm(x, hidden, weight, bias, eps=eps)
    ordinary = F.layer_norm(torch.where(large, 0.0, x), hidden, weight, bias, eps=eps)
    wide = F.layer_norm(torch.where(large, x, 0.0).double(), hidden,
                        None if weight is None else weight.double(),
                        None if bias is None else bias.double(), eps=eps)
    return torch.where(large, wide.to(x.dtype), ordinary)


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
