"""Reference selective scan: plain differentiable PyTorch, the specification of every backend.

Mamba's selective state-space recurrence (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces", 2023, Algorithm 2 / Eq. 2a-2b with zero-order-hold A and Euler B):

    dt_t = softplus(delta_t + delta_bias)                (softplus optional, threshold 20)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t     (per channel, elementwise over N)
    y_t  = <C_t, h_t> + D * u_t
    out  = y * silu(z)

and its bidirectional form (Vision Mamba, Zhu et al. 2024): direction 0 scans forward in time,
direction 1 backward, ``out = (y_fwd + y_bwd) * silu(z)``.

Arithmetic in float32 (float64 for float64 inputs, which gradcheck uses); outputs in ``u``'s dtype.
The recurrence is a Python loop over time, so gradients come from autograd: this is the ground truth
for every kernel's backward, not a fast path. Memory is O(batch * dim * L * N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stmodels.ops.selective_scan.checks import ScanArgs

__all__ = ["scan_reference_kernel", "scan_one_direction"]


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _per_channel(weights: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """B or C as (batch, dim, N, L) for variable (batch, G, N, L) input, or (dim, N) unchanged."""
    weights = weights.to(dtype)
    if weights.dim() == 2:
        return weights
    groups = weights.shape[1]
    return weights.repeat_interleave(dim // groups, dim=1)


def scan_one_direction(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
    reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of the scan, without the gate.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N).
        B, C: (batch, G, N, L) variable or (dim, N) constant in time.
        D, delta_bias: (dim,) or None.
        initial_state: (batch, dim, N) or None (zeros).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        reverse: scan t = L-1, ..., 0.

    Returns:
        y: (batch, dim, L) in the compute dtype (float32, or float64 for float64 ``u``), and
        last_state: (batch, dim, N), the state after the last step of the scan order.
    """
    dtype = _compute_dtype(u)
    batch, dim, length = u.shape
    u_c = u.to(dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)  # PyTorch's softplus: beta 1, threshold 20, as the spec says
    A_c = A.to(dtype)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", dt, A_c))
    B_c = _per_channel(B, dim, dtype)
    C_c = _per_channel(C, dim, dtype)
    if B_c.dim() == 2:
        drive = torch.einsum("bdl,dn->bdln", dt * u_c, B_c)
    else:
        drive = torch.einsum("bdl,bdnl->bdln", dt * u_c, B_c)

    state = (
        initial_state.to(dtype)
        if initial_state is not None
        else u_c.new_zeros(batch, dim, A.shape[-1])
    )
    outputs: list[torch.Tensor] = [None] * length  # type: ignore[list-item]
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        state = decay[:, :, t] * state + drive[:, :, t]
        readout = C_c if C_c.dim() == 2 else C_c[:, :, :, t]
        outputs[t] = (state * readout).sum(-1)
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_c
    return y, state


def scan_reference_kernel(args: ScanArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference backend on canonical arguments.

    Returns:
        out: (batch, dim, L) in ``u``'s dtype.
        last_state: (batch, dim, N), or (2, batch, dim, N) when bidirectional; float32 (float64
        for float64 inputs).
    """
    directions = (False, True) if args.bidirectional else (args.reverse,)
    y_total = None
    last_states = []
    for k, reverse in enumerate(directions):
        y, last = scan_one_direction(
            args.direction("u", k),
            args.direction("delta", k),
            args.direction("A", k),
            args.direction("B", k),
            args.direction("C", k),
            args.direction("D", k),
            args.direction("delta_bias", k),
            args.initial_state,
            args.delta_softplus,
            reverse,
        )
        y_total = y if y_total is None else y_total + y
        last_states.append(last)
    if args.z is not None:
        y_total = y_total * F.silu(args.z.to(y_total.dtype))
    last_state = torch.stack(last_states) if args.bidirectional else last_states[0]
    return y_total.to(args.u.dtype), last_state
