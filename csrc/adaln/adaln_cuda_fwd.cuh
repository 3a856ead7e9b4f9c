// Forward kernels of the AdaLN CUDA op (see adaln_cuda.cu for the design): one row group per
// row, statistics in one or two reductions, out = LayerNorm(x; w, b) * (1 + scale) + shift.
// adaln_fwd_cached_kernel keeps the row in registers; adaln_fwd_uncached_kernel (rows too long
// for that) re-reads it from global memory on every pass. Both share the per-chunk helpers below,
// so that the two compute every value with the same expressions.
#pragma once

#include "adaln_cuda_common.cuh"

namespace stmodels {
namespace adaln {
namespace cuda {

// First statistics pass over one chunk: sum[0] += x, sum[1] += |x|.
template <int W>
__device__ __forceinline__ void add_row_sums(const float (&v)[W], float (&sum)[2]) {
#pragma unroll
  for (int k = 0; k < W; ++k) { sum[0] += v[k]; sum[1] += fabsf(v[k]); }
}

// Second pass over one chunk: dd[0] += d, dd[1] += d^2 for the scaled residuals
// d = (x - mean0) * rs (see residual_scale).
template <int W>
__device__ __forceinline__ void add_residuals(const float (&v)[W], float mean0, float rs,
                                              float (&dd)[2]) {
#pragma unroll
  for (int k = 0; k < W; ++k) {
    const float d = (v[k] - mean0) * rs;
    dd[0] += d;
    dd[1] += d * d;
  }
}

// The row's mean and rstd from the group sums of both passes; the group's thread 0 stores them
// to mean_out[row], rstd_out[row] (p.mean, p.rstd: passed as pointers, as a `const FwdParams&`
// here cost the x loads of the uncached kernel their read-only-cache path, per the PTX).
__device__ __forceinline__ void finish_row_stats(float* mean_out, float* rstd_out, int64_t row,
                                                 float mean0, const float (&dd)[2], float rs,
                                                 float inv_h, float eps, float& mean,
                                                 float& rstd) {
  row_stats(mean0, dd, rs, inv_h, eps, mean, rstd);
  if (threadIdx.x == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// xhat of one chunk: v holds x on entry, (x - mean) * rstd on return.
template <int W>
__device__ __forceinline__ void normalize(float (&v)[W], float mean, float rstd) {
#pragma unroll
  for (int k = 0; k < W; ++k) v[k] = (v[k] - mean) * rstd;
}

// The unfolded modulation of one chunk at column col: v holds xhat on entry and
// out = y * (1 + sc) + sh, y = xhat * w + b (w, b optional), on return.
template <int W>
__device__ __forceinline__ void modulate(float (&v)[W], const float (&shf)[W],
                                         const float (&scf)[W], const float* __restrict__ wt,
                                         const float* __restrict__ bs, int col) {
  float wf[W], bf[W];
  if (wt) load_param<W>(wt + col, wf);
  if (bs) load_param<W>(bs + col, bf);
#pragma unroll
  for (int k = 0; k < W; ++k) {
    float y = v[k];
    if (wt) y *= wf[k];
    if (bs) y += bf[k];
    v[k] = y * (1.0f + scf[k]) + shf[k];
  }
}

// modulate() with this chunk's shift/scale read from the modulation rows sh, sc.
template <typename T, int W>
__device__ __forceinline__ void modulate_from(float (&v)[W], const T* __restrict__ sh,
                                              const T* __restrict__ sc,
                                              const float* __restrict__ wt,
                                              const float* __restrict__ bs, int col) {
  float shf[W], scf[W];
  load_float<T, W>(sh + col, shf);
  load_float<T, W>(sc + col, scf);
  modulate<W>(v, shf, scf, wt, bs, col);
}

// The row lives in registers: kC chunks of W per thread, nchunks <= T * kC. The form of
// shift/scale is the template argument kPerToken.
template <typename T, int W, int kC, bool kPerToken>
__global__ void __launch_bounds__(kMaxThreads, 2) adaln_fwd_cached_kernel(const FwdParams p) {
  static_assert(kC > 0, "the cached kernel keeps kC > 0 chunks per thread");
  __shared__ RowReduceSmem red;
  int phase = 0;
  const int TPR = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int H = p.H, nchunks = p.nchunks;
  const TileRows tr = tile_rows(p.tl, blockIdx.x);
  const int64_t b = tr.b, s0 = tr.s0, s1 = tr.s1;
  const int64_t iters = (s1 - s0 + R - 1) / R;  // the same for every group: barriers stay uniform
  const T* __restrict__ X = static_cast<const T*>(p.x);
  const T* __restrict__ SH = static_cast<const T*>(p.shift);
  const T* __restrict__ SC = static_cast<const T*>(p.scale);
  T* __restrict__ OUT = static_cast<T*>(p.out);
  const float* __restrict__ wt = p.weight;
  const float* __restrict__ bs = p.bias;

  // Per-sample modulation folded once per block: out = xhat * A + C. The fold reassociates
  // (xhat w + b)(1 + s), which turns +-inf into NaN when 1 + s is infinite: a sample with a
  // non-finite 1 + scale anywhere (block-wide vote) takes the unfolded form instead.
  float A[kC][W], C[kC][W];
  int nonfinite = 0;
  if (!kPerToken) {
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      const int ch = tx + j * TPR;
      if (ch < nchunks) {
        const int col = ch * W;
        float shf[W], scf[W], wf[W], bf[W];
        load_float<T, W>(SH + b * H + col, shf);
        load_float<T, W>(SC + b * H + col, scf);
        if (wt) load_param<W>(wt + col, wf);
        if (bs) load_param<W>(bs + col, bf);
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float one = 1.0f + scf[k];
          nonfinite |= !isfinite(one);
          A[j][k] = wt ? one * wf[k] : one;
          C[j][k] = bs ? bf[k] * one + shf[k] : shf[k];
        }
      }
    }
  }
  // Every thread of the block reaches this (kPerToken is a template constant).
  const bool fold = !kPerToken && __syncthreads_or(nonfinite) == 0;
  for (int64_t it = 0; it < iters; ++it) {
    const int64_t s = s0 + ty + it * R;
    const bool valid = s < s1;
    if (TPR == 32 && !valid) break;  // warp-only reductions: no barrier to keep
    const int64_t row = b * p.tl.S + s;
    const T* xr = X + row * H;
    float xv[kC][W];
    // Per token: shift/scale are loaded with x (kept packed), so that their latency overlaps
    // the row's loads rather than following its reductions.
    Pack<T, W> shp[kC], scp[kC];
    float sum[2] = {0.f, 0.f};  // sum of x, sum of |x|
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      const int ch = tx + j * TPR;
      if (valid && ch < nchunks) {
        load_float<T, W>(xr + ch * W, xv[j]);
        if (kPerToken) {
          shp[j] = load_pack<T, W>(SH + row * H + ch * W);
          scp[j] = load_pack<T, W>(SC + row * H + ch * W);
        }
        add_row_sums<W>(xv[j], sum);
      }
    }
    group_sum<2>(sum, red, phase);
    const float mean0 = sum[0] * p.inv_h, rs = residual_scale(sum[1] * p.inv_h);
    float dd[2] = {0.f, 0.f};  // sum of scaled residuals, sum of their squares
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      const int ch = tx + j * TPR;
      if (valid && ch < nchunks) add_residuals<W>(xv[j], mean0, rs, dd);
    }
    group_sum<2>(dd, red, phase);
    if (!valid) continue;
    float mean, rstd;
    finish_row_stats(p.mean, p.rstd, row, mean0, dd, rs, p.inv_h, p.eps, mean, rstd);
    T* orow = OUT + row * H;
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      const int ch = tx + j * TPR;
      if (ch < nchunks) {
        const int col = ch * W;
        float v[W];
#pragma unroll
        for (int k = 0; k < W; ++k) v[k] = xv[j][k];
        normalize<W>(v, mean, rstd);
        if (kPerToken) {
          float shf[W], scf[W];
          to_float<T, W>(shp[j], shf);
          to_float<T, W>(scp[j], scf);
          modulate<W>(v, shf, scf, wt, bs, col);
        } else if (fold) {
#pragma unroll
          for (int k = 0; k < W; ++k) v[k] = v[k] * A[j][k] + C[j][k];
        } else {
          modulate_from<T, W>(v, SH + b * H, SC + b * H, wt, bs, col);
        }
        store_float<T, W>(orow + col, v);
      }
    }
  }
}

