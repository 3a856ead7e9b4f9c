"""Backend registry: which implementation of an op runs for a given set of inputs.

A :class:`Backend` describes one implementation family (``reference``, ``cpu``, ``cuda``,
``triton``): the devices and dtypes it serves, whether it is deterministic, whether it is available
in this process, and why it cannot run a given call. Each op registers one kernel per backend with
:func:`register_kernel`; its front door asks :func:`select_kernel` for the one to run.

Selection:
    * an explicit ``backend=`` argument wins, then the innermost :func:`use_backend` context, then
      the ``STMODELS_BACKEND`` environment variable, then ``"auto"``;
    * ``"auto"`` walks :data:`AUTO_PRIORITY` for the device of the inputs and takes the first
      backend with no reasons against it;
    * an explicit backend that cannot run raises :class:`BackendNotSupportedError` listing every
      reason; it never silently falls back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from stmodels import _ext

__all__ = [
    "AUTO",
    "AUTO_PRIORITY",
    "Backend",
    "BackendNotSupportedError",
    "BACKENDS",
    "backend_names",
    "current_backend",
    "get_backend",
    "register_kernel",
    "select_kernel",
    "use_backend",
    "kernels_of",
    "missing_kernel_reasons",
    "kernel_missing_reasons",
]

AUTO = "auto"
ENV_VARIABLE = "STMODELS_BACKEND"

#: Order in which ``auto`` tries backends, per device type of the inputs.
AUTO_PRIORITY: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}

FLOATING = (torch.float32, torch.float16, torch.bfloat16)


class BackendNotSupportedError(RuntimeError):
    """An explicitly requested backend cannot run the given inputs; the message lists why."""


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _extension_reason() -> str | None:
    return _ext.load_error()


def _cuda_kernels_reason() -> str | None:
    reason = _ext.load_error()
    if reason is not None:
        return reason
    if not _ext.has_cuda_kernels():
        return (
            "stmodels._C was built without CUDA kernels (torch without CUDA or no CUDA toolkit at "
            "build time); rebuild on a CUDA machine, or with FORCE_CUDA=1"
        )
    return None


def _triton_reason() -> str | None:
    # find_spec, not import: importing triton costs a second and is only needed to run its kernels.
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed; `pip install stmodels[triton]`"
    return None


@dataclass(frozen=True)
class Backend:
    """One implementation family of the ops.

    Args:
        name: the name users pass as ``backend=``.
        devices: device types (``"cpu"``, ``"cuda"``) whose tensors it accepts.
        dtypes: floating dtypes of the main input (``u`` or ``x``) it accepts.
        deterministic: whether repeated runs on the same inputs give bit-identical results.
        description: one line for ``python -m stmodels.info``.
        availability: returns why the backend cannot run in this process, or None.
        extra_devices: returns device types accepted in addition to ``devices`` right now
            (Triton accepts CPU tensors under ``TRITON_INTERPRET=1``).
    """

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    deterministic: bool
    description: str
    availability: Callable[[], str | None] = field(default=lambda: None, repr=False)
    extra_devices: Callable[[], tuple[str, ...]] = field(default=lambda: (), repr=False)

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run at all in this process, or None (decided once, at import)."""
        return _UNAVAILABLE.get(self.name) if self.name in _UNAVAILABLE else self.availability()

    def is_available(self) -> bool:
        return self.unavailable_reason() is None

    def accepted_devices(self) -> tuple[str, ...]:
        return self.devices + tuple(d for d in self.extra_devices() if d not in self.devices)

    def reasons_not_supported(self, tensors: Mapping[str, torch.Tensor | None], main: str) -> list[str]:
        """Every reason this backend cannot run a call with these (already validated) inputs.

        Args:
            tensors: the call's tensor arguments by name (None for absent optional ones).
            main: the name of the tensor whose dtype selects the kernel (``"u"`` or ``"x"``).
        """
        reasons = []
        unavailable = self.unavailable_reason()
        if unavailable is not None:
            reasons.append(unavailable)
        accepted = self.accepted_devices()
        for name, tensor in tensors.items():
            if tensor is not None and tensor.device.type not in accepted:
                hint = ""
                if self.name == "triton" and tensor.device.type == "cpu":
                    hint = " (set TRITON_INTERPRET=1 to run Triton kernels on the CPU through its interpreter)"
                reasons.append(
                    f"`{self.name}` runs on {', '.join(accepted)} tensors, but `{name}` is on "
                    f"{tensor.device}{hint}"
                )
                break
        main_tensor = tensors[main]
        if main_tensor.dtype not in self.dtypes:
            accepted_dtypes = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reasons.append(
                f"`{self.name}` supports {main} of dtype {accepted_dtypes}, got {main_tensor.dtype}"
            )
        return reasons


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend(
            name="reference",
            devices=("cpu", "cuda"),
            dtypes=FLOATING + (torch.float64,),
            deterministic=True,
            description="plain differentiable PyTorch: the specification and the ground truth",
        ),
        Backend(
            name="cpu",
            devices=("cpu",),
            dtypes=FLOATING,
            deterministic=True,
            description="C++ kernels of stmodels._C, multi-threaded and vectorised",
            availability=_extension_reason,
        ),
        Backend(
            name="cuda",
            devices=("cuda",),
            dtypes=FLOATING,
            deterministic=True,
            description="CUDA C++ kernels of stmodels._C",
            availability=_cuda_kernels_reason,
        ),
        Backend(
            name="triton",
            devices=("cuda",),
            dtypes=FLOATING,
            deterministic=True,
            description="Triton kernels (CPU tensors too under TRITON_INTERPRET=1)",
            availability=_triton_reason,
            extra_devices=lambda: ("cpu",) if _triton_interpreting() else (),
        ),
    )
}

