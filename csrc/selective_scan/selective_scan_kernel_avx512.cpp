// AVX-512 build of the selective-scan kernels (selective_scan_kernel.h): setup.py compiles
// *_avx512.cpp with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c, and the dispatch
// (csrc/cpu_isa.h) calls kernels_avx512() only on a CPU that reports all of them. Compiled
// without them (another compiler or architecture) this file is a stub whose nullptr tells the
// dispatch that the build is absent.
// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (`__m512 __Y = __Y;` in the
// *_undefined_ps helpers) once inlined at -O3; the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "selective_scan_params.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)
#define STM_SCAN_VEC 512
#define STMODELS_ISA avx512
#define STMODELS_ISA_NAME "avx512"
#include "selective_scan_kernel.h"
#define STMODELS_KERNELS avx512::kernels()
#else
#define STMODELS_KERNELS nullptr
#endif

namespace stmodels {
namespace scan {
const ScanKernels* kernels_avx512() { return STMODELS_KERNELS; }
}  // namespace scan
}  // namespace stmodels
