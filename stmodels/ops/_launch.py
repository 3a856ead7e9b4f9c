"""Launch arithmetic shared by the triton backends, kept free of ``import triton``.

The backends' launch modules (``stmodels/ops/<op>/triton.py``) are imported with ``stmodels.ops`` so
that their limits and custom ops are known to the registry; importing triton itself costs about a
second, so it waits for the first kernel launch (``triton_kernels.py``).
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["INTERPRETING", "cdiv", "next_power_of_2", "on_device"]

#: Triton's interpreter (CPU tensors, programs run one after another in Python). Triton reads it
#: when the kernels are defined, so the launch code reads it once, at import, too.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b`` (``triton.cdiv``)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``; ``triton.next_power_of_2``)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def on_device(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the inputs' device for the launch."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