# Availability cannot change within a process (the extension loads once); deciding it here keeps the
# per-call selection plain Python over tensor metadata, which torch.compile traces without breaks.
_UNAVAILABLE: dict[str, str | None] = {name: backend.availability() for name, backend in BACKENDS.items()}

# op name -> backend name -> (kernel, extra reasons for a call)
_KERNELS: dict[str, dict[str, tuple[Callable, Callable[..., list[str]] | None]]] = {}
_MISSING: dict[str, dict[str, list[str]]] = {}

# use_backend's stack, per thread (threading.local, unlike a ContextVar, is traceable by torch.compile).
_context = threading.local()


def _context_stack() -> list[str]:
    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    return stack


def backend_names() -> tuple[str, ...]:
    """Names accepted by ``backend=``: ``"auto"`` and every registered backend."""
    return (AUTO,) + tuple(BACKENDS)


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or name not in backend_names():
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {', '.join(backend_names())}")
    return name


def get_backend(name: str) -> Backend:
    """The :class:`Backend` called ``name``."""
    _check_name(name, "get_backend")
    if name == AUTO:
        raise ValueError("get_backend: 'auto' is a selection rule, not a backend")
    return BACKENDS[name]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the ``with`` block, ops called with ``backend=None`` or ``"auto"`` use ``name``.

    Example:
        >>> with stmodels.ops.use_backend("reference"):
        ...     out = stmodels.ops.selective_scan(u, delta, A, B, C)
    """
    stack = _context_stack()
    stack.append(_check_name(name, "use_backend"))
    try:
        yield
    finally:
        stack.pop()


def current_backend() -> str:
    """The default backend now: the innermost :func:`use_backend`, else ``STMODELS_BACKEND``, else auto."""
    stack = getattr(_context, "stack", None)
    if stack:
        return stack[-1]
    from_env = os.environ.get(ENV_VARIABLE)
    if from_env:
        return _check_name(from_env.strip(), f"environment variable {ENV_VARIABLE}")
    return AUTO


def register_kernel(op: str, backend: str, kernel: Callable, extra_reasons: Callable[..., list[str]] | None = None,
                    missing: list[str] | None = None):
    """Register ``kernel`` as the implementation of ``op`` for ``backend``.

    Args:
        extra_reasons: ``extra_reasons(args) -> list[str]``, op-specific limits of one call (e.g. a
            maximum state size).
        missing: reasons the kernel cannot run at all in this process (e.g. the loaded binary
            lacks it), shown by ``python -m stmodels.info`` too.
    """
    get_backend(backend)
    _KERNELS.setdefault(op, {})[backend] = (kernel, extra_reasons)
    _MISSING.setdefault(op, {})[backend] = list(missing or [])


def kernel_missing_reasons(op: str, backend: str) -> list[str]:
    """Why ``backend``'s kernel for ``op`` cannot run in this process at all ([] when it can)."""
    if backend not in _KERNELS.get(op, {}):
        return [f"`{backend}` has no kernel for {op} (implemented: {', '.join(kernels_of(op)) or 'none'})"]
    return list(_MISSING[op][backend])


