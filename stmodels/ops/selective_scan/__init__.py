"""Selective scan (Mamba's S6 recurrence): the front doors ``selective_scan`` and ``bi_selective_scan``.

See :mod:`stmodels.ops.selective_scan.reference` for the math and ``csrc/ops.cpp`` for the canonical
argument forms every backend takes.
"""

from __future__ import annotations

import torch

from stmodels.ops._backend import register_kernel, select_kernel
from stmodels.ops.selective_scan import compiled, triton
from stmodels.ops.selective_scan.checks import OP, ScanArgs, canonical_scan_args
from stmodels.ops.selective_scan.reference import scan_reference_kernel

__all__ = ["selective_scan", "bi_selective_scan", "selective_scan_ref", "bi_selective_scan_ref", "ScanArgs"]

# One kernel per backend; each backend module states its own limits (see docs/ops.rst).
register_kernel(OP, "reference", scan_reference_kernel)
compiled.register(OP)
triton.register(OP)


#: Device types with an autocast state (torch.is_autocast_enabled raises for others, e.g. meta).
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla")


def _autocast_activations(u, delta, B, C, z):
    """Under autocast, bring the activations to autocast's dtype.

    Inside an autocast region some producers run in float32 (e.g. elementwise ops on float32
    parameters) while matmuls give bfloat16 / float16, so ``u`` and ``delta`` can arrive in
    different dtypes. The scan wants one activation dtype; like autocast's own matmuls, it takes
    the autocast dtype. A, D, delta_bias and initial_state stay float32 (the kernels' parameter
    dtype), as do float32 B / C, which the kernels accept as they are. float64 is never touched.
    """
    if not isinstance(u, torch.Tensor):  # the argument checks report it
        return u, delta, B, C, z
    device_type = u.device.type
    if device_type not in _AUTOCAST_DEVICES:  # e.g. meta: the backend selection reports the device
        return u, delta, B, C, z
    if not torch.is_autocast_enabled(device_type) or u.dtype == torch.float64:
        return u, delta, B, C, z
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t, keep_float32=False):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == dtype or (keep_float32 and t.dtype == torch.float32):
            return t
        return t.to(dtype)

    return cast(u), cast(delta), cast(B, True), cast(C, True), cast(z)



def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    backend: str | None = "auto",
):
    """Selective scan, a drop-in for mamba_ssm's ``selective_scan_fn`` (plus reverse and initial state).

    With ``dt = delta + delta_bias`` (``softplus(dt)`` when ``delta_softplus``), for t = 0..L-1
    (t = L-1..0 when ``reverse``)::

        h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
        y_t = sum_n C_t[n] * h_t[n] + D * u_t
        out = y * silu(z)   (or y without z)

    Args:
        u: (batch, dim, L), float32 | float16 | bfloat16 (float64 on the reference backend).
        delta: (batch, dim, L), same dtype as ``u``.
        A: (dim, N), float32, real.
        B, C: (batch, N, L), or (batch, G, N, L) with G groups (channel d uses group
            d // (dim // G)), or (dim, N) constant in time; float32 or ``u``'s dtype.
        D: (dim,) float32, optional skip connection.
        z: (batch, dim, L), ``u``'s dtype, optional gate.
        delta_bias: (dim,) float32, optional.
        delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        reverse: scan from the last time step to the first.
        initial_state: (batch, dim, N) float32, optional (zeros when absent).
        return_last_state: also return the state after the last step.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        out: (batch, dim, L) in ``u``'s dtype (autocast's dtype inside an autocast region, where
        u, delta, z and low-precision B, C are cast to it); and ``last_state`` (batch, dim, N) float32 when
        ``return_last_state``. Internal arithmetic is float32. Gradients flow to u, delta, A, B, C,
        D, z, delta_bias and initial_state, from ``out`` and from ``last_state`` alike (so a long
        sequence scanned in chunks chained through the state gets the gradients of one scan).
    """
    if not isinstance(return_last_state, bool):
        raise TypeError(f"selective_scan: `return_last_state` must be a bool, got {type(return_last_state).__name__}")
    u, delta, B, C, z = _autocast_activations(u, delta, B, C, z)
    args = canonical_scan_args(
        "selective_scan", u, delta, A, B, C, D, z, delta_bias, initial_state,
        delta_softplus=delta_softplus, reverse=reverse, bidirectional=False,
    )
    _, kernel = select_kernel(OP, backend, args, args.tensors(), "u")
    out, last_state = kernel(args)
    return (out, last_state) if return_last_state else out


def bi_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    backend: str | None = "auto",
) -> torch.Tensor:
    """Both directions of the selective scan in one call, without flips.

    Direction 0 scans forward in time, direction 1 backward; all tensors stay in the original time
    order. ``out = (y_fwd + y_bwd) * silu(z)`` (or the sum without ``z``), equal to Vision Mamba's
    two-call form ``y_fwd + flip(scan(flip(direction-1 inputs)))``.

    Args:
        u, delta: (batch, dim, L) shared, or (2, batch, dim, L) per direction.
        A: (dim, N) or (2, dim, N), float32.
        B, C: (batch, [G,] N, L) or (dim, N) shared, or the same with a leading axis of size 2.
        D, delta_bias: (dim,) or (2, dim), float32, optional.
        z: (batch, dim, L), optional gate, shared by both directions.
        delta_softplus: apply softplus to ``delta + delta_bias``. The default, True, differs from
            :func:`selective_scan`'s False on purpose (documented in docs/ops.rst): ``selective_scan``
            keeps mamba_ssm's ``selective_scan_fn`` default, while the bidirectional op serves Mamba
            blocks, which always pass True.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"`` or ``"triton"``.

    Returns:
        out: (batch, dim, L) in ``u``'s dtype. Gradients of shared inputs sum both directions.
    """
    u, delta, B, C, z = _autocast_activations(u, delta, B, C, z)
    args = canonical_scan_args(
        "bi_selective_scan", u, delta, A, B, C, D, z, delta_bias, None,
        delta_softplus=delta_softplus, reverse=False, bidirectional=True,
    )
    _, kernel = select_kernel(OP, backend, args, args.tensors(), "u", caller="bi_selective_scan")
    return kernel(args)[0]


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       reverse=False, initial_state=None, return_last_state=False):
    """:func:`selective_scan` on the ``reference`` backend (same arguments and returns)."""
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, initial_state,
                          return_last_state, backend="reference")


def bi_selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """:func:`bi_selective_scan` on the ``reference`` backend (same arguments and returns)."""
    return bi_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, backend="reference")
