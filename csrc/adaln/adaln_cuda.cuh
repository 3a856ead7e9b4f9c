// Device code of the AdaLN CUDA op: packed 16-byte loads/stores, deterministic row reductions and
// the four kernels. The design (layout, tiling, reduction order, expected bandwidth) is described
// at the top of adaln_cuda.cu, the only file that includes this one; it holds the host side
// (launch configuration, argument checks, registration).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace stmodels {
namespace adaln {
namespace cuda {

// Chunks of W elements per thread in the cached kernels, i.e. the row's share each thread keeps in
// registers (per cached array): forward 16 floats (2 chunks of 8 halves, 4 of 4 floats; with x,
// A and C that is 48 floats, which fits the forward's 64-register budget with a few spilled
// bytes), backward 8 (it keeps five such arrays per sample: (1 + scale) * weight, xhat, g and two
// column partials). The scalar path keeps 8: its per-element addressing costs registers too.
__host__ __device__ constexpr int fwd_chunks(int W) { return W == 1 ? 8 : 16 / W; }
// Per-token forward: x, shift and scale of a chunk are all in flight at once, 8 floats of each.
__host__ __device__ constexpr int fwd_token_chunks(int W) { return W == 1 ? 8 : 8 / W; }
__host__ __device__ constexpr int bwd_chunks(int W) { return W == 1 ? 8 : 8 / W; }
// Threads per row at most (and per block). Every kernel that takes such blocks is compiled with
// __launch_bounds__(kMaxThreads[, 2]), so every launch configuration is launchable: the forward
// at most 64 registers per thread (4 blocks of 256 threads per SM), the backward at most 128
// (measured 64 per sample, ~95 per token at sm_90; capping those at 64 spilled ~100 bytes).
constexpr int kMaxThreads = 512;
constexpr int kMaxWarps = kMaxThreads / 32;
// Threads per block targeted when several rows (row groups) share a block.
constexpr int kBlockThreads = 256;

// W consecutive elements; aligned to their total size, so a Pack of 8 halves or 4 floats is one
// 16-byte ld/st.global.v4 (the caller guarantees the alignment, see vector_ok in adaln_cuda.cu).
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <typename T, int W>
__device__ __forceinline__ Pack<T, W> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, W>*>(p);
}

template <typename T, int W>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, W>& v) {
  *reinterpret_cast<Pack<T, W>*>(p) = v;
}

template <typename T, int W>
__device__ __forceinline__ void to_float(const Pack<T, W>& v, float (&f)[W]) {
#pragma unroll
  for (int k = 0; k < W; ++k) f[k] = static_cast<float>(v.v[k]);
}

template <typename T, int W>
__device__ __forceinline__ void load_float(const T* p, float (&f)[W]) {
  to_float<T, W>(load_pack<T, W>(p), f);
}

// Round to nearest even (c10's device conversions: __float2half_rn / __float2bfloat16).
template <typename T, int W>
__device__ __forceinline__ void store_float(T* p, const float (&f)[W]) {
  Pack<T, W> v;
#pragma unroll
  for (int k = 0; k < W; ++k) v.v[k] = static_cast<T>(f[k]);
  store_pack<T, W>(p, v);
}

