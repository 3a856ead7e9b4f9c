// Backward pass of the CUDA selective scan, and the fixed-order reductions of its partial sums.
//
// Per direction (scan order s = 0..L-1, a_s = exp(dt_s A), c_s = C_s dy_s), the adjoint of
// h_s = a_s h_{s-1} + dt_s B_s u_s is g_s = c_s + a_{s+1} g_{s+1}. With q_s = a_s g_s (the gradient
// that flows into h_{s-1}) this is the linear recurrence q_s = a_s q_{s+1} + a_s c_s, scanned in
// reversed position order by the same block scan as the forward, no shifted operand needed;
// g_s = c_s + q_{s+1}, q_L = d(last_state) (zero when absent), and dinitial_state = q_0.
//   dA     += g a h_{s-1} dt            ddt = sum_n g (B u + A a h_{s-1})
//   dB_s   += g dt u                    du  = dt sum_n g B + D dy
//   dC_s   += h_s dy                    dD += dy u,   ddelta = ddt f'(x),   dbias += ddelta
//   dz      = dout y silu'(z),  dy = dout silu(z)
#pragma once

#include "selective_scan_cuda_common.cuh"
#include "selective_scan_cuda_fwd.cuh"

namespace stmodels {
namespace scan_cuda {

// Chunk c of channel (b, d), direction k. s_dB / s_dC: per-block accumulators of the variable
// dB / dC of this chunk, [n][j][tid] (owned by the thread that holds the position: no race, no
// atomics), or null when that input is constant in time.
template <int K, int kS, typename input_t>
__device__ __forceinline__ void bwd_chunk_channel(const Params& p, int k, int64_t b, int64_t d,
                                                  int64_t c, int64_t nchunks, ScanSmem<K, kS>& sm,
                                                  float* s_dB, float* s_dC, int& parity) {
  const int tid = threadIdx.x, nthr = blockDim.x, w = tid >> 5, lane = tid & 31;
  const int64_t L = p.L, N = p.N, T = (int64_t)nthr * K;
  const bool rev = p.ndir == 2 ? (k == 1) : p.reverse;
  const int64_t bd = b * p.dim + d, BD = p.batch * p.dim;
  const int64_t s_warp = c * T + (int64_t)w * 32 * K, s_thread = c * T + (int64_t)tid * K;
  const int64_t g = d / p.dg;
  const int64_t B_off = k * p.B_ds + (p.B_var ? (b * p.G + g) * N * L : d * N);
  const int64_t C_off = k * p.C_ds + (p.C_var ? (b * p.G + g) * N * L : d * N);
  const float* A_k = p.A + k * p.A_ds + d * N;
  const float bias = p.bias ? p.bias[k * p.bias_ds + d] : 0.0f;
  const float Dk = p.D ? p.D[k * p.D_ds + d] : 0.0f;
  float* stage = sm.stage[w];

  float u[K], dt[K], dtu[K], spd[K], dout[K], dy[K], zv[K], sg[K];
  load_items<K>(static_cast<const input_t*>(p.u) + k * p.u_ds + bd * L, L, s_warp, rev, stage, u);
  load_items<K>(static_cast<const input_t*>(p.delta) + k * p.delta_ds + bd * L, L, s_warp, rev,
                stage, dt);
  make_dt<K>(p, bias, s_thread, u, dt, dtu, spd);
  load_items<K>(static_cast<const input_t*>(p.dout) + bd * L, L, s_warp, rev, stage, dout);
  if (p.z) {
    load_items<K>(static_cast<const input_t*>(p.z) + bd * L, L, s_warp, rev, stage, zv);
#pragma unroll
    for (int j = 0; j < K; ++j) { sg[j] = sigmoidf_(zv[j]); dy[j] = dout[j] * zv[j] * sg[j]; }
  } else {
#pragma unroll
    for (int j = 0; j < K; ++j) { dy[j] = dout[j]; zv[j] = 0.0f; sg[j] = 0.0f; }
  }
  float gB[K], gx[K], yv[K];
#pragma unroll
  for (int j = 0; j < K; ++j) { gB[j] = 0.0f; gx[j] = 0.0f; yv[j] = 0.0f; }

  const float* h0src = p.ckpt + (bd * nchunks + c) * N;
  // The adjoint carry entering chunk c lives at parity c & 1 and the one leaving it is written at
  // parity (c - 1) & 1, read by chunk c - 1 (after the end-of-chunk barriers).
  const float* qsrc = p.qbuf + ((c & 1) * BD + bd) * N;
  float* qdst = p.qbuf + (((c + 1) & 1) * BD + bd) * N;
  const int64_t part = (((b * p.ndir + k) * p.dim + d) * kMaxWarps + w);

  for (int n0 = 0; n0 < N; n0 += kS) {
    float a[kS][K], h[kS][K], Bv[kS][K], Cv[kS][K], An[kS];
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      const int n = n0 + s;
      An[s] = 0.0f;
      if (n < N) {
        An[s] = A_k[n];
        if (p.B_var) {
          load_bc_items<K, input_t>(p.B, p.B_f32, B_off + n * L, L, s_warp, rev, stage, Bv[s]);
        } else {
          const float v = load_bc_scalar<input_t>(p.B, p.B_f32, B_off + n);
#pragma unroll
          for (int j = 0; j < K; ++j) Bv[s][j] = v;
        }
        if (p.C_var) {
          load_bc_items<K, input_t>(p.C, p.C_f32, C_off + n * L, L, s_warp, rev, stage, Cv[s]);
        } else {
          const float v = load_bc_scalar<input_t>(p.C, p.C_f32, C_off + n);
#pragma unroll
          for (int j = 0; j < K; ++j) Cv[s][j] = v;
        }
      } else {
#pragma unroll
        for (int j = 0; j < K; ++j) { Bv[s][j] = 0.0f; Cv[s][j] = 0.0f; }
      }
#pragma unroll
      for (int j = 0; j < K; ++j) { a[s][j] = __expf(dt[j] * An[s]); h[s][j] = dtu[j] * Bv[s][j]; }
    }
    // Recompute the states of this chunk from its checkpoint.
    float hin[kS], hend[kS];
    block_scan<kS, K, false>(a, h, h0src, n0, N, hin, hend, sm.warp, parity);
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      float hh = hin[s];
#pragma unroll
      for (int j = 0; j < K; ++j) { hh = a[s][j] * hh + h[s][j]; h[s][j] = hh; }
    }
    // Adjoint: elements (a, a c) in reversed position order.
    float ac[kS][K], qin[kS], qout[kS];
#pragma unroll
    for (int s = 0; s < kS; ++s)
#pragma unroll
      for (int j = 0; j < K; ++j) ac[s][j] = a[s][j] * (Cv[s][j] * dy[j]);
    block_scan<kS, K, true>(a, ac, qsrc, n0, N, qin, qout, sm.warp, parity);
    if (tid == 0) {  // qdst is the other parity: nobody reads it in this chunk
#pragma unroll
      for (int s = 0; s < kS; ++s) {
        if (n0 + s < N) {
          qdst[n0 + s] = qout[s];
          if (c == 0 && p.dinit && k == 0) p.dinit[bd * N + n0 + s] = qout[s];
        }
      }
    }
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      const int n = n0 + s;
      if (n >= N) continue;  // uniform over the block
      float q = qin[s], sA = 0.0f, sB = 0.0f, sC = 0.0f;
#pragma unroll
      for (int jj = 0; jj < K; ++jj) {
        const int j = K - 1 - jj;
        const float gg = Cv[s][j] * dy[j] + q;
        q = a[s][j] * gg;
        const float hp = j == 0 ? hin[s] : h[s][j - 1];
        const float gah = gg * a[s][j] * hp;
        sA += gah * dt[j];
        gB[j] += gg * Bv[s][j];
        gx[j] += gg * Bv[s][j] * u[j] + gah * An[s];
        const float cb = gg * dtu[j], cc = h[s][j] * dy[j];
        if (s_dB) s_dB[(n * K + j) * nthr + tid] += cb; else sB += cb;
        if (s_dC) s_dC[(n * K + j) * nthr + tid] += cc; else sC += cc;
        yv[j] += Cv[s][j] * h[s][j];
      }
      sA = warp_sum(sA);
      if (!s_dB) sB = warp_sum(sB);
      if (!s_dC) sC = warp_sum(sC);
      if (lane == 0) {  // slot owned by this warp: plain read-modify-write
        p.pA[part * N + n] += sA;
        if (!s_dB) p.pB[part * N + n] += sB;
        if (!s_dC) p.pC[part * N + n] += sC;
      }
    }
  }

  float du[K], dd[K], sD = 0.0f, sBias = 0.0f;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const bool valid = s_thread + j < L;
    du[j] = dt[j] * gB[j] + Dk * dy[j];
    dd[j] = valid ? gx[j] * spd[j] : 0.0f;
    sD += dy[j] * u[j];  // 0 at padding (dout = u = 0 there)
    sBias += dd[j];
  }
  if (p.pD) { sD = warp_sum(sD); if (lane == 0) p.pD[part] += sD; }
  if (p.pBias) { sBias = warp_sum(sBias); if (lane == 0) p.pBias[part] += sBias; }

  // du / ddelta: per direction when the input is, else summed over the directions through a
  // float32 buffer (direction 0 stores it, direction 1 adds and writes the final dtype).
  input_t* du_row = static_cast<input_t*>(p.du) + k * p.u_ds + bd * L;
  if (p.ndir == 2 && p.u_ds == 0) {
    if (k == 0) {
      store_items<K>(p.du_acc + bd * L, L, s_warp, rev, stage, du);
    } else {
      float acc[K];
      load_items<K>(static_cast<const float*>(p.du_acc) + bd * L, L, s_warp, rev, stage, acc);
#pragma unroll
      for (int j = 0; j < K; ++j) du[j] += acc[j];
      store_items<K>(du_row, L, s_warp, rev, stage, du);
    }
  } else {
    store_items<K>(du_row, L, s_warp, rev, stage, du);
  }
  input_t* dd_row = static_cast<input_t*>(p.ddelta) + k * p.delta_ds + bd * L;
  if (p.ndir == 2 && p.delta_ds == 0) {
    if (k == 0) {
      store_items<K>(p.dd_acc + bd * L, L, s_warp, rev, stage, dd);
    } else {
      float acc[K];
      load_items<K>(static_cast<const float*>(p.dd_acc) + bd * L, L, s_warp, rev, stage, acc);
#pragma unroll
      for (int j = 0; j < K; ++j) dd[j] += acc[j];
      store_items<K>(dd_row, L, s_warp, rev, stage, dd);
    }
  } else {
    store_items<K>(dd_row, L, s_warp, rev, stage, dd);
  }

  if (p.z) {  // dz = dout * y * silu'(z), y summed over the directions
#pragma unroll
    for (int j = 0; j < K; ++j) yv[j] += Dk * u[j];
    if (p.ndir == 2 && k == 0) {
      store_items<K>(p.ybuf + bd * L, L, s_warp, rev, stage, yv);
    } else {
      if (p.ndir == 2) {
        float y0[K];
        load_items<K>(static_cast<const float*>(p.ybuf) + bd * L, L, s_warp, rev, stage, y0);
#pragma unroll
        for (int j = 0; j < K; ++j) yv[j] += y0[j];
      }
      float dz[K];
#pragma unroll
      for (int j = 0; j < K; ++j)
        dz[j] = dout[j] * yv[j] * (sg[j] * (1.0f + zv[j] * (1.0f - sg[j])));
      store_items<K>(static_cast<input_t*>(p.dz) + bd * L, L, s_warp, rev, stage, dz);
    }
  }
}

