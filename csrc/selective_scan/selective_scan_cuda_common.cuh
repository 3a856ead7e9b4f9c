// Shared pieces of the CUDA selective scan (selective_scan_cuda.cu): the kernel parameter block,
// dtype conversion, warp-private staging of sequence chunks, and the block-level scan of the
// linear recurrence h -> a h + b. See the header comment of selective_scan_cuda.cu for the design.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace stmodels {
namespace scan_cuda {

constexpr int kMaxWarps = 4;   // blocks have 32, 64, 96 or 128 threads
constexpr int kMaxN = 64;      // largest supported state size (checked on the host)
constexpr int kStates = 4;     // states scanned together per block-scan (one __syncthreads)
constexpr unsigned kFull = 0xffffffffu;

// Everything a kernel needs, by value. Offsets are in elements. *_ds: offset between the two
// per-direction blocks of an input, 0 when the input is shared by both directions.
struct Params {
  int64_t batch = 0, dim = 0, L = 0, N = 0, G = 1, dg = 1;
  int ndir = 1;
  bool softplus = false, reverse = false;

  const void* u = nullptr;     int64_t u_ds = 0;       // (ndir?, batch, dim, L), input_t
  const void* delta = nullptr; int64_t delta_ds = 0;   // like u
  const void* z = nullptr;                             // (batch, dim, L) or null
  const float* A = nullptr;    int64_t A_ds = 0;       // (ndir?, dim, N)
  const float* D = nullptr;    int64_t D_ds = 0;       // (ndir?, dim) or null
  const float* bias = nullptr; int64_t bias_ds = 0;    // (ndir?, dim) or null
  const float* init = nullptr;                         // (batch, dim, N) or null
  // B / C: variable (ndir?, batch, G, N, L) or constant (ndir?, dim, N); float32 or input_t.
  const void* B = nullptr; int64_t B_ds = 0; bool B_var = false, B_f32 = true;
  const void* C = nullptr; int64_t C_ds = 0; bool C_var = false, C_f32 = true;

  // Forward outputs and scratch.
  void* out = nullptr;                 // (batch, dim, L), input_t
  float* last_state = nullptr;         // (ndir, batch, dim, N)
  float* ybuf = nullptr;               // bidirectional: y of direction 0, float32 (batch, dim, L)
  bool ybuf_smem = false;              // forward: ybuf lives in dynamic shared memory (L floats)

  // Backward.
  const void* dout = nullptr;          // (batch, dim, L), input_t
  const float* dlast = nullptr;        // d(last_state): (ndir, batch, dim, N), or null (zero)
  void* du = nullptr;                  // like u
  void* ddelta = nullptr;              // like delta
  void* dz = nullptr;                  // like z, or null
  float* dinit = nullptr;              // like init, or null
  float* du_acc = nullptr;             // bidirectional with shared u: float32 du of direction 0
  float* dd_acc = nullptr;             // bidirectional with shared delta: same for ddelta
  float* ckpt = nullptr;               // (batch*dim, nchunks, N): state at each chunk start
  float* qbuf = nullptr;               // (2, batch*dim, N): adjoint carry, double-buffered
  // Work split of the backward: block = (b, g, cb), channels [g*dg + cb*ch, +ch) of group g.
  int64_t nblk = 1, ch = 1;
  // Variable dB/dC partials, one (N, L) slab per block: [nd][batch][G][nblk][N][L].
  float* slabB = nullptr; int64_t slabB_nd = 1;
  float* slabC = nullptr; int64_t slabC_nd = 1;
  // Per (b, direction, d, warp) partial sums: [batch][ndir][dim][kMaxWarps][N] for dA and
  // constant dB/dC, [batch][ndir][dim][kMaxWarps] for dD and ddelta_bias. Zero-initialised.
  float *pA = nullptr, *pB = nullptr, *pC = nullptr, *pD = nullptr, *pBias = nullptr;
};

// ---------------------------------------------------------------- dtypes

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + __expf(-x)); }

// PyTorch's softplus, threshold 20, and its derivative.
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(__expf(x)); }
__device__ __forceinline__ float softplus_grad(float x) { return x > 20.0f ? 1.0f : sigmoidf_(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;  // every lane ends with the same fixed-order sum
}

// ---------------------------------------------------------------- sequence chunks

// Thread `tid` owns the K consecutive scan positions s = c*T + tid*K + j of chunk c (T = threads*K,
// "blocked"); position s is time t = s, or t = L-1-s when the direction runs backwards in time.
// Global memory is read and written "striped" (consecutive lanes, consecutive t: coalesced, in
// either direction) through a warp-private staging buffer of 32*K floats plus one pad word per 32,
// which makes both the striped and the blocked access conflict-free (K = 1, 2, 4, 8). Only
// __syncwarp is needed: a warp stages exactly its own 32*K positions.
template <int K> struct StageSize { static constexpr int value = 32 * K + K; };
__device__ __forceinline__ int stage_idx(int i) { return i + (i >> 5); }

// out[j] = row[t(s_warp + lane*K + j)] for s < L, else 0. s_warp: first position of this warp.
template <int K, typename T>
__device__ __forceinline__ void load_items(const T* row, int64_t L, int64_t s_warp, bool rev,
                                           float* stage, float (&out)[K]) {
  const int lane = threadIdx.x & 31;
  __syncwarp();
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int idx = i * 32 + lane;
    const int64_t s = s_warp + idx;
    float v = 0.0f;
    if (s < L) v = to_f(row[rev ? L - 1 - s : s]);
    stage[stage_idx(idx)] = v;
  }
  __syncwarp();
#pragma unroll
  for (int j = 0; j < K; ++j) out[j] = stage[stage_idx(lane * K + j)];
}

