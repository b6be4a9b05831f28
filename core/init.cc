#include "core/init.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>

namespace hybridmoe {

namespace {
thread_local at::Device construction_device = at::kCPU;
}  // namespace

ParamDeviceScope::ParamDeviceScope(at::Device device) : previous_(construction_device) { construction_device = device; }
ParamDeviceScope::~ParamDeviceScope() { construction_device = previous_; }

at::TensorOptions ParamOptions() { return at::TensorOptions(at::kFloat).device(construction_device); }

uint64_t InitSeed(uint64_t run_seed, const std::string& name, int64_t index) {
  // FNV-1a over the name, mixed with the seed and index by splitmix64.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  uint64_t z = h ^ (run_seed * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(index + 1) << 32);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void trunc_normal_(at::Tensor t, double std, uint64_t seed) {
  if (t.is_meta()) return;
  at::NoGradGuard no_grad;
  // Inverse-CDF sampling: uniform over [cdf(-3), cdf(3)], mapped back through erfinv.
  const double lo = 0.5 * (1.0 + std::erf(-3.0 / std::sqrt(2.0)));
  const double hi = 0.5 * (1.0 + std::erf(3.0 / std::sqrt(2.0)));
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor u = at::empty(t.sizes(), t.options().dtype(at::kDouble).device(at::kCPU));
  u.uniform_(2 * lo - 1, 2 * hi - 1, gen);
  u.erfinv_().mul_(std * std::sqrt(2.0)).clamp_(-3 * std, 3 * std);
  t.copy_(u);
}

}  // namespace hybridmoe
