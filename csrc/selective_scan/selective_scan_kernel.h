// Selective-scan kernels (forward and backward), templated on the vector type of one ISA.
// Mamba's selective scan (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
// State Spaces", Alg. 2), per channel (b, d) and direction k:
//   h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t . h_t + D u_t,   out = (sum_k y) silu(z)
//
// Included once by each ISA translation unit (selective_scan_kernel_{generic,avx2,avx512}.cpp),
// which defines STMODELS_ISA (a namespace private to that build; see selective_scan_params.h for
// why), STMODELS_ISA_NAME (its name in the ScanKernels table) and STM_SCAN_VEC (the vector type of
// selective_scan_vec.h: 512 | 256 | 0).
//
// Layout of the work:
// * One task is one (b, d) sequence (forward) or a fixed chunk of channels of one (b, group)
//   (backward). Everything a task computes depends only on the shape, never on which thread
//   runs it, so results are bit-identical for any thread count.
// * Vectors run over the state dimension n (N padded to Np = multiple of W lanes; padded lanes
//   hold A = B = C = 0 and are masked out of every sum over n, so even NaN there is harmless).
//   The state of one n-block stays in a register while the loop walks time; per-step sums over n
//   (y_t, and du_t, ddelta_t in the backward) are deferred: each step stores its W-lane partial
//   into a row buffer, and W rows are reduced at once by a transpose-and-add tree.
// * Time is cut into chunks of T steps. The backward never stores O(L N) per sequence beyond one
//   chunk: when L > T a first forward pass keeps only the state at each chunk start
//   (checkpoints), then chunks are processed last to first: recompute h and exp(dt A) of the
//   chunk into a T x W buffer, then run the adjoint recursion
//     g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}
//   backwards through it.
// * Directions: the backward direction walks the same buffers with a negative stride; nothing
//   is flipped or copied.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#if STM_SCAN_VEC != 0
#include <immintrin.h>
#endif

#include "selective_scan_params.h"

#if !defined(STMODELS_ISA) || !defined(STMODELS_ISA_NAME) || !defined(STM_SCAN_VEC)
#error "selective_scan_kernel.h needs STMODELS_ISA, STMODELS_ISA_NAME and STM_SCAN_VEC"
#endif

