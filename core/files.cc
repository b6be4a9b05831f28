#include "core/files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/crc32c.h"

namespace hybridmoe {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

bool IsFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kPermissionDenied,
                        absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  std::string out;
  char buffer[1 << 16];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), f)) > 0) out.append(buffer, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) return absl::DataLossError(absl::StrCat(path, ": read failed: ", std::strerror(err)));
  return out;
}

absl::StatusOr<std::string> ReadFileIfExists(const std::string& path) {
  auto text = ReadFile(path);
  if (absl::IsNotFound(text.status())) return std::string();
  return text;
}

absl::Status WriteFileAtomically(const std::string& path, const std::function<bool(FILE*)>& write) {
  // A name no other writer (process or thread) uses, so two writers never share a temporary file.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid(), ".", counter.fetch_add(1));
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot create ", tmp, ": ", std::strerror(errno)));
  }
  bool ok = write(f);
  ok = std::fflush(f) == 0 && ok;
  ok = fsync(fileno(f)) == 0 && ok;
  ok = std::fclose(f) == 0 && ok;
  if (!ok) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat(path, ": write failed: ", why));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat(path, ": cannot rename ", tmp, " into place: ", why));
  }
  // The rename itself is durable once the directory is synced.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& contents) {
  return WriteFileAtomically(
      path, [&](FILE* f) { return std::fwrite(contents.data(), 1, contents.size(), f) == contents.size(); });
}

absl::Status MakeDirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      const std::string partial = path.substr(0, i);
      if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::PermissionDeniedError(absl::StrCat("cannot create directory ", partial, ": ", strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FileDigest> DigestFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  FileDigest d;
  std::vector<unsigned char> buffer(1 << 20);
  for (;;) {
    const ssize_t n = read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = std::strerror(errno);
      close(fd);
      return absl::DataLossError(absl::StrCat(path, ": read failed: ", why));
    }
    if (n == 0) break;
    d.crc32c = Crc32cExtend(d.crc32c, buffer.data(), static_cast<size_t>(n));
    d.bytes += static_cast<uint64_t>(n);
  }
  close(fd);
  return d;
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path, const std::string& what) {
  const std::string name = what.empty() ? path : absl::StrCat(what, " ", path);
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(name, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a regular file"));
  }
  MappedFile m;
  m.path_ = path;
  m.bytes_ = static_cast<size_t>(st.st_size);
  if (m.bytes_ > 0) {
    void* map = mmap(nullptr, m.bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      const std::string why = std::strerror(errno);
      close(fd);
      m.bytes_ = 0;
      return absl::InternalError(absl::StrCat(name, ": mmap failed: ", why));
    }
    m.map_ = map;
  }
  close(fd);
  return m;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (map_ != nullptr) munmap(map_, bytes_);
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

namespace {

// madvise over the whole pages inside or around [p, p + n).
void AdvisePages(const uint8_t* p, size_t n, int advice) {
  if (n == 0) return;
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) / page * page;
  const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + n + page - 1) / page * page;
  madvise(reinterpret_cast<void*>(first), last - first, advice);
}

}  // namespace

void MappedFile::Release(const uint8_t* p, size_t n) const { AdvisePages(p, n, MADV_DONTNEED); }

void MappedFile::Prefetch(const uint8_t* p, size_t n) const { AdvisePages(p, n, MADV_WILLNEED); }

MappedFile::~MappedFile() {
  if (map_ != nullptr) munmap(map_, bytes_);
}

}  // namespace hybridmoe
