#include "core/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/files.h"
#include "core/status.h"

namespace hybridmoe {

uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Element width and signedness of a NumPy descr ("<u2", "|u1", "<i8", ...).
absl::Status ParseDescr(const std::string& path, const std::string& descr, int* bytes, bool* is_signed) {
  if (descr.size() == 3 && (descr[0] == '<' || descr[0] == '|' || descr[0] == '=') &&
      (descr[1] == 'u' || descr[1] == 'i') &&
      (descr[2] == '1' || descr[2] == '2' || descr[2] == '4' || descr[2] == '8')) {
    *bytes = descr[2] - '0';
    *is_signed = descr[1] == 'i';
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("data file ", path, ": NumPy dtype '", descr,
                   "' is not a little-endian integer type (expected <u2, <u4, <i4, <i8, ...)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenFile>> TokenFile::Open(const std::string& path, DataConfig::Format format,
                                                           DataConfig::Dtype dtype, int64_t vocab_size) {
  std::unique_ptr<TokenFile> f(new TokenFile());
  f->path_ = path;
  f->vocab_size_ = vocab_size;
  if (format == DataConfig::AUTO) {
    if (EndsWith(path, ".npy")) {
      format = DataConfig::NPY;
    } else if (EndsWith(path, ".bin") && IsFile(path.substr(0, path.size() - 4) + ".idx")) {
      format = DataConfig::MEGATRON;
    } else {
      format = DataConfig::RAW;
    }
  }
  ASSIGN_OR_RETURN(f->map_, MappedFile::Open(path, "data file"));
  const MappedFile& m = f->map_;
  const uint8_t* base = m.data();
  size_t data_offset = 0;
  switch (format) {
    case DataConfig::AUTO:
    case DataConfig::RAW:
      f->bytes_per_token_ = dtype == DataConfig::UINT32 ? 4 : 2;
      f->format_name_ = absl::StrCat("raw ", DataConfig::Dtype_Name(dtype));
      if (m.size() % f->bytes_per_token_ != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("data file ", path, ": size ", m.size(), " bytes is not a multiple of ", f->bytes_per_token_,
                         " (data.dtype ", DataConfig::Dtype_Name(dtype), "); wrong dtype or truncated file"));
      }
      break;
    case DataConfig::NPY: {
      if (m.size() < 10 || std::memcmp(base, "\x93NUMPY", 6) != 0) {
        return absl::InvalidArgumentError(absl::StrCat("data file ", path, ": not a NumPy .npy file (bad magic)"));
      }
      const int major = base[6];
      const size_t len_bytes = major == 1 ? 2 : 4;
      if (m.size() < 8 + len_bytes)
        return absl::InvalidArgumentError(absl::StrCat("data file ", path, ": truncated .npy header"));
      size_t header_len = base[8] | (base[9] << 8);
      if (len_bytes == 4) header_len |= (static_cast<size_t>(base[10]) << 16) | (static_cast<size_t>(base[11]) << 24);
      data_offset = 8 + len_bytes + header_len;
      if (data_offset > m.size())
        return absl::InvalidArgumentError(absl::StrCat("data file ", path, ": truncated .npy header"));
      const std::string header(reinterpret_cast<const char*>(base + 8 + len_bytes), header_len);
      auto field = [&](const std::string& key) -> std::string {
        const size_t k = header.find("'" + key + "'");
        if (k == std::string::npos) return "";
        size_t v = header.find(':', k) + 1;
        while (v < header.size() && header[v] == ' ') ++v;
        const char close = header[v] == '(' ? ')' : (header[v] == '\'' ? '\'' : ',');
        const size_t end = header.find(close, v + 1);
        return header.substr(v, end == std::string::npos ? std::string::npos : end - v + 1);
      };
      std::string descr = field("descr");
      descr.erase(std::remove(descr.begin(), descr.end(), '\''), descr.end());
      RETURN_IF_ERROR(ParseDescr(path, descr, &f->bytes_per_token_, &f->signed_));
      if (field("fortran_order").find("True") != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("data file ", path,
                         ": Fortran-order arrays are not supported (save a C-order array: np.ascontiguousarray)"));
      }
      // The element count saturates past the file size: a corrupt shape cannot overflow into a match.
      uint64_t numel = 1;
      const std::string shape = field("shape");
      for (size_t i = 0; i < shape.size();) {
        if (std::isdigit(static_cast<unsigned char>(shape[i]))) {
          uint64_t dim = 0;
          for (; i < shape.size() && std::isdigit(static_cast<unsigned char>(shape[i])); ++i) {
            dim = std::min<uint64_t>(dim * 10 + static_cast<uint64_t>(shape[i] - '0'), m.size() + 1);
          }
          numel = dim == 0 ? 0 : (numel > (m.size() + 1) / dim ? m.size() + 1 : numel * dim);
        } else {
          ++i;
        }
      }
      const bool too_big = numel > m.size();
      if (too_big || data_offset + numel * f->bytes_per_token_ != m.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("data file ", path, ": .npy header says shape ", shape, " of ", descr, " (",
                         too_big ? std::string("more than the file's") : absl::StrCat(numel * f->bytes_per_token_),
                         " bytes) but ", m.size() - data_offset, " data bytes follow (truncated file?)"));
      }
      f->format_name_ = "npy " + descr;
      break;
    }
    case DataConfig::MEGATRON: {
      const std::string idx_path = (EndsWith(path, ".bin") ? path.substr(0, path.size() - 4) : path) + ".idx";
      ASSIGN_OR_RETURN(const MappedFile idx, MappedFile::Open(idx_path, "data file"));
      const uint8_t* p = idx.data();
      auto u64 = [&](size_t off) {
        uint64_t v = 0;
        std::memcpy(&v, p + off, 8);
        return v;
      };
      absl::Status status = absl::OkStatus();
      if (idx.size() < 34 || std::memcmp(p, "MMIDIDX\x00\x00", 9) != 0) {
        status = absl::InvalidArgumentError(absl::StrCat("data file ", idx_path, ": not a Megatron index (bad magic)"));
      } else if (u64(9) != 1) {
        status = absl::InvalidArgumentError(
            absl::StrCat("data file ", idx_path, ": index version ", u64(9), " is not supported (expected 1)"));
      } else {
        static const int kWidth[] = {0, 1, 1, 2, 4, 8, 0, 0, 2};  // Megatron dtype codes 1..8
        static const bool kSigned[] = {false, false, true, true, true, true, false, false, false};
        const int code = p[17];
        if (code < 1 || code > 8 || kWidth[code] == 0) {
          status = absl::InvalidArgumentError(
              absl::StrCat("data file ", idx_path, ": dtype code ", code, " is not an integer token type (1-5 or 8)"));
        } else {
          f->bytes_per_token_ = kWidth[code];
          f->signed_ = kSigned[code];
          const uint64_t sequences = u64(18), documents = u64(26);
          // 4 + 8 bytes per sequence (size, pointer), 8 per document offset. Compared by division: counts
          // from a corrupt header near 2^64 would wrap a product into a small "needed" size.
          const uint64_t room = idx.size() - 34;
          if (sequences > room / 12 || documents > (room - sequences * 12) / 8) {
            status = absl::InvalidArgumentError(
                absl::StrCat("data file ", idx_path, ": header lists ", sequences, " sequences and ", documents,
                             " documents, more than its ", idx.size(),
                             " bytes hold (34 + 12 per sequence + 8 per document; truncated or corrupt index)"));
          } else {
            uint64_t tokens = 0;
            for (uint64_t i = 0; i < sequences && status.ok(); ++i) {
              int32_t size;
              std::memcpy(&size, p + 34 + i * 4, 4);
              if (size < 0) {
                status = absl::InvalidArgumentError(absl::StrCat("data file ", idx_path, ": sequence ", i,
                                                                 " has negative size ", size, " (corrupt index)"));
              }
              tokens += static_cast<uint64_t>(size);
            }
            if (status.ok() && tokens * f->bytes_per_token_ != m.size()) {
              status = absl::InvalidArgumentError(
                  absl::StrCat("data file ", path, ": ", m.size(), " bytes, but ", idx_path, " lists ", tokens,
                               " tokens of ", f->bytes_per_token_, " bytes (truncated file or mismatched index)"));
            }
          }
          f->format_name_ = absl::StrCat("megatron dtype ", code);
        }
      }
      RETURN_IF_ERROR(status);
      break;
    }
  }
  f->data_ = base + data_offset;
  f->num_tokens_ = static_cast<int64_t>((m.size() - data_offset) / f->bytes_per_token_);
  return f;
}

absl::Status TokenFile::Read(int64_t offset, int64_t n, int64_t* out) const {
  if (offset < 0 || offset + n > num_tokens_) {
    return absl::OutOfRangeError(absl::StrCat("data file ", path_, ": read of tokens [", offset, ", ", offset + n,
                                              ") past its end (", num_tokens_, " tokens)"));
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* p = data_ + (offset + i) * bytes_per_token_;
    uint64_t raw = 0;
    std::memcpy(&raw, p, bytes_per_token_);  // little-endian host
    int64_t id = static_cast<int64_t>(raw);
    if (signed_ && bytes_per_token_ < 8 && (raw >> (8 * bytes_per_token_ - 1)) != 0) {
      id = static_cast<int64_t>(raw | (~uint64_t{0} << (8 * bytes_per_token_)));  // sign-extend
    }
    if (id < 0 || id >= vocab_size_) {
      return absl::InvalidArgumentError(absl::StrCat("data file ", path_, ": token ", offset + i, " has id ", id,
                                                     ", outside [0, model.vocab_size = ", vocab_size_, ")"));
    }
    out[i] = id;
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
      return absl::InvalidArgumentError(absl::StrCat("data.validation (", config.validation(),
                                                     "): ", loader->validation_->num_tokens(),
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
