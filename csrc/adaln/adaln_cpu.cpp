// CPU implementation of stmodels::adaln_fwd / adaln_bwd (schemas in csrc/ops.cpp).
//
// AdaLN modulation as in DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"):
//   out = LayerNorm(x, eps; weight, bias) * (1 + scale) + shift
// with LayerNorm as in Ba, Kiros & Hinton 2016 ("Layer Normalization"; biased variance, as
// torch.nn.functional.layer_norm).
//
// This file validates the arguments, allocates the outputs, picks the kernel build for the CPU
// (adaln_kernel_{generic,avx2,avx512}.cpp, one templated kernel in adaln_kernel.h, chosen through
// csrc/cpu_isa.h; STMODELS_CPU_ISA forces one) and splits the work with at::parallel_for. The
// file must be compiled with -fopenmp: at::parallel_for is a header template that only runs in
// parallel when _OPENMP is defined in the calling translation unit.
//
// Determinism: rows are grouped into blocks fixed by the shape (Blocking); every block is computed
// by one thread, sequentially, into its own partial sums, and the partials are reduced in block
// order. Nothing depends on the thread count, so results are bit-identical for any
// at::set_num_threads (no atomics).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <tuple>

#include "adaln_checks.h"
#include "adaln_params.h"
#include "cpu_isa.h"

#ifndef _OPENMP
#warning "adaln_cpu.cpp built without -fopenmp: at::parallel_for will run single-threaded"
#endif

namespace stmodels {
namespace adaln {
namespace {

using at::Tensor;

// ---- kernel build -----------------------------------------------------------------------------
// The build for a dtype (csrc/cpu_isa.h). Measured on Zen 4 (8x256x384, one thread): float32 and
// float16 run 5-10% faster with 8-lane AVX2 than with AVX-512 (both are bound by loads/stores, and
// Zen 4 executes 512-bit operations as two 256-bit halves), while bfloat16 runs 20-30% faster with
// AVX-512 (its float -> bfloat16 rounding is integer work, half the instructions at 16 lanes).
// STMODELS_CPU_ISA overrides the preference (to test every build on one machine).
const AdalnKernels* pick_kernels(DType dtype) {
  static constexpr cpu_isa::Getter<AdalnKernels> kBuilds[cpu_isa::kNumIsa] = {
      &kernels_generic, &kernels_avx2, &kernels_avx512};
  return cpu_isa::pick(kBuilds, dtype == kBFloat16 ? cpu_isa::kAvx512 : cpu_isa::kAvx2);
}

// Per-thread scratch rows, 64-byte aligned (and each row padded to 64 bytes, adaln_params.h): with
// 16-lane vectors an unaligned buffer makes every load of it straddle two cache lines.
class ScratchRows {
 public:
  explicit ScratchRows(int64_t n) : p_(static_cast<float*>(std::aligned_alloc(64, bytes(n)))) {
    TORCH_CHECK(p_ != nullptr, "adaln: cannot allocate ", bytes(n), " bytes of scratch");
  }
  ~ScratchRows() { std::free(p_); }
  ScratchRows(const ScratchRows&) = delete;
  ScratchRows& operator=(const ScratchRows&) = delete;
  float* get() const { return p_; }

