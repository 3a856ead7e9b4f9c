"""Functional ops with one front door each and several backends.

Front doors: :func:`selective_scan`, :func:`bi_selective_scan`, :func:`adaln_modulate`, each with
``backend="auto" | "reference" | "cpu" | "cuda" | "triton"``. See :mod:`stmodels.ops._backend` for
how a backend is chosen, :func:`use_backend` and the ``STMODELS_BACKEND`` environment variable.
"""

from stmodels.ops._backend import (
    AUTO_PRIORITY,
    BACKENDS,
    Backend,
    BackendNotSupportedError,
    backend_names,
    current_backend,
    get_backend,
    kernels_of,
    use_backend,
)
from stmodels.ops.adaln import adaln_modulate, adaln_modulate_ref
from stmodels.ops.selective_scan import (
    bi_selective_scan,
    bi_selective_scan_ref,
    selective_scan,
    selective_scan_ref,
)

__all__ = [
    "selective_scan",
    "bi_selective_scan",
    "adaln_modulate",
    "selective_scan_ref",
    "bi_selective_scan_ref",
    "adaln_modulate_ref",
    "use_backend",
    "current_backend",
    "backend_names",
    "get_backend",
    "kernels_of",
    "Backend",
    "BACKENDS",
    "AUTO_PRIORITY",
    "BackendNotSupportedError",
]
