// Argument checks of stmodels::adaln_fwd / adaln_bwd, written once for every device: the CPU
// (adaln_cpu.cpp) and CUDA (adaln_cuda.cu) entry points both call check_fwd / check_bwd with the
// device kind they serve. Canonical forms: csrc/ops.cpp. The Python front door
// (stmodels/ops/adaln/checks.py) checks user input first and gives the messages users normally
// see; these guard direct calls of the raw torch.ops.
//
// Included only by translation units built with the baseline flags (never by the per-ISA kernel
// files adaln_kernel_*.cpp), so its inline functions cannot carry ISA-specific code across the link.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <tuple>

namespace stmodels {
namespace adaln_checks {

using at::Tensor;

inline void check_dev(const Tensor& t, const char* op, const char* name, at::DeviceType kind,
                      const at::Device* x_device) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.device().type() == kind, op, ": ", name, " must be a ",
              c10::DeviceTypeName(kind), " tensor, got one on ", t.device());
  TORCH_CHECK(!x_device || t.device() == *x_device, op, ": ", name,
              " must be on the device of x (", *x_device, "), got ", t.device());
}

inline void check_x(const Tensor& x, const char* op, at::DeviceType kind) {
  check_dev(x, op, "x", kind, nullptr);
  TORCH_CHECK(x.dim() == 3, op, ": x must have shape (batch, S, H), got ", x.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16, got ", st);
}

inline void check_like(const Tensor& t, const Tensor& x, at::IntArrayRef shape, const char* op,
                       const char* name, const char* shape_desc, at::DeviceType kind) {
  const at::Device dev = x.device();
  check_dev(t, op, name, kind, &dev);
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape_desc, " = ", shape,
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (",
              x.scalar_type(), "), got ", t.scalar_type());
}

// weight/bias: (H,) float32; returns a contiguous tensor or nullopt.
inline std::optional<Tensor> check_affine(const std::optional<Tensor>& t, const Tensor& x,
                                          const char* op, const char* name, at::DeviceType kind) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  const at::Device dev = x.device();
  const int64_t H = x.size(2);
  check_dev(*t, op, name, kind, &dev);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == H, op, ": ", name, " must have shape (H,) = (", H,
              ",), got ", t->sizes());
  TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              t->scalar_type());
  return t->contiguous();
}

// shift/scale: both (batch, H) or both (batch, S, H); returns whether they are per token.
inline bool check_mod(const Tensor& t, const Tensor& x, const char* op, const char* name,
                      std::optional<bool> per_token, at::DeviceType kind) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  const bool pt = per_token.has_value() ? *per_token : t.dim() == 3;
  if (pt) {
    check_like(t, x, {B, S, H}, op, name,
               per_token.has_value() ? "(batch, S, H) (shift_per_token=true)" : "(batch, S, H)",
               kind);
  } else {
    check_like(t, x, {B, H}, op, name,
               per_token.has_value() ? "(batch, H) (shift_per_token=false)"
                                     : "(batch, H) [or (batch, S, H), per token]",
               kind);
  }
  return pt;
}

// The arguments of adaln_fwd, checked and contiguous.
struct FwdInputs {
  Tensor x, shift, scale;
  std::optional<Tensor> weight, bias;
  bool per_token;
};

inline FwdInputs check_fwd(const Tensor& x, const Tensor& shift, const Tensor& scale,
                           const std::optional<Tensor>& weight,
                           const std::optional<Tensor>& bias, at::DeviceType kind) {
  constexpr const char* op = "adaln_fwd";
  check_x(x, op, kind);
  FwdInputs in;
  in.per_token = check_mod(shift, x, op, "shift", std::nullopt, kind);
  TORCH_CHECK(scale.sizes() == shift.sizes(), op, ": scale must have the shape of shift (",
              shift.sizes(), "), got ", scale.sizes());
  check_mod(scale, x, op, "scale", in.per_token, kind);
  in.weight = check_affine(weight, x, op, "weight", kind);
  in.bias = check_affine(bias, x, op, "bias", kind);
  in.x = x.contiguous();
  in.shift = shift.contiguous();
  in.scale = scale.contiguous();
  return in;
}

