"""GPU benchmark cases shared by bench_gpu.py (pytest-benchmark) and gpu_table.py (the short table
that benchmarks/gpu_check.sh prints last).

Each case is (name, shape label, implementation, callable, floor_seconds or None, forward): forward()
gives the implementation's output, which gpu_table.py checks against the reference's before timing. Floors follow
docs/performance.rst: bytes that must move (every input read once, every output written once)
over the measured device-to-device copy bandwidth, and exponentials (batch*dim*L*N per direction)
over the exp rate; the larger of the two.
"""

from __future__ import annotations

import torch

from benchmarks._peers import eager_adaln
from benchmarks._shapes import ADALN_GPU, SCAN_GPU, SCAN_GPU_SPACETIME, SCAN_GPU_TIME, adaln_inputs, requiring_grad, scan_inputs
from stmodels.ops import adaln_modulate, bi_selective_scan, selective_scan

# H100 SXM special-function throughput for exp2 in float32 (16 per SM per clock, 132 SMs, ~1.83 GHz):
# a spec figure, not a measurement; docs/performance.rst uses ~3.9e12/s.
EXP_PER_SECOND = 3.9e12
SCAN_IMPLS = ("cuda", "triton", "reference")
ADALN_IMPLS = ("cuda", "triton", "reference", "eager")


def copy_bandwidth(device="cuda", nbytes=1 << 30, repeats=20) -> float:
    """Measured device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values() if t is not None)


def scan_floor(tensors, bandwidth, directions=2) -> float:
    out_bytes = tensors["z"].numel() * tensors["z"].element_size()
    memory = (_nbytes(tensors) + out_bytes) / bandwidth
    batch, dim, length = tensors["z"].shape
    N = tensors["A"].shape[-1]
    return max(memory, directions * batch * dim * length * N / EXP_PER_SECOND)


def _uni_twice_with_flips(impl):
    """The two-call form with flips a unidirectional kernel forces (Vision Mamba)."""
    def run(u, delta, A, B, C, D, z, delta_bias):
        flip = lambda t: t.flip(-1)  # noqa: E731
        y_fwd = selective_scan(u[0], delta[0], A[0], B[0], C[0], D[0], None, delta_bias[0], True, backend=impl)
        y_bwd = flip(selective_scan(flip(u[1]), flip(delta[1]), A[1], flip(B[1]), flip(C[1]), D[1], None,
                                    delta_bias[1], True, backend=impl))
        return (y_fwd + y_bwd) * torch.nn.functional.silu(z)
    return run


GPU_SCAN_SHAPES = (("8x2048x2048 N16 bf16", SCAN_GPU), ("DIFFUMA spacetime L=2560", SCAN_GPU_SPACETIME),
                   ("DIFFUMA time L=10", SCAN_GPU_TIME))
GPU_ADALN_SHAPE = ("8x2048x2048 bf16", ADALN_GPU)


def scan_cases(bandwidth, modes=("fwd", "fwd+bwd"), device="cuda", shapes=GPU_SCAN_SHAPES, impls=SCAN_IMPLS,
               flip_impls=("cuda", "triton")):
    """Cases (op, label, impl, runner, floor, check); ``check()`` is the forward output (or None)."""
    for label, shape in shapes:
        tensors = scan_inputs(**shape, device=device)
        floor = scan_floor(tensors, bandwidth) if bandwidth else None
        runs = [(impl, lambda impl=impl, **t: bi_selective_scan(**t, backend=impl)) for impl in impls]
        runs += [(f"{impl} uni x2 + flips", _uni_twice_with_flips(impl)) for impl in flip_impls]
        for impl, fn in runs:
            for mode in modes:
                yield (f"bi_selective_scan {mode}", label, impl, _runner(fn, tensors, mode),
                       floor if mode == "fwd" else None, _output(fn, tensors))


def adaln_cases(bandwidth, modes=("fwd", "fwd+bwd"), device="cuda", shape=GPU_ADALN_SHAPE, impls=ADALN_IMPLS):
    """Cases (op, label, impl, runner, floor, check), as :func:`scan_cases`."""
    for form in ("per_sample", "per_token"):
        tensors = adaln_inputs(**shape[1], device=device, per_token=form == "per_token")
        floor = (_nbytes(tensors) + tensors["x"].numel() * tensors["x"].element_size()) / bandwidth if bandwidth else None
        label = f"{shape[0]} {form}"
        for impl in impls:
            fn = eager_adaln if impl == "eager" else (lambda impl=impl, **t: adaln_modulate(**t, backend=impl))
            for mode in modes:
                yield (f"adaln_modulate {mode}", label, impl, _runner(fn, tensors, mode),
                       floor if mode == "fwd" else None, _output(fn, tensors))


def _output(fn, tensors):
    def forward():
        with torch.no_grad():
            return fn(**tensors)
    return forward


def _runner(fn, tensors, mode):
    if mode == "fwd":
        def target():
            with torch.no_grad():
                return fn(**tensors)
        return target
    leaves = requiring_grad(tensors)
    probe = fn(**leaves)
    grad = torch.randn_like(probe)
    del probe

    def target():
        fn(**leaves).backward(grad)
        for leaf in leaves.values():
            leaf.grad = None
    return target
