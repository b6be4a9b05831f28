// Small file helpers shared across the tree: existence and kind, whole-file reads, atomic whole-file writes
// and mkdir -p. Errors name the path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hybridmoe {

bool Exists(const std::string& path);
bool IsFile(const std::string& path);       // a regular file (following symlinks)
bool IsDirectory(const std::string& path);  // a directory (following symlinks)
// The whole file; the error names the path and the reason.
absl::StatusOr<std::string> ReadFile(const std::string& path);
// ReadFile, except that a file that does not exist reads as "" (any other failure is still an error).
absl::StatusOr<std::string> ReadFileIfExists(const std::string& path);
// The one atomic whole-file write: writes a temporary file beside `path` under a name unique to this
// process and call, fsyncs it, renames it over `path` and fsyncs the directory, so a reader sees the old
// file or the new one, never part of one, even after a crash. `write` fills the open file (false: failed).
absl::Status WriteFileAtomically(const std::string& path, const std::function<bool(FILE*)>& write);
absl::Status WriteFileAtomically(const std::string& path, const std::string& contents);
absl::Status MakeDirs(const std::string& path);  // mkdir -p

// Size and CRC-32C of a whole file: what a checkpoint's MANIFEST.json records for each file.
struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};
// Reads the file once, in 1 MiB pieces. NotFound when it cannot be opened.
absl::StatusOr<FileDigest> DigestFile(const std::string& path);

// A read-only memory map of a whole regular file, unmapped by the destructor (movable, not copyable). The
// one mmap helper: token files (core/data.cc) and safetensors (core/safetensors.cc) read through it.
class MappedFile {
 public:
  // Errors start with "<what> <path>" (just the path when `what` is empty): ": cannot open: <errno text>",
  // ": not a regular file", ": mmap failed: ...".
  static absl::StatusOr<MappedFile> Open(const std::string& path, const std::string& what = "");
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return static_cast<const uint8_t*>(map_); }
  size_t size() const { return bytes_; }
  // Drops the whole pages inside or around [p, p + n) (a range of this map) from this process's memory
  // (madvise DONTNEED; the page cache keeps them, so a later touch costs no disk read).
  void Release(const uint8_t* p, size_t n) const;
  // Asks the kernel to read [p, p + n) ahead (madvise WILLNEED): a pass over it then streams from the disk
  // instead of waiting on one fault's read-around at a time.
  void Prefetch(const uint8_t* p, size_t n) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace hybridmoe
