// Argument checks of stmodels::selective_scan_fwd / _bwd, written once for every device: the CPU
// (selective_scan_cpu.cpp) and CUDA (selective_scan_cuda.cu) entry points both call validate()
// with the device kind they serve. The canonical argument forms are those of csrc/ops.cpp; the
// Python front doors (stmodels/ops/selective_scan/checks.py) check user input first and give the
// messages users normally see, so these checks guard direct calls of the raw torch.ops.
//
// Included only by translation units compiled with the baseline flags (never by the per-ISA
// kernel files), so its inline functions cannot carry ISA-specific code across the link.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace stmodels {
namespace scan_checks {

using at::Tensor;

struct Geom {
  int64_t batch, dim, L, N, G;
  int ndir;
  bool varB, varC;
};

struct Inputs {
  Tensor u, delta, A, B, C, D, z, bias, init;
  Geom g;
};

// One argument must be on the device kind of this entry point and on u's device.
inline void check_device(const Tensor& t, const char* name, at::DeviceType kind,
                         const at::Device& dev) {
  TORCH_CHECK(t.device().type() == kind, "selective_scan (", c10::DeviceTypeName(kind, true),
              "): ", name, " must be a ", c10::DeviceTypeName(kind), " tensor, got ", t.device());
  TORCH_CHECK(t.device() == dev, "selective_scan: ", name, " is on ", t.device(),
              " but u is on ", dev, "; all inputs must be on the same device");
}

// u or delta: (batch, dim, L), or (2, batch, dim, L) when bidirectional.
inline void check_seq(const Tensor& t, const char* name, bool bidir, at::ScalarType dt,
                      at::DeviceType kind, const at::Device& dev) {
  check_device(t, name, kind, dev);
  TORCH_CHECK(t.dim() == 3 || (bidir && t.dim() == 4 && t.size(0) == 2), "selective_scan: ",
              name, " must have shape (batch, dim, L)", bidir ? " or (2, batch, dim, L)" : "",
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dt, "selective_scan: ", name, " must have dtype ", dt,
              " (the dtype of u), got ", t.scalar_type());
}

// A, D, delta_bias: `shape` shared, or with a leading 2 when bidirectional; float32.
inline void check_param(const Tensor& t, const char* name, bool bidir, at::IntArrayRef shape,
                        const char* shape_str, at::DeviceType kind, const at::Device& dev) {
  check_device(t, name, kind, dev);
  const int64_t r = (int64_t)shape.size();
  const bool per_dir = bidir && t.dim() == r + 1 && t.size(0) == 2;
  bool ok = (t.dim() == r || per_dir);
  if (ok)
    for (int64_t i = 0; i < r; ++i) ok = ok && t.size(t.dim() - r + i) == shape[i];
  TORCH_CHECK(ok, "selective_scan: ", name, " must have shape ", shape_str,
              bidir ? " (optionally with a leading 2 for per-direction values)" : "", " = ",
              shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "selective_scan: ", name,
              " must be float32, got ", t.scalar_type());
}

// B or C: variable (batch, G, N, L) | (2, batch, G, N, L), constant (dim, N) | (2, dim, N).
// Returns G (0 for constant).
inline int64_t check_bc(const Tensor& t, const char* name, bool bidir, const Geom& g,
                        at::ScalarType udt, at::DeviceType kind, const at::Device& dev) {
  check_device(t, name, kind, dev);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == udt, "selective_scan: ", name,
              " must be float32 or the dtype of u (", udt, "), got ", t.scalar_type());
  const int64_t r = t.dim();
  const bool per_dir = (r == 5 || r == 3);
  TORCH_CHECK(r >= 2 && r <= 5 && (!per_dir || (bidir && t.size(0) == 2)), "selective_scan: ",
              name, " must be variable (batch, G, N, L) or constant (dim, N)",
              bidir ? ", either optionally with a leading 2 for per-direction values" : "",
              "; got ", t.sizes());
  if (r >= 4) {
    const int64_t G = t.size(-3);
    TORCH_CHECK(t.size(-4) == g.batch && t.size(-2) == g.N && t.size(-1) == g.L && G >= 1,
                "selective_scan: variable ", name, " must have shape (batch=", g.batch,
                ", G, N=", g.N, ", L=", g.L, "), got ", t.sizes());
    TORCH_CHECK(g.dim % G == 0, "selective_scan: the number of groups G=", G, " of ", name,
                " must divide dim=", g.dim);
    return G;
  }
  TORCH_CHECK(t.size(-2) == g.dim && t.size(-1) == g.N, "selective_scan: constant ", name,
              " must have shape (dim=", g.dim, ", N=", g.N, "), got ", t.sizes());
  return 0;
}

