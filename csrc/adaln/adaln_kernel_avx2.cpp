// AVX2 build of the AdaLN (LayerNorm fused with DiT's modulation, Peebles & Xie 2023) CPU kernel
// (adaln_kernel.h): setup.py compiles *_avx2.cpp with -mavx2 -mfma -mf16c (8-lane vectors, FMA,
// hardware float16 conversion), and the dispatch (csrc/cpu_isa.h) calls kernels_avx2() only on a
// CPU that reports all three. Compiled without them (another compiler or architecture) this file
// is a stub whose nullptr tells the dispatch that the build is absent.
#include "adaln_params.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define STMODELS_ISA avx2
#define STMODELS_ISA_NAME "avx2"
#include "adaln_kernel.h"
#define STMODELS_KERNELS avx2::kernels()
#else
#define STMODELS_KERNELS nullptr
#endif

namespace stmodels {
namespace adaln {
const AdalnKernels* kernels_avx2() { return STMODELS_KERNELS; }
}  // namespace adaln
}  // namespace stmodels
