// Portable build of the selective-scan kernels (selective_scan_kernel.h), compiled with the
// baseline flags only: GCC/Clang vector extensions (SSE2 on x86-64, NEON on aarch64). Every CPU
// runs it; the dispatch (csrc/cpu_isa.h) falls back to it when no wider build applies.
#include "selective_scan_params.h"

#define STM_SCAN_VEC 0
#define STMODELS_ISA generic
#define STMODELS_ISA_NAME "generic"
#include "selective_scan_kernel.h"

namespace stmodels {
namespace scan {
const ScanKernels* kernels_generic() { return generic::kernels(); }
}  // namespace scan
}  // namespace stmodels