// Every input of selective_scan_fwd / _bwd; returns contiguous copies and the geometry.
inline Inputs validate(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                       const Tensor& C, const c10::optional<Tensor>& D,
                       const c10::optional<Tensor>& z, const c10::optional<Tensor>& bias,
                       const c10::optional<Tensor>& init, bool reverse, bool bidir,
                       at::DeviceType kind) {
  TORCH_CHECK(!(bidir && reverse), "selective_scan: reverse must be false when bidirectional "
              "(direction 1 already scans backward in time)");
  const auto udt = u.scalar_type();
  TORCH_CHECK(udt == at::kFloat || udt == at::kHalf || udt == at::kBFloat16,
              "selective_scan: u must be float32, float16 or bfloat16, got ", udt);
  const at::Device dev = u.device();
  check_seq(u, "u", bidir, udt, kind, dev);
  check_seq(delta, "delta", bidir, udt, kind, dev);
  Inputs in;
  Geom& g = in.g;
  g.batch = u.size(-3); g.dim = u.size(-2); g.L = u.size(-1);
  g.ndir = bidir ? 2 : 1;
  TORCH_CHECK(delta.size(-3) == g.batch && delta.size(-2) == g.dim && delta.size(-1) == g.L,
              "selective_scan: delta must match u's (batch, dim, L) = (", g.batch, ", ", g.dim,
              ", ", g.L, "), got ", delta.sizes());
  check_device(A, "A", kind, dev);
  TORCH_CHECK(A.dim() >= 2 && A.size(-1) >= 1, "selective_scan: A must have shape (dim, N) with "
              "N >= 1, got ", A.sizes());
  g.N = A.size(-1);
  check_param(A, "A", bidir, {g.dim, g.N}, "(dim, N)", kind, dev);
  const int64_t GB = check_bc(B, "B", bidir, g, udt, kind, dev);
  const int64_t GC = check_bc(C, "C", bidir, g, udt, kind, dev);
  TORCH_CHECK(GB == 0 || GC == 0 || GB == GC, "selective_scan: variable B and C must have the "
              "same number of groups, got G=", GB, " for B and G=", GC, " for C");
  g.G = GB ? GB : (GC ? GC : 1);
  g.varB = GB > 0; g.varC = GC > 0;
  in.u = u.contiguous(); in.delta = delta.contiguous(); in.A = A.contiguous();
  in.B = B.contiguous(); in.C = C.contiguous();
  if (D.has_value() && D->defined()) {
    check_param(*D, "D", bidir, {g.dim}, "(dim,)", kind, dev);
    in.D = D->contiguous();
  }
  if (bias.has_value() && bias->defined()) {
    check_param(*bias, "delta_bias", bidir, {g.dim}, "(dim,)", kind, dev);
    in.bias = bias->contiguous();
  }
  if (z.has_value() && z->defined()) {
    check_device(*z, "z", kind, dev);
    TORCH_CHECK(z->dim() == 3 && z->size(0) == g.batch && z->size(1) == g.dim && z->size(2) == g.L,
                "selective_scan: z must have shape (batch, dim, L) = (", g.batch, ", ", g.dim,
                ", ", g.L, "), got ", z->sizes());
    TORCH_CHECK(z->scalar_type() == udt, "selective_scan: z must have the dtype of u (", udt,
                "), got ", z->scalar_type());
    in.z = z->contiguous();
  }
  if (init.has_value() && init->defined()) {
    TORCH_CHECK(!bidir, "selective_scan: initial_state is only supported when not bidirectional");
    check_device(*init, "initial_state", kind, dev);
    TORCH_CHECK(init->dim() == 3 && init->size(0) == g.batch && init->size(1) == g.dim &&
                init->size(2) == g.N, "selective_scan: initial_state must have shape "
                "(batch, dim, N) = (", g.batch, ", ", g.dim, ", ", g.N, "), got ", init->sizes());
    TORCH_CHECK(init->scalar_type() == at::kFloat, "selective_scan: initial_state must be "
                "float32, got ", init->scalar_type());
    in.init = init->contiguous();
  }
  return in;
}

