"""``adaln_modulate``: LayerNorm fused with DiT's adaptive shift and scale (the front door)."""

from __future__ import annotations

import torch

from stmodels.ops._backend import register_kernel, select_kernel
from stmodels.ops.adaln import compiled, triton
from stmodels.ops.adaln.checks import OP, AdalnArgs, canonical_adaln_args
from stmodels.ops.adaln.reference import adaln_reference_kernel

__all__ = ["adaln_modulate", "adaln_modulate_ref", "AdalnArgs"]

# One kernel per backend; each backend module states its own limits (see docs/ops.rst).
register_kernel(OP, "reference", adaln_reference_kernel)
compiled.register(OP)
triton.register(OP)


def adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    backend: str | None = "auto",
) -> torch.Tensor:
    """``LayerNorm(x, eps; weight, bias) * (1 + scale) + shift`` in one pass (DiT's modulate).

    Args:
        x: (batch, S, H), float32 | float16 | bfloat16 (float64 on the reference backend).
        shift, scale: both (batch, H), broadcast over the S tokens, or both (batch, S, H) per token;
            cast to ``x``'s dtype.
        weight, bias: (H,), optional elementwise affine of the LayerNorm; used in float32.
        eps: LayerNorm epsilon (DiT uses 1e-6).
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        (batch, S, H) in ``x``'s dtype. Mean and biased variance are computed in float32.
        Gradients flow to x, shift, scale, weight and bias.
    """
    args = canonical_adaln_args(x, shift, scale, weight, bias, eps)
    _, kernel = select_kernel(OP, backend, args, args.tensors(), "x")
    return kernel(args)


def adaln_modulate_ref(x, shift, scale, weight=None, bias=None, eps: float = 1e-6) -> torch.Tensor:
    """:func:`adaln_modulate` on the ``reference`` backend (same arguments and returns)."""
    return adaln_modulate(x, shift, scale, weight, bias, eps, backend="reference")
