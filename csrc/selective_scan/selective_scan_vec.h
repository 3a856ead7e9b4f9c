// Minimal float vector types for the selective-scan kernels, one per ISA, selected by
// STM_SCAN_VEC (512: AVX-512F/BW/VL/DQ + FMA, 256: AVX2 + FMA, 0: portable, GCC/Clang vector
// extensions that map to SSE2 / NEON, or plain arrays for other compilers). Included only from
// selective_scan_kernel.h, inside the per-ISA namespace, so nothing here is shared (ODR) between
// builds.
// Each type offers the same small set of operations; reduce_rows / reduce_packed sum W rows of a
// row buffer at once (the per-step sums over the state dimension, deferred).
//
// exp() is the hot spot of the scan (one per state element and step): Cody-Waite reduction
// x = k*ln2 + r, |r| <= ln2/2, a degree-6 polynomial fitted for relative error (max ~1e-7 in
// float32 evaluation), then scaling by 2^k. Arguments are clamped to [-104, 89] first so the
// reduction stays exact; -104 already gives 0 after scaling (below the smallest denormal) and 89
// gives +inf, so exp(-inf) = 0, exp(+inf) = inf, and NaN propagates (the clamps keep NaN).

#define STM_EXP_CONSTS                                                         \
  constexpr float kLo = -104.0f, kHi = 89.0f, kLog2e = 1.44269504088896341f;   \
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;             \
  constexpr float kP0 = 1.0f, kP1 = 1.0f, kP2 = 4.999999106e-01f,              \
                  kP3 = 1.666641980e-01f, kP4 = 4.166822881e-02f,              \
                  kP5 = 8.374840021e-03f, kP6 = 1.383680501e-03f;

