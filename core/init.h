// Weight initialisation (docs/formulas.md section 3).
//
// Every weight is drawn from a truncated normal (cut at +-3 sigma) with its own generator seeded from
// (run seed, parameter name[, global expert id]), so a model's initial weights do not depend on the
// order modules were built in, nor on how experts are sharded over ranks.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

namespace hybridmoe {

// Standard deviations for the roles a weight can play. Built from a config by models/.
struct InitPlan {
  uint64_t seed = 0;
  double std_in = 0.02;         // q/k/v, expert/FFN gate and up, router, embedding
  double std_out = 0.02;        // attention output, expert/FFN down
  double std_head = 0.02;       // LM head
  double residual_scale = 1.0;  // DeepNorm's beta on v, out and FFN weights
};

// Stable 64-bit seed for a named tensor (and optionally one slice of it, e.g. an expert id).
uint64_t InitSeed(uint64_t run_seed, const std::string& name, int64_t index = -1);

// Fills `t` in place with N(0, std^2) truncated to [-3 std, 3 std], from a generator seeded by `seed`.
// A meta tensor (no storage) is left as it is.
void trunc_normal_(at::Tensor t, double std, uint64_t seed);

// The construction device: where modules allocate their parameters and buffers while they are built (the
// constructors call ParamOptions()). It is the CPU unless a ParamDeviceScope is alive on this thread. Building
// under ParamDeviceScope scope(at::kMeta) gives every tensor its shape and dtype and no storage, so the 6.9B
// flagship (27.7 GB in fp32) can be built and counted anywhere (tests/flagship/); reset_parameters is a no-op
// on such a model. Scopes nest; each restores the device it found.
class ParamDeviceScope {
 public:
  explicit ParamDeviceScope(at::Device device);
  ~ParamDeviceScope();
  ParamDeviceScope(const ParamDeviceScope&) = delete;
  ParamDeviceScope& operator=(const ParamDeviceScope&) = delete;

 private:
  at::Device previous_;
};

// float32 on the construction device.
at::TensorOptions ParamOptions();

}  // namespace hybridmoe