// The arguments of adaln_bwd, checked and contiguous.
struct BwdInputs {
  Tensor dout, x, scale, mean, rstd;
  std::optional<Tensor> weight, bias;
};

inline BwdInputs check_bwd(const Tensor& dout, const Tensor& x, const Tensor& scale,
                           const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                           const Tensor& mean, const Tensor& rstd, bool shift_per_token,
                           at::DeviceType kind) {
  constexpr const char* op = "adaln_bwd";
  check_x(x, op, kind);
  const int64_t B = x.size(0), S = x.size(1);
  check_like(dout, x, x.sizes(), op, "dout", "(batch, S, H), as x,", kind);
  check_mod(scale, x, op, "scale", shift_per_token, kind);
  BwdInputs in;
  in.weight = check_affine(weight, x, op, "weight", kind);
  in.bias = check_affine(bias, x, op, "bias", kind);
  const at::Device dev = x.device();
  const auto check_stat = [&](const Tensor& t, const char* name) {
    check_dev(t, op, name, kind, &dev);
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == S, op, ": ", name,
                " must have shape (batch, S) = (", B, ", ", S, "), got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                t.scalar_type());
  };
  check_stat(mean, "mean");
  check_stat(rstd, "rstd");
  in.dout = dout.contiguous();
  in.x = x.contiguous();
  in.scale = scale.contiguous();
  in.mean = mean.contiguous();
  in.rstd = rstd.contiguous();
  return in;
}

// ---- outputs ----------------------------------------------------------------------------------
// Allocated here, once for every device, so that the CPU and CUDA entry points return the same
// shapes and dtypes and the same results for empty inputs. `done`: there is no row to normalise
// and the outputs are already final.

// out (batch, S, H) in x's dtype; mean, rstd (batch, S) float32.
struct FwdOutputs {
  Tensor out, mean, rstd;
  bool done = false;
  std::tuple<Tensor, Tensor, Tensor> tuple() const { return {out, mean, rstd}; }
};

inline FwdOutputs fwd_outputs(const FwdInputs& in) {
  const Tensor& x = in.x;
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  FwdOutputs o;
  o.out = at::empty(x.sizes(), x.options());
  o.mean = at::empty({B, S}, x.options().dtype(at::kFloat));
  o.rstd = at::empty({B, S}, x.options().dtype(at::kFloat));
  if (H == 0) {  // as native_layer_norm: mean 0, rstd NaN
    o.mean.zero_();
    o.rstd.fill_(std::numeric_limits<float>::quiet_NaN());
    o.done = true;
  } else if (B * S == 0) {
    o.done = true;
  }
  return o;
}

// dx like x; dshift, dscale like scale (x's dtype); dweight, dbias (H,) float32, or an empty (0,)
// placeholder where the affine parameter is absent.
struct BwdOutputs {
  Tensor dx, dshift, dscale, dweight, dbias;
  bool done = false;
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> tuple() const {
    return {dx, dshift, dscale, dweight, dbias};
  }
};

inline BwdOutputs bwd_outputs(const BwdInputs& in) {
  const Tensor& x = in.x;
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  const auto f32 = x.options().dtype(at::kFloat);
  BwdOutputs o;
  o.dx = at::empty(x.sizes(), x.options());
  o.dshift = at::empty(in.scale.sizes(), x.options());
  o.dscale = at::empty(in.scale.sizes(), x.options());
  o.dweight = in.weight ? at::empty({H}, f32) : at::empty({0}, f32);
  o.dbias = in.bias ? at::empty({H}, f32) : at::empty({0}, f32);
  if (H == 0) {
    o.done = true;
  } else if (B * S == 0) {  // sums over no rows
    for (Tensor* t : {&o.dshift, &o.dscale, &o.dweight, &o.dbias}) t->zero_();
    o.done = true;
  }
  return o;
}

}  // namespace adaln_checks
}  // namespace stmodels