inline float bits2f(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t f2bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

// IEEE half <-> float, round to nearest even: the branch-free algorithms of the FP16 library,
// which c10::Half uses too, so results match PyTorch's conversions bit for bit.
inline float half2float(uint16_t h) {
  const uint32_t w = (uint32_t)h << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits2f((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits2f((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = two_w < (1u << 27) ? f2bits(denormalized) : f2bits(normalized);
  return bits2f(sign | r);
}
inline uint16_t float2half(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f2bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits2f((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f2bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}
inline float bf162float(uint16_t h) { return bits2f((uint32_t)h << 16); }
inline uint16_t float2bf16(float f) {
  const uint32_t b = f2bits(f);
  if (f != f) return 0x7FC0;
  return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

#if STM_SCAN_VEC == 512

struct Vec {
  static constexpr int W = 16;
  using T = __m512;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T zero() { return _mm512_setzero_ps(); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T div(T a, T b) { return _mm512_div_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T abs(T a) { return _mm512_abs_ps(a); }
  static T band(T a, T m) { return _mm512_and_ps(a, m); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }  // NaN in b propagates
  // x > thr ? a : b (false for NaN x)
  static T gt_select(T x, T thr, T a, T b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, thr, _CMP_GT_OQ), b, a);
  }
  static T tail_mask(int valid) {
    return _mm512_castsi512_ps(_mm512_maskz_set1_epi32((__mmask16)((1u << valid) - 1u), -1));
  }
  static T exp(T x) {
    STM_EXP_CONSTS
    x = _mm512_max_ps(_mm512_set1_ps(kLo), x);  // max(lo, x), min(hi, x) keep a NaN x
    x = _mm512_min_ps(_mm512_set1_ps(kHi), x);
    const T k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    T r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Lo), r);
    T p = _mm512_fmadd_ps(_mm512_set1_ps(kP6), r, _mm512_set1_ps(kP5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP0));
    return _mm512_scalef_ps(p, k);  // p * 2^k, with correct overflow/underflow
  }
  // Low half: a's two halves added, high half: b's (one store for two row partials).
  static T pack_halves(T a, T b) {
    return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // Transpose-and-add tree (about 3 instructions per row instead of ~8 for a horizontal sum
  // of each): s[i] holds 8-float partials of logical rows 2i (low half) and 2i+1 (high half);
  // lane 4q+m of the result is the sum of logical row 4m+q.
  static T tree8(const T* s) {
    T q[4], v[2];
    for (int i = 0; i < 4; ++i)  // quad m of q[i]: 4-float partial of row 4i+m
      q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int i = 0; i < 2; ++i)
      v[i] = _mm512_add_ps(_mm512_shuffle_ps(q[2 * i], q[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(q[2 * i], q[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // out[i] = sum of the 16 floats of row i, for 16 consecutive rows.
  static void reduce_rows(const float* rows, float* out) {
    T s[8];
    for (int i = 0; i < 8; ++i) s[i] = pack_halves(load(rows + 32 * i), load(rows + 32 * i + 16));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    store(out, _mm512_permutexvar_ps(idx, tree8(s)));
  }
  // For 16 rows packed by pack_halves: out1[i] / out2[i] = sum of row i's low / high half.
  static void reduce_packed(const float* rows, float* out1, float* out2) {
    const __m512i idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
    for (int h = 0; h < 2; ++h) {
      T s[8];
      for (int i = 0; i < 8; ++i) s[i] = load(rows + 16 * (8 * h + i));
      const T f = _mm512_permutexvar_ps(idx, tree8(s));
      _mm256_storeu_ps(out1 + 8 * h, _mm512_castps512_ps256(f));
      _mm256_storeu_ps(out2 + 8 * h, _mm512_extractf32x8_ps(f, 1));
    }
  }
};

#elif STM_SCAN_VEC == 256

struct Vec {
  static constexpr int W = 8;
  using T = __m256;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T zero() { return _mm256_setzero_ps(); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T div(T a, T b) { return _mm256_div_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T abs(T a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static T band(T a, T m) { return _mm256_and_ps(a, m); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T gt_select(T x, T thr, T a, T b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, thr, _CMP_GT_OQ));
  }
  static T tail_mask(int valid) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane));
  }
  static T exp(T x) {
    STM_EXP_CONSTS
    x = _mm256_max_ps(_mm256_set1_ps(kLo), x);
    x = _mm256_min_ps(_mm256_set1_ps(kHi), x);
    // k = round(x*log2e) by the 1.5*2^23 trick; its integer value is in the low mantissa bits.
    const T magic = _mm256_set1_ps(12582912.0f);
    const T t = _mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), magic);
    const T k = _mm256_sub_ps(t, magic);
    T r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
    T p = _mm256_fmadd_ps(_mm256_set1_ps(kP6), r, _mm256_set1_ps(kP5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP0));
    // 2^k as two factors 2^(k>>1) * 2^(k-(k>>1)): each stays a normal float for k in
    // [-150, 129], so overflow to inf and underflow to denormals/0 round correctly.
    const __m256i ki = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    const __m256i k1 = _mm256_srai_epi32(ki, 1);
    const __m256i k2 = _mm256_sub_epi32(ki, k1);
    const __m256i bias = _mm256_set1_epi32(127);
    const T s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
    const T s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }
  static T pack_halves(T a, T b) {
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  // s[i]: 4-float partials of logical rows 2i (low half) and 2i+1 (high half); lane 4q+m of
  // the result is the sum of logical row 2m+q.
  static T tree4(const T* s) {
    T v[2];
    for (int i = 0; i < 2; ++i)
      v[i] = _mm256_add_ps(_mm256_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm256_shuffle_ps(s[2 * i], s[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm256_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
  static void reduce_rows(const float* rows, float* out) {
    T s[4];
    for (int i = 0; i < 4; ++i) s[i] = pack_halves(load(rows + 16 * i), load(rows + 16 * i + 8));
    store(out, _mm256_permutevar8x32_ps(tree4(s), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  static void reduce_packed(const float* rows, float* out1, float* out2) {
    for (int h = 0; h < 2; ++h) {  // lane j < 4 of the tree: row 4h+j's low half, 4+j: its high
      T s[4];
      for (int i = 0; i < 4; ++i) s[i] = load(rows + 8 * (4 * h + i));
      const T f = tree4(s);
      _mm_storeu_ps(out1 + 4 * h, _mm256_castps256_ps128(f));
      _mm_storeu_ps(out2 + 4 * h, _mm256_extractf128_ps(f, 1));
    }
  }
};

#elif defined(__GNUC__) && !defined(STM_SCAN_PLAIN_ARRAYS)  // portable: vector extensions

struct Vec {
  // One native register on x86 without AVX (wider vectors there would change the calling
  // convention of non-inlined helpers, which GCC warns about); two elsewhere (NEON, ...).
#if defined(__x86_64__) || defined(__i386__)
  static constexpr int W = 4;
#else
  static constexpr int W = 8;
#endif
  typedef float T __attribute__((vector_size(4 * W)));
  typedef int32_t I __attribute__((vector_size(4 * W)));
  typedef uint32_t U __attribute__((vector_size(4 * W)));
  static T load(const float* p) { T r; std::memcpy(&r, p, sizeof(T)); return r; }
  static void store(float* p, T a) { std::memcpy(p, &a, sizeof(T)); }
  static T set1(float x) { return T{} + x; }
  static T zero() { return T{}; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T div(T a, T b) { return a / b; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T sel(I m, T a, T b) { return (T)(((I)a & m) | ((I)b & ~m)); }  // m ? a : b
  static T abs(T a) { return (T)((I)a & (I{} + 0x7FFFFFFF)); }
  static T band(T a, T m) { return (T)((I)a & (I)m); }
  static T max(T a, T b) { return sel(a >= b, a, b); }  // b when either is NaN, like maxps
  static T gt_select(T x, T thr, T a, T b) { return sel(x > thr, a, b); }
  static T tail_mask(int valid) {
    I lane;
    for (int i = 0; i < W; ++i) lane[i] = i;
    return (T)(lane < valid);
  }
  static T exp(T x) {
    STM_EXP_CONSTS
    x = max(set1(kLo), x);  // NaN passes through both clamps
    x = sel(x > kHi, set1(kHi), x);
    const T magic = set1(12582912.0f);
    const T t = x * kLog2e + magic;  // k = round(x log2e) in the low mantissa bits
    const T k = t - magic;
    T r = x - k * kLn2Hi;
    r = r - k * kLn2Lo;
    T p = r * kP6 + kP5;
    p = p * r + kP4; p = p * r + kP3; p = p * r + kP2; p = p * r + kP1; p = p * r + kP0;
    const I ki = (I)t - (I)magic;
    const I k1 = ki >> 1, k2 = ki - k1;  // 2^k as two normal factors, as in the AVX2 version
    return p * (T)((U)(k1 + 127) << 23) * (T)((U)(k2 + 127) << 23);
  }
  static T pack_halves(T a, T b) {
    T r;
    for (int i = 0; i < W / 2; ++i) { r[i] = a[i] + a[i + W / 2]; r[i + W / 2] = b[i] + b[i + W / 2]; }
    return r;
  }
  static float tree(const float* x, int n) {  // pairwise: (x0 + x[n/2]) + ... , fixed shape
    float a[W];
    for (int i = 0; i < n; ++i) a[i] = x[i];
    for (int w = n / 2; w >= 1; w /= 2)
      for (int i = 0; i < w; ++i) a[i] += a[i + w];
    return a[0];
  }
  static void reduce_packed(const float* rows, float* out1, float* out2) {
    for (int r = 0; r < W; ++r) {
      out1[r] = tree(rows + r * W, W / 2);
      out2[r] = tree(rows + r * W + W / 2, W / 2);
    }
  }
  static void reduce_rows(const float* rows, float* out) {
    for (int r = 0; r < W; ++r) out[r] = tree(rows + r * W, W);
  }
};

#else  // portable, plain arrays (other compilers; STM_SCAN_PLAIN_ARRAYS forces it for testing)

struct Vec {
  static constexpr int W = 8;
  struct T { float v[W]; };
#define STM_LANES(expr) T r; for (int i = 0; i < W; ++i) r.v[i] = (expr); return r
  static T load(const float* p) { STM_LANES(p[i]); }
  static void store(float* p, T a) { for (int i = 0; i < W; ++i) p[i] = a.v[i]; }
  static T set1(float x) { STM_LANES(x); }
  static T zero() { STM_LANES(0.0f); }
  static T add(T a, T b) { STM_LANES(a.v[i] + b.v[i]); }
  static T sub(T a, T b) { STM_LANES(a.v[i] - b.v[i]); }
  static T mul(T a, T b) { STM_LANES(a.v[i] * b.v[i]); }
  static T div(T a, T b) { STM_LANES(a.v[i] / b.v[i]); }
  static T fma(T a, T b, T c) { STM_LANES(a.v[i] * b.v[i] + c.v[i]); }
  static T abs(T a) { STM_LANES(std::fabs(a.v[i])); }
  static T band(T a, T m) { STM_LANES(bits2f(f2bits(a.v[i]) & f2bits(m.v[i]))); }
  static T max(T a, T b) { STM_LANES(a.v[i] > b.v[i] ? a.v[i] : b.v[i]); }
  static T gt_select(T x, T thr, T a, T b) { STM_LANES(x.v[i] > thr.v[i] ? a.v[i] : b.v[i]); }
  static T tail_mask(int valid) { STM_LANES(bits2f(i < valid ? 0xFFFFFFFFu : 0u)); }
  static float exp1(float x) {
    STM_EXP_CONSTS
    x = x < kLo ? kLo : x;  // comparisons are false for NaN, which passes through
    x = x > kHi ? kHi : x;
    const float magic = 12582912.0f;
    const float t = x * kLog2e + magic;
    const float k = t - magic;
    float r = x - k * kLn2Hi;
    r = r - k * kLn2Lo;
    float p = kP6 * r + kP5;
    p = p * r + kP4; p = p * r + kP3; p = p * r + kP2; p = p * r + kP1; p = p * r + kP0;
    const int32_t ki = (int32_t)(f2bits(t) - f2bits(magic));
    const int32_t k1 = ki >> 1, k2 = ki - k1;
    return p * bits2f((uint32_t)(k1 + 127) << 23) * bits2f((uint32_t)(k2 + 127) << 23);
  }
  static T exp(T x) { STM_LANES(exp1(x.v[i])); }
  static T pack_halves(T a, T b) {
    T r;
    for (int i = 0; i < W / 2; ++i) { r.v[i] = a.v[i] + a.v[i + W / 2]; r.v[i + W / 2] = b.v[i] + b.v[i + W / 2]; }
    return r;
  }
  static void reduce_packed(const float* rows, float* out1, float* out2) {
    static_assert(W == 8, "written for 8 lanes");
    for (int r = 0; r < W; ++r) {
      const float* x = rows + r * W;
      out1[r] = (x[0] + x[2]) + (x[1] + x[3]);
      out2[r] = (x[4] + x[6]) + (x[5] + x[7]);
    }
  }
  static void reduce_rows(const float* rows, float* out) {
    for (int r = 0; r < W; ++r) {  // same pairwise tree shape for every row
      float a[W];
      for (int i = 0; i < W; ++i) a[i] = rows[r * W + i];
      for (int w = W / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; ++i) a[i] += a[i + w];
      out[r] = a[0];
    }
  }
#undef STM_LANES
};

#endif
#undef STM_EXP_CONSTS