// Rows longer than the cached kernel holds (H > kMaxThreads * kC * W): one row group per block
// (blockDim.y == 1), three passes over global memory (L2) per row. The form of shift/scale is read
// from p, so one instantiation serves both.
template <typename T, int W>
__global__ void __launch_bounds__(kMaxThreads, 2) adaln_fwd_uncached_kernel(const FwdParams p) {
  __shared__ RowReduceSmem red;
  int phase = 0;
  const int TPR = blockDim.x, tx = threadIdx.x;
  const int H = p.H, nchunks = p.nchunks;
  const TileRows tr = tile_rows(p.tl, blockIdx.x);
  const T* __restrict__ X = static_cast<const T*>(p.x);
  const T* __restrict__ SH = static_cast<const T*>(p.shift);
  const T* __restrict__ SC = static_cast<const T*>(p.scale);
  T* __restrict__ OUT = static_cast<T*>(p.out);
  const float* __restrict__ wt = p.weight;
  const float* __restrict__ bs = p.bias;
  for (int64_t s = tr.s0; s < tr.s1; ++s) {
    const int64_t row = tr.b * p.tl.S + s;
    const T* xr = X + row * H;
    float sum[2] = {0.f, 0.f};  // sum of x, sum of |x|
    for (int ch = tx; ch < nchunks; ch += TPR) {
      float v[W];
      load_float<T, W>(xr + ch * W, v);
      add_row_sums<W>(v, sum);
    }
    group_sum<2>(sum, red, phase);
    const float mean0 = sum[0] * p.inv_h, rs = residual_scale(sum[1] * p.inv_h);
    float dd[2] = {0.f, 0.f};
    for (int ch = tx; ch < nchunks; ch += TPR) {
      float v[W];
      load_float<T, W>(xr + ch * W, v);
      add_residuals<W>(v, mean0, rs, dd);
    }
    group_sum<2>(dd, red, phase);
    float mean, rstd;
    finish_row_stats(p.mean, p.rstd, row, mean0, dd, rs, p.inv_h, p.eps, mean, rstd);
    const int64_t mrow = (p.per_token ? row : tr.b) * H;
    for (int ch = tx; ch < nchunks; ch += TPR) {
      const int col = ch * W;
      float v[W];
      load_float<T, W>(xr + col, v);
      normalize<W>(v, mean, rstd);
      modulate_from<T, W>(v, SH + mrow, SC + mrow, wt, bs, col);
      store_float<T, W>(OUT + row * H + col, v);
    }
  }
}

}  // namespace cuda
}  // namespace adaln
}  // namespace stmodels
