// AdaLN (LayerNorm fused with DiT's modulation, Peebles & Xie 2023) CPU kernel, baseline flavour.
// Plain -O3 without -march: 4-lane vectors (SSE2 on x86-64, NEON on aarch64). Always built; used
// when the CPU has neither AVX2+FMA nor AVX-512 (and on non-x86 machines).
#define ADALN_ISA base
#include "adaln_kernel.h"
