// Forward kernel of the AdaLN CUDA op (see adaln_cuda.cu for the design): one row group per
// row, statistics in one or two reductions, out = LayerNorm(x; w, b) * (1 + scale) + shift.
#pragma once

#include "adaln_cuda_common.cuh"

namespace stmodels {
namespace adaln {
namespace cuda {

// kC > 0: the row lives in registers (kC chunks of W per thread, nchunks <= T * kC), and the form
// of shift/scale is the template argument kPerToken. kC == 0: the row is re-read from global
// memory on every pass (blockDim.y == 1), the form is read from p (only kPerToken = false is
// instantiated).
template <typename T, int W, int kC, bool kPerToken>
__global__ void __launch_bounds__(kMaxThreads, 2) adaln_fwd_kernel(const FwdParams p) {
  __shared__ RowReduceSmem red;
  const bool per_token = kC > 0 ? kPerToken : p.per_token;  // a constant in the cached variants
  int phase = 0;
  const int TPR = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int H = p.H, nchunks = p.nchunks;
  const int64_t b = blockIdx.x / p.tl.tiles_per_sample;
  const int64_t s0 = (blockIdx.x % p.tl.tiles_per_sample) * p.tl.rows_per_tile;
  const int64_t s1 = std::min<int64_t>(p.tl.S, s0 + p.tl.rows_per_tile);
  const int64_t iters = (s1 - s0 + R - 1) / R;  // the same for every group: barriers stay uniform
  const T* __restrict__ X = static_cast<const T*>(p.x);
  const T* __restrict__ SH = static_cast<const T*>(p.shift);
  const T* __restrict__ SC = static_cast<const T*>(p.scale);
  T* __restrict__ OUT = static_cast<T*>(p.out);
  const float* __restrict__ wt = p.weight;
  const float* __restrict__ bs = p.bias;

  // out = y * (1 + sc) + sh with y = xhat * w + b, for one chunk (uncached path).
  auto modulate = [&](float (&v)[W], const T* sh, const T* sc, int col) {
    float shf[W], scf[W], wf[W], bf[W];
    load_float<T, W>(sh + col, shf);
    load_float<T, W>(sc + col, scf);
    if (wt) load_param<W>(wt + col, wf);
    if (bs) load_param<W>(bs + col, bf);
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float y = v[k];
      if (wt) y *= wf[k];
      if (bs) y += bf[k];
      v[k] = y * (1.0f + scf[k]) + shf[k];
    }
  };

  if constexpr (kC > 0) {
    // Per-sample modulation folded once per block: out = xhat * A + C. The fold reassociates
    // (xhat w + b)(1 + s), which turns +-inf into NaN when 1 + s is infinite: a sample with a
    // non-finite 1 + scale anywhere (block-wide vote) takes the unfolded form instead.
    float A[kC][W], C[kC][W];
    int nonfinite = 0;
    if (!per_token) {
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
    // Every thread of the block reaches this (per_token is a template constant here).
    const bool fold = !per_token && __syncthreads_or(nonfinite) == 0;
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
          if (per_token) {
            shp[j] = load_pack<T, W>(SH + row * H + ch * W);
            scp[j] = load_pack<T, W>(SC + row * H + ch * W);
          }
#pragma unroll
          for (int k = 0; k < W; ++k) { sum[0] += xv[j][k]; sum[1] += fabsf(xv[j][k]); }
        }
      }
      group_sum<2>(sum, red, phase);
      const float mean0 = sum[0] * p.inv_h, rs = residual_scale(sum[1] * p.inv_h);
      float dd[2] = {0.f, 0.f};  // sum of scaled residuals, sum of their squares
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        const int ch = tx + j * TPR;
        if (valid && ch < nchunks) {
#pragma unroll
          for (int k = 0; k < W; ++k) {
            const float d = (xv[j][k] - mean0) * rs;
            dd[0] += d;
            dd[1] += d * d;
          }
        }
      }
      group_sum<2>(dd, red, phase);
      if (!valid) continue;
      float mean, rstd;
      row_stats(mean0, dd, rs, p.inv_h, p.eps, mean, rstd);
      if (tx == 0) {
        p.mean[row] = mean;
        p.rstd[row] = rstd;
      }
      T* orow = OUT + row * H;
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        const int ch = tx + j * TPR;
        if (ch < nchunks) {
          const int col = ch * W;
          float v[W];
#pragma unroll
          for (int k = 0; k < W; ++k) v[k] = (xv[j][k] - mean) * rstd;
          if (per_token) {
            float shf[W], scf[W], wf[W], bf[W];
            to_float<T, W>(shp[j], shf);
            to_float<T, W>(scp[j], scf);
            if (wt) load_param<W>(wt + col, wf);
            if (bs) load_param<W>(bs + col, bf);
#pragma unroll
            for (int k = 0; k < W; ++k) {
              float y = v[k];
              if (wt) y *= wf[k];
              if (bs) y += bf[k];
              v[k] = y * (1.0f + scf[k]) + shf[k];
            }
          } else if (fold) {
#pragma unroll
            for (int k = 0; k < W; ++k) v[k] = v[k] * A[j][k] + C[j][k];
          } else {
            modulate(v, SH + b * H, SC + b * H, col);
          }
          store_float<T, W>(orow + col, v);
        }
      }
    }
  } else {
    // Uncached (H > kMaxThreads * kC): one row group per block, three passes over global memory.
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t row = b * p.tl.S + s;
      const T* xr = X + row * H;
      float sum[2] = {0.f, 0.f};  // sum of x, sum of |x|
      for (int ch = tx; ch < nchunks; ch += TPR) {
        float v[W];
        load_float<T, W>(xr + ch * W, v);
#pragma unroll
        for (int k = 0; k < W; ++k) { sum[0] += v[k]; sum[1] += fabsf(v[k]); }
      }
      group_sum<2>(sum, red, phase);
      const float mean0 = sum[0] * p.inv_h, rs = residual_scale(sum[1] * p.inv_h);
      float dd[2] = {0.f, 0.f};
      for (int ch = tx; ch < nchunks; ch += TPR) {
        float v[W];
        load_float<T, W>(xr + ch * W, v);
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float d = (v[k] - mean0) * rs;
          dd[0] += d;
          dd[1] += d * d;
        }
      }
      group_sum<2>(dd, red, phase);
      float mean, rstd;
      row_stats(mean0, dd, rs, p.inv_h, p.eps, mean, rstd);
      if (tx == 0) {
        p.mean[row] = mean;
        p.rstd[row] = rstd;
      }
      const int64_t mrow = (per_token ? row : b) * H;
      for (int ch = tx; ch < nchunks; ch += TPR) {
        const int col = ch * W;
        float v[W];
        load_float<T, W>(xr + col, v);
#pragma unroll
        for (int k = 0; k < W; ++k) v[k] = (v[k] - mean) * rstd;
        modulate(v, SH + mrow, SC + mrow, col);
        store_float<T, W>(OUT + row * H + col, v);
      }
    }
  }
}

}  // namespace cuda
}  // namespace adaln
}  // namespace stmodels
