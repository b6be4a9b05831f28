#include "parallel/device.h"

#include <cstdio>

#include <ATen/cpu/Utils.h>

#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "absl/strings/str_cat.h"

namespace hybridmoe {

bool CpuHasBf16MatrixUnits() {
  const auto caps = at::cpu::get_cpu_capabilities();
  auto has = [&](const char* key) {
    const auto it = caps.find(key);
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  };
  return has("amx_bf16") || has("avx512_bf16");
}

c10::ScalarType ComputeDtype(const TrainConfig& config, const c10::Device& device, bool report) {
  if (config.train().precision() != TrainRunConfig::BF16) return at::kFloat;
  if (device.is_cpu() && !CpuHasBf16MatrixUnits()) {
    if (report) {
      std::fprintf(stderr,
                   "train.precision BF16: this CPU has neither AMX-BF16 nor AVX512-BF16 (bf16 GEMMs would be "
                   "emulated, slower than fp32); training in FP32\n");
    }
    return at::kFloat;
  }
  return at::kBFloat16;
}

absl::StatusOr<c10::Device> ChooseDevice(ParallelConfig::Device configured, int local_rank, int local_size,
                                         int device_count) {
  if (configured != ParallelConfig::CUDA) return c10::Device(c10::kCPU);
  if (device_count <= 0) {
    return absl::FailedPreconditionError(
        "parallel.device (CUDA): no usable GPU in this process (a CPU-only LibTorch, a build without "
        "--config=cuda, or no device visible); valid here: CPU");
  }
  if (local_rank < 0 || local_rank >= local_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("launch: local rank ", local_rank, " is outside the ", local_size, " ranks of this node"));
  }
  if (local_size > device_count) {
    return absl::FailedPreconditionError(absl::StrCat("parallel.device (CUDA): ", local_size,
                                                      " ranks on this node but ", device_count,
                                                      " visible GPU(s); each rank needs its own GPU: start at most ",
                                                      device_count, " ranks per node, or use parallel.device CPU"));
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

void SelectDevice(const c10::Device& device) {
  if (device.is_cpu()) return;
  c10::impl::getDeviceGuardImpl(device.type())->setDevice(device);
}

}  // namespace hybridmoe