def missing_kernel_reasons(op_prefix: str, dispatch_key: str) -> list[str]:
    """Reasons a compiled backend cannot run: the loaded binary lacks ``stmodels::<op_prefix>_fwd/_bwd``
    kernels for ``dispatch_key`` (an old or partial build). Decided once, when the op registers."""

    def has_kernel(name: str) -> bool:
        try:
            return torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
        except RuntimeError:  # the operator itself is not registered
            return False

    if not _ext.available():
        return []  # the backend's own availability already says why
    missing = [f"stmodels::{op_prefix}{suffix}" for suffix in ("_fwd", "_bwd")
               if not has_kernel(f"stmodels::{op_prefix}{suffix}")]
    if not missing:
        return []
    return [f"the loaded stmodels._C has no {dispatch_key} kernel for {', '.join(missing)}; {_ext.REBUILD_HINT}"]


def kernels_of(op: str) -> tuple[str, ...]:
    """Backends that registered a kernel for ``op``."""
    return tuple(_KERNELS.get(op, {}))


def _reasons(op: str, backend: str, args, tensors: Mapping[str, torch.Tensor | None], main: str) -> list[str]:
    reasons = BACKENDS[backend].reasons_not_supported(tensors, main) + kernel_missing_reasons(op, backend)
    entry = _KERNELS.get(op, {}).get(backend)
    if entry is not None and entry[1] is not None and not reasons:
        reasons += entry[1](args)
    return reasons


_mismatch_warned = False


def _warn_torch_mismatch_once() -> None:
    """``auto`` skipped the compiled backends because the binary is for another torch: say so once."""
    global _mismatch_warned
    if not _mismatch_warned:
        _mismatch_warned = True
        warnings.warn(f"{_ext.torch_mismatch()}; until then `auto` runs the slower fallback backends",
                      RuntimeWarning, stacklevel=4)


def select_kernel(op: str, backend: str | None, args, tensors: Mapping[str, torch.Tensor | None], main: str,
                  caller: str | None = None):
    """Pick the kernel that runs ``op`` for these inputs; returns ``(backend_name, kernel)``.

    Args:
        op: the op name (``"selective_scan"``, ``"adaln_modulate"``).
        backend: the caller's ``backend=`` (None or ``"auto"`` follow :func:`current_backend`).
        args: the op's validated, canonical arguments (passed to ``extra_reasons``).
        tensors: the call's tensors by argument name.
        main: the argument whose dtype selects the kernel.
        caller: the front door named in error messages (default ``op``; e.g. ``bi_selective_scan``).
    """
    where = caller or op
    name = current_backend() if backend is None or backend == AUTO else _check_name(backend, where)
    if name != AUTO:
        reasons = _reasons(op, name, args, tensors, main)
        if reasons:
            listed = "\n".join(f"  - {reason}" for reason in reasons)
            raise BackendNotSupportedError(f"{where}: backend {name!r} cannot run these inputs:\n{listed}")
        return name, _KERNELS[op][name][0]
    device = tensors[main].device.type
    tried = []
    for candidate in AUTO_PRIORITY.get(device, ("reference",)):
        reasons = _reasons(op, candidate, args, tensors, main)
        if not reasons:
            if tried and _ext.torch_mismatch() is not None:
                _warn_torch_mismatch_once()
            return candidate, _KERNELS[op][candidate][0]
        tried.append(f"  - {candidate}: {'; '.join(reasons)}")
    raise BackendNotSupportedError(f"{where}: no backend can run these inputs:\n" + "\n".join(tried))
