// Backward kernels of the AdaLN CUDA op (see adaln_cuda.cu for the design): dx per row, the
// per-block column partials of dshift/dscale/dweight/dbias, and their fixed-order reductions.
// adaln_bwd_cached_kernel keeps the row in registers; adaln_bwd_uncached_kernel (rows too long for
// that) re-reads it from global memory. Both share the per-chunk helpers below, so that the two
// compute every value with the same expressions.
#pragma once

#include "adaln_cuda_common.cuh"

namespace stmodels {
namespace adaln {
namespace cuda {

// The helpers take the kernel's own __restrict__ pointers and H rather than reading them from the
// BwdParams: that way the kernels compile to the registers (and spills) they had with these
// bodies inline (measured with ptxas -v at sm_90; reading p.H here cost up to 10 registers).

// (1 + scale) * weight of one chunk at column col of sample b (the per-sample form's ws1).
template <typename T, int W>
__device__ __forceinline__ void ws1_of(int H, const T* __restrict__ SC,
                                       const float* __restrict__ wt, int64_t b, int col,
                                       float (&ws1)[W]) {
  float scf[W], wf[W];
  load_float<T, W>(SC + b * H + col, scf);
  if (wt) load_param<W>(wt + col, wf);
#pragma unroll
  for (int k = 0; k < W; ++k) ws1[k] = wt ? (1.0f + scf[k]) * wf[k] : 1.0f + scf[k];
}

// One chunk of one row: xhat and g, the row sums (sums[0] += g, sums[1] += g * xhat), the column
// partials acc0/acc1, and (per token) dshift/dscale. ws1 is (1 + scale) * weight (per sample).
// X, DO, SC, wt, bs: p's x, dout, scale, weight, bias.
template <typename T, int W>
__device__ __forceinline__ void bwd_chunk_pass1(
    const BwdParams& p, int H, const T* __restrict__ X, const T* __restrict__ DO,
    const T* __restrict__ SC, const float* __restrict__ wt, const float* __restrict__ bs,
    bool per_token, int64_t row, int col, float mean, float rstd, const float (&ws1)[W],
    float (&xh)[W], float (&g)[W], float (&acc0)[W], float (&acc1)[W], float (&sums)[2]) {
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
}

// dx of one chunk at column col of row `row` from its xhat and g and the row's means
// mg = mean(g), mgx = mean(g * xhat): rstd * ((g - mg) - xhat * mgx), in this order (g - mg is
// exact where they agree).
template <typename T, int W>
__device__ __forceinline__ void store_dx(T* __restrict__ DX, int64_t row, int H, int col,
                                         const float (&g)[W], const float (&xh)[W], float mg,
                                         float mgx, float rstd) {
  float v[W];
#pragma unroll
  for (int k = 0; k < W; ++k) v[k] = ((g[k] - mg) - xh[k] * mgx) * rstd;
  store_float<T, W>(DX + row * H + col, v);
}

// xhat and g kept in registers (kC chunks of W per thread), the column partials too, combined
// over the block's R row groups in shared memory. The form of shift/scale is kPerToken.
template <typename T, int W, int kC, bool kPerToken>
__global__ void __launch_bounds__(kMaxThreads) adaln_bwd_cached_kernel(const BwdParams p) {
  static_assert(kC > 0, "the cached kernel keeps kC > 0 chunks per thread");
  __shared__ RowReduceSmem red;
  // Combination of the row groups' column partials: (R - 1) * T * W < kBlockThreads * W floats.
  __shared__ float comb[kBlockThreads * W];
  int phase = 0;
  const int TPR = blockDim.x, R = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int H = p.H, nchunks = p.nchunks;
  const int64_t tile = blockIdx.x;
  const TileRows tr = tile_rows(p.tl, tile);
  const int64_t b = tr.b, s0 = tr.s0, s1 = tr.s1;
  const int64_t iters = (s1 - s0 + R - 1) / R;
  const T* __restrict__ X = static_cast<const T*>(p.x);
  const T* __restrict__ DO = static_cast<const T*>(p.dout);
  const T* __restrict__ SC = static_cast<const T*>(p.scale);
  T* __restrict__ DX = static_cast<T*>(p.dx);
  const float* __restrict__ wt = p.weight;
  const float* __restrict__ bs = p.bias;
  float* part = p.partial ? p.partial + tile * p.A * int64_t{H} : nullptr;

  float ws1[kC][W], acc0[kC][W], acc1[kC][W];
#pragma unroll
  for (int j = 0; j < kC; ++j) {
#pragma unroll
    for (int k = 0; k < W; ++k) acc0[j][k] = acc1[j][k] = 0.f;
    const int ch = tx + j * TPR;
    if (!kPerToken && ch < nchunks) ws1_of<T, W>(H, SC, wt, b, ch * W, ws1[j]);
  }
  for (int64_t it = 0; it < iters; ++it) {
    const int64_t s = s0 + ty + it * R;
    const bool valid = s < s1;  // no early exit: the combination below has barriers
    const int64_t row = b * p.tl.S + s;
    const float mean = valid ? p.mean[row] : 0.f, rstd = valid ? p.rstd[row] : 0.f;
    float xh[kC][W], g[kC][W];
    float sums[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < kC; ++j) {
      const int ch = tx + j * TPR;
      if (valid && ch < nchunks) {
        bwd_chunk_pass1<T, W>(p, H, X, DO, SC, wt, bs, kPerToken, row, ch * W, mean, rstd,
                              ws1[j], xh[j], g[j], acc0[j], acc1[j], sums);
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
      if (ch < nchunks) store_dx<T, W>(DX, row, H, ch * W, g[j], xh[j], mg, mgx, rstd);
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
}

// Rows longer than the cached kernel holds: one row group per block (R == 1), every pass re-reads
// the row from global memory; the column partials accumulate in the block's own workspace slot,
// each column read-modify-written by the one thread that owns it. The form is read from p.
template <typename T, int W>
__global__ void __launch_bounds__(kMaxThreads) adaln_bwd_uncached_kernel(const BwdParams p) {
  __shared__ RowReduceSmem red;
  int phase = 0;
  const int TPR = blockDim.x, tx = threadIdx.x;
  const int H = p.H, nchunks = p.nchunks;
  const int64_t tile = blockIdx.x;
  const TileRows tr = tile_rows(p.tl, tile);
  const T* __restrict__ X = static_cast<const T*>(p.x);
  const T* __restrict__ DO = static_cast<const T*>(p.dout);
  const T* __restrict__ SC = static_cast<const T*>(p.scale);
  T* __restrict__ DX = static_cast<T*>(p.dx);
  const float* __restrict__ wt = p.weight;
  const float* __restrict__ bs = p.bias;
  const bool per_token = p.per_token;
  float* part = p.partial ? p.partial + tile * p.A * int64_t{H} : nullptr;
  const int A = p.A;
  if (part) {
    for (int ch = tx; ch < nchunks; ch += TPR) {
      for (int a = 0; a < A; ++a) {
#pragma unroll
        for (int k = 0; k < W; ++k) part[int64_t{a} * H + ch * W + k] = 0.f;
      }
    }
  }
  for (int64_t s = tr.s0; s < tr.s1; ++s) {
    const int64_t row = tr.b * p.tl.S + s;
    const float mean = p.mean[row], rstd = p.rstd[row];
    float sums[2] = {0.f, 0.f};
    for (int ch = tx; ch < nchunks; ch += TPR) {
      const int col = ch * W;
      float ws1[W], xh[W], g[W], acc0[W], acc1[W];
      if (!per_token) ws1_of<T, W>(H, SC, wt, tr.b, col, ws1);
#pragma unroll
      for (int k = 0; k < W; ++k) acc0[k] = acc1[k] = 0.f;
      bwd_chunk_pass1<T, W>(p, H, X, DO, SC, wt, bs, per_token, row, col, mean, rstd, ws1, xh, g,
                            acc0, acc1, sums);
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
      // The same expressions as bwd_chunk_pass1, so the same xhat and g.
      const int col = ch * W;
      float xf[W], dy[W], g[W], xh[W];
      load_float<T, W>(X + row * H + col, xf);
      load_float<T, W>(DO + row * H + col, dy);
      if (!per_token) {
        float ws1[W];
        ws1_of<T, W>(H, SC, wt, tr.b, col, ws1);
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
      for (int k = 0; k < W; ++k) xh[k] = (xf[k] - mean) * rstd;
      store_dx<T, W>(DX, row, H, col, g, xh, mg, mgx, rstd);
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
