"""A short side-by-side run of the backends, for `make demo` (the benchmarks proper are the
pytest-benchmark files next to this one; `make bench`).

Times fwd+bwd at the CPU shapes of docs/performance.rst, median of a few runs, in one process.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._peers import eager_adaln, mambapy_bi_scan  # noqa: E402
from benchmarks._shapes import ADALN_CPU, SCAN_CPU, adaln_inputs, requiring_grad, scan_inputs  # noqa: E402
from stmodels import _ext  # noqa: E402
from stmodels.ops import adaln_modulate, bi_selective_scan  # noqa: E402


def median_ms(fn, tensors, repeats):
    leaves = requiring_grad(tensors)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = fn(**leaves)
        out.backward(torch.ones_like(out))
        elapsed = time.perf_counter() - start
        for leaf in leaves.values():
            leaf.grad = None
        if i:  # the first run warms up
            times.append(elapsed * 1e3)
    return statistics.median(times)


def main() -> None:
    backends = ["cpu", "reference"] if _ext.available() else ["reference"]
    rows = []
    scan = scan_inputs(**SCAN_CPU)
    for backend in backends:
        rows.append(("bi_selective_scan", backend, median_ms(
            lambda **t: bi_selective_scan(**t, backend=backend), scan, 3 if backend == "reference" else 10)))
    try:
        import mambapy  # noqa: F401

        rows.append(("bi_selective_scan", "mambapy pscan x2 + flips", median_ms(mambapy_bi_scan, scan, 5)))
    except ImportError:
        pass
    adaln = adaln_inputs(**ADALN_CPU)
    for backend in backends:
        rows.append(("adaln_modulate", backend, median_ms(lambda **t: adaln_modulate(**t, backend=backend), adaln, 20)))
    rows.append(("adaln_modulate", "eager layer_norm + modulate", median_ms(eager_adaln, adaln, 20)))

    print(f"\nforward+backward, median ms, {torch.get_num_threads()} threads "
          f"(scan {SCAN_CPU['batch']}x{SCAN_CPU['dim']}x{SCAN_CPU['length']} N={SCAN_CPU['N']}, "
          f"adaln {ADALN_CPU['batch']}x{ADALN_CPU['tokens']}x{ADALN_CPU['hidden']}, float32)")
    for op in dict.fromkeys(r[0] for r in rows):
        group = [r for r in rows if r[0] == op]
        fastest = min(r[2] for r in group)
        for _, impl, ms in group:
            print(f"  {op:<18} {impl:<30} {ms:9.2f} ms  x{ms / fastest:6.1f}")


if __name__ == "__main__":
    main()
