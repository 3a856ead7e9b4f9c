// AdaLN (LayerNorm fused with DiT's modulation, Peebles & Xie 2023) CPU kernel, AVX-512 flavour.
// The build compiles *_avx512.cpp with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma (16-lane
// vectors); adaln_cpu.cpp calls it only when __builtin_cpu_supports reports all of them.
#if !defined(__AVX512F__)
#warning "adaln_kernel_avx512.cpp built without -mavx512f: this flavour falls back to other code"
#endif
#define ADALN_ISA avx512
#include "adaln_kernel.h"
