// CPU implementation of stmodels::selective_scan_fwd / selective_scan_bwd (schemas and the
// canonical argument forms: csrc/ops.cpp; math: Mamba, Gu & Dao 2023, Alg. 2, and the spec in
// docs/ops.rst). This file validates the arguments, converts A/B/C to padded float32 layouts the
// kernels can stream, picks the kernel build for this CPU (selective_scan_kernel_{generic,avx2,
// avx512}.cpp, through csrc/cpu_isa.h; STMODELS_CPU_ISA forces one), runs it with
// at::parallel_for and reduces the per-task partial gradients in a fixed order, so results are
// identical for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <tuple>
#include <vector>

#include "cpu_isa.h"
#include "selective_scan_checks.h"
#include "selective_scan_params.h"

// at::parallel_for is inline OpenMP code in torch's headers: without -fopenmp it silently runs
// on one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#warning "selective_scan_cpu.cpp built without -fopenmp: the CPU scan will run on one thread"
#endif

namespace stmodels {
namespace scan {
namespace {

using at::Tensor;

// The kernel build of a call (csrc/cpu_isa.h), the same for every dtype: the widest, avx512
// (16 lanes over the state dimension), is preferred.
const ScanKernels* pick_kernels() {
  static constexpr cpu_isa::Getter<ScanKernels> kBuilds[cpu_isa::kNumIsa] = {
      &kernels_generic, &kernels_avx2, &kernels_avx512};
  return cpu_isa::pick(kBuilds, cpu_isa::kAvx512);
}

int dtype_code(at::ScalarType t) {
  return t == at::kHalf ? kF16 : t == at::kBFloat16 ? kBF16 : kF32;
}

using scan_checks::Geom;
using scan_checks::Inputs;

// ---------------------------------------------------------------- preparation

int64_t ndir_of(const Tensor& t, int64_t base_rank) { return t.dim() > base_rank ? 2 : 1; }

// A zero-filled float32 tensor of `shape` whose data starts at cache line `line` modulo 4 KiB
// (see kLineB in selective_scan_params.h: streams read in lockstep must not share L1 sets).
Tensor zeros_at_line(at::IntArrayRef shape, int line, const at::TensorOptions& opt) {
  const int64_t n = c10::multiply_integers(shape);
  Tensor buf = at::zeros({n + 1024}, opt.dtype(at::kFloat));
  float* base = buf.data_ptr<float>();
  const int64_t off = at_line(base, line) - base;
  return buf.narrow(0, off, n).view(shape);
}

// (nd, dim, N) -> float32 (nd, dim, Np), zero padded.
Tensor pad_const(const Tensor& t, int64_t dim, int64_t N, int64_t Np, int line = 0) {
  const int64_t nd = ndir_of(t, 2);
  Tensor o = zeros_at_line({nd, dim, Np}, line, t.options());
  o.narrow(2, 0, N).copy_(t.reshape({nd, dim, N}));
  return o;
}

BCView prep_bc(const Tensor& t, bool var, const Geom& g, int64_t Np, int line, Tensor& hold) {
  BCView v;
  v.var = var;
  if (var) {  // (nd, batch, G, N, L) -> (nd, batch, G, L, Np): lanes over n contiguous per step
    const int64_t nd = ndir_of(t, 4);
    hold = zeros_at_line({nd, g.batch, g.G, g.L, Np}, line, t.options());
    hold.narrow(4, 0, g.N).copy_(t.reshape({nd, g.batch, g.G, g.N, g.L}).transpose(3, 4));
    v.ds = nd == 2 ? g.batch * g.G * g.L * Np : 0;
    v.bs = g.G * g.L * Np; v.gs = g.L * Np; v.cs = 0; v.ts = Np;
  } else {
    hold = pad_const(t, g.dim, g.N, Np, line);
    v.ds = ndir_of(t, 2) == 2 ? g.dim * Np : 0;
    v.cs = Np;
  }
  v.p = hold.data_ptr<float>();
  return v;
}

struct Prepared {
  ScanParams p;
  Tensor A, B, C;  // keep the padded copies alive
};

Prepared prepare(const Inputs& in, bool softplus, bool reverse, int width) {
  Prepared pr;
  ScanParams& p = pr.p;
  const Geom& g = in.g;
  p.batch = g.batch; p.dim = g.dim; p.L = g.L; p.N = g.N;
  p.Np = (g.N + width - 1) / width * width;
  p.G = g.G; p.dg = g.dim / g.G; p.ndir = g.ndir;
  p.softplus = softplus; p.reverse = reverse;
  p.dtype = dtype_code(in.u.scalar_type());
  const int64_t seq = g.batch * g.dim * g.L;
  p.u = in.u.data_ptr(); p.u_ds = in.u.dim() == 4 ? seq : 0;
  p.delta = in.delta.data_ptr(); p.delta_ds = in.delta.dim() == 4 ? seq : 0;
  p.z = in.z.defined() ? in.z.data_ptr() : nullptr;
  pr.A = pad_const(in.A, g.dim, g.N, p.Np);
  p.A = pr.A.data_ptr<float>(); p.A_ds = in.A.dim() == 3 ? g.dim * p.Np : 0;
  if (in.D.defined()) { p.D = in.D.data_ptr<float>(); p.D_ds = in.D.dim() == 2 ? g.dim : 0; }
  if (in.bias.defined()) {
    p.bias = in.bias.data_ptr<float>(); p.bias_ds = in.bias.dim() == 2 ? g.dim : 0;
  }
  p.init = in.init.defined() ? in.init.data_ptr<float>() : nullptr;
  p.Bv = prep_bc(in.B, g.varB, g, p.Np, kLineB, pr.B);
  p.Cv = prep_bc(in.C, g.varC, g, p.Np, kLineC, pr.C);
  return pr;
}

// ---------------------------------------------------------------- forward

std::tuple<Tensor, Tensor> scan_fwd_cpu(const Tensor& u, const Tensor& delta, const Tensor& A,
                                        const Tensor& B, const Tensor& C,
                                        const c10::optional<Tensor>& D,
                                        const c10::optional<Tensor>& z,
                                        const c10::optional<Tensor>& delta_bias,
                                        const c10::optional<Tensor>& initial_state,
                                        bool delta_softplus, bool reverse, bool bidirectional) {
  const Inputs in = scan_checks::validate(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                          reverse, bidirectional, at::kCPU);
  const Geom& g = in.g;
  scan_checks::FwdOutputs outputs = scan_checks::fwd_outputs(in, bidirectional);
  if (outputs.done) return {outputs.out, outputs.last};
  Tensor &out = outputs.out, &last = outputs.last;
  const ScanKernels* kr = pick_kernels();
  Prepared pr = prepare(in, delta_softplus, reverse, kr->width);
  ScanParams& p = pr.p;
  p.out = out.data_ptr();
  p.last_state = last.data_ptr<float>();
  const int64_t ws = kr->fwd_ws(p);
  const int64_t work = g.L * p.Np * g.ndir;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(work, 1));
  at::parallel_for(0, g.batch * g.dim, grain, [&](int64_t begin, int64_t end) {
    Tensor buf = at::empty({ws}, in.A.options());
    kr->fwd(p, begin, end, buf.data_ptr<float>());
  });
  return {out, last};
}

// ---------------------------------------------------------------- backward

// Fixed-order reductions of the per-(b, k, d) partials: out[kp][d][n] = sum over b, then over
// the directions k that map to kp (both when the parameter is shared).
void reduce_param(const Tensor& part /*(batch, ndir, dim, Np) or (batch, ndir, dim)*/,
                  Tensor& out /*(ndp, dim[, n]) flat view, any float dtype*/, int64_t ndp,
                  int64_t n_per /*N or 1*/, int64_t stride /*Np or 1*/) {
  const int64_t batch = part.size(0), ndir = part.size(1), dim = part.size(2);
  const float* src = part.data_ptr<float>();
  Tensor acc = at::empty({ndp, dim, n_per}, part.options());
  float* dst = acc.data_ptr<float>();
  at::parallel_for(0, ndp * dim, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t kp = i / dim, d = i % dim;
      for (int64_t n = 0; n < n_per; ++n) {
        float s = 0.0f;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t k = 0; k < ndir; ++k)
            if (ndp == 1 || k == kp) s += src[((b * ndir + k) * dim + d) * stride + n];
        dst[(kp * dim + d) * n_per + n] = s;
      }
    }
  });
  out.copy_(acc.view(out.sizes()));
}

