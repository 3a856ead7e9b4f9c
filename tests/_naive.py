"""Naive float64 loops that restate the spec of docs/ops.rst element by element.

They check the references, which in turn are the ground truth for every backend.
"""

from __future__ import annotations

import math

import numpy as np


def _softplus(x: float) -> float:
    return x if x > 20 else math.log1p(math.exp(x))


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=False, reverse=False,
               h0=None, gate=True):
    """One direction on numpy float64 arrays. B, C: (b, G, N, L) or (d, N). Returns (y or out, last)."""
    batch, dim, length = u.shape
    N = A.shape[1]
    y = np.zeros((batch, dim, length))
    last = np.zeros((batch, dim, N))
    for b in range(batch):
        for d in range(dim):
            h = np.zeros(N) if h0 is None else h0[b, d].copy()
            order = range(length - 1, -1, -1) if reverse else range(length)
            for t in order:
                dt = delta[b, d, t] + (0.0 if delta_bias is None else delta_bias[d])
                if softplus:
                    dt = _softplus(dt)
                for n in range(N):
                    if B.ndim == 2:
                        b_val = B[d, n]
                    else:
                        b_val = B[b, d // (dim // B.shape[1]), n, t]
                    if C.ndim == 2:
                        c_val = C[d, n]
                    else:
                        c_val = C[b, d // (dim // C.shape[1]), n, t]
                    h[n] = math.exp(dt * A[d, n]) * h[n] + dt * b_val * u[b, d, t]
                    y[b, d, t] += c_val * h[n]
                if D is not None:
                    y[b, d, t] += D[d] * u[b, d, t]
            last[b, d] = h
    if z is not None and gate:
        y = y * z / (1 + np.exp(-z))
    return y, last


def naive_adaln(x, shift, scale, weight=None, bias=None, eps=1e-6):
    """x: (b, S, H); shift/scale (b, H) or (b, S, H); numpy float64."""
    batch, tokens, hidden = x.shape
    out = np.zeros_like(x)
    for b in range(batch):
        for s in range(tokens):
            row = x[b, s]
            mean = row.sum() / hidden
            var = ((row - mean) ** 2).sum() / hidden
            norm = (row - mean) / math.sqrt(var + eps)
            if weight is not None:
                norm = norm * weight
            if bias is not None:
                norm = norm + bias
            sh = shift[b] if shift.ndim == 2 else shift[b, s]
            sc = scale[b] if scale.ndim == 2 else scale[b, s]
            out[b, s] = norm * (1 + sc) + sh
    return out
