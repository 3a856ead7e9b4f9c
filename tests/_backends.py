"""Which backends the layer-2 tests compare against the reference, and on which device."""

from __future__ import annotations

import os

import pytest
import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def backend_params(*names: str):
    """pytest params for the given backends with the marks that skip them at collection."""
    marks = {
        "cpu": [pytest.mark.needs_ext],
        "cuda": [pytest.mark.needs_ext, pytest.mark.needs_cuda],
        "triton": [pytest.mark.triton_interpret],
    }
    return [pytest.param(name, marks=marks[name], id=name) for name in names]


def device_for(backend: str) -> torch.device:
    if backend == "cuda":
        return torch.device("cuda")
    if backend == "triton":
        if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device("cpu")


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
