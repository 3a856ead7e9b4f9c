// Plain argument blocks shared by the AdaLN CPU op (adaln_cpu.cpp) and its per-ISA kernels
// (adaln_kernel.h, instantiated by adaln_kernel_{generic,avx2,avx512}.cpp; csrc/cpu_isa.h picks
// one per call). AdaLN: LayerNorm (Ba, Kiros & Hinton 2016) modulated by DiT's adaptive shift and
// scale (Peebles & Xie 2023).
//
// This header is deliberately free of torch/std headers: the kernel translation units are compiled
// with different -m flags, and any inline function they share with other translation units could
// be emitted with AVX-512 instructions and picked by the linker for the baseline path (an ODR
// trap). Plain structs with no member functions cannot carry code.
#pragma once

#include <stdint.h>

namespace stmodels {
namespace adaln {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Row blocking, fixed by the shape only (never by the thread count): block k covers sample
// b = k / chunks, positions s in [c * rows_per_chunk, min(S, (c + 1) * rows_per_chunk)) with
// c = k % chunks. The backward keeps one partial sum per block and reduces blocks in index order,
// which is what makes dshift/dscale/dweight/dbias bit-identical for any number of threads.
struct Blocking {
  int64_t batch, S, H;
  int64_t rows_per_chunk, chunks;  // chunks per sample; batch * chunks blocks in all
};

struct FwdArgs {
  Blocking blk;
  DType dtype;
  bool per_token;  // shift/scale are (batch, S, H) rather than (batch, H)
  float eps;
  const void* x;  // (batch, S, H), dtype
  const void* shift;
  const void* scale;
  const float* weight;  // (H,) or null
  const float* bias;    // (H,) or null
  void* out;            // (batch, S, H), dtype
  float* mean;          // (batch, S)
  float* rstd;          // (batch, S)
};

struct BwdArgs {
  Blocking blk;
  DType dtype;
  bool per_token;
  const void* dout;
  const void* x;
  const void* scale;
  const float* weight;
  const float* bias;
  const float* mean;
  const float* rstd;
  void* dx;        // like x
  void* dshift;    // like shift
  void* dscale;    // like scale
  float* dweight;  // (H,) or null when weight is absent
  float* dbias;    // (H,) or null when bias is absent
  // Per-block partial sums, partial_stride = bwd_partial_floats(...) floats per block.
  float* partial;
  int64_t partial_stride;
};

// Sizes, used by adaln_cpu.cpp only (the kernels get them through the argument blocks, so that no
// inline function is shared with an ISA translation unit). Scratch: the floats a thread needs per
// call (row buffers, per-sample factors), in rows padded to 16 floats (64 bytes) so that each
// starts on a cache line; the kernels assume this layout.
inline constexpr int64_t scratch_row(int64_t H) { return (H + 15) / 16 * 16; }
inline constexpr int64_t fwd_scratch_floats(int64_t H) { return 3 * scratch_row(H); }
inline constexpr int64_t bwd_scratch_floats(int64_t H) { return 3 * scratch_row(H); }
// Broadcast form: sum_s dout and sum_s dout * xhat per block. Per-token form: the dweight and
// dbias partials, only for the affine parameters that are present.
inline constexpr int64_t bwd_partial_floats(int64_t H, bool per_token, bool w, bool b) {
  return per_token ? ((w ? H : 0) + (b ? H : 0)) : 2 * H;
}
// Columns per task of the final reduction over blocks (a multiple of every vector width, so the
// vector/scalar split inside a task depends only on H).
inline constexpr int64_t kReduceCols = 64;

// One ISA's kernels (adaln_kernel.h). fwd_blocks / bwd_blocks run blocks [begin, end) of the
// Blocking, with a scratch of fwd_scratch_floats / bwd_scratch_floats per call; bwd_reduce runs
// the column tasks [begin, end) (kReduceCols columns each) of the final reduction.
struct AdalnKernels {
  const char* name;  // the build: "generic", "avx2" or "avx512"
  void (*fwd_blocks)(const FwdArgs& a, int64_t begin, int64_t end, float* scratch);
  void (*bwd_blocks)(const BwdArgs& a, int64_t begin, int64_t end, float* scratch);
  void (*bwd_reduce)(const BwdArgs& a, int64_t col_task_begin, int64_t col_task_end);
};

// One getter per build, each defined in adaln_kernel_<build>.cpp; null when that file was
// compiled without its -m flags (the generic one never is). Call one only on a CPU that runs its
// build (cpu_isa::pick does).
const AdalnKernels* kernels_generic();
const AdalnKernels* kernels_avx2();
const AdalnKernels* kernels_avx512();

}  // namespace adaln
}  // namespace stmodels