// One block per (b, g, cb): channels [g*dg + cb*ch, min(+ch, (g+1)*dg)) of group g. Per
// direction: a checkpoint pass over those channels (state entering each chunk), then the chunks
// last to first; within a chunk every channel of the block in turn, so that the variable dB/dC of
// the chunk are summed over the block's channels in shared memory and written to the block's
// slab once per chunk.
template <int K, int kNMax, typename input_t>
__global__ void __launch_bounds__(128) scan_bwd_kernel(Params p) {
  extern __shared__ float dyn_smem[];
  __shared__ ScanSmem<K, kStates> sm;
  const int tid = threadIdx.x, nthr = blockDim.x;
  const int64_t L = p.L, N = p.N, T = (int64_t)nthr * K, nchunks = (L + T - 1) / T;
  const int64_t cb = blockIdx.x % p.nblk, bg = blockIdx.x / p.nblk;
  const int64_t g = bg % p.G, b = bg / p.G;
  const int64_t d_begin = g * p.dg + cb * p.ch;
  const int64_t d_end = d_begin + p.ch < (g + 1) * p.dg ? d_begin + p.ch : (g + 1) * p.dg;
  const int64_t acc_size = (int64_t)kNMax * K * nthr;
  float* s_dB = p.B_var ? dyn_smem : nullptr;
  float* s_dC = p.C_var ? dyn_smem + (p.B_var ? acc_size : 0) : nullptr;
  const int64_t nacc = ((p.B_var ? 1 : 0) + (p.C_var ? 1 : 0)) * acc_size;
  for (int64_t i = tid; i < nacc; i += nthr) dyn_smem[i] = 0.0f;
  const int64_t BD = p.batch * p.dim;
  int parity = 0;

  for (int k = 0; k < p.ndir; ++k) {
    const bool rev = p.ndir == 2 ? (k == 1) : p.reverse;
    for (int64_t d = d_begin; d < d_end; ++d) {
      const int64_t bd = b * p.dim + d;
      // The carry entering the last chunk is d(last_state): g_{L-1} = c_{L-1} + dlast (padding
      // positions past L have dt = 0, a = 1, c = 0 and pass it through unchanged).
      for (int n = tid; n < N; n += nthr)
        p.qbuf[(((nchunks - 1) & 1) * BD + bd) * N + n] = p.dlast ? p.dlast[(k * BD + bd) * N + n] : 0.0f;
      fwd_channel<K, kStates, input_t, false>(p, k, b, d, nullptr, p.ckpt + bd * nchunks * N, sm,
                                              parity);  // ends with __syncthreads
    }
    for (int64_t c = nchunks - 1; c >= 0; --c) {
      for (int64_t d = d_begin; d < d_end; ++d)
        bwd_chunk_channel<K, kStates, input_t>(p, k, b, d, c, nchunks, sm, s_dB, s_dC, parity);
      __syncthreads();
      // Flush the chunk's dB/dC sums into this block's slab, in time order (coalesced).
      for (int which = 0; which < 2; ++which) {
        float* acc = which == 0 ? s_dB : s_dC;
        if (!acc) continue;
        const int64_t nd = which == 0 ? p.slabB_nd : p.slabC_nd;
        float* slab = (which == 0 ? p.slabB : p.slabC) +
                      ((((nd == 2 ? k : 0) * p.batch + b) * p.G + g) * p.nblk + cb) * N * L;
        const bool add = k > 0 && nd == 1;  // shared by both directions: direction 1 adds
        for (int64_t i = tid; i < N * T; i += nthr) {
          const int64_t n = i / T, pos = i % T, s = c * T + pos;
          float* e = acc + (n * K + pos % K) * nthr + pos / K;
          const float v = *e;
          *e = 0.0f;
          if (s < L) {
            float* o = slab + n * L + (rev ? L - 1 - s : s);
            *o = add ? *o + v : v;
          }
        }
      }
      __syncthreads();
    }
  }
}

