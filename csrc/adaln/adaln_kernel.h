// AdaLN CPU kernels: LayerNorm (Ba, Kiros & Hinton 2016, "Layer Normalization") fused with the
// adaptive shift/scale modulation of DiT (Peebles & Xie 2023, "Scalable Diffusion Models with
// Transformers"):  out = LayerNorm(x; weight, bias) * (1 + scale) + shift.
//
// This header is the one templated kernel. It is included by three translation units,
// adaln_kernel_{generic,avx2,avx512}.cpp, each compiled with its own -m flags (generic: none;
// avx2: -mavx2 -mfma -mf16c; avx512: -mavx512{f,bw,vl,dq} -mfma -mf16c) and each defining
// STMODELS_ISA, the namespace that keeps its symbols apart, and STMODELS_ISA_NAME, its name in the
// AdalnKernels table. The vector width follows the flags. Everything here lives in an anonymous
// namespace inside that namespace, and calls nothing but compiler builtins, GCC vector extensions
// and (FMA, float16 conversion) intrinsics, which are always inlined: an out-of-line copy of a
// shared inline function (std::min, c10::Half conversion, ...) compiled with AVX-512 could
// otherwise be picked by the linker for every caller (an ODR trap).
//
// Layout: each row (one token, H features) is processed whole by one thread; it sits in L1
// (H = 384 floats is 1.5 KB), so the forward reads x from memory once and makes its two-pass
// statistics (mean, then the centred sum of squares: stable for any offset, unlike
// E[x^2] - E[x]^2) from cache. Half types are widened to a float row buffer on the first pass.
// All arithmetic is float32 (a row whose squares overflow float32 redoes its statistics in double).
// Value-dependent branches only pick between forms with the same math: NaN/Inf propagate as in
// the formula.
//
// Per-element results depend only on the element's position in its row (the vector/scalar split
// is fixed by H), and every reduction runs in a fixed order, so results do not depend on how
// at::parallel_for splits the blocks among threads.

#if !defined(STMODELS_ISA) || !defined(STMODELS_ISA_NAME)
#error "define STMODELS_ISA and STMODELS_ISA_NAME (this build's namespace and name) first"
#endif

#include <stdint.h>

#include <type_traits>  // compile-time only: no functions are instantiated from it

#include "adaln_params.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// GCC 12 flags the deliberately undefined pass-through operand inside the AVX-512 conversion
// intrinsics (`__m512 __Y = __Y;`) as maybe-uninitialized once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// No implicit a * b + c -> fma contraction (GCC contracts by default in C++, even with -std=c++20):
// the backward recomputes g = dout * (1 + scale) * weight in its second pass and must get the
// very values whose mean it took in the first (H = 1 then gives dx = 0 exactly); and the rounding
// should not depend on which expressions the optimiser happens to fuse. The fused multiply-adds
// that are wanted are written explicitly (fmadd).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")

