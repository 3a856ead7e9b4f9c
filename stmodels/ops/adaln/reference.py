"""Reference ``adaln_modulate``: LayerNorm fused with DiT's adaptive shift and scale.

DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023, Sec. 3.2, adaLN-Zero)
modulates a LayerNorm'd token stream with per-sample (or, here, optionally per-token) shift and
scale: ``out = LayerNorm(x, eps; weight, bias) * (1 + scale) + shift``. LayerNorm: Ba et al., 2016,
with biased variance as ``torch.nn.functional.layer_norm``.

Mean and variance in float32 (float64 for float64 inputs); output in ``x``'s dtype; gradients from
autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stmodels.ops.adaln.checks import AdalnArgs

__all__ = ["adaln_reference_kernel"]


def adaln_reference_kernel(args: AdalnArgs) -> torch.Tensor:
    """Reference backend on canonical arguments; returns ``(batch, S, H)`` in ``x``'s dtype."""
    compute = torch.float64 if args.x.dtype == torch.float64 else torch.float32
    x = args.x.to(compute)
    normalized = F.layer_norm(
        x,
        (x.shape[-1],),
        None if args.weight is None else args.weight.to(compute),
        None if args.bias is None else args.bias.to(compute),
        eps=args.eps,
    )
    shift = args.shift.to(compute)
    scale = args.scale.to(compute)
    if not args.per_token:
        shift = shift[:, None, :]
        scale = scale[:, None, :]
    return (normalized * (1 + scale) + shift).to(args.x.dtype)
