// One CUDA runtime and the NCCL we compiled against (issue 13: a GPU path that works the first time it meets
// a GPU). A process that maps two libcudart majors (say the toolkit's .so.13 for our code and a wheel's
// .so.12 for LibTorch) or an NCCL other than nccl.h's fails on a GPU in ways no CPU run shows, so the
// --config=cuda build proves here, without a GPU:
//   * the libraries this process has loaded (dl_iterate_phdr: it links what //tools:train links for CUDA)
//     hold exactly one libcudart, of the header's major (CUDART_VERSION), and cudaRuntimeGetVersion agrees;
//   * every DT_NEEDED entry naming libcudart, of this binary and of every library it loaded (LibTorch's
//     libtorch_cuda, libc10_cuda, ...), names that major;
//   * ncclGetVersion() == NCCL_VERSION_CODE, and one libnccl is loaded;
//   * each binary given as an argument (//tools:train under Bazel; tools/gpu/check.sh passes the bundle's
//     own) resolves, as ld.so would start it (LD_TRACE_LOADED_OBJECTS=1, what ldd prints), every library,
//     one libcudart of the header's major and one libnccl.
// The CPU build has nothing to check: the one test case skips (GTEST_SKIP), which tools/test.sh counts as
// skipped, not passed.
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#ifdef HYBRIDMOE_WITH_CUDA
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace {

std::vector<std::string>& Binaries() {
  static std::vector<std::string> binaries;
  return binaries;
}

#ifndef HYBRIDMOE_WITH_CUDA

TEST(LinkageTest, CpuBuildHasNoCudaToCheck) {
  GTEST_SKIP() << "CPU build (no --config=cuda): no libcudart or NCCL is linked, nothing to check";
}

#else

constexpr int kHeaderCudartMajor = CUDART_VERSION / 1000;

std::string Basename(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The major of a libcudart file or soname ("libcudart.so.13" -> 13), nullopt for any other library.
// An unversioned "libcudart.so" counts as major -1 (always a mismatch: the soname must carry the major).
std::optional<int> CudartMajor(const std::string& name) {
  static const std::regex re(R"(^libcudart\.so(\.([0-9]+))?(\..*)?$)");
  std::smatch m;
  const std::string base = Basename(name);
  if (!std::regex_match(base, m, re)) return std::nullopt;
  return m[2].matched ? std::stoi(m[2].str()) : -1;
}

bool IsNccl(const std::string& name) { return Basename(name).rfind("libnccl.so", 0) == 0; }

// Objects mapped into this process: path -> nothing (the executable itself has an empty name).
std::vector<std::string> LoadedObjects() {
  std::vector<std::string> paths;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* out = static_cast<std::vector<std::string>*>(data);
        if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') out->push_back(info->dlpi_name);
        return 0;
      },
      &paths);
  return paths;
}

// DT_NEEDED entries of an ELF64 file, read from its program headers (PT_DYNAMIC, DT_STRTAB mapped to a file
// offset through the PT_LOAD segments). An error string instead when the file cannot be read.
struct Needed {
  std::vector<std::string> entries;
  std::string error;
};

