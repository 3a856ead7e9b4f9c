// Per-channel sequence helpers of the selective-scan kernels: dtype conversion of the (batch,
// dim, L) inputs and outputs, the elementwise parts vectorised over time (softplus, sigmoid),
// the deferred sums over the state dimension (row buffers reduced W at a time), and where the
// streamed buffers live in memory. Included by selective_scan_kernel.h inside the per-ISA
// namespace, after selective_scan_vec.h (Vec, V, VT, W, imin, round_up).

// ---------------------------------------------------------------- sequences

inline void load_seq(const void* src, int dtype, int64_t off, int64_t n, int64_t np, float* dst) {
  if (dtype == kF32) {
    std::memcpy(dst, static_cast<const float*>(src) + off, sizeof(float) * n);
  } else if (dtype == kF16) {
    const uint16_t* s = static_cast<const uint16_t*>(src) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = half2float(s[i]);
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src) + off;
    for (int64_t i = 0; i < n; ++i) dst[i] = bf162float(s[i]);
  }
  for (int64_t i = n; i < np; ++i) dst[i] = 0.0f;  // padded tail: zeros keep vector loops finite
}

inline void store_seq(void* dst, int dtype, int64_t off, int64_t n, const float* src) {
  if (dtype == kF32) {
    std::memcpy(static_cast<float*>(dst) + off, src, sizeof(float) * n);
  } else if (dtype == kF16) {
    uint16_t* d = static_cast<uint16_t*>(dst) + off;
    for (int64_t i = 0; i < n; ++i) d[i] = float2half(src[i]);
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst) + off;
    for (int64_t i = 0; i < n; ++i) d[i] = float2bf16(src[i]);
  }
}

// Sum of x[0..n) (lane-wise partials, then a fixed tree): used for dD and ddelta_bias.
inline float sum_seq(const float* x, int64_t n) {
  VT acc = V::zero();
  int64_t i = 0;
  for (; i + W <= n; i += W) acc = V::add(acc, V::load(x + i));
  alignas(64) float rows[W * W] = {};
  V::store(rows, acc);
  float out[W];
  V::reduce_rows(rows, out);
  float s = out[0];
  for (; i < n; ++i) s += x[i];
  return s;
}

inline VT sigmoid(VT x) { return V::div(V::set1(1.0f), V::add(V::set1(1.0f), V::exp(V::sub(V::zero(), x)))); }

// PyTorch's softplus (threshold 20): x > 20 ? x : log1p(exp(x)). Computed as
// max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], and log1p(e) = 2 atanh(s), s = e / (2 + e)
// in (0, 1/3], whose odd series converges fast enough for float32 after 7 terms (~1e-8).
// With kGrad, *grad = its derivative: sigmoid(x) (1 above the threshold), from the same e.
template <bool kGrad>
inline VT softplus(VT x, VT* grad) {
  const VT one = V::set1(1.0f), thr = V::set1(20.0f);
  const VT e = V::exp(V::sub(V::zero(), V::abs(x)));
  const VT s = V::div(e, V::add(V::set1(2.0f), e));
  const VT s2 = V::mul(s, s);
  VT q = V::fma(V::set1(1.0f / 13), s2, V::set1(1.0f / 11));
  q = V::fma(q, s2, V::set1(1.0f / 9));
  q = V::fma(q, s2, V::set1(1.0f / 7));
  q = V::fma(q, s2, V::set1(1.0f / 5));
  q = V::fma(q, s2, V::set1(1.0f / 3));
  q = V::fma(q, s2, one);
  if (kGrad) {  // sigmoid(x) = 1 / (1 + e) for x > 0, e / (1 + e) otherwise (NaN stays NaN)
    const VT r = V::div(one, V::add(one, e));
    *grad = V::gt_select(x, thr, one, V::gt_select(x, V::zero(), r, V::mul(e, r)));
  }
  const VT r = V::fma(V::add(s, s), q, V::max(V::zero(), x));  // max(0, x) keeps a NaN x
  return V::gt_select(x, thr, x, r);
}

