"""Argument checks and canonical form of ``adaln_modulate`` (see ``csrc/ops.cpp``).

Canonical form: ``x (batch, S, H)``; ``shift, scale`` both ``(batch, H)`` or both ``(batch, S, H)``,
cast to ``x``'s dtype; ``weight, bias`` ``(H,)`` in float32 (float64 for float64 ``x``); all
contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stmodels.ops._validate import (
    ACTIVATION_DTYPES,
    require_dtype,
    require_same_device,
    require_shape,
    require_tensor,
)

__all__ = ["OP", "AdalnArgs", "canonical_adaln_args", "check_canonical_adaln", "check_canonical_adaln_bwd",
           "adaln_outputs_like", "adaln_grads_like"]

OP = "adaln_modulate"
_FLOAT_DTYPES = ACTIVATION_DTYPES


@dataclass(frozen=True)
class AdalnArgs:
    """Validated, contiguous, canonical arguments of one ``adaln_modulate`` call."""

    x: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    per_token: bool

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {"x": self.x, "shift": self.shift, "scale": self.scale, "weight": self.weight, "bias": self.bias}


def canonical_adaln_args(x, shift, scale, weight=None, bias=None, eps: float = 1e-6) -> AdalnArgs:
    """Validate an ``adaln_modulate`` call and return its canonical :class:`AdalnArgs`.

    Raises:
        TypeError: a missing tensor, a non-tensor, an integer or complex dtype, a non-float eps.
        ValueError: wrong rank or shape, shift/scale forms that differ, mixed devices, eps <= 0.
    """
    x = require_tensor(OP, "x", x)
    shift = require_tensor(OP, "shift", shift)
    scale = require_tensor(OP, "scale", scale)
    weight = require_tensor(OP, "weight", weight, optional=True)
    bias = require_tensor(OP, "bias", bias, optional=True)
    require_same_device(OP, {"x": x, "shift": shift, "scale": scale, "weight": weight, "bias": bias})
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"{OP}: `eps` must be a float, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{OP}: `eps` must be a positive finite float, got {eps}")

    require_dtype(OP, "x", x, ACTIVATION_DTYPES)
    if x.dim() != 3:
        raise ValueError(f"{OP}: `x` must have shape (batch, S, H), got {tuple(x.shape)}")
    batch, tokens, hidden = x.shape
    if hidden < 1 or tokens < 1:
        raise ValueError(f"{OP}: `x` must have non-empty S and H, got {tuple(x.shape)}")

    for name, tensor in (("shift", shift), ("scale", scale)):
        require_dtype(OP, name, tensor, _FLOAT_DTYPES)
        if tensor.dim() == 2:
            require_shape(OP, name, tensor, (batch, hidden), "(batch, H)")
        elif tensor.dim() == 3:
            require_shape(OP, name, tensor, (batch, tokens, hidden), "(batch, S, H)")
        else:
            raise ValueError(
                f"{OP}: `{name}` must have shape (batch, H) = {(batch, hidden)} or (batch, S, H) = "
                f"{(batch, tokens, hidden)}, got {tuple(tensor.shape)}"
            )
    if shift.shape != scale.shape:
        raise ValueError(
            f"{OP}: `shift` and `scale` must have the same form, both (batch, H) or both (batch, S, H); "
            f"got {tuple(shift.shape)} and {tuple(scale.shape)}"
        )

    affine_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None:
            require_dtype(OP, name, tensor, _FLOAT_DTYPES)
            require_shape(OP, name, tensor, (hidden,), "(H,)")

    def cast(tensor, dtype):
        return None if tensor is None else tensor.to(dtype).contiguous()

    return AdalnArgs(
        x=x.contiguous(), shift=cast(shift, x.dtype), scale=cast(scale, x.dtype),
        weight=cast(weight, affine_dtype), bias=cast(bias, affine_dtype), eps=float(eps),
        per_token=shift.dim() == 3,
    )


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_canonical_adaln(op: str, x, shift, scale, weight, bias, eps) -> None:
    """The checks of the compiled / Triton ``adaln_fwd`` on its canonical arguments (csrc/ops.cpp).

    Used by the fake (meta) kernels, so that tracing rejects what the real kernels reject, with
    the front door's messages: the user-level checks plus the kernels' exact dtypes (shift and
    scale in x's dtype, weight and bias float32, no float64).
    """
    require_tensor(op, "x", x)
    require_dtype(op, "x", x, _KERNEL_DTYPES)
    canonical_adaln_args(x, shift, scale, weight, bias, eps)
    for name, tensor in (("shift", shift), ("scale", scale)):
        require_dtype(op, name, tensor, (x.dtype,))
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None:
            require_dtype(op, name, tensor, (torch.float32,))


def check_canonical_adaln_bwd(op: str, dout, x, scale, weight, bias, mean, rstd, shift_per_token: bool) -> None:
    """The checks of the compiled / Triton ``adaln_bwd`` on its canonical arguments (fake kernels)."""
    check_canonical_adaln(op, x, scale, scale, weight, bias, 1.0)
    require_dtype(op, "dout", dout, (x.dtype,))
    require_shape(op, "dout", dout, tuple(x.shape), "(batch, S, H), as x")
    batch, tokens, hidden = x.shape
    if shift_per_token:
        require_shape(op, "scale", scale, (batch, tokens, hidden), "(batch, S, H) (shift_per_token=True)")
    else:
        require_shape(op, "scale", scale, (batch, hidden), "(batch, H) (shift_per_token=False)")
    for name, stat in (("mean", mean), ("rstd", rstd)):
        require_tensor(op, name, stat)
        require_dtype(op, name, stat, (torch.float32,))
        require_shape(op, name, stat, (batch, tokens), "(batch, S)")


def adaln_outputs_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty forward outputs of every compiled/triton backend: ``out`` like ``x (B, S, H)``,
    ``mean, rstd (B, S)`` float32 (the fake kernels return these)."""
    batch, tokens, _ = x.shape
    stats = x.new_empty((batch, tokens), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def adaln_grads_like(x, scale, weight, bias) -> tuple[torch.Tensor, ...]:
    """Empty backward outputs: ``dx`` like ``x``, ``dshift, dscale`` like ``scale``, ``dweight, dbias``
    like ``weight, bias`` or an empty (0,) float32 placeholder where they are absent."""
    def like(tensor):
        return x.new_empty((0,), dtype=torch.float32) if tensor is None else torch.empty_like(tensor)

    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale), like(weight), like(bias)
