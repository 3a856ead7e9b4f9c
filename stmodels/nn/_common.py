"""Helpers shared by the blocks of :mod:`stmodels.nn`."""

from __future__ import annotations

from stmodels.ops import backend_names

__all__ = ["check_backend_name"]


def check_backend_name(backend: str | None, where: str) -> str | None:
    """Validate a block's ``backend=`` argument early, so a typo fails at construction, not mid-training.

    Args:
        backend: None (follow :func:`stmodels.ops.current_backend` at call time) or a name from
            :func:`stmodels.ops.backend_names`.
        where: the block's name, for the message.

    Returns:
        ``backend`` unchanged.
    """
    if backend is not None and backend not in backend_names():
        raise ValueError(
            f"{where}: unknown backend {backend!r}; expected None or one of {', '.join(backend_names())}"
        )
    return backend
