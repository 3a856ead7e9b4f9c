// Vector types, loads/stores with float16/bfloat16 conversion, and the loop drivers of the AdaLN
// CPU kernel (adaln_kernel.h). Included by adaln_kernel.h only, inside its per-ISA namespace, after
// ADALN_INLINE is defined: every function here is always inlined and compiled with the flags of the
// including translation unit (W follows them), so no out-of-line copy can cross ISA builds.

#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX2__)
constexpr int W = 8;
#else
constexpr int W = 4;  // SSE2 on x86-64, NEON on aarch64
#endif

// Vectors of W lanes; memory is only touched through __builtin_memcpy (unaligned loads/stores).
typedef float vf __attribute__((vector_size(W * 4)));
typedef uint32_t vu __attribute__((vector_size(W * 4)));
typedef uint16_t vh __attribute__((vector_size(W * 2)));

struct VTag { using V = vf; using U = vu; using H16 = vh; };
struct STag { using V = float; using U = uint32_t; using H16 = uint16_t; };

ADALN_INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <class To, class From>
ADALN_INLINE To bitcast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "bitcast size");
  To t;
  __builtin_memcpy(&t, &f, sizeof(To));
  return t;
}

// ---- loads and stores of V (vf or float) from float / uint16 memory -------------------------
template <class V, class E>
ADALN_INLINE V ldraw(const E* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class E>
ADALN_INLINE void straw(E* p, const V& v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
template <class V>
ADALN_INLINE V ldf(const float* p) { return ldraw<V>(p); }
template <class V>
ADALN_INLINE void stf(float* p, V v) { straw(p, v); }

ADALN_INLINE vu widen(vh h) { return __builtin_convertvector(h, vu); }
ADALN_INLINE uint32_t widen(uint16_t h) { return h; }
ADALN_INLINE vh narrow(vu u) { return __builtin_convertvector(u, vh); }
ADALN_INLINE uint16_t narrow(uint32_t u) { return static_cast<uint16_t>(u); }

ADALN_INLINE vf fmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__AVX2__) && defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
ADALN_INLINE float fmadd(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);  // a single vfmadd: same rounding as the vector lanes
#else
  return a * b + c;
#endif
}

// Pairwise horizontal sum (error grows with log2(W), not W).
ADALN_INLINE float hsum(vf v) {
  for (int w = W / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) v[i] += v[i + w];
  return v[0];
}

// Element types. Conversions are the branch-free bit manipulations of c10 (round to nearest even,
// same results as torch's casts), written once for scalars and vectors.
struct F32 {
  using T = float;
  template <class Tag>
  static ADALN_INLINE typename Tag::V load(const float* p) { return ldf<typename Tag::V>(p); }
  template <class Tag>
  static ADALN_INLINE void store(float* p, typename Tag::V v) { stf(p, v); }
};

struct BF16 {
  using T = uint16_t;
  template <class Tag>
  static ADALN_INLINE typename Tag::V load(const uint16_t* p) {
    using U = typename Tag::U;
    return bitcast<typename Tag::V>(U(widen(ldraw<typename Tag::H16>(p)) << 16));
  }
  template <class Tag>
  static ADALN_INLINE void store(uint16_t* p, typename Tag::V v) {
    using U = typename Tag::U;
    const U u = bitcast<U>(v);
    const U rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
    const U nan = U{} + 0x7FC0u;
    straw(p, narrow((v != v) ? nan : rounded));
  }
};

