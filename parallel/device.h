// Which device a rank computes on: one GPU per rank, never shared.
//
// ChooseDevice is a pure function of the configured parallel.device, the rank's place on its node (local
// rank, local size) and the number of GPUs the process sees, so that it is tested without a GPU. NCCL refuses
// two ranks of one communicator on the same GPU ("Duplicate GPU detected"), hence ranks on a node that
// outnumber its visible GPUs are an error, not a wrap-around.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"
#include "proto/config.pb.h"

namespace hybridmoe {

// CPU for parallel.device CPU; cuda:<local_rank> for CUDA when every local rank has its own visible GPU;
// otherwise a one-line error naming parallel.device, the counts and what would be valid.
absl::StatusOr<c10::Device> ChooseDevice(ParallelConfig::Device configured, int local_rank, int local_size,
                                         int device_count);

// Makes `device` the current device of the calling thread (CUDA: cudaSetDevice through LibTorch's device guard
// registry, so this compiles without CUDA headers); a no-op for the CPU.
void SelectDevice(const c10::Device& device);

// The compute dtype of train.precision on `device`: kFloat for FP32, kBFloat16 for BF16 except on a CPU without
// bf16 matrix units (AMX-BF16 or AVX512-BF16), where BF16 falls back to kFloat with one line on stderr when
// `report`.
c10::ScalarType ComputeDtype(const TrainConfig& config, const c10::Device& device, bool report);
bool CpuHasBf16MatrixUnits();

}  // namespace hybridmoe
