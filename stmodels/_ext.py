"""The only module that imports the compiled extension `stmodels._C`.

Importing it registers the `torch.ops.stmodels.*` operators (CPU, and CUDA when built with CUDA).
A missing or broken extension never makes `import stmodels` fail: `load_error()` says why it is
missing and how to rebuild, and backends that need it report that as their reason.

The extension is loaded once, when this module is imported, and the answers below are plain module
constants: op front doors consult them on every call, also while torch.compile traces them.
"""

from __future__ import annotations

import json
import os

__all__ = ["available", "load_error", "build_info", "has_cuda_kernels", "REBUILD_HINT"]

REBUILD_HINT = (
    "rebuild it with `pip install -e . --no-build-isolation` (or `make test`, which builds it) "
    "in an environment whose torch is the one you run with"
)


def _load() -> tuple[object | None, str | None]:
    if os.environ.get("STMODELS_DISABLE_EXT", "0") == "1":
        return None, "the extension is disabled by STMODELS_DISABLE_EXT=1"
    import importlib
    import importlib.util

    import torch  # noqa: F401  (the extension links against torch's libraries: load them first)

    if importlib.util.find_spec("stmodels._C") is None:
        return None, f"stmodels._C is not built (installed with STMODELS_SKIP_EXT=1, or never compiled); {REBUILD_HINT}"
    try:
        _C = importlib.import_module("stmodels._C")  # importing registers the operators
    except ImportError as error:
        return None, f"stmodels._C could not be imported ({error}); {REBUILD_HINT}"
    except OSError as error:  # an undefined symbol from a torch version mismatch lands here
        return None, f"stmodels._C failed to load ({error}); {REBUILD_HINT}"
    return _C, None


_MODULE, _LOAD_ERROR = _load()
_BUILD_INFO: dict = {}
if _MODULE is not None:
    import torch

    _BUILD_INFO = json.loads(torch.ops.stmodels.build_info())


def available() -> bool:
    """True when the compiled extension loaded and registered its operators."""
    return _LOAD_ERROR is None


def load_error() -> str | None:
    """Why the extension is not available, or None when it is."""
    return _LOAD_ERROR


def build_info() -> dict:
    """Build metadata recorded in the loaded binary (torch/CUDA versions, archs, flags)."""
    return dict(_BUILD_INFO)


def has_cuda_kernels() -> bool:
    """True when the loaded binary was built with the CUDA sources."""
    return bool(_BUILD_INFO.get("with_cuda", False))
