"""Compile-only check of every CUDA source: `nvcc -c` against torch's headers, where nvcc exists.

On a machine whose torch has no CUDA (this project's CI) nothing built from CUDA can run, but CUDA
code that does not compile must still never land. Each `csrc/**/*.cu` is compiled for sm_80 and
sm_90 with the flags of the shipping build (setup.py's nvcc_flags); a small probe source proves
the harness itself (nvcc + torch's CUDA headers) works.
Kernels take their stream from c10/cuda/CUDAStream.h: ATen/cuda/CUDAContext.h pulls in cuBLAS and
cuSPARSE headers, which the compiler-only CUDA toolkit of this machine class does not ship.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted(ROOT.glob("csrc/**/*.cu"))
ARCHS = ["80", "90"]


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME
    candidates = [shutil.which("nvcc")] + ([str(Path(home) / "bin" / "nvcc")] if home else [])
    return next((c for c in candidates if c and Path(c).exists()), None)


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
pytestmark = pytest.mark.slow  # minutes of nvcc on a 2-core machine


def _include_dirs() -> list[str]:
    # CPU builds of torch leave CUDA_HOME unset: take the toolkit's headers from beside nvcc.
    cuda_include = str(Path(NVCC).resolve().parents[1] / "include")
    try:
        torch_dirs = cpp_extension.include_paths(device_type="cpu")
    except TypeError:  # older torch: include_paths(cuda=False)
        torch_dirs = cpp_extension.include_paths()
    return torch_dirs + [cuda_include, sysconfig.get_paths()["include"], str(ROOT / "csrc"),
                         str(ROOT / "build" / "generated")]


# CPU wheels of torch omit this generated header of c10's CUDA library; a compile-only check needs
# just its one definition (the value torch's own CUDA builds generate).
CMAKE_MACROS_SHIM = "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"


def _shim_dir(output: Path) -> Path:
    shim = output.parent / "shim"
    header = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text(CMAKE_MACROS_SHIM)
    return shim


def shipping_nvcc_flags() -> list[str]:
    """setup.py's own nvcc flags (its one nvcc_flags function), so the check compiles what ships."""
    spec = importlib.util.spec_from_file_location("stmodels_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the functions, runs no build
    return module.nvcc_flags(debug=False)


def compile_cuda(source: Path, arch: str, output: Path) -> subprocess.CompletedProcess:
    import torch

    command = [
        NVCC, "-c", str(source), "-o", str(output), *shipping_nvcc_flags(),
        f"-gencode=arch=compute_{arch},code=sm_{arch}", "-DSTMODELS_WITH_CUDA=1",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-Xcompiler", "-fPIC",
    ] + [f"-I{d}" for d in _include_dirs()]
    if not any(Path(d, "c10/cuda/impl/cuda_cmake_macros.h").exists() for d in _include_dirs()):
        command.append(f"-I{_shim_dir(output)}")
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


PROBE = r"""
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

__global__ void probe_kernel(const __nv_bfloat16* in, float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(in[i]) * 2.0f;
}

at::Tensor probe(const at::Tensor& x) {
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  auto stream = c10::cuda::getCurrentCUDAStream();
  probe_kernel<<<1, 32, 0, stream>>>(reinterpret_cast<const __nv_bfloat16*>(x.data_ptr()),
                                     out.data_ptr<float>(), static_cast<int>(x.numel()));
  return out;
}
"""


@needs_nvcc
def test_harness_compiles_a_probe_against_torch_headers(tmp_path):
    source = tmp_path / "probe.cu"
    source.write_text(PROBE)
    result = compile_cuda(source, "80", tmp_path / "probe.o")
    assert result.returncode == 0, result.stderr[-4000:]
    broken = tmp_path / "broken.cu"
    broken.write_text(PROBE.replace("out[i] =", "out[i] = undefined_symbol +"))
    assert compile_cuda(broken, "80", tmp_path / "broken.o").returncode != 0


@pytest.fixture(scope="module")
def compiled_sources(tmp_path_factory):
    """Every (source, arch) compile, started together: nvcc is single-threaded per job, and a
    kernel source takes minutes on this 2-core machine, so running them side by side saves most
    of the wall time. Returns {(source, arch): CompletedProcess}."""
    from concurrent.futures import ThreadPoolExecutor

    output = tmp_path_factory.mktemp("nvcc")
    jobs = [(source, arch) for source in CUDA_SOURCES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        futures = {job: pool.submit(compile_cuda, job[0], job[1], output / f"{job[0].stem}_sm{job[1]}.o")
                   for job in jobs}
        return {job: future.result() for job, future in futures.items()}


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[str(p.relative_to(ROOT)) for p in CUDA_SOURCES])
def test_cuda_source_compiles(source, arch, compiled_sources):
    result = compiled_sources[(source, arch)]
    assert result.returncode == 0, f"nvcc failed on {source} for sm_{arch}:\n{result.stderr[-6000:]}"
