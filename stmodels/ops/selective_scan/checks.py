"""Argument checks and the canonical form shared by every selective-scan backend.

The front doors accept the user-facing shapes of ``docs/ops.rst``; :func:`canonical_scan_args`
validates them (before any kernel runs) and converts them to the canonical form that every backend
and the fake kernels take (see ``csrc/ops.cpp``):

* ``u, delta, z``: ``(batch, dim, L)``; ``u`` and ``delta`` may be ``(2, batch, dim, L)`` per
  direction in the bidirectional op;
* ``A``: ``(dim, N)`` or ``(2, dim, N)``;
* ``B, C``: variable ``(batch, G, N, L)`` (a ``(batch, N, L)`` input gets ``G = 1``) or constant
  ``(dim, N)``, each optionally with a leading direction axis;
* ``D, delta_bias``: ``(dim,)`` or ``(2, dim)``; ``initial_state``: ``(batch, dim, N)``.

In ``bi_selective_scan`` a tensor is read as per-direction when it has one more axis than its shared
form and that leading axis has size 2. The spec's shapes overlap in two places, and the
per-direction reading (the common one) wins in both:

* batch 2: ``B`` or ``C`` of shape ``(2, 2, N, L)`` is per-direction without groups, not shared
  with 2 groups; give such a shared grouped tensor as ``B.expand(2, *B.shape)``;
* batch 2 and dim == N == L: ``(2, dim, N)`` is per-direction constant, not shared ``(batch, N, L)``;
  give such a shared tensor as ``B.unsqueeze(1)`` (one group).

Both alternatives compute the same output as the intended reading.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stmodels.ops._validate import (
    ACTIVATION_DTYPES,
    dtype_name,
    require_dtype,
    require_same_device,
    require_shape,
    require_tensor,
)

__all__ = ["OP", "ScanArgs", "canonical_scan_args", "check_canonical_scan", "scan_outputs_like", "scan_grads_like"]

#: The op's name in the backend registry.
OP = "selective_scan"


@dataclass(frozen=True)
class ScanArgs:
    """Validated, contiguous, canonical arguments of one selective-scan call."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None
    initial_state: torch.Tensor | None
    delta_softplus: bool
    reverse: bool
    bidirectional: bool
    batch: int
    dim: int
    length: int
    state_size: int

    def tensors(self) -> dict[str, torch.Tensor | None]:
        """The tensor arguments by name, in the order of the compiled op's schema."""
        return {
            "u": self.u, "delta": self.delta, "A": self.A, "B": self.B, "C": self.C, "D": self.D,
            "z": self.z, "delta_bias": self.delta_bias, "initial_state": self.initial_state,
        }

    def is_per_direction(self, name: str) -> bool:
        """Whether tensor ``name`` carries a leading direction axis (bidirectional calls only)."""
        shared_rank = {"u": 3, "delta": 3, "A": 2, "D": 1, "delta_bias": 1}
        tensor = getattr(self, name)
        if name in ("B", "C"):
            return tensor.dim() in (3, 5)
        return tensor.dim() == shared_rank[name] + 1

    def direction(self, name: str, k: int) -> torch.Tensor | None:
        """Tensor ``name`` as seen by direction ``k`` (drops the direction axis if it has one)."""
        tensor = getattr(self, name)
        if tensor is None or not self.bidirectional or not self.is_per_direction(name):
            return tensor
        return tensor[k]


def _param_dtypes(u: torch.Tensor) -> tuple[torch.dtype, ...]:
    # float64 parameters only alongside float64 activations (gradcheck of the reference).
    return (torch.float32, torch.float64) if u.dtype == torch.float64 else (torch.float32,)


def _per_direction(tensor: torch.Tensor, shared_rank: int, bidirectional: bool) -> bool:
    return bidirectional and tensor.dim() == shared_rank + 1 and tensor.shape[0] == 2


def _check_sizes(op: str, name: str, tensor: torch.Tensor, described: str) -> None:
    if any(size < 1 for size in tensor.shape):
        raise ValueError(f"{op}: `{name}` must have non-empty dims {described}, got {tuple(tensor.shape)}")


