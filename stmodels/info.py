"""``python -m stmodels.info``: which backend runs on which device, and how the extension was built."""

from __future__ import annotations

import json
import os
import platform

import torch

from stmodels import __version__, _ext
from stmodels.ops import BACKENDS
from stmodels.ops._backend import kernel_missing_reasons

__all__ = ["backend_report", "main"]

OPS = {"selective_scan": "selective_scan, bi_selective_scan", "adaln_modulate": "adaln_modulate"}


def _device_types() -> list[str]:
    return ["cpu", "cuda"]


def backend_report() -> list[dict]:
    """One row per (backend, device): for each op whether it can run there, and if not, why."""
    rows = []
    for backend in BACKENDS.values():
        for device in _device_types():
            reasons = []
            unavailable = backend.unavailable_reason()
            if unavailable:
                reasons.append(unavailable)
            if device not in backend.accepted_devices():
                reasons.append(f"runs on {', '.join(backend.accepted_devices())} tensors only")
            elif device == "cuda" and not torch.cuda.is_available():
                reasons.append("no CUDA device visible to torch")
            row = {"backend": backend.name, "device": device, "deterministic": backend.deterministic,
                   "why_not": "; ".join(reasons)}
            missing = []
            for op in OPS:
                op_reasons = kernel_missing_reasons(op, backend.name)
                row[op] = not reasons and not op_reasons
                missing += [r for r in op_reasons if r not in missing]
            if not reasons and missing:
                row["why_not"] = "; ".join(missing)
            rows.append(row)
    return rows


def main() -> None:
    print(f"stmodels {__version__}  torch {torch.__version__}  CUDA (torch) {torch.version.cuda}  "
          f"python {platform.python_version()}  {platform.machine()}")
    print(f"CUDA devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}  "
          f"threads: {torch.get_num_threads()}  STMODELS_BACKEND={os.environ.get('STMODELS_BACKEND', '(unset)')}  "
          f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '(unset)')}")
    print()
    header = f"{'backend':<10} {'device':<6} " + " ".join(f"{label:<34}" for label in OPS.values())
    print(header)
    print("-" * len(header))
    for row in backend_report():
        cells = " ".join(f"{'available' if row[op] else 'no':<34}" for op in OPS)
        print(f"{row['backend']:<10} {row['device']:<6} {cells}")
        if row["why_not"]:
            print(f"{'':<17}why not: {row['why_not']}")
    print()
    if _ext.torch_mismatch():
        print(f"extension stmodels._C: NOT LOADED, torch mismatch: {_ext.torch_mismatch()}")
        print(json.dumps(_ext.build_info(), indent=2, sort_keys=True))
    elif _ext.available():
        print("extension stmodels._C build:")
        print(json.dumps(_ext.build_info(), indent=2, sort_keys=True))
    else:
        print(f"extension stmodels._C: not loaded: {_ext.load_error()}")


if __name__ == "__main__":
    main()
