// The one CPU instruction-set dispatch of every op (docs/kernels.rst, "Runtime ISA dispatch").
//
// Each op compiles its templated kernel (<op>_kernel.h) once per build, each in a namespace of its
// own: <op>_kernel_generic.cpp (baseline flags), <op>_kernel_avx2.cpp and <op>_kernel_avx512.cpp
// (setup.py's ISA_FLAGS). Each of those files defines a getter, kernels_generic() /
// kernels_avx2() / kernels_avx512() in the op's namespace, that returns the op's table of
// function pointers, or nullptr when the file was compiled without its -m flags (another compiler
// or architecture). pick() below chooses the table a call runs.
//
// Include this header only from translation units compiled with the baseline flags
// (<op>_cpu.cpp, ops.cpp): in an ISA file its inline functions (and the torch headers it
// includes) would be compiled with that file's -m flags, and the linker could keep that copy for
// every caller, baseline ones included (the ODR hazard that <op>_params.h describes).
//
// STMODELS_CPU_ISA=generic|avx2|avx512 (read on every call, so a test can switch it between
// calls) forces the widest build at or below the request that the CPU and the binary have: with
// it each build can be tested on one machine. Unset or empty, each op runs its preferred build
// when it is available, else the widest available one.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace stmodels {
namespace cpu_isa {

// The builds, narrowest first; the values index an op's array of getters.
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kNumIsa = 3;
constexpr const char* kIsaNames[kNumIsa] = {"generic", "avx2", "avx512"};

// Whether this CPU can run a build, detected once. Each build needs every extension its files are
// compiled with (setup.py's ISA_FLAGS): the compiler may use any of them anywhere in the file.
// avx2: -mavx2 -mfma -mf16c. avx512: -mavx512f/bw/vl/dq -mfma, and -mf16c as well (every
// AVX-512 CPU has it; checked so that the flags and this test can never disagree).
inline bool cpu_supports(Isa isa) {
  struct Caps {
    bool ok[kNumIsa] = {true, false, false};
  };
  static const Caps caps = [] {
    Caps c;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    c.ok[kAvx2] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("f16c");
    c.ok[kAvx512] = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return c;
  }();
  return caps.ok[isa];
}

// The build STMODELS_CPU_ISA asks for; false when it is unset or empty. A value that names no
// build is an error rather than silently ignored: a typo would otherwise test the wrong kernels.
inline bool requested(Isa& cap) {
  const char* env = std::getenv("STMODELS_CPU_ISA");
  if (env == nullptr || *env == '\0') return false;
  for (int i = 0; i < kNumIsa; ++i) {
    if (std::strcmp(env, kIsaNames[i]) == 0) {
      cap = static_cast<Isa>(i);
      return true;
    }
  }
  TORCH_CHECK(false, "environment variable STMODELS_CPU_ISA: unknown value '", env,
              "'; expected generic, avx2 or avx512 (or unset)");
}

// An op's getters, indexed by Isa (see the top of this file). kernels_generic() never returns null.
template <class Kernels>
using Getter = const Kernels* (*)();

// The table a call of an op runs now, for the op's preferred build (see the top of this file).
// A getter is called only once the CPU is known to support its build.
template <class Kernels>
const Kernels* pick(const Getter<Kernels> (&builds)[kNumIsa], Isa preferred) {
  const auto usable = [&](int i) -> const Kernels* {
    return cpu_supports(static_cast<Isa>(i)) ? builds[i]() : nullptr;
  };
  Isa cap = kAvx512;
  if (requested(cap)) {
    for (int i = cap; i > kGeneric; --i)
      if (const Kernels* k = usable(i)) return k;
    return builds[kGeneric]();
  }
  if (const Kernels* k = usable(preferred)) return k;
  for (int i = kNumIsa - 1; i > kGeneric; --i)
    if (const Kernels* k = usable(i)) return k;
  return builds[kGeneric]();
}

}  // namespace cpu_isa

// The name of the build ("generic", "avx2", "avx512") a call of the op with inputs of `dtype`
// would run now. Defined beside each op's dispatch (csrc/<op>/<op>_cpu.cpp); ops.cpp exposes them
// as torch.ops.stmodels.cpu_kernel_build, so that tests can see STMODELS_CPU_ISA take effect.
namespace scan {
const char* cpu_kernel_build(c10::ScalarType dtype);
}
namespace adaln {
const char* cpu_kernel_build(c10::ScalarType dtype);
}

}  // namespace stmodels