def _canonical_BC(op: str, name: str, tensor, u, batch: int, dim: int, length: int, N: int, bidirectional: bool):
    """Validate B or C and return it as (batch, G, N, L) / (dim, N), with an optional direction axis."""
    require_dtype(op, name, tensor, tuple(dict.fromkeys(_param_dtypes(u) + (u.dtype,))))
    lead = 0
    rank = tensor.dim()
    shape = tuple(tensor.shape)
    if bidirectional and shape[:1] == (2,):
        per_direction_plain = rank == 4 and shape[1:] == (batch, N, length)
        per_direction_constant = rank == 3 and shape[1:] == (dim, N)
        if rank == 5 and shape[1] == batch:
            lead = 1
        elif per_direction_plain:
            return tensor.unsqueeze(2).contiguous()
        elif per_direction_constant:
            return tensor.contiguous()
    core = tensor.shape[lead:]
    core_rank = rank - lead
    where = "per-direction " if lead else ""
    if core_rank == 2:
        require_shape(op, name, tensor, tuple(tensor.shape[:lead]) + (dim, N), f"{where}(dim, N) (constant in time)")
        return tensor.contiguous()
    if core_rank == 3:
        require_shape(op, name, tensor, (batch, N, length), "(batch, N, L)")
        return tensor.unsqueeze(1).contiguous()
    if core_rank == 4:
        groups = core[1]
        expected = tuple(tensor.shape[:lead]) + (batch, groups, N, length)
        require_shape(op, name, tensor, expected, f"{where}(batch, G, N, L)")
        if groups < 1 or dim % groups != 0:
            raise ValueError(f"{op}: the number of groups G={groups} of `{name}` must divide dim={dim}")
        return tensor.contiguous()
    shapes = "(batch, N, L), (batch, G, N, L) or (dim, N)"
    if bidirectional:
        shapes += ", each optionally with a leading direction axis of size 2"
    raise ValueError(f"{op}: `{name}` must have shape {shapes}; got {tuple(tensor.shape)}")


