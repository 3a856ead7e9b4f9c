// Portable build of the AdaLN (LayerNorm fused with DiT's modulation, Peebles & Xie 2023) CPU
// kernel (adaln_kernel.h), compiled with the baseline flags only: 4-lane vectors (SSE2 on x86-64,
// NEON on aarch64). Every CPU runs it; the dispatch (csrc/cpu_isa.h) falls back to it when no
// wider build applies.
#include "adaln_params.h"

#define STMODELS_ISA generic
#define STMODELS_ISA_NAME "generic"
#include "adaln_kernel.h"

namespace stmodels {
namespace adaln {
const AdalnKernels* kernels_generic() { return generic::kernels(); }
}  // namespace adaln
}  // namespace stmodels
