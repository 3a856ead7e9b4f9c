"""The short GPU table benchmarks/gpu_check.sh prints last: median times (CUDA events), the
fraction of the floor, and the ratios the targets of docs/performance.rst are stated in.

Before an implementation is timed, its forward output is checked against the ``reference``
backend's on the same inputs (normwise error within the tolerance of its dtype); a mismatch is
reported in the row, and the script exits non-zero, so a fast wrong kernel never looks like a
result.

Run on a CUDA machine: ``python benchmarks/gpu_table.py [--out FILE.md]``. ``--dry-run`` runs the
same code on small CPU tensors with the cpu and reference backends (no GPU needed: it keeps the
script working on the days without one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._gpu_cases import adaln_cases, copy_bandwidth, scan_cases  # noqa: E402
from stmodels.ops import BackendNotSupportedError  # noqa: E402

#: Normwise error allowed against the reference, by output dtype (the forward of a bf16 scan over
#: 2048 steps accumulates a few bf16 roundings of the reference itself).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# Small CPU stand-ins for --dry-run: the same case code, shapes that run in seconds.
DRY_SCAN_SHAPES = (("dry-run 2x16x33 N5 fp32", dict(batch=2, dim=16, length=33, N=5, dtype=torch.float32)),)
DRY_ADALN_SHAPE = ("dry-run 2x7x40 fp32", dict(batch=2, tokens=7, hidden=40, dtype=torch.float32))


def median_ms(fn, cuda: bool, warmup=3, repeats=20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeats):
        if cuda:
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def normwise_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape:
        return float("inf")
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / scale)


def check_output(forward, reference_output) -> str:
    """'' when the implementation's forward matches the reference, else why not."""
    out = forward()
    error = normwise_error(out, reference_output)
    tolerance = TOLERANCE.get(out.dtype, 1e-4)
    if not error <= tolerance:  # also catches NaN
        return f"WRONG OUTPUT: normwise error {error:.3g} > {tolerance:g} vs reference"
    return ""


def build_table(dry_run: bool) -> tuple[str, bool]:
    """Returns (markdown table, every checked output matched)."""
    cuda = not dry_run
    if dry_run:
        bandwidth = None
        cases = [*scan_cases(None, device="cpu", shapes=DRY_SCAN_SHAPES, impls=("cpu", "reference"),
                             flip_impls=("cpu",)),
                 *adaln_cases(None, device="cpu", shape=DRY_ADALN_SHAPE, impls=("cpu", "reference", "eager"))]
        header = f"dry run on the CPU (no GPU timing); torch {torch.__version__}; wall-clock medians"
    else:
        bandwidth = copy_bandwidth()
        cases = [*scan_cases(bandwidth), *adaln_cases(bandwidth)]
        header = (f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; copy bandwidth "
                  f"{bandwidth / 1e12:.2f} TB/s (read + write); medians of CUDA-event timings")
    references = {}
    for op, label, impl, _, _, forward in cases:
        if impl == "reference" and op.endswith(" fwd"):
            references[(op.split()[0], label)] = forward()
    all_ok = True
    rows = []
    for op, label, impl, fn, floor, forward in cases:
        note = ""
        try:
            if op.endswith(" fwd") and impl != "reference":
                note = check_output(forward, references[(op.split()[0], label)])
                all_ok = all_ok and not note
            ms = float("nan") if note else median_ms(fn, cuda, repeats=5 if impl == "reference" else 20)
        except (BackendNotSupportedError, NotImplementedError) as exc:  # not built / unsupported here
            ms, note = float("nan"), str(exc).splitlines()[0][:60]
        except RuntimeError as exc:  # a kernel that fails at run time is a failure, not a skip
            ms, note = float("nan"), "ERROR: " + str(exc).splitlines()[0][:60]
            all_ok = False
        rows.append((op, label, impl, ms, floor, note))
        if cuda:
            torch.cuda.empty_cache()
    lines = [header, "", "| op | shape | impl | median ms | floor fraction | vs fastest |",
             "|---|---|---|---:|---:|---:|"]
    groups = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    for (op, label), group in groups.items():
        fastest = min((r[3] for r in group if r[3] == r[3]), default=float("nan"))
        for _, _, impl, ms, floor, note in group:
            fraction = f"{floor * 1e3 / ms:.2f}" if floor and ms == ms else ""
            lines.append(f"| {op} | {label} | {impl} | {ms:.3f} | {fraction} | {ms / fastest:.2f}x |"
                         + (f" {note}" if note else ""))
    return "\n".join(lines), all_ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--dry-run", action="store_true", help="small CPU tensors, cpu/reference backends")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_table: no CUDA device (use --dry-run to exercise the table code on the CPU)", file=sys.stderr)
        return 2
    text, all_ok = build_table(args.dry_run)
    print(text)
    print("outputs vs reference: " + ("all match" if all_ok else "MISMATCH (see the rows marked WRONG/ERROR)"))
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
