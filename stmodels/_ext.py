"""The only module that imports the compiled extension `stmodels._C`.

Importing it registers the `torch.ops.stmodels.*` operators (CPU, and CUDA when built with CUDA).
A missing or broken extension never makes `import stmodels` fail: `load_error()` says why it is
missing and how to rebuild, and backends that need it report that as their reason.

The torch ABI guard: a binary only runs with the torch series (major.minor) it was compiled
against. The build writes its metadata beside the binary (``_C_build_info.json``, the same JSON the
binary returns from ``torch.ops.stmodels.build_info()``); when the recorded torch is of another
series than the running one, the binary is not loaded at all (loading it could crash), and
`load_error()` / `torch_mismatch()` say "built for torch X, running Y: rebuild with ...".

The extension is loaded once, when this module is imported, and the answers below are plain module
constants: op front doors consult them on every call, also while torch.compile traces them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["available", "load_error", "build_info", "has_cuda_kernels", "torch_mismatch", "rebuild_command",
           "REBUILD_HINT"]

BUILD_INFO_FILE = "_C_build_info.json"
_PACKAGE_DIR = Path(__file__).resolve().parent


def rebuild_command() -> str:
    """The command that rebuilds the extension against the installed torch, for this kind of install."""
    if (_PACKAGE_DIR.parent / "setup.py").is_file():  # a source checkout (editable install)
        return "pip install -e . --no-build-isolation"
    return "pip install --force-reinstall --no-deps --no-build-isolation stmodels-<version>.tar.gz"


REBUILD_HINT = (
    f"rebuild it with `{rebuild_command()}` (or `make test`, which builds it) "
    "in an environment whose torch is the one you run with"
)


def _series(version: str) -> tuple[int, ...]:
    """``"2.13.0+cpu"`` -> ``(2, 13)``; a version that does not parse compares as itself."""
    parts = version.split("+")[0].split(".")[:2]
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        return (hash(version),)


def mismatch_reason(built_torch: str | None, running_torch: str) -> str | None:
    """The ABI guard's message when ``built_torch`` and ``running_torch`` are of different series."""
    if not built_torch or _series(built_torch) == _series(running_torch):
        return None
    return (f"stmodels._C was built for torch {built_torch}, running {running_torch}: "
            f"rebuild with `{rebuild_command()}`")


def _read_recorded_build_info(binary_origin: str | None) -> dict | None:
    """The build metadata written beside the binary, or None (an older build wrote none)."""
    if not binary_origin:
        return None
    path = Path(binary_origin).parent / BUILD_INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load() -> tuple[object | None, str | None, dict, str | None]:
    """Load the binary; returns ``(module, load_error, build_info, torch_mismatch)``."""
    if os.environ.get("STMODELS_DISABLE_EXT", "0") == "1":
        return None, "the extension is disabled by STMODELS_DISABLE_EXT=1", {}, None
    import importlib
    import importlib.util

    import torch  # the extension links against torch's libraries: load them first

    spec = importlib.util.find_spec("stmodels._C")
    if spec is None:
        return None, f"stmodels._C is not built (installed with STMODELS_SKIP_EXT=1, or never compiled); {REBUILD_HINT}", {}, None
    recorded = _read_recorded_build_info(spec.origin)
    if recorded is not None:
        mismatch = mismatch_reason(recorded.get("torch_version"), torch.__version__)
        if mismatch:
            return None, mismatch, recorded, mismatch
    try:
        module = importlib.import_module("stmodels._C")  # importing registers the operators
    except ImportError as error:
        return None, f"stmodels._C could not be imported ({error}); {REBUILD_HINT}", recorded or {}, None
    except OSError as error:  # an undefined symbol from a torch version mismatch lands here
        return None, f"stmodels._C failed to load ({error}); {REBUILD_HINT}", recorded or {}, None
    info = json.loads(torch.ops.stmodels.build_info())
    mismatch = mismatch_reason(info.get("torch_version"), torch.__version__)  # builds without the file
    if mismatch:
        return None, mismatch, info, mismatch
    return module, None, info, None


_MODULE, _LOAD_ERROR, _BUILD_INFO, _TORCH_MISMATCH = _load()


def available() -> bool:
    """True when the compiled extension loaded and registered its operators."""
    return _LOAD_ERROR is None


def load_error() -> str | None:
    """Why the extension is not available, or None when it is."""
    return _LOAD_ERROR


def torch_mismatch() -> str | None:
    """"built for torch X, running Y: rebuild with ..." when the binary is for another torch, else None."""
    return _TORCH_MISMATCH


def build_info() -> dict:
    """Build metadata of the binary (torch/CUDA versions, archs, flags); also when it was not loaded
    because of a torch mismatch. Empty when there is no binary."""
    return dict(_BUILD_INFO)


def has_cuda_kernels() -> bool:
    """True when the loaded binary was built with the CUDA sources."""
    return available() and bool(_BUILD_INFO.get("with_cuda", False))
