// The one place where every stmodels operator schema is declared.
//
// Kernels for each dispatch key live beside their op (csrc/<op>/<op>_cpu.cpp, *_cuda.cu) and
// register with TORCH_LIBRARY_IMPL. Autograd and fake (meta) kernels are registered from Python
// (stmodels/ops/<op>/compiled.py), so the same backward formula serves every device.
//
// Canonical argument forms (the Python front doors convert user input to these, contiguous):
//   selective_scan_fwd / _bwd
//     u, delta        (batch, dim, L)                    shared by all directions
//                     (2, batch, dim, L)                 per direction (bidirectional only)
//     A               (dim, N) | (2, dim, N)             float32
//     B, C            variable: (batch, G, N, L) | (2, batch, G, N, L)
//                     constant: (dim, N)         | (2, dim, N)
//                     float32 or the dtype of u
//     D, delta_bias   (dim,) | (2, dim)                  float32, optional
//     z               (batch, dim, L)                    dtype of u, optional
//     initial_state   (batch, dim, N)                    float32, optional, unidirectional only
//   bidirectional=false: one scan, in reverse time order when `reverse`.
//   bidirectional=true:  direction 0 forward, direction 1 backward in time; `reverse` must be false.
//   Returns out (batch, dim, L) in u's dtype and last_state, float32: (batch, dim, N), or
//   (2, batch, dim, N) when bidirectional.
//   The backward takes dout and, optionally, dlast_state (the gradient of last_state, its shape,
//   float32; absent = zero) and returns one gradient per input, shaped and typed like that input; the gradient of
//   an absent optional input is an empty float32 tensor.
//
//   adaln_fwd / _bwd
//     x               (batch, S, H)                      float32 | float16 | bfloat16
//     shift, scale    (batch, H) | (batch, S, H)         dtype of x, same shape as each other
//     weight, bias    (H,)                               float32, optional
//   Returns out (batch, S, H), and mean, rstd (batch, S) float32 saved for the backward.
#include <torch/library.h>

#include <string>

#include "build_info.h"
#include "cpu_isa.h"

TORCH_LIBRARY(stmodels, m) {
  m.def(
      "selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? z, Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, bool reverse, "
      "bool bidirectional) -> (Tensor out, Tensor last_state)");
  m.def(
      "selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, "
      "Tensor? D, Tensor? z, Tensor? delta_bias, Tensor? initial_state, bool delta_softplus, "
      "bool reverse, bool bidirectional) -> (Tensor du, Tensor ddelta, Tensor dA, Tensor dB, "
      "Tensor dC, Tensor dD, Tensor dz, Tensor ddelta_bias, Tensor dinitial_state)");
  m.def(
      "adaln_fwd(Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, float eps) "
      "-> (Tensor out, Tensor mean, Tensor rstd)");
  m.def(
      "adaln_bwd(Tensor dout, Tensor x, Tensor scale, Tensor? weight, Tensor? bias, Tensor mean, "
      "Tensor rstd, bool shift_per_token) -> (Tensor dx, Tensor dshift, Tensor dscale, "
      "Tensor dweight, Tensor dbias)");
  // Build metadata of the loaded binary (JSON text), shown by `python -m stmodels.info`.
  m.def("build_info() -> str", [] { return std::string(stmodels::kBuildInfoJson); });
  // The CPU kernel build ("generic", "avx2" or "avx512") that a call of `op` ("selective_scan" or
  // "adaln") with inputs of `dtype` would run now, STMODELS_CPU_ISA included (csrc/cpu_isa.h).
  m.def("cpu_kernel_build(str op, ScalarType dtype) -> str",
        [](c10::string_view op, c10::ScalarType dtype) -> std::string {
          if (op == "selective_scan") return stmodels::scan::cpu_kernel_build(dtype);
          if (op == "adaln") return stmodels::adaln::cpu_kernel_build(dtype);
          TORCH_CHECK(false, "cpu_kernel_build: unknown op '", std::string(op),
                      "'; expected selective_scan or adaln");
        });
}