Needed ReadNeeded(const std::string& path) {
  Needed result;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    result.error = path + ": cannot open: " + std::strerror(errno);
    return result;
  }
  struct stat st {};
  fstat(fd, &st);
  const size_t size = static_cast<size_t>(st.st_size);
  void* map = size > 0 ? mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  if (map == MAP_FAILED) {
    result.error = path + ": cannot map";
    return result;
  }
  const auto* base = static_cast<const unsigned char*>(map);
  const auto fail = [&](const std::string& why) {
    result.error = path + ": " + why;
    munmap(map, size);
    return result;
  };
  if (size < sizeof(Elf64_Ehdr) || std::memcmp(base, ELFMAG, SELFMAG) != 0 || base[EI_CLASS] != ELFCLASS64) {
    return fail("not an ELF64 file");
  }
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
  if (eh->e_phoff + static_cast<uint64_t>(eh->e_phnum) * sizeof(Elf64_Phdr) > size) return fail("bad program headers");
  const auto* ph = reinterpret_cast<const Elf64_Phdr*>(base + eh->e_phoff);
  const Elf64_Phdr* dynamic = nullptr;
  for (int i = 0; i < eh->e_phnum; ++i) {
    if (ph[i].p_type == PT_DYNAMIC) dynamic = &ph[i];
  }
  if (dynamic == nullptr) {
    munmap(map, size);
    return result;  // statically linked: needs nothing
  }
  const auto to_offset = [&](uint64_t vaddr) -> std::optional<uint64_t> {
    for (int i = 0; i < eh->e_phnum; ++i) {
      if (ph[i].p_type == PT_LOAD && vaddr >= ph[i].p_vaddr && vaddr < ph[i].p_vaddr + ph[i].p_filesz) {
        return vaddr - ph[i].p_vaddr + ph[i].p_offset;
      }
    }
    return std::nullopt;
  };
  if (dynamic->p_offset + dynamic->p_filesz > size) return fail("bad PT_DYNAMIC");
  const auto* dyn = reinterpret_cast<const Elf64_Dyn*>(base + dynamic->p_offset);
  const size_t n = dynamic->p_filesz / sizeof(Elf64_Dyn);
  std::optional<uint64_t> strtab;
  uint64_t strsz = 0;
  for (size_t i = 0; i < n && dyn[i].d_tag != DT_NULL; ++i) {
    if (dyn[i].d_tag == DT_STRTAB) strtab = to_offset(dyn[i].d_un.d_ptr);
    if (dyn[i].d_tag == DT_STRSZ) strsz = dyn[i].d_un.d_val;
  }
  if (!strtab || *strtab + strsz > size) return fail("no readable DT_STRTAB");
  for (size_t i = 0; i < n && dyn[i].d_tag != DT_NULL; ++i) {
    if (dyn[i].d_tag != DT_NEEDED) continue;
    if (dyn[i].d_un.d_val >= strsz) return fail("DT_NEEDED outside DT_STRTAB");
    const char* s = reinterpret_cast<const char*>(base + *strtab + dyn[i].d_un.d_val);
    result.entries.emplace_back(s, strnlen(s, strsz - dyn[i].d_un.d_val));
  }
  munmap(map, size);
  return result;
}

// `binary`'s libraries as ld.so resolves them when it starts (LD_TRACE_LOADED_OBJECTS=1: ld.so prints
// "soname => path (address)" lines and exits without running the program), with this process's
// environment (LD_LIBRARY_PATH included). soname -> path, "not found" for an unresolved one.
std::map<std::string, std::string> TraceLoaded(const std::string& binary, std::string* error) {
  int fds[2];
  if (pipe(fds) != 0) {
    *error = "pipe failed";
    return {};
  }
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    setenv("LD_TRACE_LOADED_OBJECTS", "1", 1);
    execl(binary.c_str(), binary.c_str(), static_cast<char*>(nullptr));
    std::fprintf(stderr, "exec %s: %s\n", binary.c_str(), std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    *error = binary + ": LD_TRACE_LOADED_OBJECTS run failed (status " + std::to_string(status) + "): " + out;
  }
  std::map<std::string, std::string> libs;
  static const std::regex line(R"(^\s*(\S+)\s+=>\s+(not found|\S+))");
  size_t start = 0;
  while (start < out.size()) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    const std::string l = out.substr(start, end - start);
    std::smatch m;
    if (std::regex_search(l, m, line)) libs[m[1].str()] = m[2].str();
    start = end + 1;
  }
  return libs;
}

std::string Join(const std::set<std::string>& s) {
  std::string out;
  for (const std::string& x : s) out += (out.empty() ? "" : ", ") + x;
  return out;
}

TEST(LinkageTest, OneCudartLoadedOfTheHeaderMajor) {
  std::set<std::string> cudart;
  std::set<int> majors;
  bool torch_cuda = false;
  for (const std::string& path : LoadedObjects()) {
    if (Basename(path).rfind("libtorch_cuda.so", 0) == 0) torch_cuda = true;
    if (const auto major = CudartMajor(path)) {
      cudart.insert(path);
      majors.insert(*major);
    }
  }
  ASSERT_TRUE(torch_cuda) << "libtorch_cuda is not loaded: this is not the CUDA build's linkage";
  EXPECT_EQ(cudart.size(), 1u) << "libcudart files loaded: " << Join(cudart);
  EXPECT_EQ(majors, std::set<int>{kHeaderCudartMajor}) << "loaded: " << Join(cudart);
  int runtime = 0;
  ASSERT_EQ(cudaRuntimeGetVersion(&runtime), cudaSuccess);
  EXPECT_EQ(runtime / 1000, kHeaderCudartMajor)
      << "cudaRuntimeGetVersion " << runtime << " vs CUDART_VERSION " << CUDART_VERSION;
  std::printf("libcudart loaded: %s (runtime %d, header CUDART_VERSION %d)\n", Join(cudart).c_str(), runtime,
              CUDART_VERSION);
}