 private:
  static size_t bytes(int64_t n) { return (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64; }
  float* p_;
};

// ---- blocking -----------------------------------------------------------------------------------
// About target_blocks blocks in all, never splitting a sample into chunks under kMinRows rows. A
// function of the shape only. The backward keeps 2*H partial floats per block, written and then
// reduced: 32 blocks measured slightly faster than 64 or 128 at 8x256x384 and still balance a
// few dozen threads. The forward has no partials, only the per-sample factors (H floats) per
// block, so it can afford finer blocks.
constexpr int64_t kFwdTargetBlocks = 128, kBwdTargetBlocks = 32, kMinRows = 8;

Blocking make_blocking(int64_t batch, int64_t S, int64_t H, int64_t target_blocks) {
  Blocking bl{batch, S, H, 1, 0};
  if (S <= 0) return bl;
  const int64_t want = batch > 0 ? (target_blocks + batch - 1) / batch : 1;
  const int64_t most = (S + kMinRows - 1) / kMinRows;
  const int64_t chunks = std::max<int64_t>(1, std::min(want, most));
  bl.rows_per_chunk = (S + chunks - 1) / chunks;
  bl.chunks = (S + bl.rows_per_chunk - 1) / bl.rows_per_chunk;  // no empty chunk
  return bl;
}

// Blocks per at::parallel_for task: at least ~32K elements, below which a parallel region costs
// more than it saves. (Only the split among threads depends on it, never the results.)
int64_t grain_blocks(const Blocking& bl) {
  constexpr int64_t kMinTaskElems = 32768;
  const int64_t per_block = std::max<int64_t>(1, bl.rows_per_chunk * bl.H);
  return std::max<int64_t>(1, kMinTaskElems / per_block);
}

// ---- validation: adaln_checks.h -----------------------------------------------------------------
DType dtype_of(at::ScalarType t) {
  return t == at::kHalf ? kFloat16 : t == at::kBFloat16 ? kBFloat16 : kFloat32;
}

// ---- ops ----------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor, Tensor> adaln_fwd_cpu(const Tensor& x_, const Tensor& shift_,
                                                 const Tensor& scale_,
                                                 const std::optional<Tensor>& weight_,
                                                 const std::optional<Tensor>& bias_, double eps) {
  const adaln_checks::FwdInputs in =
      adaln_checks::check_fwd(x_, shift_, scale_, weight_, bias_, at::kCPU);
  const Tensor &x = in.x, &shift = in.shift, &scale = in.scale;
  const auto &weight = in.weight, &bias = in.bias;
  const bool per_token = in.per_token;
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  adaln_checks::FwdOutputs outputs = adaln_checks::fwd_outputs(in);
  if (outputs.done) return outputs.tuple();
  Tensor &out = outputs.out, &mean = outputs.mean, &rstd = outputs.rstd;

  FwdArgs a{};
  a.blk = make_blocking(B, S, H, kFwdTargetBlocks);
  a.dtype = dtype_of(x.scalar_type());
  a.per_token = per_token;
  a.eps = static_cast<float>(eps);
  a.x = x.data_ptr();
  a.shift = shift.data_ptr();
  a.scale = scale.data_ptr();
  a.weight = weight ? weight->data_ptr<float>() : nullptr;
  a.bias = bias ? bias->data_ptr<float>() : nullptr;
  a.out = out.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();

  const AdalnKernels* kr = pick_kernels(a.dtype);
  const int64_t nblocks = B * a.blk.chunks;
  at::parallel_for(0, nblocks, grain_blocks(a.blk), [&](int64_t b0, int64_t b1) {
    ScratchRows scratch(fwd_scratch_floats(H));
    kr->fwd_blocks(a, b0, b1, scratch.get());
  });
  return {out, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> adaln_bwd_cpu(
    const Tensor& dout_, const Tensor& x_, const Tensor& scale_,
    const std::optional<Tensor>& weight_, const std::optional<Tensor>& bias_,
    const Tensor& mean_, const Tensor& rstd_, bool shift_per_token) {
  const adaln_checks::BwdInputs in = adaln_checks::check_bwd(
      dout_, x_, scale_, weight_, bias_, mean_, rstd_, shift_per_token, at::kCPU);
  const Tensor &dout = in.dout, &x = in.x, &scale = in.scale, &mean = in.mean, &rstd = in.rstd;
  const auto &weight = in.weight, &bias = in.bias;
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  const auto f32 = x.options().dtype(at::kFloat);
  adaln_checks::BwdOutputs grads = adaln_checks::bwd_outputs(in);
  if (grads.done) return grads.tuple();
  Tensor &dx = grads.dx, &dshift = grads.dshift, &dscale = grads.dscale;
  Tensor &dweight = grads.dweight, &dbias = grads.dbias;

  BwdArgs a{};
  a.blk = make_blocking(B, S, H, kBwdTargetBlocks);
  a.dtype = dtype_of(x.scalar_type());
  a.per_token = shift_per_token;
  a.dout = dout.data_ptr();
  a.x = x.data_ptr();
  a.scale = scale.data_ptr();
  a.weight = weight ? weight->data_ptr<float>() : nullptr;
  a.bias = bias ? bias->data_ptr<float>() : nullptr;
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dx = dx.data_ptr();
  a.dshift = dshift.data_ptr();
  a.dscale = dscale.data_ptr();
  a.dweight = weight ? dweight.data_ptr<float>() : nullptr;
  a.dbias = bias ? dbias.data_ptr<float>() : nullptr;

  const int64_t nblocks = B * a.blk.chunks;
  a.partial_stride = bwd_partial_floats(H, shift_per_token, weight.has_value(), bias.has_value());
  Tensor partial = at::empty({std::max<int64_t>(1, nblocks * a.partial_stride)}, f32);
  a.partial = partial.data_ptr<float>();

  const AdalnKernels* kr = pick_kernels(a.dtype);
  at::parallel_for(0, nblocks, grain_blocks(a.blk), [&](int64_t b0, int64_t b1) {
    ScratchRows scratch(bwd_scratch_floats(H));
    kr->bwd_blocks(a, b0, b1, scratch.get());
  });
  // Broadcast form: dshift/dscale (and dweight/dbias) come from the per-block partials. Per-token
  // form: dshift/dscale are final; only dweight/dbias, if any, need the reduction. It reads
  // nblocks * partial_stride floats (98K at 8x256x384) and runs in kReduceCols column tasks, one
  // parallel region more, worth it only for large partial sums.
  if (!shift_per_token || weight || bias) {
    const int64_t ntasks = (H + kReduceCols - 1) / kReduceCols;
    const bool big = nblocks * a.partial_stride >= (int64_t{1} << 20);
    const int64_t grain = big ? 1 : ntasks;  // serial below 1M partial floats
    at::parallel_for(0, ntasks, grain, [&](int64_t t0, int64_t t1) { kr->bwd_reduce(a, t0, t1); });
  }
  return {dx, dshift, dscale, dweight, dbias};
}

}  // namespace

const char* cpu_kernel_build(c10::ScalarType dtype) { return pick_kernels(dtype_of(dtype))->name; }

}  // namespace adaln
}  // namespace stmodels

TORCH_LIBRARY_IMPL(stmodels, CPU, m) {
  m.impl("adaln_fwd", &stmodels::adaln::adaln_fwd_cpu);
  m.impl("adaln_bwd", &stmodels::adaln::adaln_bwd_cpu);
}