// Variable dB/dC: out[k][b][g][n][t] = sum over channel chunks c of slab[b][g][c][k][t][n].
void reduce_var(const float* src, int64_t nc, int64_t nd, const Geom& g, int64_t Np,
                Tensor& out) {
  const int64_t L = g.L, N = g.N, G = g.G, batch = g.batch;
  const bool direct = out.scalar_type() == at::kFloat && out.is_contiguous();
  Tensor acc = direct ? out : at::empty({nd, batch, G, N, L}, out.options().dtype(at::kFloat));
  float* dst = acc.data_ptr<float>();
  constexpr int64_t TB = 64;
  const int64_t ntb = (L + TB - 1) / TB;
  at::parallel_for(0, nd * batch * G * ntb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(TB * Np);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t tb = i % ntb, bg = (i / ntb) % (batch * G), k = i / (ntb * batch * G);
      const int64_t t0 = tb * TB, nt = std::min(L, t0 + TB) - t0;
      // Sum the chunks' [t][Np] rows (contiguous, vectorises), then write transposed [n][t].
      std::fill(rows.begin(), rows.end(), 0.0f);
      for (int64_t c = 0; c < nc; ++c) {
        const float* sl = src + (((bg * nc + c) * nd + k) * L + t0) * Np;
        for (int64_t j = 0; j < nt * Np; ++j) rows[j] += sl[j];
      }
      float* o = dst + ((k * batch * G) + bg) * N * L + t0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t t = 0; t < nt; ++t) o[n * L + t] = rows[t * Np + n];
    }
  });
  if (!direct) out.copy_(acc.view(out.sizes()));
}

