// AVX-512 build of the selective-scan kernels (see selective_scan_kernel.h). The build compiles this file
// with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma; selective_scan_cpu.cpp calls it only
// when the CPU reports those features. Without them (another compiler or architecture) it
// compiles to a stub that reports "not available".
// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (`__m512 __Y = __Y;` in the
// *_undefined_ps helpers) once inlined at -O3; the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "selective_scan_params.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)
#define STM_SCAN_VEC 512
#define STM_SCAN_NS isa_avx512
#define STM_SCAN_NAME "avx512"
#include "selective_scan_kernel.h"

namespace stmodels {
namespace scan {
const ScanKernels* kernels_avx512() { return isa_avx512::kernels(); }
}  // namespace scan
}  // namespace stmodels
#else
namespace stmodels {
namespace scan {
const ScanKernels* kernels_avx512() { return nullptr; }
}  // namespace scan
}  // namespace stmodels
#endif