// W float32 values of weight/bias: float4 loads when W is a multiple of 4 (the pointer is then
// 16-byte aligned, checked on the host), scalar loads otherwise.
template <int W>
__device__ __forceinline__ void load_param(const float* __restrict__ p, float (&f)[W]) {
  if constexpr (W % 4 == 0) {
#pragma unroll
    for (int q = 0; q < W / 4; ++q) {
      const float4 v = *reinterpret_cast<const float4*>(p + 4 * q);
      f[4 * q] = v.x;
      f[4 * q + 1] = v.y;
      f[4 * q + 2] = v.z;
      f[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) f[k] = p[k];
  }
}

// Butterfly sum over the 32 lanes of a warp. a + b == b + a exactly in IEEE arithmetic, so every
// lane ends with the bit-identical total, and the order is fixed: deterministic.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Shared buffer of group_sum: two phases (double buffering), up to two values, one slot per warp.
struct RowReduceSmem {
  float v[2][2][kMaxWarps];
};

// Sum of N values over the blockDim.x threads of a row group (threadIdx.y picks the group;
// blockDim.x is a multiple of 32, so a warp never straddles two groups). Every thread of the group
// gets the same totals. blockDim.x == 32: shuffles only, no barrier (a warp may skip it when its
// row is out of range). Otherwise one __syncthreads, which every thread of the block must reach;
// the two alternating buffers make a second barrier unnecessary: a thread can only overwrite a
// phase after passing the barrier of the next reduction, which all readers of that phase have
// reached after finishing their reads.
template <int N>
__device__ __forceinline__ void group_sum(float (&v)[N], RowReduceSmem& red, int& phase) {
  static_assert(N <= 2, "group_sum holds at most two values");
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n]);
  const int T = blockDim.x;
  if (T == 32) return;
  const int lin = threadIdx.y * T + threadIdx.x;
  if ((lin & 31) == 0) {
#pragma unroll
    for (int n = 0; n < N; ++n) red.v[phase][n][lin >> 5] = v[n];
  }
  __syncthreads();
  const int nw = T >> 5, w0 = threadIdx.y * nw;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    float s = red.v[phase][n][w0];
    for (int i = 1; i < nw; ++i) s += red.v[phase][n][w0 + i];  // fixed order
    v[n] = s;
  }
  phase ^= 1;
}

// A power of two s <= 1 that brings a row's mean |x| into [1, 2) once it passes 2^40, else 1.
// The residuals are summed as (x - mean0) s, so their squares stay far from float32 overflow
// (LayerNorm(1e20 x) must equal LayerNorm(x)); ordinary rows keep s = 1 and exactly the unscaled
// arithmetic. mean_abs inf/NaN (a row holding inf/NaN) gives 2^-126 and a NaN row, as the math.
__device__ __forceinline__ float residual_scale(float mean_abs) {
  const int e = (__float_as_int(mean_abs) >> 23) & 0xff;
  if (e <= 127 + 40) return 1.0f;
  return __int_as_float((254 - (e < 253 ? e : 253)) << 23);
}

// Row statistics from the residual sums dd = (sum d s, sum (d s)^2), d = x - mean0.
__device__ __forceinline__ void row_stats(float mean0, const float (&dd)[2], float s, float inv_h,
                                          float eps, float& mean, float& rstd) {
  mean = mean0 + (dd[0] * inv_h) / s;
  float var = (dd[1] - dd[0] * (dd[0] * inv_h)) * inv_h;  // of the scaled residuals
  var = var < 0.f ? 0.f : var;  // rounding; keeps NaN
  // A scaled row with var > 0 has var >> eps s^2; a constant one needs 1/sqrt(eps) itself (eps s^2
  // underflows), which this form also gives at s = 1.
  rstd = var == 0.f ? rsqrtf(eps) : rsqrtf(var + eps * s * s) * s;
}

// ---- kernels --------------------------------------------------------------------------------
// Rows of block `tile`: sample b, positions [s0, s1).
struct Tiling {
  int64_t S;
  int64_t rows_per_tile, tiles_per_sample;
};

struct FwdParams {
  Tiling tl;
  int H, nchunks;
  bool per_token;
  float eps, inv_h;
  const void* x;
  const void* shift;
  const void* scale;
  const float* weight;  // (H,) or null
  const float* bias;    // (H,) or null
  void* out;
  float* mean;
  float* rstd;
};

struct BwdParams {
  Tiling tl;
  int H, nchunks;
  bool per_token;
  float inv_h;
  const void* dout;
  const void* x;
  const void* scale;
  const float* weight;
  const float* bias;
  const float* mean;
  const float* rstd;
  void* dx;
  void* dshift;  // per token: written here; per sample: by the reduce kernel
  void* dscale;
  float* partial;  // (blocks, A, H) or null when A == 0
  int A;           // partial arrays: per sample 2 (D, P); per token [weight?] + [bias?]
};

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

