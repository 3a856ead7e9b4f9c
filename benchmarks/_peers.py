"""What a user could pick instead of our kernels, in pure PyTorch, measured in the same process.

* ``mambapy_bi_scan``: the ``mambapy`` package's parallel (Blelloch) scan, called once per direction
  with flips for the backward one, as Vision Mamba does with a unidirectional kernel.
* ``eager_adaln``: ``F.layer_norm`` followed by DiT's ``modulate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mambapy_direction(u, delta, A, B, C, D):
    """One direction with mambapy's pscan. u, delta: (batch, dim, L); B, C: (batch, N, L)."""
    from mambapy.pscan import pscan

    x = u.transpose(1, 2)  # (batch, L, dim)
    dt = delta.transpose(1, 2)
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (batch, L, dim, N)
    drive = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
    states = pscan(decay, drive)
    y = (states @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1) + D * x
    return y.transpose(1, 2)


def mambapy_bi_scan(u, delta, A, B, C, D, z, delta_bias):
    """bi_selective_scan(..., delta_softplus=True) with per-direction parameters via two pscan calls."""
    dt0 = F.softplus(delta[0] + delta_bias[0][:, None])
    dt1 = F.softplus(delta[1] + delta_bias[1][:, None])
    y_fwd = _mambapy_direction(u[0], dt0, A[0], B[0], C[0], D[0])
    flip = lambda t: t.flip(-1)  # noqa: E731
    y_bwd = flip(_mambapy_direction(flip(u[1]), flip(dt1), A[1], flip(B[1]), flip(C[1]), D[1]))
    return (y_fwd + y_bwd) * F.silu(z)


def eager_adaln(x, shift, scale):
    """DiT's ``modulate(LayerNorm(x), shift, scale)`` in eager PyTorch (eps 1e-6, no affine)."""
    normalized = F.layer_norm(x, (x.shape[-1],), eps=1e-6)
    if shift.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]
    return normalized * (1 + scale) + shift
