// Forward pass of the CUDA selective scan: one channel (b, d) of one direction, chunk by chunk,
// used by the forward kernel (kOut: y, gate, out, last_state) and by the backward kernel's
// checkpoint pass (!kOut: only the state entering each chunk).
#pragma once

#include "selective_scan_cuda_common.cuh"

namespace stmodels {
namespace scan_cuda {

// dt = f(delta + bias) (f = softplus or identity), dt = 0 at padding positions (s >= L), so that
// padding items are the identity element (a = exp(0) = 1, b = 0) of the scan.
template <int K>
__device__ __forceinline__ void make_dt(const Params& p, float bias, int64_t s_thread,
                                        const float (&u)[K], float (&dt)[K], float (&dtu)[K],
                                        float* spd /*[K] or null*/) {
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const float x = dt[j] + bias;
    float v = p.softplus ? softplusf_(x) : x;
    if (spd) spd[j] = p.softplus ? softplus_grad(x) : 1.0f;
    if (s_thread + j >= p.L) v = 0.0f;
    dt[j] = v;
    dtu[j] = v * u[j];
  }
}

// One direction k of channel (b, d). Ends with __syncthreads (the caller may reuse sm at once).
//  kOut:  y = C.h + D u; bidirectional: direction 0 stores y into ybuf_row (float32), direction 1
//         adds it; then out = y * silu(z) and last_state.
//  ckpt:  (!kOut) ckpt[c*N + n] = state entering chunk c, for c < nchunks (the last chunk itself
//         is not scanned).
template <int K, int kS, typename input_t, bool kOut>
__device__ void fwd_channel(const Params& p, int k, int64_t b, int64_t d, float* ybuf_row,
                            float* ckpt, ScanSmem<K, kS>& sm, int& parity) {
  const int tid = threadIdx.x, nthr = blockDim.x, w = tid >> 5;
  const int64_t L = p.L, N = p.N, T = (int64_t)nthr * K;
  const int64_t nchunks = (L + T - 1) / T;
  const bool rev = p.ndir == 2 ? (k == 1) : p.reverse;
  const int64_t bd = b * p.dim + d;
  const input_t* u_row = static_cast<const input_t*>(p.u) + k * p.u_ds + bd * L;
  const input_t* delta_row = static_cast<const input_t*>(p.delta) + k * p.delta_ds + bd * L;
  const float* A_k = p.A + k * p.A_ds + d * N;
  const int64_t g = d / p.dg;
  // Offset of state 0: variable rows (b, g, n, :) are n*L apart; constant values (d, n) 1 apart.
  const int64_t B_off = k * p.B_ds + (p.B_var ? (b * p.G + g) * N * L : d * N);
  const int64_t C_off = k * p.C_ds + (p.C_var ? (b * p.G + g) * N * L : d * N);
  const float bias = p.bias ? p.bias[k * p.bias_ds + d] : 0.0f;
  const float Dk = p.D ? p.D[k * p.D_ds + d] : 0.0f;
  float* stage = sm.stage[w];

  for (int n = tid; n < kMaxN; n += nthr) {
    const float v = (k == 0 && p.init && n < N) ? p.init[bd * N + n] : 0.0f;
    sm.carry[0][n] = v;
    if (ckpt && n < N) ckpt[n] = v;
  }
  __syncthreads();

  const int64_t cend = kOut ? nchunks : nchunks - 1;
  for (int64_t c = 0; c < cend; ++c) {
    const int64_t s_warp = c * T + (int64_t)w * 32 * K, s_thread = c * T + (int64_t)tid * K;
    float u[K], dt[K], dtu[K], y[K];
    load_items<K>(u_row, L, s_warp, rev, stage, u);
    load_items<K>(delta_row, L, s_warp, rev, stage, dt);
    make_dt<K>(p, bias, s_thread, u, dt, dtu, nullptr);
#pragma unroll
    for (int j = 0; j < K; ++j) y[j] = Dk * u[j];
    const float* cin = sm.carry[c & 1];
    float* cout = sm.carry[(c + 1) & 1];

    for (int n0 = 0; n0 < N; n0 += kS) {
      float a[kS][K], bb[kS][K], h_in[kS], h_out[kS];
#pragma unroll
      for (int s = 0; s < kS; ++s) {
        const int n = n0 + s;
        float Bv[K];
        float An = 0.0f;
        if (n < N) {
          An = A_k[n];
          if (p.B_var) {
            load_bc_items<K, input_t>(p.B, p.B_f32, B_off + n * L, L, s_warp, rev, stage, Bv);
          } else {
            const float bs = load_bc_scalar<input_t>(p.B, p.B_f32, B_off + n);
#pragma unroll
            for (int j = 0; j < K; ++j) Bv[j] = bs;
          }
        } else {
#pragma unroll
          for (int j = 0; j < K; ++j) Bv[j] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < K; ++j) { a[s][j] = __expf(dt[j] * An); bb[s][j] = dtu[j] * Bv[j]; }
      }
      block_scan<kS, K, false>(a, bb, cin, n0, N, h_in, h_out, sm.warp, parity);
      if (tid == 0) {
#pragma unroll
        for (int s = 0; s < kS; ++s) {
          if (n0 + s < N) {
            cout[n0 + s] = h_out[s];
            if (ckpt && c + 1 < nchunks) ckpt[(c + 1) * N + n0 + s] = h_out[s];
          }
        }
      }
      if (kOut) {
#pragma unroll
        for (int s = 0; s < kS; ++s) {
          const int n = n0 + s;
          if (n >= N) continue;  // uniform over the block
          float Cv[K];
          if (p.C_var) {
            load_bc_items<K, input_t>(p.C, p.C_f32, C_off + n * L, L, s_warp, rev, stage, Cv);
          } else {
            const float cs = load_bc_scalar<input_t>(p.C, p.C_f32, C_off + n);
#pragma unroll
            for (int j = 0; j < K; ++j) Cv[j] = cs;
          }
          float h = h_in[s];
#pragma unroll
          for (int j = 0; j < K; ++j) { h = a[s][j] * h + bb[s][j]; y[j] += Cv[j] * h; }
        }
      }
    }

    if (kOut) {
      if (p.ndir == 2 && k == 0) {
        store_items<K>(ybuf_row, L, s_warp, rev, stage, y);
      } else {
        if (p.ndir == 2) {
          float y0[K];
          load_items<K>(static_cast<const float*>(ybuf_row), L, s_warp, rev, stage, y0);
#pragma unroll
          for (int j = 0; j < K; ++j) y[j] += y0[j];
        }
        if (p.z) {
          float zv[K];
          load_items<K>(static_cast<const input_t*>(p.z) + bd * L, L, s_warp, rev, stage, zv);
#pragma unroll
          for (int j = 0; j < K; ++j) y[j] *= zv[j] * sigmoidf_(zv[j]);
        }
        store_items<K>(static_cast<input_t*>(p.out) + bd * L, L, s_warp, rev, stage, y);
      }
    }
  }
  __syncthreads();  // tid 0's last carry writes are visible
  if (kOut) {
    for (int n = tid; n < N; n += nthr)
      p.last_state[((int64_t)k * p.batch * p.dim + bd) * N + n] = sm.carry[nchunks & 1][n];
    __syncthreads();  // before the next call re-initialises the carry
  }
}

// One block per (b, d); both directions of a bidirectional scan run in the same block, direction
// 0 first (y into ybuf), then direction 1 (adds, gates, writes out once).
// States per block scan: 4 with K = 2; 2 with K = 8 (keeps a, b of the group in 32 registers,
// so that 4 blocks of 128 threads fit an SM).
template <int K> struct FwdStates { static constexpr int value = K >= 8 ? 2 : kStates; };

template <int K, typename input_t>
__global__ void __launch_bounds__(128, 4) scan_fwd_kernel(Params p) {
  constexpr int kS = FwdStates<K>::value;
  extern __shared__ float dyn_smem[];
  __shared__ ScanSmem<K, kS> sm;
  const int64_t bd = blockIdx.x, b = bd / p.dim, d = bd % p.dim;
  float* ybuf_row = nullptr;
  if (p.ndir == 2) ybuf_row = p.ybuf_smem ? dyn_smem : p.ybuf + bd * p.L;
  int parity = 0;
  for (int k = 0; k < p.ndir; ++k)
    fwd_channel<K, kS, input_t, true>(p, k, b, d, ybuf_row, nullptr, sm, parity);
}

}  // namespace scan_cuda
}  // namespace stmodels