// The variable-dB/dC partial slabs are megabytes that every backward call fills from scratch;
// fresh pages would cost a page fault each (as much as writing them), so the buffer is kept
// between calls, up to 32 MiB. Calls that find it in use (another thread) allocate their own.
Tensor slab_buffer(int64_t n, std::unique_lock<std::mutex>& lock) {
  static std::mutex m;
  static Tensor& cached = *new Tensor();  // never destroyed: no teardown-order issues at exit
  constexpr int64_t kKeep = int64_t(8) << 20;  // floats
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  if (n == 0) return at::empty({0}, f32);
  if (n > kKeep) return at::empty({n}, f32);
  std::unique_lock<std::mutex> l(m, std::try_to_lock);
  if (!l.owns_lock()) return at::empty({n}, f32);
  if (!cached.defined() || cached.numel() < n) cached = at::empty({n}, f32);
  lock = std::move(l);
  return cached;
}

using BwdOut = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

BwdOut scan_bwd_cpu(const Tensor& dout, const c10::optional<Tensor>& dlast_state, const Tensor& u, const Tensor& delta, const Tensor& A,
                    const Tensor& B, const Tensor& C, const c10::optional<Tensor>& D,
                    const c10::optional<Tensor>& z, const c10::optional<Tensor>& delta_bias,
                    const c10::optional<Tensor>& initial_state, bool delta_softplus,
                    bool reverse, bool bidirectional) {
  const Inputs in = scan_checks::validate(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                          reverse, bidirectional, at::kCPU);
  const Geom& g = in.g;
  const auto grads_in = scan_checks::check_grads(dout, dlast_state, in, bidirectional, at::kCPU);
  const Tensor& dout_c = grads_in.first;
  const Tensor& dlast = grads_in.second;
  const auto f32 = in.A.options();
  const Tensor none = at::empty({0}, f32);
  scan_checks::BwdOutputs grads = scan_checks::bwd_outputs(in, dlast);
  if (grads.done) return grads.tuple();
  Tensor &du = grads.du, &ddelta = grads.ddelta, &dA = grads.dA, &dB = grads.dB, &dC = grads.dC;
  Tensor &dD = grads.dD, &dz = grads.dz, &dbias = grads.dbias, &dinit = grads.dinit;

  const ScanKernels* kr = pick_kernels();
  Prepared pr = prepare(in, delta_softplus, reverse, kr->width);
  ScanParams& p = pr.p;
  const int64_t Np = p.Np, nd = g.ndir;
  p.dout = dout_c.data_ptr();
  p.dlast = dlast.defined() ? dlast.data_ptr<float>() : nullptr;
  p.du = du.data_ptr(); p.du_ds = p.u_ds;
  p.ddelta = ddelta.data_ptr(); p.ddelta_ds = p.delta_ds;
  p.dz = in.z.defined() ? dz.data_ptr() : nullptr;
  p.dinit = in.init.defined() ? dinit.data_ptr<float>() : nullptr;

  // Work split: tasks are chunks of `ch` channels of one (batch, group). Variable dB/dC need one
  // [L][Np] partial slab per task; chunks of >= 32 channels amortise it (zeroing + final
  // reduction ~ 5% of the scan), at most ~64 tasks, and at most ~64 MiB of slabs. All of it
  // depends on the shape only.
  p.pB_nd = g.varB ? (int)ndir_of(in.B, 4) : 1;
  p.pC_nd = g.varC ? (int)ndir_of(in.C, 4) : 1;
  const int64_t slab = g.L * Np;
  const int64_t per_chunk = (g.varB ? p.pB_nd : 0) * slab + (g.varC ? p.pC_nd : 0) * slab;
  const int64_t dg = p.dg, bg = g.batch * g.G;
  int64_t nc = dg;
  if (per_chunk > 0) {
    nc = std::min<int64_t>((dg + 31) / 32, (64 + bg - 1) / bg);
    nc = std::min<int64_t>(nc, (int64_t(16) << 20) / (bg * per_chunk));
    nc = std::max<int64_t>(nc, 1);
  }
  p.ch = (dg + nc - 1) / nc;
  p.nc = (dg + p.ch - 1) / p.ch;
  const int64_t nB = g.varB ? bg * p.nc * p.pB_nd * slab + 1024 : 0;
  const int64_t nC = g.varC ? bg * p.nc * p.pC_nd * slab + 1024 : 0;
  std::unique_lock<std::mutex> slab_lock;
  Tensor slabs = slab_buffer(nB + nC, slab_lock);
  Tensor pA = at::empty({g.batch, nd, g.dim, Np}, f32);
  Tensor pBc = g.varB ? none : at::empty({g.batch, nd, g.dim, Np}, f32);
  Tensor pCc = g.varC ? none : at::empty({g.batch, nd, g.dim, Np}, f32);
  Tensor pD = in.D.defined() ? at::empty({g.batch, nd, g.dim}, f32) : none;
  Tensor pBias = in.bias.defined() ? at::empty({g.batch, nd, g.dim}, f32) : none;
  float* slab0 = slabs.data_ptr<float>();
  p.pB = g.varB ? at_line(slab0, kLineSlabB) : nullptr;
  p.pC = g.varC ? at_line(slab0 + nB, kLineSlabC) : nullptr;
  p.pA = pA.data_ptr<float>();
  p.pBc = g.varB ? nullptr : pBc.data_ptr<float>();
  p.pCc = g.varC ? nullptr : pCc.data_ptr<float>();
  p.pD = in.D.defined() ? pD.data_ptr<float>() : nullptr;
  p.pBias = in.bias.defined() ? pBias.data_ptr<float>() : nullptr;

  const int64_t ws = kr->bwd_ws(p);
  at::parallel_for(0, bg * p.nc, 1, [&](int64_t begin, int64_t end) {
    Tensor buf = at::empty({ws}, f32);
    kr->bwd(p, begin, end, buf.data_ptr<float>());
  });

  reduce_param(pA, dA, ndir_of(in.A, 2), g.N, Np);
  if (in.D.defined()) reduce_param(pD, dD, ndir_of(in.D, 1), 1, 1);
  if (in.bias.defined()) reduce_param(pBias, dbias, ndir_of(in.bias, 1), 1, 1);
  if (g.varB) reduce_var(p.pB, p.nc, p.pB_nd, g, Np, dB);
  else reduce_param(pBc, dB, ndir_of(in.B, 2), g.N, Np);
  if (g.varC) reduce_var(p.pC, p.nc, p.pC_nd, g, Np, dC);
  else reduce_param(pCc, dC, ndir_of(in.C, 2), g.N, Np);
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dinit};
}

}  // namespace

const char* cpu_kernel_build(c10::ScalarType) { return pick_kernels()->name; }

TORCH_LIBRARY_IMPL(stmodels, CPU, m) {
  m.impl("selective_scan_fwd", &scan_fwd_cpu);
  m.impl("selective_scan_bwd", &scan_bwd_cpu);
}

}  // namespace scan
}  // namespace stmodels
