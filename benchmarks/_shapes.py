"""Benchmark shapes of docs/performance.rst and the inputs built from them."""

from __future__ import annotations

import torch

# Scan, CPU: batch 2, dim 256, L 512, N 16, float32, variable B/C, D, z, delta_bias, softplus.
SCAN_CPU = dict(batch=2, dim=256, length=512, N=16, dtype=torch.float32)
# AdaLN, CPU: x (8, 256, 384) float32.
ADALN_CPU = dict(batch=8, tokens=256, hidden=384, dtype=torch.float32)


def scan_inputs(batch, dim, length, N, dtype, device="cpu", per_direction=True, seed=0):
    """Bidirectional scan inputs with per-direction parameters (leading axis 2), and z shared."""
    g = torch.Generator().manual_seed(seed)
    lead = (2,) if per_direction else ()

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    return dict(
        u=randn(*lead, batch, dim, length).to(device, dtype),
        delta=randn(*lead, batch, dim, length, scale=0.5).sub(1.0).to(device, dtype),
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(*lead, dim, 1).to(device),
        B=randn(*lead, batch, N, length).to(device, dtype),
        C=randn(*lead, batch, N, length).to(device, dtype),
        D=torch.ones(*lead, dim, device=device),
        z=randn(batch, dim, length).to(device, dtype),
        delta_bias=randn(*lead, dim, scale=0.1).to(device),
    )


def adaln_inputs(batch, tokens, hidden, dtype, device="cpu", per_token=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    mod_shape = (batch, tokens, hidden) if per_token else (batch, hidden)
    return dict(
        x=torch.randn(batch, tokens, hidden, generator=g).to(device, dtype),
        shift=torch.randn(*mod_shape, generator=g).mul(0.1).to(device, dtype),
        scale=torch.randn(*mod_shape, generator=g).mul(0.1).to(device, dtype),
    )


def requiring_grad(tensors: dict) -> dict:
    return {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in tensors.items()}

# GPU shapes of docs/performance.rst. Scan: batch 8, dim 2048, L 2048, N 16, bfloat16; also the
# DIFFUMA shapes (scan="spacetime": L = T_in*H'*W' = 10*16*16 per sample; scan="time": L = 10 over
# batch*H'*W' sequences). AdaLN: (8, 2048, 2048) bfloat16.
SCAN_GPU = dict(batch=8, dim=2048, length=2048, N=16, dtype=torch.bfloat16)
SCAN_GPU_SPACETIME = dict(batch=8, dim=128, length=10 * 16 * 16, N=16, dtype=torch.bfloat16)
SCAN_GPU_TIME = dict(batch=8 * 16 * 16, dim=128, length=10, N=16, dtype=torch.bfloat16)
ADALN_GPU = dict(batch=8, tokens=2048, hidden=2048, dtype=torch.bfloat16)
