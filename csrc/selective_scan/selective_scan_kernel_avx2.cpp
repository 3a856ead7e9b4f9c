// AVX2 + FMA build of the selective-scan kernels (see selective_scan_kernel.h). The build compiles this
// file with -mavx2 -mfma; selective_scan_cpu.cpp calls it only when the CPU reports AVX2 and FMA
// (and AVX-512 is not available). Without those flags it compiles to a "not available" stub.
#include "selective_scan_params.h"

#if defined(__AVX2__) && defined(__FMA__)
#define STM_SCAN_VEC 256
#define STM_SCAN_NS isa_avx2
#define STM_SCAN_NAME "avx2"
#include "selective_scan_kernel.h"

namespace stmodels {
namespace scan {
const ScanKernels* kernels_avx2() { return isa_avx2::kernels(); }
}  // namespace scan
}  // namespace stmodels
#else
namespace stmodels {
namespace scan {
const ScanKernels* kernels_avx2() { return nullptr; }
}  // namespace scan
}  // namespace stmodels
#endif
