// Shared device code of the AdaLN CUDA op: packed 16-byte loads/stores, deterministic row
// reductions, the overflow-free row statistics and the kernels' parameter blocks. The design
// (layout, tiling, reduction order, expected bandwidth) is described at the top of adaln_cuda.cu,
// the host side (launch configuration, argument checks, registration). The kernels live in
// adaln_cuda_fwd.cuh and adaln_cuda_bwd.cuh.
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

// The rows of one block, from tile_rows.
struct TileRows {
  int64_t b, s0, s1;
};

__device__ __forceinline__ TileRows tile_rows(const Tiling& tl, int64_t tile) {
  TileRows r;
  r.b = tile / tl.tiles_per_sample;
  r.s0 = (tile % tl.tiles_per_sample) * tl.rows_per_tile;
  r.s1 = std::min<int64_t>(tl.S, r.s0 + tl.rows_per_tile);
  return r;
}

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

}  // namespace cuda
}  // namespace adaln
}  // namespace stmodels