// out[kd][r][n][t] = sum over cb of slab[kd][r][cb][n][t] (r = (b, g)), fixed order.
__global__ void reduce_slab_kernel(const float* slab, float* out, int64_t rows /*nd*batch*G*/,
                                   int64_t nblk, int64_t NL) {
  const int64_t total = rows * NL;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = o / NL, e = o % NL;
    const float* src = slab + r * nblk * NL + e;
    float s = 0.0f;
    for (int64_t cbi = 0; cbi < nblk; ++cbi) s += src[cbi * NL];
    out[o] = s;
  }
}

// out[kp][d][n] = sum over b, directions k mapping to kp (both when the parameter is shared:
// ndp == 1), and warps w, of part[b][k][d][w][n] (P = N, or 1 for dD / ddelta_bias). Fixed order.
__global__ void reduce_param_kernel(const float* part, float* out, int64_t batch, int64_t ndir,
                                    int64_t dim, int64_t P, int64_t ndp) {
  const int64_t total = ndp * dim * P;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t kp = o / (dim * P), d = (o / P) % dim, n = o % P;
    float s = 0.0f;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t k = 0; k < ndir; ++k) {
        if (ndp != 1 && k != kp) continue;
        for (int w = 0; w < kMaxWarps; ++w) s += part[(((b * ndir + k) * dim + d) * kMaxWarps + w) * P + n];
      }
    out[o] = s;
  }
}

}  // namespace scan_cuda
}  // namespace stmodels