template <typename T, int W, int kC, bool kPerToken>
__global__ void __launch_bounds__(kMaxThreads) adaln_bwd_kernel(const BwdParams p) {
  constexpr int kC1 = kC > 0 ? kC : 1;
  __shared__ RowReduceSmem red;
  // Combination of the row groups' column partials: (R - 1) * T * W < kBlockThreads * W floats.
  __shared__ float comb[kBlockThreads * W];
  int phase = 0;
  const int TPR = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int H = p.H, nchunks = p.nchunks;
  const int64_t tile = blockIdx.x;
  const int64_t b = tile / p.tl.tiles_per_sample;
  const int64_t s0 = (tile % p.tl.tiles_per_sample) * p.tl.rows_per_tile;
  const int64_t s1 = std::min<int64_t>(p.tl.S, s0 + p.tl.rows_per_tile);
  const int64_t iters = (s1 - s0 + R - 1) / R;
  const T* __restrict__ X = static_cast<const T*>(p.x);
  const T* __restrict__ DO = static_cast<const T*>(p.dout);
  const T* __restrict__ SC = static_cast<const T*>(p.scale);
  T* __restrict__ DX = static_cast<T*>(p.dx);
  const float* __restrict__ wt = p.weight;
  const float* __restrict__ bs = p.bias;
  const bool per_token = kC > 0 ? kPerToken : p.per_token;  // a constant in the cached variants
  float* part = p.partial ? p.partial + tile * p.A * int64_t{H} : nullptr;

  // One chunk of one row: xhat and g, the row sums (sg, sgx), the column partials acc0/acc1, and
  // (per token) dshift/dscale. ws1 is (1 + scale) * weight (per sample).
  auto chunk_pass1 = [&](int64_t row, int col, float mean, float rstd, const float (&ws1)[W],
                         float (&xh)[W], float (&g)[W], float (&acc0)[W], float (&acc1)[W],
                         float (&sums)[2]) {
    float xf[W];
    load_float<T, W>(X + row * H + col, xf);
    const Pack<T, W> dyp = load_pack<T, W>(DO + row * H + col);
    float dy[W];
    to_float<T, W>(dyp, dy);
#pragma unroll
    for (int k = 0; k < W; ++k) xh[k] = (xf[k] - mean) * rstd;
    if (!per_token) {
#pragma unroll
      for (int k = 0; k < W; ++k) {
        g[k] = dy[k] * ws1[k];
        acc0[k] += dy[k];
        acc1[k] += dy[k] * xh[k];
      }
    } else {
      float scf[W], wf[W], bf[W], ds[W];
      load_float<T, W>(SC + row * H + col, scf);
      if (wt) load_param<W>(wt + col, wf);
      if (bs) load_param<W>(bs + col, bf);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float a = dy[k] * (1.0f + scf[k]);
        float y = xh[k];
        g[k] = a;
        if (wt) {
          g[k] = a * wf[k];
          y = xh[k] * wf[k];
          acc0[k] += a * xh[k];
          if (bs) acc1[k] += a;
        } else if (bs) {
          acc0[k] += a;
        }
        if (bs) y += bf[k];
        ds[k] = dy[k] * y;
      }
      store_pack<T, W>(static_cast<T*>(p.dshift) + row * H + col, dyp);  // exact copy
      store_float<T, W>(static_cast<T*>(p.dscale) + row * H + col, ds);
    }
#pragma unroll
    for (int k = 0; k < W; ++k) {
      sums[0] += g[k];
      sums[1] += g[k] * xh[k];
    }
  };
  auto ws1_of = [&](int col, float (&ws1)[W]) {
    float scf[W], wf[W];
    load_float<T, W>(SC + b * H + col, scf);
    if (wt) load_param<W>(wt + col, wf);
#pragma unroll
    for (int k = 0; k < W; ++k) ws1[k] = wt ? (1.0f + scf[k]) * wf[k] : 1.0f + scf[k];
  };

  if constexpr (kC > 0) {
    float ws1[kC1][W], acc0[kC1][W], acc1[kC1][W];
#pragma unroll
    for (int j = 0; j < kC; ++j) {
#pragma unroll
      for (int k = 0; k < W; ++k) acc0[j][k] = acc1[j][k] = 0.f;
      const int ch = tx + j * TPR;
      if (!per_token && ch < nchunks) ws1_of(ch * W, ws1[j]);
    }
    for (int64_t it = 0; it < iters; ++it) {
      const int64_t s = s0 + ty + it * R;
      const bool valid = s < s1;  // no early exit: the combination below has barriers
      const int64_t row = b * p.tl.S + s;
      const float mean = valid ? p.mean[row] : 0.f, rstd = valid ? p.rstd[row] : 0.f;
      float xh[kC1][W], g[kC1][W];
      float sums[2] = {0.f, 0.f};
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        const int ch = tx + j * TPR;
        if (valid && ch < nchunks) {
          chunk_pass1(row, ch * W, mean, rstd, ws1[j], xh[j], g[j], acc0[j], acc1[j], sums);
        } else {
#pragma unroll
          for (int k = 0; k < W; ++k) xh[j][k] = g[j][k] = 0.f;
        }
      }
      group_sum<2>(sums, red, phase);
      if (!valid) continue;
      const float mg = sums[0] * p.inv_h, mgx = sums[1] * p.inv_h;
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        const int ch = tx + j * TPR;
        if (ch < nchunks) {
          float v[W];
#pragma unroll
          for (int k = 0; k < W; ++k) v[k] = ((g[j][k] - mg) - xh[j][k] * mgx) * rstd;
          store_float<T, W>(DX + row * H + ch * W, v);
        }
      }
    }
    if (part == nullptr) return;  // uniform over the block
    // Row groups 1..R-1 hand their partials to group 0, one (array, chunk) at a time, added in
    // group order. Layout [k][(r - 1) * T + tx]: conflict-free.
    const int nslots = (R - 1) * TPR;