TEST(LinkageTest, EveryNeededCudartIsTheHeaderMajor) {
  std::vector<std::string> objects = LoadedObjects();
  objects.insert(objects.begin(), "/proc/self/exe");
  std::map<std::string, std::set<std::string>> needers;  // cudart soname -> objects needing it
  int parsed = 0;
  for (const std::string& path : objects) {
    if (Basename(path).rfind("linux-vdso", 0) == 0) continue;
    const Needed needed = ReadNeeded(path);
    ASSERT_TRUE(needed.error.empty()) << needed.error;
    ++parsed;
    for (const std::string& soname : needed.entries) {
      if (const auto major = CudartMajor(soname)) {
        needers[soname].insert(path == "/proc/self/exe" ? "(this test binary)" : Basename(path));
        EXPECT_EQ(*major, kHeaderCudartMajor) << path << " needs " << soname;
      }
    }
  }
  EXPECT_EQ(needers.size(), 1u) << "distinct libcudart sonames needed: " << needers.size();
  EXPECT_TRUE(needers.count("libcudart.so." + std::to_string(kHeaderCudartMajor)))
      << "nothing needs libcudart.so." << kHeaderCudartMajor;
  for (const auto& [soname, by] : needers) std::printf("%s needed by: %s\n", soname.c_str(), Join(by).c_str());
  std::printf("DT_NEEDED read from %d objects\n", parsed);
}

TEST(LinkageTest, NcclRuntimeIsTheHeaderVersion) {
  int version = 0;
  ASSERT_EQ(ncclGetVersion(&version), ncclSuccess);
  EXPECT_EQ(version, NCCL_VERSION_CODE) << "ncclGetVersion " << version << " but nccl.h has NCCL_VERSION_CODE "
                                        << NCCL_VERSION_CODE << " (" << NCCL_MAJOR << "." << NCCL_MINOR << "."
                                        << NCCL_PATCH << ")";
  std::set<std::string> nccl;
  for (const std::string& path : LoadedObjects()) {
    if (IsNccl(path)) nccl.insert(path);
  }
  EXPECT_EQ(nccl.size(), 1u) << "libnccl files loaded: " << Join(nccl);
  std::printf("NCCL runtime %d, header %d, loaded: %s\n", version, NCCL_VERSION_CODE, Join(nccl).c_str());
}

TEST(LinkageTest, BinariesResolveOneCudartAndOneNccl) {
  if (Binaries().empty()) GTEST_SKIP() << "no binary given (arguments: paths of binaries to trace)";
  for (const std::string& binary : Binaries()) {
    std::string error;
    const std::map<std::string, std::string> libs = TraceLoaded(binary, &error);
    ASSERT_TRUE(error.empty()) << error;
    ASSERT_FALSE(libs.empty()) << binary << ": ld.so listed no library";
    std::set<std::string> cudart, nccl, missing;
    for (const auto& [soname, path] : libs) {
      if (path == "not found") missing.insert(soname);
      if (const auto major = CudartMajor(soname)) {
        cudart.insert(path);
        EXPECT_EQ(*major, kHeaderCudartMajor) << binary << " resolves " << soname << " => " << path;
      }
      if (IsNccl(soname)) nccl.insert(path);
    }
    EXPECT_TRUE(missing.empty()) << binary << ": not found: " << Join(missing);
    EXPECT_EQ(cudart.size(), 1u) << binary << " resolves libcudart to: " << Join(cudart);
    EXPECT_EQ(nccl.size(), 1u) << binary << " resolves libnccl to: " << Join(nccl);
    std::printf("%s: %zu libraries; libcudart %s; libnccl %s\n", binary.c_str(), libs.size(), Join(cudart).c_str(),
                Join(nccl).c_str());
  }
}

#endif  // HYBRIDMOE_WITH_CUDA

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) Binaries().push_back(argv[i]);
  return RUN_ALL_TESTS();
}