namespace stmodels {
namespace adaln {
namespace STMODELS_ISA {
namespace {  // internal linkage on top of the ISA namespace

#define ADALN_INLINE inline __attribute__((always_inline))

#include "adaln_vec.h"

// ---------------------------------------------------------------------------------------------
// Forward, one block of rows of one sample.
// Mean and 1/sqrt(var + eps) of one float row in double precision (the rare overflow path).
void row_stats_f64(const float* xs, int64_t H, float eps, float& mean, float& rstd) {
  double sum = 0.0;
  for (int64_t h = 0; h < H; ++h) sum += xs[h];
  const double m0 = sum / static_cast<double>(H);
  double sd = 0.0, sdd = 0.0;
  for (int64_t h = 0; h < H; ++h) {
    const double d = static_cast<double>(xs[h]) - m0;
    sd += d;
    sdd += d * d;
  }
  double var = (sdd - sd * sd / static_cast<double>(H)) / static_cast<double>(H);
  var = var < 0.0 ? 0.0 : var;  // rounding; keeps NaN
  mean = static_cast<float>(m0 + sd / static_cast<double>(H));
  rstd = static_cast<float>(1.0 / __builtin_sqrt(var + static_cast<double>(eps)));
}

template <class D>
void fwd_block(const FwdArgs& a, int64_t k, float* scratch) {
  using T = typename D::T;
  constexpr bool kF32 = std::is_same<T, float>::value;
  const int64_t S = a.blk.S, H = a.blk.H;
  const int64_t b = k / a.blk.chunks, s0 = (k % a.blk.chunks) * a.blk.rows_per_chunk;
  const int64_t s1 = min64(S, s0 + a.blk.rows_per_chunk);
  const T* X = static_cast<const T*>(a.x);
  const T* SH = static_cast<const T*>(a.shift);
  const T* SC = static_cast<const T*>(a.scale);
  T* OUT = static_cast<T*>(a.out);
  const float* wt = a.weight;
  const float* bs = a.bias;
  const int64_t Hp = (H + 15) / 16 * 16;  // scratch rows start on cache lines (adaln_params.h)
  float* xf = scratch;          // the row widened to float (half types)
  float* A = scratch + Hp;      // broadcast form: weight * (1 + scale)
  float* C = scratch + 2 * Hp;  // broadcast form: bias * (1 + scale) + shift
  const float inv_h = 1.0f / static_cast<float>(H);

  // Broadcast form: fold the affine and the modulation into one multiply-add per element for the
  // whole sample, out = xhat * A + C. The fold reassociates (xhat w + b)(1 + s): with an infinite
  // 1 + s it would turn +-inf into inf - inf = NaN, so a sample whose 1 + scale is not finite
  // everywhere (probe: sum of (1 + s) * 0, NaN iff some 1 + s is inf or NaN) takes the unfolded
  // per-element form of the per-token path instead.
  bool fold = false;
  if (!a.per_token) {
    const T* sc = SC + b * H;
    const float probe = reduce_sum(H, [&](auto tag, int64_t h) {
      using Tag = decltype(tag);
      return (D::template load<Tag>(sc + h) + 1.0f) * 0.0f;
    });
    fold = probe == 0.0f;
  }
  if (fold) {
    const T* sh = SH + b * H;
    const T* sc = SC + b * H;
    for_each(H, [&](auto tag, int64_t h) {
      using Tag = decltype(tag);
      using V = typename Tag::V;
      const V one_sc = D::template load<Tag>(sc + h) + 1.0f;
      V av = one_sc;
      V cv = D::template load<Tag>(sh + h);
      if (wt) av = av * ldf<V>(wt + h);
      if (bs) cv = fmadd(ldf<V>(bs + h), one_sc, cv);
      stf(A + h, av);
      stf(C + h, cv);
    });
  }

  for (int64_t s = s0; s < s1; ++s) {
    const int64_t row = b * S + s;
    const T* xr = X + row * H;
    const float sum = reduce_sum(H, [&](auto tag, int64_t h) {
      using Tag = decltype(tag);
      const auto v = D::template load<Tag>(xr + h);
      if constexpr (!kF32) stf(xf + h, v);
      return v;
    });
    const float* xs;
    if constexpr (kF32) {
      xs = xr;
    } else {
      xs = xf;
    }
    // Corrected two-pass (Chan, Golub & LeVeque 1983): the second pass also sums the residuals
    // d = x - mean0, which both refines the mean to about an ulp (the first sum loses a few ulps
    // when |mean| >> std) and removes its error from the variance.
    const float mean0 = sum * inv_h;
    float sd, sdd;
    reduce2(
        H,
        [&](auto tag, int64_t h, auto& acc_d, auto& acc_dd) {
          using V = typename decltype(tag)::V;
          const V d = ldf<V>(xs + h) - mean0;
          // Start loading the next row while this one is in flight (about 5% on the forward at
          // 8x256x384; the same in the backward measured slower).
          if (std::is_same<V, vf>::value) __builtin_prefetch(xr + H + h);
          acc_d += d;
          acc_dd = fmadd(d, d, acc_dd);
        },
        sd, sdd);
    float mean = mean0 + sd * inv_h;
    const float var = (sdd - sd * (sd * inv_h)) * inv_h;
    float rstd = 1.0f / __builtin_sqrtf(var + a.eps);
    // The squares overflow float32 when |x - mean| passes ~1e19 (LayerNorm(1e20 x) must equal
    // LayerNorm(x)): such rows (and rows holding inf/NaN, which stay NaN) redo their statistics
    // in double, which has the range for any float32 row. One predictable branch per row; the
    // common path is unchanged.
    if (!(sdd <= 3.0e38f)) row_stats_f64(xs, H, a.eps, mean, rstd);
    a.mean[row] = mean;
    a.rstd[row] = rstd;

    T* o = OUT + row * H;
    if (fold) {
      for_each(H, [&](auto tag, int64_t h) {
        using Tag = decltype(tag);
        using V = typename Tag::V;
        const V xh = (ldf<V>(xs + h) - mean) * rstd;
        D::template store<Tag>(o + h, fmadd(xh, ldf<V>(A + h), ldf<V>(C + h)));
      });
    } else {
      const int64_t mrow = a.per_token ? row : b;  // modulation row: this token's or the sample's
      const T* sh = SH + mrow * H;
      const T* sc = SC + mrow * H;
      for_each(H, [&](auto tag, int64_t h) {
        using Tag = decltype(tag);
        using V = typename Tag::V;
        V y = (ldf<V>(xs + h) - mean) * rstd;
        if (wt) y = y * ldf<V>(wt + h);
        if (bs) y = y + ldf<V>(bs + h);
        const V one_sc = D::template load<Tag>(sc + h) + 1.0f;
        D::template store<Tag>(o + h, fmadd(y, one_sc, D::template load<Tag>(sh + h)));
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, one block of rows of one sample. With a = dout * (1 + scale) (the gradient reaching
// the normalised y) and g = a * weight (reaching xhat):
//   dx = rstd * (g - mean_H(g) - xhat * mean_H(g * xhat)).
// Broadcast form: the block keeps only sum_s dout (D) and sum_s dout * xhat (P); as 1 + scale is
// constant over s, bwd_reduce derives everything else from them:
//   dshift = D, dscale = weight * P + bias * D, dweight = sum_b (1+scale_b) P_b,
//   dbias = sum_b (1+scale_b) D_b.
// Per-token form: dshift = dout and dscale = dout * y are written here; the block keeps the
// dweight (a * xhat) and dbias (a) partials.
template <class D>
void bwd_block(const BwdArgs& a, int64_t k, float* scratch) {
  using T = typename D::T;
  const int64_t S = a.blk.S, H = a.blk.H;
  const int64_t b = k / a.blk.chunks, s0 = (k % a.blk.chunks) * a.blk.rows_per_chunk;
  const int64_t s1 = min64(S, s0 + a.blk.rows_per_chunk);
  const T* X = static_cast<const T*>(a.x);
  const T* DO = static_cast<const T*>(a.dout);
  const T* SC = static_cast<const T*>(a.scale);
  T* DX = static_cast<T*>(a.dx);
  const float* wt = a.weight;
  const float* bs = a.bias;
  // Pass 2 needs xhat and g again. For float32 they are recomputed from the row, still in L1:
  // stores, not loads, bound that loop (Zen 4 retires one 256-bit store per cycle), ~5% faster.
  // Half types keep them in scratch rows instead: recomputing would repeat the conversions,
  // which bound those loops (~25% slower for bfloat16).
  constexpr bool kKeep = !std::is_same<T, float>::value;
  const int64_t Hp = (H + 15) / 16 * 16;  // scratch rows start on cache lines (adaln_params.h)
  float* WS1 = scratch;        // broadcast form: weight * (1 + scale)
  float* XH = scratch + Hp;    // kKeep: xhat of the current row
  float* G = scratch + 2 * Hp;  // kKeep: g of the current row
  float* part = a.partial + k * a.partial_stride;
  const float inv_h = 1.0f / static_cast<float>(H);

  for (int64_t i = 0; i < a.partial_stride; ++i) part[i] = 0.f;
  float* Dp = part;      // broadcast: sum dout
  float* Pp = part + H;  // broadcast: sum dout * xhat
  float* Wp = wt ? part : nullptr;               // per token: sum a * xhat
  float* Bp = bs ? part + (wt ? H : 0) : nullptr;  // per token: sum a

  if (!a.per_token) {
    const T* sc = SC + b * H;
    for_each(H, [&](auto tag, int64_t h) {
      using Tag = decltype(tag);
      using V = typename Tag::V;
      V v = D::template load<Tag>(sc + h) + 1.0f;
      if (wt) v = v * ldf<V>(wt + h);
      stf(WS1 + h, v);
    });
  }

  for (int64_t s = s0; s < s1; ++s) {
    const int64_t row = b * S + s;
    const float mean = a.mean[row], rstd = a.rstd[row];
    const T* xr = X + row * H;
    const T* dr = DO + row * H;
    float sg, sgx;
    if (!a.per_token) {
      reduce2(
          H,
          [&](auto tag, int64_t h, auto& acc_g, auto& acc_gx) {
            using Tag = decltype(tag);
            using V = typename Tag::V;
            const V xh = (D::template load<Tag>(xr + h) - mean) * rstd;
            const V dy = D::template load<Tag>(dr + h);
            const V g = dy * ldf<V>(WS1 + h);
            if constexpr (kKeep) {
              stf(XH + h, xh);
              stf(G + h, g);
            }
            stf(Dp + h, ldf<V>(Dp + h) + dy);
            stf(Pp + h, fmadd(dy, xh, ldf<V>(Pp + h)));
            acc_g += g;
            acc_gx = fmadd(g, xh, acc_gx);
          },
          sg, sgx);
    } else {
      const T* sc = SC + row * H;
      T* dsh = static_cast<T*>(a.dshift) + row * H;
      T* dsc = static_cast<T*>(a.dscale) + row * H;
      reduce2(
          H,
          [&](auto tag, int64_t h, auto& acc_g, auto& acc_gx) {
            using Tag = decltype(tag);
            using V = typename Tag::V;
            const V xh = (D::template load<Tag>(xr + h) - mean) * rstd;
            const V dy = D::template load<Tag>(dr + h);
            const V av = dy * (D::template load<Tag>(sc + h) + 1.0f);
            V g = av, y = xh;
            if (wt) {
              const V w = ldf<V>(wt + h);
              g = av * w;
              y = xh * w;
              stf(Wp + h, fmadd(av, xh, ldf<V>(Wp + h)));
            }
            if (bs) {
              y = y + ldf<V>(bs + h);
              stf(Bp + h, ldf<V>(Bp + h) + av);
            }
            if constexpr (kKeep) {
              stf(XH + h, xh);
              stf(G + h, g);
            }
            D::template store<Tag>(dsh + h, dy);
            D::template store<Tag>(dsc + h, dy * y);
            acc_g += g;
            acc_gx = fmadd(g, xh, acc_gx);
          },
          sg, sgx);
    }
    // dx = rstd * ((g - mean(g)) - xhat * mean(g * xhat)), in this order: g - mean(g) is exact
    // where they agree (e.g. H = 1 gives dx = 0, not a rounding residue times rstd).
    const float mg = sg * inv_h, mgx = sgx * inv_h;
    const T* sc = SC + (a.per_token ? row : b) * H;
    T* dxr = DX + row * H;
    for_each(H, [&](auto tag, int64_t h) {
      using Tag = decltype(tag);
      using V = typename Tag::V;
      V xh, g;
      if constexpr (kKeep) {
        xh = ldf<V>(XH + h);
        g = ldf<V>(G + h);
      } else {  // the same expressions as in pass 1, so the same values (no fp contraction)
        xh = (D::template load<Tag>(xr + h) - mean) * rstd;
        const V dy = D::template load<Tag>(dr + h);
        if (!a.per_token) {
          g = dy * ldf<V>(WS1 + h);
        } else {
          g = dy * (D::template load<Tag>(sc + h) + 1.0f);
          if (wt) g = g * ldf<V>(wt + h);
        }
      }
      const V t = fmadd(-xh, V{} + mgx, g - mg);
      D::template store<Tag>(dxr + h, t * rstd);
    });
  }
}

// Final reduction of the block partials over columns [h0, h1), blocks in index order.
template <class D>
void bwd_reduce_cols(const BwdArgs& a, int64_t h0, int64_t h1) {
  using T = typename D::T;
  const int64_t H = a.blk.H, chunks = a.blk.chunks, nb = a.blk.batch;
  const int64_t stride = a.partial_stride;
  const float* wt = a.weight;
  const float* bs = a.bias;
  const float* part = a.partial;
  if (!a.per_token) {
    const T* SC = static_cast<const T*>(a.scale);
    T* DSH = static_cast<T*>(a.dshift);
    T* DSC = static_cast<T*>(a.dscale);
    for_each(h1 - h0, [&](auto tag, int64_t i) {
      using Tag = decltype(tag);
      using V = typename Tag::V;
      const int64_t h = h0 + i;
      V dw{}, db{};
      for (int64_t b = 0; b < nb; ++b) {
        V dsum{}, psum{};
        for (int64_t c = 0; c < chunks; ++c) {
          const float* p = part + (b * chunks + c) * stride;
          dsum += ldf<V>(p + h);
          psum += ldf<V>(p + H + h);
        }
        D::template store<Tag>(DSH + b * H + h, dsum);
        V ds = wt ? psum * ldf<V>(wt + h) : psum;
        if (bs) ds = fmadd(ldf<V>(bs + h), dsum, ds);
        D::template store<Tag>(DSC + b * H + h, ds);
        const V one_sc = D::template load<Tag>(SC + b * H + h) + 1.0f;
        dw = fmadd(one_sc, psum, dw);
        db = fmadd(one_sc, dsum, db);
      }
      if (wt) stf(a.dweight + h, dw);
      if (bs) stf(a.dbias + h, db);
    });
  } else {
    const int64_t nblocks = nb * chunks;
    const int64_t boff = wt ? H : 0;
    for_each(h1 - h0, [&](auto tag, int64_t i) {
      using V = typename decltype(tag)::V;
      const int64_t h = h0 + i;
      V dw{}, db{};
      for (int64_t k = 0; k < nblocks; ++k) {
        const float* p = part + k * stride;
        if (wt) dw += ldf<V>(p + h);
        if (bs) db += ldf<V>(p + boff + h);
      }
      if (wt) stf(a.dweight + h, dw);
      if (bs) stf(a.dbias + h, db);
    });
  }
}

// ---- entry points (the AdalnKernels table of adaln_params.h) --------------------------------
void fwd_blocks(const FwdArgs& a, int64_t begin, int64_t end, float* scratch) {
  for (int64_t k = begin; k < end; ++k) {
    switch (a.dtype) {
      case kFloat32: fwd_block<F32>(a, k, scratch); break;
      case kFloat16: fwd_block<F16>(a, k, scratch); break;
      case kBFloat16: fwd_block<BF16>(a, k, scratch); break;
    }
  }
}

void bwd_blocks(const BwdArgs& a, int64_t begin, int64_t end, float* scratch) {
  for (int64_t k = begin; k < end; ++k) {
    switch (a.dtype) {
      case kFloat32: bwd_block<F32>(a, k, scratch); break;
      case kFloat16: bwd_block<F16>(a, k, scratch); break;
      case kBFloat16: bwd_block<BF16>(a, k, scratch); break;
    }
  }
}

void bwd_reduce(const BwdArgs& a, int64_t task_begin, int64_t task_end) {
  for (int64_t t = task_begin; t < task_end; ++t) {
    const int64_t h0 = t * kReduceCols, h1 = min64(a.blk.H, h0 + kReduceCols);
    switch (a.dtype) {
      case kFloat32: bwd_reduce_cols<F32>(a, h0, h1); break;
      case kFloat16: bwd_reduce_cols<F16>(a, h0, h1); break;
      case kBFloat16: bwd_reduce_cols<BF16>(a, h0, h1); break;
    }
  }
}

const AdalnKernels* kernels() {
  static const AdalnKernels k{STMODELS_ISA_NAME, &fwd_blocks, &bwd_blocks, &bwd_reduce};
  return &k;
}

}  // namespace

#undef ADALN_INLINE

}  // namespace STMODELS_ISA
}  // namespace adaln
}  // namespace stmodels

#pragma GCC pop_options
#pragma GCC diagnostic pop