// dt = f(delta + bias), dtu = dt * u, and (backward) spd = f'(delta + bias), over np (padded).
inline void make_dt(const float* delta, float bias, const float* u, int64_t np, bool sp,
                    float* dt, float* dtu, float* spd) {
  const VT bv = V::set1(bias);
  for (int64_t i = 0; i < np; i += W) {
    const VT x = V::add(V::load(delta + i), bv);
    VT d = x, g;
    if (sp && spd) {
      d = softplus<true>(x, &g);
      V::store(spd + i, g);
    } else if (sp) {
      d = softplus<false>(x, nullptr);
    }
    V::store(dt + i, d);
    V::store(dtu + i, V::mul(d, V::load(u + i)));
  }
}

// dst1[i*ts] = sum of the low half of row i, dst2[i*ts] = of its high half (rows packed by
// V::pack_halves), for rows[0..cnt).
inline void reduce_packed_to(const float* rows, int64_t cnt, float* dst1, float* dst2, int64_t ts) {
  alignas(64) float t1[W], t2[W];
  int64_t i = 0;
  for (; i + W <= cnt; i += W) {
    V::reduce_packed(rows + i * W, t1, t2);
    for (int k = 0; k < W; ++k) { dst1[(i + k) * ts] = t1[k]; dst2[(i + k) * ts] = t2[k]; }
  }
  for (; i < cnt; ++i) {
    float a = 0.0f, b = 0.0f;
    for (int k = 0; k < W / 2; ++k) { a += rows[i * W + k]; b += rows[i * W + W / 2 + k]; }
    dst1[i * ts] = a; dst2[i * ts] = b;
  }
}

// dst[i*ts] (+)= sum of row i, for rows[0..cnt) of W floats.
template <bool kAdd>
inline void reduce_rows_to(const float* rows, int64_t cnt, float* dst, int64_t ts) {
  alignas(64) float tmp[W];
  int64_t i = 0;
  for (; i + W <= cnt; i += W) {
    V::reduce_rows(rows + i * W, tmp);
    for (int k = 0; k < W; ++k) {
      float& o = dst[(i + k) * ts];
      o = kAdd ? o + tmp[k] : tmp[k];
    }
  }
  for (; i < cnt; ++i) {
    float s = 0.0f;
    for (int k = 0; k < W; ++k) s += rows[i * W + k];
    float& o = dst[i * ts];
    o = kAdd ? o + s : s;
  }
}

// ---------------------------------------------------------------- memory placement

// The per-channel sequences (2 KB at L = 512) are too short for the hardware prefetcher to ramp
// up, and the scan of one channel is long enough to hide a DRAM round trip: ask for the next
// channel's inputs (into L2) before scanning the current one.
// Outputs are prefetched for writing, which saves the read-for-ownership stall at the store.
template <int kWrite>
inline void prefetch_seq(const void* base, int dtype, int64_t off, int64_t n) {
  const int64_t es = dtype == kF32 ? 4 : 2;
  const char* c = static_cast<const char*>(base) + off * es;
#if defined(__GNUC__)
  for (int64_t i = 0; i < n * es; i += 64) __builtin_prefetch(c + i, kWrite, 3);
#else
  (void)c;
#endif
}
inline void prefetch_channel(const ScanParams& p, int64_t bd, bool bwd) {
  const int64_t L = p.L, off = bd * L;
  for (int k = 0; k < p.ndir; ++k) {
    if (k == 0 || p.u_ds) prefetch_seq<0>(p.u, p.dtype, k * p.u_ds + off, L);
    if (k == 0 || p.delta_ds) prefetch_seq<0>(p.delta, p.dtype, k * p.delta_ds + off, L);
    if (bwd && (k == 0 || p.du_ds)) prefetch_seq<1>(p.du, p.dtype, k * p.du_ds + off, L);
    if (bwd && (k == 0 || p.ddelta_ds)) prefetch_seq<1>(p.ddelta, p.dtype, k * p.ddelta_ds + off, L);
  }
  if (p.z) prefetch_seq<0>(p.z, p.dtype, off, L);
  if (bwd) {
    prefetch_seq<0>(p.dout, p.dtype, off, L);
    if (p.dz) prefetch_seq<1>(p.dz, p.dtype, off, L);
  } else {
    prefetch_seq<1>(p.out, p.dtype, off, L);
  }
}

// Buffers at their own line modulo 4 KiB (kLine* and at_line: selective_scan_params.h).
inline float* carve_at(float*& ws, int64_t n, int line) {  // needs n + 1024 floats of room
  float* q = at_line(ws, line);
  ws = q + n;
  return q;
}