namespace stmodels {
namespace scan {
namespace STMODELS_ISA {

#include "selective_scan_vec.h"

using V = Vec;
using VT = Vec::T;
constexpr int W = Vec::W;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Steps per time chunk. Backward: one chunk keeps h and exp(dt A) of every step (plus two row
// buffers), T x W floats each; up to 512 KiB in all that stays in L2 and is faster than a
// checkpoint pass (+15-20% when L > T, measured at L = 1024 and 2560). Forward: only the row
// buffer, kept small.
inline int64_t bwd_chunk(const ScanParams& p) { return imin(p.L, 32768 / W); }
inline int64_t fwd_chunk(const ScanParams& p) { return imin(p.L, 256); }

#include "selective_scan_kernel_seq.h"

// ---------------------------------------------------------------- inner loops (one n-block)

// Per-direction view of one channel: pointers at time index 0; the step pointers are
// base + t*stride, with t walking backwards for the reverse direction.
struct Chan {
  const float* dt; const float* dtu; const float* u; const float* dy;
  const float* A;                       // + j*W for n-block j
  const float* B; int64_t sB;           // B lanes at time t: B + t*sB
  const float* C; int64_t sC;
  float* dB; float* dC;                 // variable dB/dC partial slabs ([L][Np]) or null
};

// kRows: 0 no y rows, 1 store C.h into rows, 2 add C.h to rows.
template <bool kMask, int kRows>
inline VT fwd_block(int64_t cnt, const float* dt, const float* dtu, int64_t ts, const float* Bp,
                    int64_t sB, const float* Cp, int64_t sC, VT A, VT h, VT mask, float* rows) {
  for (int64_t i = 0; i < cnt; ++i) {
    const VT dA = V::exp(V::mul(V::set1(dt[i * ts]), A));
    h = V::fma(dA, h, V::mul(V::set1(dtu[i * ts]), V::load(Bp + i * sB)));
    if (kRows) {
      VT q = V::mul(V::load(Cp + i * sC), h);
      if (kMask) q = V::band(q, mask);
      if (kRows == 2) q = V::add(q, V::load(rows + i * W));
      V::store(rows + i * W, q);
    }
  }
  return h;
}

// Loop-carried adjoint state of one n-block: g, exp(dt A) of the step after, and the sums over
// time of dA, and of dB / dC when those are constant in time.
struct Adj { VT g, dAn, dA, dB, dC; };

// The forward recurrence again, keeping h_{i-1} (hbuf[i]; hbuf[0] = state before the chunk) and
// exp(dt A) of every step for the adjoint. dC_t += h_t dy_t needs no adjoint, so it is
// accumulated here, where h_t is in a register (this loop is bound by the exp arithmetic, the
// adjoint by memory traffic).
template <bool kMask, int kRows, bool kVarC>
inline void fwd_block_store(int64_t cnt, const float* dt, const float* dtu, const float* dy,
                            int64_t ts, const float* Bp, int64_t sB, const float* Cp, int64_t sC,
                            float* dCp, int64_t sP, VT A, VT h, VT mask, float* rows,
                            float* hbuf, float* dAbuf, Adj& s) {
  VT accC = s.dC;
  V::store(hbuf, h);
  for (int64_t i = 0; i < cnt; ++i) {
    const VT dA = V::exp(V::mul(V::set1(dt[i * ts]), A));
    h = V::fma(dA, h, V::mul(V::set1(dtu[i * ts]), V::load(Bp + i * sB)));
    V::store(dAbuf + i * W, dA);
    V::store(hbuf + (i + 1) * W, h);
    const VT dyv = V::set1(dy[i * ts]);
    if (kVarC) V::store(dCp + i * sP, V::fma(h, dyv, V::load(dCp + i * sP)));
    else accC = V::fma(h, dyv, accC);
    if (kRows) {
      VT q = V::mul(V::load(Cp + i * sC), h);
      if (kMask) q = V::band(q, mask);
      if (kRows == 2) q = V::add(q, V::load(rows + i * W));
      V::store(rows + i * W, q);
    }
  }
  s.dC = accC;
}

// Adjoint of one chunk, last step first. Row i of `rows` gets g.B (for du) folded into its low
// half and g.(B u + A exp(dt A) h_prev) (for ddelta) into its high half (V::pack_halves: one
// store per step instead of two), both masked to the real lanes.
template <bool kMask, bool kFirst, bool kVarB>
inline void adj_block(int64_t cnt, const float* dt, const float* dtu, const float* u,
                      const float* dy, int64_t ts, const float* Bp, int64_t sB, const float* Cp,
                      int64_t sC, float* dBp, int64_t sP, VT A, VT mask, const float* hbuf,
                      const float* dAbuf, float* rows, Adj& s) {
  VT g = s.g, dAn = s.dAn, accA = s.dA, accB = s.dB;
  for (int64_t i = cnt - 1; i >= 0; --i) {
    g = V::fma(dAn, g, V::mul(V::load(Cp + i * sC), V::set1(dy[i * ts])));
    const VT dA = V::load(dAbuf + i * W);
    const VT gw = V::mul(g, V::mul(V::load(hbuf + i * W), dA));  // g dA h_prev: dt via exp
    accA = V::fma(gw, V::set1(dt[i * ts]), accA);
    const VT gB = V::mul(g, V::load(Bp + i * sB));
    const VT dtuv = V::set1(dtu[i * ts]);
    if (kVarB) V::store(dBp + i * sP, V::fma(g, dtuv, V::load(dBp + i * sP)));
    else accB = V::fma(g, dtuv, accB);
    VT r1 = gB;
    VT r2 = V::fma(gB, V::set1(u[i * ts]), V::mul(gw, A));
    if (kMask) { r1 = V::band(r1, mask); r2 = V::band(r2, mask); }
    VT r = V::pack_halves(r1, r2);
    if (!kFirst) r = V::add(r, V::load(rows + i * W));
    V::store(rows + i * W, r);
    dAn = dA;
  }
  s.g = g; s.dAn = dAn; s.dA = accA; s.dB = accB;
}

// ---------------------------------------------------------------- per-direction passes

// Forward over the whole sequence. h (Np floats): state in, state out. ckpt (optional): state at
// each chunk start. yacc (optional): yacc[t] += C_t . h_t.
inline void scan_fwd(const ScanParams& p, const Chan& c, bool rev, int64_t T, float* h,
                     float* ckpt, float* yacc, float* rows) {
  const int64_t L = p.L, Np = p.Np, nv = Np / W;
  const int tail = (int)(p.N - (nv - 1) * W);
  const VT mask = V::tail_mask(tail);
  const int64_t ts = rev ? -1 : 1;
  for (int64_t s0 = 0; s0 < L; s0 += T) {
    const int64_t cnt = imin(T, L - s0), t0 = rev ? L - 1 - s0 : s0;
    if (ckpt) std::memcpy(ckpt + (s0 / T) * Np, h, sizeof(float) * Np);
    for (int64_t j = 0; j < nv; ++j) {
      const bool m = (j == nv - 1) && tail < W;
      const int mode = yacc ? (j == 0 ? 1 : 2) : 0;
      const float *dt = c.dt + t0, *dtu = c.dtu + t0;
      const float *Bp = c.B + t0 * c.sB + j * W, *Cp = c.C + t0 * c.sC + j * W;
      const VT A = V::load(c.A + j * W), h0 = V::load(h + j * W);
      const int64_t sB = ts * c.sB, sC = ts * c.sC;
      VT h1;
#define STM_FWD(M, R) h1 = fwd_block<M, R>(cnt, dt, dtu, ts, Bp, sB, Cp, sC, A, h0, mask, rows)
      if (m) { if (mode == 0) STM_FWD(true, 0); else if (mode == 1) STM_FWD(true, 1); else STM_FWD(true, 2); }
      else   { if (mode == 0) STM_FWD(false, 0); else if (mode == 1) STM_FWD(false, 1); else STM_FWD(false, 2); }
#undef STM_FWD
      V::store(h + j * W, h1);
    }
    if (yacc) reduce_rows_to<true>(rows, cnt, yacc + t0, ts);
  }
}

struct BwdBufs {
  float *rows, *rowsy, *hbuf, *dAbuf, *ckpt;
  Adj* adj;  // nv entries
};

// Backward of one direction. h: the initial state (Np floats; zeros when none). dlast: the
// gradient of the final state (N floats) or null; it enters as the adjoint after the last step
// (g = dlast, with a unit decay so that the first adjoint step adds C dy to it). Writes
// sGB[t] = sum_n g.B, sGX[t] = sum_n g.(B u + A dA h_prev) and, when yacc, yacc[t] += y_t.
// The Adj entries hold, on return, g_0, exp(dt_0 A) and the dA/dB/dC sums of this direction.
template <bool kVarB, bool kVarC>
inline void scan_bwd(const ScanParams& p, const Chan& c, bool rev, float* h, const float* dlast,
                     float* yacc, float* sGB, float* sGX, BwdBufs& w) {
  const int64_t L = p.L, T = bwd_chunk(p), Np = p.Np, nv = Np / W;
  const int64_t nchunks = (L + T - 1) / T;
  const int tail = (int)(p.N - (nv - 1) * W);
  const VT mask = V::tail_mask(tail);
  const int64_t ts = rev ? -1 : 1;
  if (nchunks > 1) scan_fwd(p, c, rev, T, h, w.ckpt, yacc, w.rowsy);  // checkpoints (+ y)
  const bool rows_y = yacc && nchunks == 1;                         // else y came from above
  for (int64_t j = 0; j < nv; ++j) w.adj[j] = Adj{V::zero(), V::zero(), V::zero(), V::zero(), V::zero()};
  if (dlast) {
    alignas(64) float lanes[W];
    for (int64_t j = 0; j < nv; ++j) {
      for (int64_t n = 0; n < W; ++n) lanes[n] = j * W + n < p.N ? dlast[j * W + n] : 0.0f;
      w.adj[j].g = V::load(lanes);
      w.adj[j].dAn = V::set1(1.0f);
    }
  }
  for (int64_t ci = nchunks - 1; ci >= 0; --ci) {
    const int64_t s0 = ci * T, cnt = imin(T, L - s0), t0 = rev ? L - 1 - s0 : s0;
    for (int64_t j = 0; j < nv; ++j) {
      const bool m = (j == nv - 1) && tail < W;
      const float *dt = c.dt + t0, *dtu = c.dtu + t0, *u = c.u + t0, *dy = c.dy + t0;
      const float *Bp = c.B + t0 * c.sB + j * W, *Cp = c.C + t0 * c.sC + j * W;
      float* dBp = c.dB ? c.dB + t0 * Np + j * W : nullptr;
      float* dCp = c.dC ? c.dC + t0 * Np + j * W : nullptr;
      const VT A = V::load(c.A + j * W);
      const VT h0 = V::load((nchunks > 1 ? w.ckpt + ci * Np : h) + j * W);
      const int64_t sB = ts * c.sB, sC = ts * c.sC, sP = ts * Np;
      const int mode = rows_y ? (j == 0 ? 1 : 2) : 0;
#define STM_REC(M, R)                                                                         \
  fwd_block_store<M, R, kVarC>(cnt, dt, dtu, dy, ts, Bp, sB, Cp, sC, dCp, sP, A, h0, mask,    \
                               w.rowsy, w.hbuf, w.dAbuf, w.adj[j])
      if (m) { if (mode == 0) STM_REC(true, 0); else if (mode == 1) STM_REC(true, 1); else STM_REC(true, 2); }
      else   { if (mode == 0) STM_REC(false, 0); else if (mode == 1) STM_REC(false, 1); else STM_REC(false, 2); }
#undef STM_REC
#define STM_ADJ(M, F)                                                                            \
  adj_block<M, F, kVarB>(cnt, dt, dtu, u, dy, ts, Bp, sB, Cp, sC, dBp, sP, A, mask, w.hbuf,     \
                         w.dAbuf, w.rows, w.adj[j])
      if (m) { if (j == 0) STM_ADJ(true, true); else STM_ADJ(true, false); }
      else   { if (j == 0) STM_ADJ(false, true); else STM_ADJ(false, false); }
#undef STM_ADJ
    }
    reduce_packed_to(w.rows, cnt, sGB + t0, sGX + t0, ts);
    if (rows_y) reduce_rows_to<true>(w.rowsy, cnt, yacc + t0, ts);
  }
}

// ---------------------------------------------------------------- channel setup

struct Seq {  // per-worker sequence buffers, Lp floats each
  float *u, *delta, *dt, *dtu, *spd, *z, *sz, *dy, *ysum, *sGB, *sGX, *du, *dd, *tmp;
};

inline Chan make_chan(const ScanParams& p, int k, int64_t b, int64_t d, const Seq& s) {
  Chan c;
  c.dt = s.dt; c.dtu = s.dtu; c.u = s.u; c.dy = s.dy;
  c.A = p.A + k * p.A_ds + d * p.Np;
  const int64_t g = d / p.dg;
  c.B = p.Bv.p + k * p.Bv.ds + b * p.Bv.bs + g * p.Bv.gs + d * p.Bv.cs; c.sB = p.Bv.ts;
  c.C = p.Cv.p + k * p.Cv.ds + b * p.Cv.bs + g * p.Cv.gs + d * p.Cv.cs; c.sC = p.Cv.ts;
  c.dB = c.dC = nullptr;
  return c;
}

// Loads u_k / delta_k when they differ from the previous direction's, then dt, dt*u (, f').
inline void load_dir(const ScanParams& p, int k, int64_t b, int64_t d, const Seq& s, bool want_spd) {
  const int64_t L = p.L, Lp = round_up(L, W), off = (b * p.dim + d) * L;
  if (k == 0 || p.u_ds) load_seq(p.u, p.dtype, k * p.u_ds + off, L, Lp, s.u);
  if (k == 0 || p.delta_ds) load_seq(p.delta, p.dtype, k * p.delta_ds + off, L, Lp, s.delta);
  const float bias = p.bias ? p.bias[k * p.bias_ds + d] : 0.0f;
  make_dt(s.delta, bias, s.u, Lp, p.softplus, s.dt, s.dtu, want_spd ? s.spd : nullptr);
}

inline void load_init(const ScanParams& p, int k, int64_t b, int64_t d, float* h) {
  for (int64_t n = 0; n < p.Np; ++n) h[n] = 0.0f;
  if (p.init && k == 0) std::memcpy(h, p.init + (b * p.dim + d) * p.N, sizeof(float) * p.N);
}

inline Seq carve_seq(const ScanParams& p, float*& ws) {
  const int64_t Lp = round_up(p.L, 16);
  Seq s;
  float** f[] = {&s.u, &s.delta, &s.dt, &s.dtu, &s.spd, &s.z, &s.sz, &s.dy,
                 &s.ysum, &s.sGB, &s.sGX, &s.du, &s.dd, &s.tmp};
  for (float** q : f) { *q = ws; ws += Lp; }
  return s;
}
constexpr int64_t kSeqBufs = 14;

// ---------------------------------------------------------------- forward

inline int64_t fwd_ws(const ScanParams& p) {
  return kSeqBufs * round_up(p.L, 16) + round_up(fwd_chunk(p), 16) * W + p.Np + 1024 + 64;
}

inline void fwd(const ScanParams& p, int64_t begin, int64_t end, float* ws) {
  const int64_t L = p.L, Lp = round_up(L, W);
  Seq s = carve_seq(p, ws);
  float* rows = carve_at(ws, round_up(fwd_chunk(p), 16) * W, kLineRowsY);
  float* h = ws;
  for (int64_t bd = begin; bd < end; ++bd) {
    const int64_t b = bd / p.dim, d = bd % p.dim, off = bd * L;
    if (bd + 1 < end) prefetch_channel(p, bd + 1, false);
    for (int64_t i = 0; i < Lp; ++i) s.ysum[i] = 0.0f;
    for (int k = 0; k < p.ndir; ++k) {
      const bool rev = p.ndir == 2 ? k == 1 : p.reverse;
      load_dir(p, k, b, d, s, false);
      const Chan c = make_chan(p, k, b, d, s);
      load_init(p, k, b, d, h);
      scan_fwd(p, c, rev, fwd_chunk(p), h, nullptr, s.ysum, rows);
      if (p.D) {
        const VT Dv = V::set1(p.D[k * p.D_ds + d]);
        for (int64_t i = 0; i < Lp; i += W)
          V::store(s.ysum + i, V::fma(Dv, V::load(s.u + i), V::load(s.ysum + i)));
      }
      std::memcpy(p.last_state + ((int64_t)k * p.batch * p.dim + bd) * p.N, h, sizeof(float) * p.N);
    }
    if (p.z) {  // out = y * silu(z)
      load_seq(p.z, p.dtype, off, L, Lp, s.z);
      for (int64_t i = 0; i < Lp; i += W) {
        const VT zv = V::load(s.z + i);
        V::store(s.ysum + i, V::mul(V::load(s.ysum + i), V::mul(zv, sigmoid(zv))));
      }
    }
    store_seq(p.out, p.dtype, off, L, s.ysum);
  }
}

// ---------------------------------------------------------------- backward

inline int64_t bwd_ws(const ScanParams& p) {
  const int64_t T = round_up(bwd_chunk(p), 16), nchunks = (p.L + bwd_chunk(p) - 1) / bwd_chunk(p);
  const int64_t nv = p.Np / W;
  return kSeqBufs * round_up(p.L, 16) + 4 * T * W + (T + 1) * W + 4 * 1024 + (nchunks > 1 ? nchunks : 0) * p.Np +
         p.Np + (int64_t)(sizeof(Adj) / sizeof(float) + 1) * nv + 64 + 16;
}

template <bool kVarB, bool kVarC>
inline void bwd_channel(const ScanParams& p, int64_t b, int64_t d, float* slabB, float* slabC,
                        const Seq& s, BwdBufs& w, float* h) {
  const int64_t L = p.L, Lp = round_up(L, W), bd = b * p.dim + d, off = bd * L, Np = p.Np;
  const int64_t nv = Np / W;
  load_seq(p.dout, p.dtype, off, L, Lp, s.dy);
  if (p.z) {  // dy = dout * silu(z); keep sigmoid(z) for dz
    load_seq(p.z, p.dtype, off, L, Lp, s.z);
    for (int64_t i = 0; i < Lp; i += W) {
      const VT zv = V::load(s.z + i), sg = sigmoid(zv);
      V::store(s.sz + i, sg);
      V::store(s.tmp + i, V::load(s.dy + i));  // dout
      V::store(s.dy + i, V::mul(V::load(s.dy + i), V::mul(zv, sg)));
      V::store(s.ysum + i, V::zero());
    }
  }
  for (int64_t i = 0; i < Lp; ++i) { s.du[i] = 0.0f; s.dd[i] = 0.0f; }
  for (int64_t i = L; i < Lp; ++i) { s.sGB[i] = 0.0f; s.sGX[i] = 0.0f; }
  for (int k = 0; k < p.ndir; ++k) {
    const bool rev = p.ndir == 2 ? k == 1 : p.reverse;
    load_dir(p, k, b, d, s, true);
    Chan c = make_chan(p, k, b, d, s);
    if (kVarB) c.dB = slabB + (p.pB_nd == 2 ? k : 0) * L * Np;
    if (kVarC) c.dC = slabC + (p.pC_nd == 2 ? k : 0) * L * Np;
    load_init(p, k, b, d, h);
    const float* dlast = p.dlast ? p.dlast + ((int64_t)k * p.batch * p.dim + bd) * p.N : nullptr;
    scan_bwd<kVarB, kVarC>(p, c, rev, h, dlast, p.z ? s.ysum : nullptr, s.sGB, s.sGX, w);
    if (p.dinit) {  // h_init feeds step 0 through exp(dt_0 A): dh_init = exp(dt_0 A) g_0
      float* o = p.dinit + bd * p.N;
      alignas(64) float tg[W], ta[W];
      for (int64_t j = 0; j < nv; ++j) {
        V::store(tg, w.adj[j].g); V::store(ta, w.adj[j].dAn);
        for (int64_t n = j * W; n < imin(p.N, (j + 1) * W); ++n) o[n] = tg[n - j * W] * ta[n - j * W];
      }
    }
    const float Dk = p.D ? p.D[k * p.D_ds + d] : 0.0f;
    const VT Dv = V::set1(Dk);
    for (int64_t i = 0; i < Lp; i += W) {
      const VT uv = V::load(s.u + i);
      // du = dt * sum_n g B + D dy ; ddt = sum_n g (B u + A dA h_prev) ; ddelta = ddt * f'
      const VT duk = V::fma(V::load(s.dt + i), V::load(s.sGB + i), V::mul(Dv, V::load(s.dy + i)));
      const VT ddk = p.softplus ? V::mul(V::load(s.sGX + i), V::load(s.spd + i)) : V::load(s.sGX + i);
      V::store(s.sGB + i, duk);  // reuse as per-direction du
      V::store(s.sGX + i, ddk);  // and ddelta
      V::store(s.du + i, V::add(V::load(s.du + i), duk));
      V::store(s.dd + i, V::add(V::load(s.dd + i), ddk));
      if (p.z) V::store(s.ysum + i, V::fma(Dv, uv, V::load(s.ysum + i)));
      V::store(s.spd + i, V::mul(V::load(s.dy + i), uv));  // dy * u, for dD
    }
    const int64_t pk = (b * p.ndir + k) * p.dim + d;
    if (p.pD) p.pD[pk] = sum_seq(s.spd, L);
    if (p.pBias) p.pBias[pk] = sum_seq(s.sGX, L);
    for (int64_t j = 0; j < nv; ++j) {
      V::store(p.pA + pk * Np + j * W, w.adj[j].dA);
      if (!kVarB) V::store(p.pBc + pk * Np + j * W, w.adj[j].dB);
      if (!kVarC) V::store(p.pCc + pk * Np + j * W, w.adj[j].dC);
    }
    if (p.du_ds) { store_seq(p.du, p.dtype, k * p.du_ds + off, L, s.sGB); for (int64_t i = 0; i < Lp; ++i) s.du[i] = 0.0f; }
    if (p.ddelta_ds) { store_seq(p.ddelta, p.dtype, k * p.ddelta_ds + off, L, s.sGX); for (int64_t i = 0; i < Lp; ++i) s.dd[i] = 0.0f; }
  }
  if (!p.du_ds) store_seq(p.du, p.dtype, off, L, s.du);
  if (!p.ddelta_ds) store_seq(p.ddelta, p.dtype, off, L, s.dd);
  if (p.z) {  // dz = dout * y * silu'(z), silu'(z) = s (1 + z (1 - s))
    const VT one = V::set1(1.0f);
    for (int64_t i = 0; i < Lp; i += W) {
      const VT zv = V::load(s.z + i), sg = V::load(s.sz + i);
      const VT ds = V::mul(sg, V::fma(zv, V::sub(one, sg), one));
      V::store(s.tmp + i, V::mul(V::mul(V::load(s.tmp + i), V::load(s.ysum + i)), ds));
    }
    store_seq(p.dz, p.dtype, off, L, s.tmp);
  }
}

template <bool kVarB, bool kVarC>
inline void bwd_impl(const ScanParams& p, int64_t begin, int64_t end, float* ws) {
  const int64_t L = p.L, Np = p.Np, T = round_up(bwd_chunk(p), 16);
  const int64_t nchunks = (L + bwd_chunk(p) - 1) / bwd_chunk(p);
  Seq s = carve_seq(p, ws);
  BwdBufs w;
  w.rows = carve_at(ws, T * W, kLineRows);
  w.rowsy = carve_at(ws, T * W, kLineRowsY);
  w.dAbuf = carve_at(ws, T * W, kLineDA);
  w.hbuf = carve_at(ws, (T + 1) * W, kLineH);
  w.ckpt = ws; ws += (nchunks > 1 ? nchunks : 0) * Np;
  float* h = ws; ws += Np;
  ws = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ws) + 63) & ~uintptr_t(63));
  w.adj = reinterpret_cast<Adj*>(ws);
  const int64_t slab = L * Np;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / (p.G * p.nc), g = (task / p.nc) % p.G, ci = task % p.nc;
    const int64_t d0 = g * p.dg + ci * p.ch, d1 = imin(d0 + p.ch, (g + 1) * p.dg);
    float* sB = kVarB ? p.pB + task * p.pB_nd * slab : nullptr;
    float* sC = kVarC ? p.pC + task * p.pC_nd * slab : nullptr;
    if (kVarB) std::memset(sB, 0, sizeof(float) * p.pB_nd * slab);
    if (kVarC) std::memset(sC, 0, sizeof(float) * p.pC_nd * slab);
    for (int64_t d = d0; d < d1; ++d) {
      if (d + 1 < d1) prefetch_channel(p, b * p.dim + d + 1, true);
      bwd_channel<kVarB, kVarC>(p, b, d, sB, sC, s, w, h);
    }
  }
}

inline void bwd(const ScanParams& p, int64_t begin, int64_t end, float* ws) {
  if (p.Bv.var) {
    if (p.Cv.var) bwd_impl<true, true>(p, begin, end, ws); else bwd_impl<true, false>(p, begin, end, ws);
  } else {
    if (p.Cv.var) bwd_impl<false, true>(p, begin, end, ws); else bwd_impl<false, false>(p, begin, end, ws);
  }
}

inline const ScanKernels* kernels() {
  static const ScanKernels k{STMODELS_ISA_NAME, W, &fwd_ws, &fwd, &bwd_ws, &bwd};
  return &k;
}

}  // namespace STMODELS_ISA
}  // namespace scan
}  // namespace stmodels
