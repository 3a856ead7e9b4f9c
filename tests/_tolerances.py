"""The one tolerance table of the test suite, keyed by (op, dtype, "fwd" | "bwd").

float32 and float64 entries bound the normwise relative error
``max|actual - expected| / max|expected|`` of a backend against the reference run on the same
inputs. For float16 and bfloat16 the rule of DESIGN.md applies instead: the error of the backend
against the float32 reference must stay within 2 x the error of the reference itself run in that
dtype, plus the absolute slack ``LOW_PRECISION_ATOL`` (relative to max|expected|).
"""

from __future__ import annotations

import torch

TOLERANCES: dict[tuple[str, torch.dtype, str], float] = {
    ("selective_scan", torch.float32, "fwd"): 2e-5,
    ("selective_scan", torch.float32, "bwd"): 1e-4,
    ("adaln_modulate", torch.float32, "fwd"): 1e-5,
    ("adaln_modulate", torch.float32, "bwd"): 1e-5,
}

LOW_PRECISION_ATOL: dict[tuple[str, torch.dtype], float] = {
    ("selective_scan", torch.float16): 1e-3,
    ("selective_scan", torch.bfloat16): 8e-3,
    ("adaln_modulate", torch.float16): 1e-3,
    ("adaln_modulate", torch.bfloat16): 8e-3,
}


def normwise_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| in float64 (NaN when either has a NaN the other lacks)."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not torch.equal(torch.isnan(actual), torch.isnan(expected)):
        return float("nan")
    mask = ~torch.isnan(expected)
    if not mask.any():
        return 0.0
    scale = expected[mask].abs().max().clamp_min(1e-30)
    return float((actual[mask] - expected[mask]).abs().max() / scale)


def assert_matches(op: str, dtype: torch.dtype, mode: str, name: str, actual, expected, lowp_reference=None):
    """Assert ``actual`` (a backend) matches ``expected`` (the reference) by the table.

    For float16/bfloat16, ``expected`` is the float32 reference on the upcast inputs and
    ``lowp_reference`` the reference run in ``dtype``.
    """
    error = normwise_error(actual, expected)
    if dtype in (torch.float16, torch.bfloat16):
        assert lowp_reference is not None, "low-precision comparisons need the reference run in that dtype"
        budget = 2 * normwise_error(lowp_reference, expected) + LOW_PRECISION_ATOL[(op, dtype)]
    else:
        budget = TOLERANCES[(op, torch.float32 if dtype == torch.float64 else dtype, mode)]
    assert error <= budget, f"{op} {mode} `{name}` ({dtype}): normwise error {error:.3g} > {budget:.3g}"