// Hardware float16 conversion where the build has it: AVX-512F has the 16-lane vcvtph2ps /
// vcvtps2ph; the AVX2 build adds F16C (-mf16c, adaln_kernel_avx2.cpp). They round to nearest even like
// the bit manipulation below, at a fraction of the instructions (fp16 was ~3x slower than fp32
// without them).
#if defined(__AVX512F__)
ADALN_INLINE vf f16_load_native(const uint16_t* p) {
  return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
ADALN_INLINE void f16_store_native(uint16_t* p, vf v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
constexpr bool kNativeF16 = true;
#elif defined(__F16C__) && defined(__AVX2__)
ADALN_INLINE vf f16_load_native(const uint16_t* p) {
  return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
ADALN_INLINE void f16_store_native(uint16_t* p, vf v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
constexpr bool kNativeF16 = true;
#else
ADALN_INLINE vf f16_load_native(const uint16_t*) { return vf{}; }  // never called
ADALN_INLINE void f16_store_native(uint16_t*, vf) {}
constexpr bool kNativeF16 = false;
#endif

struct F16 {
  using T = uint16_t;
  template <class Tag>
  static ADALN_INLINE typename Tag::V load(const uint16_t* p) {
    using U = typename Tag::U;
    using V = typename Tag::V;
    if constexpr (kNativeF16 && std::is_same<Tag, VTag>::value) {
      return f16_load_native(p);
    } else {
      const U w = U(widen(ldraw<typename Tag::H16>(p)) << 16);
      const U sign = w & 0x80000000u;
      const U two_w = w + w;
      const V normalized = bitcast<V>(U((two_w >> 4) + (0xE0u << 23))) * 0x1.0p-112f;
      const V denormalized = bitcast<V>(U((two_w >> 17) | (126u << 23))) - 0.5f;
      const U mag = (two_w < (1u << 27)) ? bitcast<U>(denormalized) : bitcast<U>(normalized);
      return bitcast<V>(U(sign | mag));
    }
  }
  template <class Tag>
  static ADALN_INLINE void store(uint16_t* p, typename Tag::V f) {
    using U = typename Tag::U;
    using V = typename Tag::V;
    if constexpr (kNativeF16 && std::is_same<Tag, VTag>::value) {
      f16_store_native(p, f);
    } else {
      const U w = bitcast<U>(f);
      const V absf = bitcast<V>(U(w & 0x7FFFFFFFu));
      V base = (absf * 0x1.0p+112f) * 0x1.0p-110f;  // c10's scale_to_inf, scale_to_zero
      const U shl1_w = w + w;
      const U sign = w & 0x80000000u;
      U bias = shl1_w & 0xFF000000u;
      bias = (bias < 0x71000000u) ? (U{} + 0x71000000u) : bias;
      base = bitcast<V>(U((bias >> 1) + 0x07800000u)) + base;
      const U bits = bitcast<U>(base);
      const U nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
      const U res = (sign >> 16) | ((shl1_w > 0xFF000000u) ? (U{} + 0x7E00u) : nonsign);
      straw(p, narrow(res));
    }
  }
};

// ---- loop drivers: the body is written once, for a vector (VTag) or a scalar tail (STag) -----
template <class F>
ADALN_INLINE void for_each(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + W <= n; i += W) f(VTag{}, i);
  for (; i < n; ++i) f(STag{}, i);
}

// Sum of f over [0, n) with four independent vector accumulators: a plain add chain would be
// bound by the 4-cycle add latency rather than by the loads.
template <class F>
ADALN_INLINE float reduce_sum(int64_t n, F&& f) {
  vf a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += f(VTag{}, i);
    a1 += f(VTag{}, i + W);
    a2 += f(VTag{}, i + 2 * W);
    a3 += f(VTag{}, i + 3 * W);
  }
  for (; i + W <= n; i += W) a0 += f(VTag{}, i);
  float s = hsum((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += f(STag{}, i);
  return s;
}

// Two sums; f(tag, i, acc1, acc2) accumulates into them. Unrolled twice, so four independent
// accumulator chains.
template <class F>
ADALN_INLINE void reduce2(int64_t n, F&& f, float& r1, float& r2) {
  vf a0{}, b0{}, a1{}, b1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    f(VTag{}, i, a0, b0);
    f(VTag{}, i + W, a1, b1);
  }
  for (; i + W <= n; i += W) f(VTag{}, i, a0, b0);
  float sa = 0.f, sb = 0.f;
  for (; i < n; ++i) f(STag{}, i, sa, sb);
  r1 = hsum(a0 + a1) + sa;
  r2 = hsum(b0 + b1) + sb;
}

