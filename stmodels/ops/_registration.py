"""The PyTorch glue every compiled (``cpu``/``cuda``) and ``triton`` backend needs, written once.

Each of those backends is a pair of operators: a forward that returns the outputs and what its
backward needs (statistics, saved states), and a backward. For both kinds of pair (the C++ ops of
``csrc/ops.cpp`` and the ``torch.library.custom_op``\\ s of the triton backends) PyTorch needs the
same three registrations: a fake (meta) kernel per operator, so that ``torch.compile`` and
``torch.library.opcheck`` can trace them, and autograd on the forward, whose backward calls the
backward operator. The fake kernels validate through the op's Python checks (``checks.py``), so a
traced call fails with the message an eager call gives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["register_op_pair"]

_registered: set[str] = set()


def register_op_pair(
    forward: str,
    backward: str,
    *,
    fake_forward: Callable,
    fake_backward: Callable,
    setup_context: Callable,
    backward_fn: Callable,
) -> None:
    """Register fake kernels for ``forward`` and ``backward`` and autograd for ``forward``, once.

    Args:
        forward, backward: qualified operator names, e.g. ``"stmodels::adaln_fwd"``.
        fake_forward, fake_backward: the operators' fake kernels (same arguments, empty outputs).
        setup_context, backward_fn: ``torch.library.register_autograd``'s pair for ``forward``.
    """
    if forward in _registered:  # a re-imported module must not register twice (PyTorch raises)
        return
    torch.library.register_fake(forward)(fake_forward)
    torch.library.register_fake(backward)(fake_backward)
    torch.library.register_autograd(forward, backward_fn, setup_context=setup_context)
    _registered.add(forward)