def canonical_scan_args(
    op: str,
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    initial_state=None,
    delta_softplus: bool = False,
    reverse: bool = False,
    bidirectional: bool = False,
) -> ScanArgs:
    """Validate a selective-scan call and return its canonical :class:`ScanArgs`.

    Raises:
        TypeError: a missing tensor, a non-tensor, an integer/complex/unsupported dtype.
        ValueError: wrong rank or shape, mismatched sizes, G not dividing dim, mixed devices.
    """
    u = require_tensor(op, "u", u)
    delta = require_tensor(op, "delta", delta)
    A = require_tensor(op, "A", A)
    B = require_tensor(op, "B", B)
    C = require_tensor(op, "C", C)
    D = require_tensor(op, "D", D, optional=True)
    z = require_tensor(op, "z", z, optional=True)
    delta_bias = require_tensor(op, "delta_bias", delta_bias, optional=True)
    initial_state = require_tensor(op, "initial_state", initial_state, optional=True)
    for flag_name, flag in (("delta_softplus", delta_softplus), ("reverse", reverse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{op}: `{flag_name}` must be a bool, got {type(flag).__name__}")
    require_same_device(op, {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                             "delta_bias": delta_bias, "initial_state": initial_state})

    require_dtype(op, "u", u, ACTIVATION_DTYPES)
    u_per_direction = _per_direction(u, 3, bidirectional)
    if u.dim() != 3 and not u_per_direction:
        expected = "(batch, dim, L) or (2, batch, dim, L)" if bidirectional else "(batch, dim, L)"
        raise ValueError(f"{op}: `u` must have shape {expected}, got {tuple(u.shape)}")
    batch, dim, length = u.shape[-3:]
    _check_sizes(op, "u", u, "(batch, dim, L)")

    require_dtype(op, "delta", delta, (u.dtype,))
    delta_lead = (2,) if _per_direction(delta, 3, bidirectional) else ()
    require_shape(op, "delta", delta, delta_lead + (batch, dim, length),
                  "(2, batch, dim, L)" if delta_lead else "(batch, dim, L)")

    if A.is_complex():
        raise TypeError(f"{op}: complex `A` is not supported; A must be real {dtype_name(torch.float32)}")
    require_dtype(op, "A", A, _param_dtypes(u))
    A_lead = (2,) if _per_direction(A, 2, bidirectional) else ()
    if A.dim() != 2 + len(A_lead):
        expected = "(dim, N) or (2, dim, N)" if bidirectional else "(dim, N)"
        raise ValueError(f"{op}: `A` must have shape {expected}, got {tuple(A.shape)}")
    N = A.shape[-1]
    require_shape(op, "A", A, A_lead + (dim, N), "(2, dim, N)" if A_lead else "(dim, N)")
    _check_sizes(op, "A", A, "(dim, N)")

    B = _canonical_BC(op, "B", B, u, batch, dim, length, N, bidirectional)
    C = _canonical_BC(op, "C", C, u, batch, dim, length, N, bidirectional)
    if B.dim() >= 4 and C.dim() >= 4 and B.shape[-3] != C.shape[-3]:
        # As in mamba_ssm: one group layout serves both projections.
        raise ValueError(
            f"{op}: variable `B` and `C` must have the same number of groups, got G={B.shape[-3]} for B "
            f"and G={C.shape[-3]} for C"
        )

    for name, vector in (("D", D), ("delta_bias", delta_bias)):
        if vector is None:
            continue
        require_dtype(op, name, vector, _param_dtypes(u))
        lead = (2,) if _per_direction(vector, 1, bidirectional) else ()
        require_shape(op, name, vector, lead + (dim,), "(2, dim)" if lead else "(dim,)")

    if z is not None:
        require_dtype(op, "z", z, (u.dtype,))
        require_shape(op, "z", z, (batch, dim, length), "(batch, dim, L)")

    if initial_state is not None:
        if bidirectional:
            raise ValueError(f"{op}: `initial_state` is only supported by the unidirectional selective_scan")
        require_dtype(op, "initial_state", initial_state, _param_dtypes(u))
        require_shape(op, "initial_state", initial_state, (batch, dim, N), "(batch, dim, N)")

    if bidirectional and reverse:
        raise ValueError(f"{op}: `reverse` is not an option of the bidirectional scan (direction 1 already runs backward)")

    def contiguous(t):
        return None if t is None else t.contiguous()

    return ScanArgs(
        u=u.contiguous(), delta=delta.contiguous(), A=A.contiguous(), B=B, C=C, D=contiguous(D),
        z=contiguous(z), delta_bias=contiguous(delta_bias), initial_state=contiguous(initial_state),
        delta_softplus=delta_softplus, reverse=reverse, bidirectional=bidirectional,
        batch=batch, dim=dim, length=length, state_size=N,
    )


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_canonical_scan(op: str, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus: bool,
                         reverse: bool, bidirectional: bool) -> ScanArgs:
    """The checks of the compiled / Triton scan on its canonical arguments (csrc/ops.cpp).

    Used by the fake (meta) kernels, so that tracing rejects what the real kernels reject, with
    the front door's messages: the user-level checks (which accept every canonical form) plus the
    kernels' dtypes (no float64; A, D, delta_bias, initial_state float32).
    """
    require_tensor(op, "u", u)
    require_dtype(op, "u", u, _KERNEL_DTYPES)
    args = canonical_scan_args(op, u, delta, A, B, C, D, z, delta_bias, initial_state,
                               delta_softplus=delta_softplus, reverse=reverse, bidirectional=bidirectional)
    for name, tensor in (("A", A), ("D", D), ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if tensor is not None:
            require_dtype(op, name, tensor, (torch.float32,))
    return args


def scan_outputs_like(u: torch.Tensor, A: torch.Tensor, bidirectional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty ``(out, last_state)`` of every compiled/triton forward (the fake kernels return these):
    ``out (batch, dim, L)`` in u's dtype, ``last_state (batch, dim, N)`` or ``(2, batch, dim, N)`` float32."""
    batch, dim, length = u.shape[-3:]
    state_shape = (2, batch, dim, A.shape[-1]) if bidirectional else (batch, dim, A.shape[-1])
    return u.new_empty((batch, dim, length)), u.new_empty(state_shape, dtype=torch.float32)


def scan_grads_like(*inputs: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Empty backward outputs, one per input (u, delta, A, B, C, D, z, delta_bias, initial_state): shaped
    and typed like it, or an empty (0,) float32 placeholder for an absent optional input."""
    u = inputs[0]

    def like(tensor):
        return u.new_empty((0,), dtype=torch.float32) if tensor is None else torch.empty_like(tensor)

    return tuple(like(t) for t in inputs)
