// AdaLN (LayerNorm fused with DiT's modulation, Peebles & Xie 2023) CPU kernel, AVX2 flavour.
// The build compiles *_avx2.cpp with -mavx2 -mfma (8-lane vectors, FMA); F16C (hardware float16
// conversion, present on every AVX2 CPU) is enabled here by pragma. adaln_cpu.cpp calls this
// flavour only when __builtin_cpu_supports reports avx2, fma and f16c.
#if !defined(__AVX2__) || !defined(__FMA__)
#warning "adaln_kernel_avx2.cpp built without -mavx2 -mfma: this flavour runs baseline code"
#endif
#if !defined(__clang__)  // GCC: enable F16C for the rest of this file (untested with clang)
#pragma GCC target("f16c")
#define ADALN_F16C 1
#endif
#define ADALN_ISA avx2
#include "adaln_kernel.h"