#pragma unroll
    for (int a = 0; a < 2; ++a) {
      if (a >= p.A) break;
#pragma unroll
      for (int j = 0; j < kC; ++j) {
        float(&acc)[W] = a == 0 ? acc0[j] : acc1[j];
        if (R > 1) {
          if (ty > 0) {
#pragma unroll
            for (int k = 0; k < W; ++k) comb[k * nslots + (ty - 1) * TPR + tx] = acc[k];
          }
          __syncthreads();
          if (ty == 0) {
            for (int r = 1; r < R; ++r) {
#pragma unroll
              for (int k = 0; k < W; ++k) acc[k] += comb[k * nslots + (r - 1) * TPR + tx];
            }
          }
          __syncthreads();
        }
        const int ch = tx + j * TPR;
        if (ty == 0 && ch < nchunks) {
          float* dst = part + int64_t{a} * H + ch * W;
#pragma unroll
          for (int k = 0; k < W; ++k) dst[k] = acc[k];
        }
      }
    }
  } else {
    // Uncached: one row group per block (R == 1); the column partials accumulate in the block's
    // own workspace slot, each column read-modify-written by the one thread that owns it.
    const int A = p.A;
    if (part) {
      for (int ch = tx; ch < nchunks; ch += TPR) {
        for (int a = 0; a < A; ++a) {
#pragma unroll
          for (int k = 0; k < W; ++k) part[int64_t{a} * H + ch * W + k] = 0.f;
        }
      }
    }
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t row = b * p.tl.S + s;
      const float mean = p.mean[row], rstd = p.rstd[row];
      float sums[2] = {0.f, 0.f};
      for (int ch = tx; ch < nchunks; ch += TPR) {
        const int col = ch * W;
        float ws1[W], xh[W], g[W], acc0[W], acc1[W];
        if (!per_token) ws1_of(col, ws1);
#pragma unroll
        for (int k = 0; k < W; ++k) acc0[k] = acc1[k] = 0.f;
        chunk_pass1(row, col, mean, rstd, ws1, xh, g, acc0, acc1, sums);
        if (part) {
#pragma unroll
          for (int k = 0; k < W; ++k) {
            part[col + k] += acc0[k];
            if (A > 1) part[H + col + k] += acc1[k];
          }
        }
      }
      group_sum<2>(sums, red, phase);
      const float mg = sums[0] * p.inv_h, mgx = sums[1] * p.inv_h;
      for (int ch = tx; ch < nchunks; ch += TPR) {
        // The same expressions as chunk_pass1, so the same xhat and g.
        const int col = ch * W;
        float xf[W], dy[W], g[W], v[W];
        load_float<T, W>(X + row * H + col, xf);
        load_float<T, W>(DO + row * H + col, dy);
        if (!per_token) {
          float ws1[W];
          ws1_of(col, ws1);
#pragma unroll
          for (int k = 0; k < W; ++k) g[k] = dy[k] * ws1[k];
        } else {
          float scf[W], wf[W];
          load_float<T, W>(SC + row * H + col, scf);
          if (wt) load_param<W>(wt + col, wf);
#pragma unroll
          for (int k = 0; k < W; ++k) {
            const float a = dy[k] * (1.0f + scf[k]);
            g[k] = wt ? a * wf[k] : a;
          }
        }
#pragma unroll
        for (int k = 0; k < W; ++k) {
          const float xh = (xf[k] - mean) * rstd;
          v[k] = ((g[k] - mg) - xh * mgx) * rstd;
        }
        store_float<T, W>(DX + row * H + col, v);
      }
    }
  }
}

