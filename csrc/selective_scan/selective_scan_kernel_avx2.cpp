// AVX2 build of the selective-scan kernels (selective_scan_kernel.h): setup.py compiles
// *_avx2.cpp with -mavx2 -mfma -mf16c, and the dispatch (csrc/cpu_isa.h) calls kernels_avx2()
// only on a CPU that reports all three. Compiled without them (another compiler or architecture)
// this file is a stub whose nullptr tells the dispatch that the build is absent.
#include "selective_scan_params.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define STM_SCAN_VEC 256
#define STMODELS_ISA avx2
#define STMODELS_ISA_NAME "avx2"
#include "selective_scan_kernel.h"
#define STMODELS_KERNELS avx2::kernels()
#else
#define STMODELS_KERNELS nullptr
#endif

namespace stmodels {
namespace scan {
const ScanKernels* kernels_avx2() { return STMODELS_KERNELS; }
}  // namespace scan
}  // namespace stmodels