template <int K, typename T>
__device__ __forceinline__ void store_items(T* row, int64_t L, int64_t s_warp, bool rev,
                                            float* stage, const float (&v)[K]) {
  const int lane = threadIdx.x & 31;
  __syncwarp();
#pragma unroll
  for (int j = 0; j < K; ++j) stage[stage_idx(lane * K + j)] = v[j];
  __syncwarp();
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int idx = i * 32 + lane;
    const int64_t s = s_warp + idx;
    if (s < L) row[rev ? L - 1 - s : s] = from_f<T>(stage[stage_idx(idx)]);
  }
}

// B or C, whose dtype is float32 or input_t (a runtime flag, uniform over the grid).
template <int K, typename input_t>
__device__ __forceinline__ void load_bc_items(const void* base, bool f32, int64_t off, int64_t L,
                                              int64_t s_warp, bool rev, float* stage,
                                              float (&out)[K]) {
  if (f32) load_items<K>(static_cast<const float*>(base) + off, L, s_warp, rev, stage, out);
  else load_items<K>(static_cast<const input_t*>(base) + off, L, s_warp, rev, stage, out);
}
template <typename input_t>
__device__ __forceinline__ float load_bc_scalar(const void* base, bool f32, int64_t off) {
  return f32 ? static_cast<const float*>(base)[off] : to_f(static_cast<const input_t*>(base)[off]);
}

// ---------------------------------------------------------------- block scan

// Scan of the recurrence h_p = a_p h_{p-1} + b_p over the T positions of a chunk, for kS states
// at once, in position order (kRev = false) or reversed (kRev = true: last position first).
// An element (a, b) is the map h -> a h + b; "e1 then e2" = (a2 a1, a2 b1 + b2) (associative).
// Steps: each thread composes its K items (in scan order), a warp-inclusive Hillis-Steele scan of
// those aggregates by shuffles, the warp aggregates through shared memory, one __syncthreads.
// Returns, per state, h_in: the state entering this thread's first item (in scan order), and
// h_out: the state after the whole chunk. The state entering the chunk is read from
// carry_src[n0 + s] (shared or global memory; 0 for n0 + s >= N) *after* the barrier, so the
// caller may have written it just before calling.
// s_warp: 2 * kMaxWarps * kS * 2 floats, used alternately by successive calls (the parity flips
// each call and must evolve identically in every thread), so that a call may write its warp
// aggregates while slower threads still read those of the previous call.
template <int kS, int K, bool kRev>
__device__ __forceinline__ void block_scan(const float (&a)[kS][K], const float (&b)[kS][K],
                                           const float* carry_src, int n0, int64_t N,
                                           float (&h_in)[kS], float (&h_out)[kS], float* s_warp,
                                           int& parity) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  float ea[kS], eb[kS];
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    float A = 1.0f, Bv = 0.0f;
#pragma unroll
    for (int jj = 0; jj < K; ++jj) {
      const int j = kRev ? K - 1 - jj : jj;
      Bv = a[s][j] * Bv + b[s][j];
      A = a[s][j] * A;
    }
    ea[s] = A; eb[s] = Bv;
  }
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const bool take = kRev ? (lane + off < 32) : (lane >= off);
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      const float oa = kRev ? __shfl_down_sync(kFull, ea[s], off) : __shfl_up_sync(kFull, ea[s], off);
      const float ob = kRev ? __shfl_down_sync(kFull, eb[s], off) : __shfl_up_sync(kFull, eb[s], off);
      if (take) { eb[s] = ea[s] * ob + eb[s]; ea[s] = ea[s] * oa; }
    }
  }
  float* buf = s_warp + parity * (kMaxWarps * kS * 2);
  if (lane == (kRev ? 0 : 31)) {
#pragma unroll
    for (int s = 0; s < kS; ++s) { buf[(w * kS + s) * 2] = ea[s]; buf[(w * kS + s) * 2 + 1] = eb[s]; }
  }
  float xa[kS], xb[kS];  // exclusive prefix within the warp
  const bool first_lane = kRev ? (lane == 31) : (lane == 0);
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    xa[s] = kRev ? __shfl_down_sync(kFull, ea[s], 1) : __shfl_up_sync(kFull, ea[s], 1);
    xb[s] = kRev ? __shfl_down_sync(kFull, eb[s], 1) : __shfl_up_sync(kFull, eb[s], 1);
    if (first_lane) { xa[s] = 1.0f; xb[s] = 0.0f; }
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    float h = (n0 + s < N) ? carry_src[n0 + s] : 0.0f;
    float hw = h;
    for (int i = 0; i < nw; ++i) {
      const int wi = kRev ? nw - 1 - i : i;
      if (wi == w) hw = h;
      h = buf[(wi * kS + s) * 2] * h + buf[(wi * kS + s) * 2 + 1];
    }
    h_out[s] = h;
    h_in[s] = xa[s] * hw + xb[s];
  }
  parity ^= 1;
}

// Static shared memory of one block.
template <int K, int kS>
struct ScanSmem {
  float stage[kMaxWarps][StageSize<K>::value];
  float warp[2 * kMaxWarps * kS * 2];
  float carry[2][kMaxN];  // forward carry per state, double-buffered by chunk parity
};

}  // namespace scan_cuda
}  // namespace stmodels
