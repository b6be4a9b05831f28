#include "core/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace hybridmoe {

uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

absl::StatusOr<std::unique_ptr<TokenFile>> TokenFile::Open(const std::string& path, DataConfig::Format format,
                                                           DataConfig::Dtype dtype, int64_t vocab_size) {
  std::unique_ptr<TokenFile> f(new TokenFile());
  f->path_ = path;
  f->vocab_size_ = vocab_size;
  f->bytes_per_token_ = dtype == DataConfig::UINT32 ? 4 : 2;
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("data file ", path, ": ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("data file ", path, ": not a regular file"));
  }
  const size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes % f->bytes_per_token_ != 0) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("data file ", path, ": size ", bytes, " bytes is not a multiple of ",
                                                   f->bytes_per_token_, " (data.dtype ", DataConfig::Dtype_Name(dtype),
                                                   "); wrong dtype or truncated file"));
  }
  if (bytes > 0) {
    f->map_ = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (f->map_ == MAP_FAILED) {
      f->map_ = nullptr;
      close(fd);
      return absl::InternalError(absl::StrCat("data file ", path, ": mmap failed: ", std::strerror(errno)));
    }
    f->map_bytes_ = bytes;
  }
  close(fd);
  f->data_ = static_cast<const uint8_t*>(f->map_);
  f->num_tokens_ = static_cast<int64_t>(bytes / f->bytes_per_token_);
  (void)format;
  return f;
}

TokenFile::~TokenFile() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
}

absl::Status TokenFile::Read(int64_t offset, int64_t n, int64_t* out) const {
  if (offset < 0 || offset + n > num_tokens_) {
    return absl::OutOfRangeError(absl::StrCat("data file ", path_, ": read of tokens [", offset, ", ", offset + n,
                                              ") past its end (", num_tokens_, " tokens)"));
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* p = data_ + (offset + i) * bytes_per_token_;
    uint64_t id = bytes_per_token_ == 2 ? static_cast<uint64_t>(p[0] | (p[1] << 8))
                                        : static_cast<uint64_t>(p[0] | (p[1] << 8) | (p[2] << 16)) |
                                              (static_cast<uint64_t>(p[3]) << 24);
    if (static_cast<int64_t>(id) >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("data file ", path_, ": token ", offset + i, " has id ", id,
                                                     " >= model.vocab_size (", vocab_size_, ")"));
    }
    out[i] = static_cast<int64_t>(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DataLoader>> DataLoader::Create(const DataConfig& config, int64_t vocab_size,
                                                               uint64_t seed) {
  std::unique_ptr<DataLoader> loader(new DataLoader());
  loader->seq_len_ = config.seq_len();
  loader->seed_ = seed;
  double total = 0;
  for (const DataSource& source : config.train()) {
    ASSIGN_OR_RETURN(auto file, TokenFile::Open(source.path(), config.format(), config.dtype(), vocab_size));
    if (file->num_tokens() < config.seq_len() + 1) {
      return absl::InvalidArgumentError(absl::StrCat("data file ", source.path(), ": ", file->num_tokens(),
                                                     " tokens, fewer than data.seq_len + 1 (", config.seq_len() + 1,
                                                     ")"));
    }
    loader->train_.push_back(std::move(file));
    total += source.weight();
    loader->cumulative_weight_.push_back(total);
  }
  for (double& w : loader->cumulative_weight_) w /= total;
  if (!config.validation().empty()) {
    ASSIGN_OR_RETURN(loader->validation_,
                     TokenFile::Open(config.validation(), config.format(), config.dtype(), vocab_size));
    if (loader->validation_->num_tokens() < config.seq_len() + 1) {
      return absl::InvalidArgumentError(absl::StrCat("data.validation (", config.validation(), "): ",
                                                     loader->validation_->num_tokens(),
                                                     " tokens, fewer than data.seq_len + 1"));
    }
  }
  return loader;
}

absl::StatusOr<Batch> DataLoader::Gather(const std::vector<std::pair<const TokenFile*, int64_t>>& windows) const {
  const int64_t B = static_cast<int64_t>(windows.size()), S = seq_len_;
  at::Tensor buffer = at::empty({B, S + 1}, at::kLong);
  int64_t* out = buffer.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) RETURN_IF_ERROR(windows[b].first->Read(windows[b].second, S + 1, out + b * (S + 1)));
  return Batch{buffer.narrow(1, 0, S).contiguous(), buffer.narrow(1, 1, S).contiguous()};
}

absl::StatusOr<Batch> DataLoader::TrainBatch(int64_t step, int64_t global_batch, int64_t first, int64_t count) const {
  std::vector<std::pair<const TokenFile*, int64_t>> windows;
  for (int64_t i = first; i < first + count; ++i) {
    const uint64_t h = Mix64(Mix64(seed_) ^ static_cast<uint64_t>(step * global_batch + i));
    const double u = static_cast<double>(h >> 11) * 0x1.0p-53;
    const size_t which = std::min<size_t>(
        std::lower_bound(cumulative_weight_.begin(), cumulative_weight_.end(), u) - cumulative_weight_.begin(),
        train_.size() - 1);
    const TokenFile* f = train_[which].get();
    const uint64_t span = static_cast<uint64_t>(f->num_tokens() - seq_len_);  // windows of S+1 tokens
    windows.emplace_back(f, static_cast<int64_t>(Mix64(h) % span));
  }
  return Gather(windows);
}

absl::StatusOr<Batch> DataLoader::ValidationBatch(int64_t index, int64_t count, int64_t num_batches) const {
  const int64_t total = count * num_batches;
  const int64_t span = validation_->num_tokens() - seq_len_;
  std::vector<std::pair<const TokenFile*, int64_t>> windows;
  for (int64_t i = index * count; i < (index + 1) * count; ++i) {
    windows.emplace_back(validation_.get(), total <= 1 ? 0 : (span - 1) * i / (total - 1));
  }
  return Gather(windows);
}

}  // namespace hybridmoe
