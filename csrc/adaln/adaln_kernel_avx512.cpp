// AVX-512 build of the AdaLN (LayerNorm fused with DiT's modulation, Peebles & Xie 2023) CPU
// kernel (adaln_kernel.h): setup.py compiles *_avx512.cpp with -mavx512f -mavx512bw -mavx512vl
// -mavx512dq -mfma -mf16c (16-lane vectors), and the dispatch (csrc/cpu_isa.h) calls
// kernels_avx512() only on a CPU that reports all of them. Compiled without them (another
// compiler or architecture) this file is a stub whose nullptr tells the dispatch that the build
// is absent.
#include "adaln_params.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)
#define STMODELS_ISA avx512
#define STMODELS_ISA_NAME "avx512"
#include "adaln_kernel.h"
#define STMODELS_KERNELS avx512::kernels()
#else
#define STMODELS_KERNELS nullptr
#endif

namespace stmodels {
namespace adaln {
const AdalnKernels* kernels_avx512() { return STMODELS_KERNELS; }
}  // namespace adaln
}  // namespace stmodels