// The backward's incoming gradients: dout (batch, dim, L) in u's dtype, and the optional
// dlast_state shaped like last_state, float32. Returns them contiguous (dlast undefined if absent).
inline std::pair<Tensor, Tensor> check_grads(const Tensor& dout,
                                             const c10::optional<Tensor>& dlast_state,
                                             const Inputs& in, bool bidir, at::DeviceType kind) {
  const Geom& g = in.g;
  const at::Device dev = in.u.device();
  check_device(dout, "dout", kind, dev);
  TORCH_CHECK(dout.dim() == 3 && dout.size(0) == g.batch && dout.size(1) == g.dim &&
              dout.size(2) == g.L, "selective_scan_bwd: dout must have shape (batch, dim, L) = (",
              g.batch, ", ", g.dim, ", ", g.L, "), got ", dout.sizes());
  TORCH_CHECK(dout.scalar_type() == in.u.scalar_type(), "selective_scan_bwd: dout must have the "
              "dtype of u (", in.u.scalar_type(), "), got ", dout.scalar_type());
  Tensor dlast;
  if (dlast_state.has_value() && dlast_state->defined()) {
    check_device(*dlast_state, "dlast_state", kind, dev);
    const auto want = bidir ? std::vector<int64_t>{2, g.batch, g.dim, g.N}
                            : std::vector<int64_t>{g.batch, g.dim, g.N};
    TORCH_CHECK(dlast_state->sizes() == at::IntArrayRef(want), "selective_scan_bwd: dlast_state "
                "must have the shape of last_state ", at::IntArrayRef(want), ", got ",
                dlast_state->sizes());
    TORCH_CHECK(dlast_state->scalar_type() == at::kFloat, "selective_scan_bwd: dlast_state must "
                "be float32, got ", dlast_state->scalar_type());
    dlast = dlast_state->contiguous();
  }
  return {dout.contiguous(), dlast};
}

// ---- outputs ----------------------------------------------------------------------------------
// Allocated here, once for every device, so that the CPU and CUDA entry points return the same
// shapes and dtypes and the same results for empty inputs. `done`: there is nothing to scan and
// the outputs are already final.

// out (batch, dim, L) in u's dtype; last_state (batch, dim, N), or (2, batch, dim, N), float32.
struct FwdOutputs {
  Tensor out, last;
  bool done = false;
};

inline FwdOutputs fwd_outputs(const Inputs& in, bool bidir) {
  const Geom& g = in.g;
  const auto f32 = in.A.options();
  FwdOutputs o;
  o.out = at::empty({g.batch, g.dim, g.L}, in.u.options());
  o.last = bidir ? at::zeros({2, g.batch, g.dim, g.N}, f32) : at::zeros({g.batch, g.dim, g.N}, f32);
  if (g.batch == 0 || g.dim == 0) {
    o.done = true;
  } else if (g.L == 0) {  // nothing to scan: the state is the initial one
    if (in.init.defined()) o.last.copy_(in.init);
    o.done = true;
  }
  return o;
}

// One gradient per input, shaped and typed like it; an absent optional input gets its own empty
// float32 placeholder (outputs of an op must not alias each other). Every element is written by
// the kernels, or zeroed here when there is no work.
struct BwdOutputs {
  Tensor du, ddelta, dA, dB, dC, dD, dz, dbias, dinit;
  bool done = false;
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> tuple() const {
    return {du, ddelta, dA, dB, dC, dD, dz, dbias, dinit};
  }
};

inline BwdOutputs bwd_outputs(const Inputs& in, const Tensor& dlast) {
  const Geom& g = in.g;
  const auto f32 = in.A.options();
  auto like_or_empty = [&](const Tensor& t) { return t.defined() ? at::empty_like(t) : at::empty({0}, f32); };
  BwdOutputs o;
  o.du = at::empty_like(in.u);
  o.ddelta = at::empty_like(in.delta);
  o.dA = at::empty_like(in.A);
  o.dB = at::empty_like(in.B);
  o.dC = at::empty_like(in.C);
  o.dD = like_or_empty(in.D);
  o.dz = like_or_empty(in.z);
  o.dbias = like_or_empty(in.bias);
  o.dinit = like_or_empty(in.init);
  if (g.batch == 0 || g.dim == 0 || g.L == 0) {
    for (Tensor* t : {&o.du, &o.ddelta, &o.dA, &o.dB, &o.dC, &o.dD, &o.dz, &o.dbias, &o.dinit}) t->zero_();
    // With nothing to scan last_state is initial_state itself.
    if (g.L == 0 && dlast.defined() && in.init.defined()) o.dinit.copy_(dlast);
    o.done = true;
  }
  return o;
}

}  // namespace scan_checks
}  // namespace stmodels