// Sum of the block partials of each group over its chunks, in a fixed order: lane l (of kRedLanes)
// sums chunks l, l + kRedLanes, ... in turn, then lane 0 adds the lane sums in lane order.
// Per sample: group = sample, A = 2 (D, P). Per token: one group of all blocks, A = [w] + [b].
constexpr int kRedLanes = 16;

struct ReduceParams {
  const float* partial;  // (groups * chunks, A, H)
  int64_t chunks, H;
  int A;
  bool per_token;
  const void* scale;  // per sample: (batch, H)
  const float* weight;
  const float* bias;
  void* dshift;  // per sample: (batch, H)
  void* dscale;
  float* dweight;  // per token: final; per sample: unused
  float* dbias;
  float* bsum;  // per sample, with weight or bias: (batch, 2, H) of (1 + scale) * (P, D)
};

template <typename T>
__global__ void __launch_bounds__(32 * kRedLanes) adaln_bwd_reduce_kernel(const ReduceParams p) {
  __shared__ float lanes[kRedLanes][33];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t H = p.H, coltiles = (H + 31) / 32;
  const int64_t grp = blockIdx.x / coltiles;
  const int64_t h = (blockIdx.x % coltiles) * 32 + tx;
  const bool ok = h < H;
  float tot[2] = {0.f, 0.f};
#pragma unroll
  for (int a = 0; a < 2; ++a) {
    if (a >= p.A) break;  // uniform
    float s = 0.f;
    if (ok) {
      const float* src = p.partial + (grp * p.chunks * p.A + a) * H + h;
#pragma unroll 4
      for (int64_t c = ty; c < p.chunks; c += kRedLanes) s += src[c * p.A * H];
    }
    lanes[ty][tx] = s;
    __syncthreads();
    if (ty == 0) {
      float t = lanes[0][tx];
      for (int l = 1; l < kRedLanes; ++l) t += lanes[l][tx];
      tot[a] = t;
    }
    __syncthreads();
  }
  if (ty != 0 || !ok) return;
  const float* wt = p.weight;
  const float* bs = p.bias;
  if (p.per_token) {
    if (wt) {
      p.dweight[h] = tot[0];
      if (bs) p.dbias[h] = tot[1];
    } else if (bs) {
      p.dbias[h] = tot[0];
    }
    return;
  }
  const float D = tot[0], P = tot[1];
  const int64_t i = grp * H + h;
  static_cast<T*>(p.dshift)[i] = static_cast<T>(D);
  float ds = wt ? P * wt[h] : P;
  if (bs) ds += bs[h] * D;
  static_cast<T*>(p.dscale)[i] = static_cast<T>(ds);
  if (p.bsum) {
    const float one = 1.0f + static_cast<float>(static_cast<const T*>(p.scale)[i]);
    p.bsum[(grp * 2) * H + h] = one * P;
    p.bsum[(grp * 2 + 1) * H + h] = one * D;
  }
}

// Per sample: dweight = sum_b (1 + scale_b) * P_b, dbias = sum_b (1 + scale_b) * D_b, b in order.
__global__ void __launch_bounds__(256) adaln_bwd_affine_kernel(const float* __restrict__ bsum,
                                                              int64_t batch, int64_t H,
                                                              float* dweight, float* dbias) {
  const int64_t h = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (h >= H) return;
  float dw = 0.f, db = 0.f;
  for (int64_t b = 0; b < batch; ++b) {
    dw += bsum[(b * 2) * H + h];
    db += bsum[(b * 2 + 1) * H + h];
  }
  if (dweight) dweight[h] = dw;
  if (dbias) dbias[h] = db;
}

}  // namespace cuda
}  // namespace adaln
}  // namespace stmodels
