"""Small argument-checking helpers shared by the ops' ``checks`` modules.

Every message names the argument, what was expected and what was given.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_tensor(op: str, name: str, value, optional: bool = False) -> torch.Tensor | None:
    if value is None:
        if optional:
            return None
        raise TypeError(f"{op}: `{name}` is required, got None")
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_dtype(op: str, name: str, tensor: torch.Tensor, allowed: Iterable[torch.dtype]) -> None:
    allowed = tuple(allowed)
    if tensor.dtype not in allowed:
        kind = "complex" if tensor.is_complex() else ("integer" if not tensor.is_floating_point() else "floating")
        raise TypeError(
            f"{op}: `{name}` must have dtype {' | '.join(dtype_name(d) for d in allowed)}, "
            f"got {dtype_name(tensor.dtype)} ({kind})"
        )


def require_shape(op: str, name: str, tensor: torch.Tensor, expected: tuple[int, ...], described: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{op}: `{name}` must have shape {described} = {tuple(expected)}, got {tuple(tensor.shape)}")


def require_same_device(op: str, tensors: dict[str, torch.Tensor | None]) -> None:
    present = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = present[0]
    for name, tensor in present[1:]:
        if tensor.device != first.device:
            raise ValueError(
                f"{op}: all tensors must be on one device; `{first_name}` is on {first.device} "
                f"but `{name}` is on {tensor.device}"
            )


def contiguous_or_none(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.contiguous()
