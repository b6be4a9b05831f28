// Token data: memory-mapped token files and deterministic batch sampling.
//
// A TokenFile is a read-only memory map of a token stream in one of the formats users already have:
//   RAW       little-endian ids of data.dtype (uint16/uint32), the OLMo / nanoGPT `.bin` layout;
//   NPY       a NumPy .npy array (C order, any shape, read flat) of u1/u2/u4/i2/i4/i8;
//   MEGATRON  a Megatron indexed dataset, `<prefix>.bin` + `<prefix>.idx` (MMIDIDX version 1); the documents
//             are read as one concatenated stream, as GPT pre-training samples them.
// AUTO picks NPY for `.npy`, MEGATRON for a `.bin` with a sibling `.idx`, else RAW. Headers are validated
// against the file size (a truncated file or wrong dtype is an error naming the file); ids are checked
// against the vocabulary when read, so a bad file fails with the file, position and value rather than
// corrupting training.
// Sampling is a pure function of (seed, step, global sample index): sample g of step s takes a window of
// seq_len + 1 tokens from a file chosen by weight, at an offset drawn from a counter-based hash. A run
// resumed at step s, or re-sharded over a different number of ranks, therefore reads exactly the batches
// of an uninterrupted run. Validation uses fixed, evenly spaced windows of the held-out file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "core/files.h"
#include "proto/config.pb.h"

namespace hybridmoe {

class TokenFile {
 public:
  static absl::StatusOr<std::unique_ptr<TokenFile>> Open(const std::string& path, DataConfig::Format format,
                                                         DataConfig::Dtype dtype, int64_t vocab_size);
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t num_tokens() const { return num_tokens_; }
  const std::string& path() const { return path_; }
  const std::string& format_name() const { return format_name_; }  // e.g. "npy <u2"
  // Copies tokens [offset, offset + n) into out as int64; errors name the file and the bad id.
  absl::Status Read(int64_t offset, int64_t n, int64_t* out) const;

 private:
  TokenFile() = default;
  std::string path_;
  MappedFile map_;
  const uint8_t* data_ = nullptr;  // first token
  int64_t num_tokens_ = 0;
  int bytes_per_token_ = 2;
  bool signed_ = false;
  int64_t vocab_size_ = 0;
  std::string format_name_;
};

struct Batch {
  at::Tensor inputs;   // int64 [B, S]
  at::Tensor targets;  // int64 [B, S] (inputs shifted by one)
};

class DataLoader {
 public:
  // Opens every data.train file (mixed by weight) and data.validation (if set).
  static absl::StatusOr<std::unique_ptr<DataLoader>> Create(const DataConfig& config, int64_t vocab_size,
                                                            uint64_t seed);
  // Samples [first, first + count) of the global batch of `step` (global_batch samples per step).
  absl::StatusOr<Batch> TrainBatch(int64_t step, int64_t global_batch, int64_t first, int64_t count) const;
  // Validation micro-batch `index` of `count` sequences (windows evenly spaced over the file).
  absl::StatusOr<Batch> ValidationBatch(int64_t index, int64_t count, int64_t num_batches) const;
  bool has_validation() const { return validation_ != nullptr; }

 private:
  absl::StatusOr<Batch> Gather(const std::vector<std::pair<const TokenFile*, int64_t>>& windows) const;

  int64_t seq_len_ = 0;
  uint64_t seed_ = 0;
  std::vector<std::unique_ptr<TokenFile>> train_;
  std::vector<double> cumulative_weight_;  // normalised, last = 1
  std::unique_ptr<TokenFile> validation_;
};

// splitmix64: the counter-based hash behind sampling.
uint64_t Mix64(uint64_t x);

}  // namespace hybridmoe
