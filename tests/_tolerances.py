"""The one tolerance table of the test suite, keyed by (op, dtype, "fwd" | "bwd").

Every backend is judged by the rule of docs/testing.rst, applied to every dtype: on the same inputs (rounded
to the dtype under test), the error of the backend against the reference run in float64 must stay
within 2 x the error of the reference itself run in the dtype under test, plus the slack of this
table. Errors are normwise, ``max|actual - expected| / max|expected|``, so a gradient summed over
many terms is judged against its own scale. Tying the budget to the reference's own rounding keeps
ill-conditioned cases honest (LayerNorm's dx at H = 2 is pure cancellation) without loosening the
slack for well-conditioned ones.
"""

from __future__ import annotations

import torch

TOLERANCES: dict[tuple[str, torch.dtype, str], float] = {
    ("selective_scan", torch.float32, "fwd"): 2e-6,
    ("selective_scan", torch.float32, "bwd"): 1e-5,
    ("selective_scan", torch.float16, "fwd"): 1e-3,
    ("selective_scan", torch.float16, "bwd"): 1e-3,
    ("selective_scan", torch.bfloat16, "fwd"): 8e-3,
    ("selective_scan", torch.bfloat16, "bwd"): 8e-3,
    ("adaln_modulate", torch.float32, "fwd"): 1e-6,
    ("adaln_modulate", torch.float32, "bwd"): 2e-6,
    ("adaln_modulate", torch.float16, "fwd"): 1e-3,
    ("adaln_modulate", torch.float16, "bwd"): 1e-3,
    ("adaln_modulate", torch.bfloat16, "fwd"): 8e-3,
    ("adaln_modulate", torch.bfloat16, "bwd"): 8e-3,
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


def assert_matches(op: str, dtype: torch.dtype, mode: str, name: str, actual, expected, reference_in_dtype):
    """Assert ``actual`` (a backend, inputs in ``dtype``) matches ``expected`` (the float64 reference).

    ``reference_in_dtype`` is the reference run on the same inputs in ``dtype``.
    """
    error = normwise_error(actual, expected)
    budget = 2 * normwise_error(reference_in_dtype, expected) + TOLERANCES[(op, dtype, mode)]
    assert error <= budget, f"{op} {mode} `{name}` ({dtype}): normwise error {error:.3g} > budget {budget:.3g}"
