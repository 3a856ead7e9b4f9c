"""The short GPU table benchmarks/gpu_check.sh prints last: median times (CUDA events), the
fraction of the floor, and the ratios the targets of docs/performance.rst are stated in.

Run on a CUDA machine: `python benchmarks/gpu_table.py [--out FILE.md]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._gpu_cases import adaln_cases, copy_bandwidth, scan_cases  # noqa: E402
from stmodels.ops import BackendNotSupportedError  # noqa: E402


def median_ms(fn, warmup=3, repeats=20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_table: no CUDA device")
        return 1
    bandwidth = copy_bandwidth()
    rows = []
    for cases in (scan_cases(bandwidth), adaln_cases(bandwidth)):
        for op, label, impl, fn, floor in cases:
            try:
                ms = median_ms(fn, repeats=5 if impl == "reference" else 20)
                note = ""
            except (BackendNotSupportedError, RuntimeError, NotImplementedError) as exc:
                ms, note = float("nan"), str(exc).splitlines()[0][:60]
            rows.append((op, label, impl, ms, floor, note))
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name()
    lines = [f"device: {device}; torch {torch.__version__}; copy bandwidth {bandwidth / 1e12:.2f} TB/s "
             "(read + write); medians of CUDA-event timings",
             "", "| op | shape | impl | median ms | floor fraction | vs fastest |", "|---|---|---|---:|---:|---:|"]
    groups = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    for (op, label), group in groups.items():
        fastest = min((r[3] for r in group if r[3] == r[3]), default=float("nan"))
        for _, _, impl, ms, floor, note in group:
            fraction = f"{floor * 1e3 / ms:.2f}" if floor and ms == ms else ""
            lines.append(f"| {op} | {label} | {impl} | {ms:.3f} | {fraction} | {ms / fastest:.2f}x |"
                         + (f" {note}" if note else ""))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
