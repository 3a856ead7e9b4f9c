// Plain-data interface between the selective-scan op (selective_scan_cpu.cpp, which validates,
// prepares padded float32 copies of A/B/C and reduces the partial gradient buffers) and the
// vectorised kernels (selective_scan_kernel.h, compiled once per ISA in its own namespace by
// selective_scan_kernel_{generic,avx2,avx512}.cpp; csrc/cpu_isa.h picks one per call).
//
// This header deliberately includes no torch headers: the ISA translation units are compiled
// with -mavx2 / -mavx512*, and any inline function they share with the baseline TU (a torch
// header's half conversion, a std::vector member) could be emitted with those instructions and
// picked by the linker for the baseline code too. The kernels therefore see raw pointers only.
#pragma once

#include <cstdint>

namespace stmodels {
namespace scan {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// B or C, already converted to float32 and padded to Np lanes (zeros beyond N). The lanes of
// direction k, batch b, channel d, time t start at
//   p + k*ds + b*bs + (d / dg)*gs + d*cs + t*ts
// variable (batch, G, N, L) inputs are stored transposed to [k][b][g][t][Np] (cs = 0, ts = Np),
// constant (dim, N) inputs as [k][d][Np] (bs = gs = ts = 0). ds = 0 when shared by directions.
struct BCView {
  const float* p = nullptr;
  int64_t ds = 0, bs = 0, gs = 0, cs = 0, ts = 0;
  bool var = false;
};

struct ScanParams {
  int64_t batch = 0, dim = 0, L = 0, N = 0, Np = 0, G = 1, dg = 1;
  int ndir = 1;          // 2 when bidirectional
  bool softplus = false, reverse = false;
  int dtype = kF32;      // of u, delta, z, out, dout, du, ddelta, dz

  // Inputs. *_ds: element offset between the two direction blocks, 0 when shared.
  const void* u = nullptr;      int64_t u_ds = 0;
  const void* delta = nullptr;  int64_t delta_ds = 0;
  const void* z = nullptr;                    // (batch, dim, L) or null
  const float* A = nullptr;     int64_t A_ds = 0;     // padded (ndirA, dim, Np)
  const float* D = nullptr;     int64_t D_ds = 0;     // (ndirD, dim) or null
  const float* bias = nullptr;  int64_t bias_ds = 0;  // (ndirBias, dim) or null
  const float* init = nullptr;                // (batch, dim, N) or null (unidirectional only)
  BCView Bv, Cv;

  // Forward outputs.
  void* out = nullptr;          // (batch, dim, L), dtype
  float* last_state = nullptr;  // (ndir, batch, dim, N)

  // Backward.
  const void* dout = nullptr;
  const float* dlast = nullptr;                     // d(last_state): (ndir, batch, dim, N) or null
  void* du = nullptr;      int64_t du_ds = 0;       // like u
  void* ddelta = nullptr;  int64_t ddelta_ds = 0;   // like delta
  void* dz = nullptr;                               // like z, or null
  float* dinit = nullptr;                           // like init, or null
  // Work split of the backward: task = (b, g, c), c a chunk of `ch` channels of group g.
  int64_t nc = 1, ch = 1;
  // Partial sums of variable dB/dC, one [L][Np] slab per (b, g, c, direction buffer):
  // layout [b][g][c][nd][L][Np]; nd = 2 when the input is per direction, else 1.
  float* pB = nullptr; int pB_nd = 1;
  float* pC = nullptr; int pC_nd = 1;
  // Per (b, direction k, d) partial sums over time: dA, constant dB/dC as [b][k][d][Np];
  // dD, ddelta_bias as [b][k][d]. Reduced over b (and k when shared) in a fixed order.
  float* pA = nullptr; float* pBc = nullptr; float* pCc = nullptr;
  float* pD = nullptr; float* pBias = nullptr;
};

// One ISA's kernels. `fwd` runs sequences [begin, end) of batch*dim; `bwd` runs tasks
// [begin, end) of batch*G*nc. Each needs a float workspace of the advertised size per call.
struct ScanKernels {
  const char* name;  // the build: "generic", "avx2" or "avx512"
  int width;  // float lanes per vector; N is padded to a multiple of it
  int64_t (*fwd_ws)(const ScanParams&);
  void (*fwd)(const ScanParams&, int64_t begin, int64_t end, float* ws);
  int64_t (*bwd_ws)(const ScanParams&);
  void (*bwd)(const ScanParams&, int64_t begin, int64_t end, float* ws);
};

// One getter per build, each defined in selective_scan_kernel_<build>.cpp; null when that file
// was compiled without its -m flags (the generic one never is). Call one only on a CPU that runs
// its build (cpu_isa::pick does).
const ScanKernels* kernels_generic();
const ScanKernels* kernels_avx2();
const ScanKernels* kernels_avx512();

// A step of the scan touches one 64-byte line in each of up to eight streams (B, C, the dB and
// dC partial slabs, h, exp(dt A), the row buffers) that all advance by the same stride. Started
// at the same offset modulo 4 KiB they would map to the same L1 set and evict each other (the
// backward ran ~30% slower that way), so each stream starts at its own line modulo 4 KiB: the op
// places B, C and the slabs (selective_scan_cpu.cpp), the kernels their own buffers.
constexpr int kLineB = 0, kLineC = 8, kLineSlabB = 16, kLineSlabC = 24, kLineH = 32, kLineDA = 40,
              kLineRows = 48, kLineRowsY = 56;
// Internal linkage: every translation unit, ISA builds included, gets its own copy (no shared
// inline code, see the top of this file).
namespace {
inline float* at_line(float* p, int line) {  // first q >= p with q = line * 64 (mod 4096)
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), want = uintptr_t(line) * 64;
  const uintptr_t off = (want - (a & 4095)) & 4095;
  return reinterpret_cast<float*>(a + off);  // p is 4-byte aligned, off a multiple of 4
}
}  // namespace

}  // namespace scan
}  // namespace stmodels
