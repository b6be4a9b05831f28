// bazel-bin/tests/flagship/io_bench [--dir=DIR] [--config=FILE] [--override=TEXTPROTO]... [--disk_gb=N]
//   [--crc_mb=N] [--rounds=R]
// Checkpoint I/O at the flagship's width, next to what the machine can do, in one run:
//   crc32c     GB/s of Crc32cExtend (SSE4.2 where present) and of the slicing-by-8 fallback over one buffer;
//   disk       sequential write of --disk_gb GB (fdatasync included) and its read after the page cache is
//              dropped (echo 3 > /proc/sys/vm/drop_caches; reported when not allowed, the read is then cached);
//   checkpoint SaveCheckpoint (checksums as it writes), VerifyCheckpoint alone, and LoadCheckpoint (verifies
//              as it loads, one read of each file) of the config's model with its AdamW moments
//              (models/checkpoint.h), each in GB/s of checkpoint bytes, the page cache dropped before the
//              verification and before the load.
// One JSON object on stdout (medians over --rounds, and every round), progress on stderr. Default config: the
// full-width flagship with one block (configs/olmoe_1b7b.textproto, n_layers 1): 7.5 GB of weights + moments.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/crc32c.h"
#include "core/files.h"
#include "core/optim.h"
#include "models/checkpoint.h"
#include "models/transformer.h"
#include "tools/cli.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// True when the page cache could be dropped (root and a writable /proc/sys/vm).
bool DropPageCache() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  if (!f) return false;
  f << "3\n";
  f.flush();
  return f.good();
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.push_back(e->d_name);
    }
    closedir(d);
  }
  return names;
}

void RemoveTreeIfExists(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (const std::string& n : ListDir(path)) RemoveTreeIfExists(path + "/" + n);
    rmdir(path.c_str());
  } else {
    unlink(path.c_str());
  }
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const std::string& n : ListDir(dir)) {
    struct stat st;
    if (stat((dir + "/" + n).c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += static_cast<uint64_t>(st.st_size);
  }
  return total;
}

json Crc(int64_t mb, int rounds) {
  std::vector<unsigned char> buf(static_cast<size_t>(mb) << 20);
  std::mt19937_64 rng(1);
  for (size_t i = 0; i < buf.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(buf.data() + i, &v, std::min<size_t>(8, buf.size() - i));
  }
  json out = {{"implementation", Crc32cImplementation()}, {"buffer_bytes", buf.size()}};
  auto time = [&](uint32_t (*f)(uint32_t, const void*, size_t)) {
    std::vector<double> gbs;
    uint32_t crc = 0;
    for (int r = 0; r < rounds; ++r) {
      const auto t0 = Clock::now();
      crc = f(0, buf.data(), buf.size());
      gbs.push_back(static_cast<double>(buf.size()) / Since(t0) / 1e9);
    }
    return json{{"gb_per_s", Median(gbs)}, {"rounds", gbs}, {"crc", crc}};
  };
  out["dispatch"] = time(&Crc32cExtend);
  out["slicing_by_8"] = time(&Crc32cExtendPortable);
  if (Crc32cHardwareAvailable()) out["sse42"] = time(&Crc32cExtendHardware);
  // memcpy over the same buffer: "memory speed" on this machine.
  std::vector<unsigned char> dst(buf.size());
  std::vector<double> copy;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = Clock::now();
    std::memcpy(dst.data(), buf.data(), buf.size());
    copy.push_back(static_cast<double>(buf.size()) / Since(t0) / 1e9);
  }
  out["memcpy_gb_per_s"] = Median(copy);
  return out;
}

json Disk(const std::string& dir, int64_t gb, bool* dropped) {
  const std::string path = dir + "/disk_probe.bin";
  std::vector<char> block(64 << 20, 'x');
  for (size_t i = 0; i < block.size(); i += 4096) block[i] = static_cast<char>(i >> 12);
  const uint64_t bytes = static_cast<uint64_t>(gb) << 30;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return {{"error", absl::StrCat("cannot create ", path)}};
  auto t0 = Clock::now();
  for (uint64_t done = 0; done < bytes; done += block.size()) {
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) break;
  }
  ::fdatasync(fd);
  ::close(fd);
  const double write_s = Since(t0);
  *dropped = DropPageCache();
  const int rfd = ::open(path.c_str(), O_RDONLY);
  t0 = Clock::now();
  uint64_t read_bytes = 0;
  for (ssize_t n; (n = ::read(rfd, block.data(), block.size())) > 0;) read_bytes += static_cast<uint64_t>(n);
  const double read_s = Since(t0);
  ::close(rfd);
  std::remove(path.c_str());
  return {{"bytes", bytes},
          {"write_gb_per_s", bytes / write_s / 1e9},
          {"read_gb_per_s", read_bytes / read_s / 1e9},
          {"read_after_drop_caches", *dropped}};
}

int Main(int argc, char** argv) {
  const std::vector<FlagSpec> specs = {
      {"dir", "scratch directory on the disk to measure (default $TMPDIR or /tmp)"},
      {"config", "TrainConfig of the checkpointed model (default configs/olmoe_1b7b.textproto)"},
      {"override", "merged on top (repeatable; default: model { n_layers: 1 })", false, true},
      {"disk_gb", "GB written and read by the raw disk probe (default 4)"},
      {"crc_mb", "MiB buffer of the CRC-32C probe (default 256)"},
      {"rounds", "rounds of each measurement (default 3)"},
  };
  int exit_code = 0;
  auto cl = CommandLine::ParseOrExit(argc, argv, "io_bench", "Checkpoint I/O and CRC-32C against the disk.", specs,
                                     &exit_code);
  if (!cl) return exit_code;
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir = cl->Get("dir", tmp ? tmp : "/tmp");
  const int64_t disk_gb = *cl->GetInt("disk_gb", 4), crc_mb = *cl->GetInt("crc_mb", 256);
  const int rounds = static_cast<int>(*cl->GetInt("rounds", 3));
  std::vector<std::string> overrides = cl->GetAll("override");
  if (overrides.empty()) overrides = {"model { n_layers: 1 }"};
  auto config = LoadConfig(cl->Get("config", "configs/olmoe_1b7b.textproto"), overrides);
  if (!config.ok()) {
    std::fprintf(stderr, "io_bench: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  json report;
  std::fprintf(stderr, "[io_bench] crc32c over %lld MiB\n", static_cast<long long>(crc_mb));
  report["crc32c"] = Crc(crc_mb, rounds);
  bool dropped = false, dropped_each = true;
  if (absl::Status s = MakeDirs(dir); !s.ok()) {
    std::fprintf(stderr, "io_bench: --dir: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  std::fprintf(stderr, "[io_bench] disk: %lld GiB sequential write + read\n", static_cast<long long>(disk_gb));
  report["disk"] = Disk(dir, disk_gb, &dropped);

  std::fprintf(stderr, "[io_bench] building the model\n");
  Transformer model(TransformerOptionsFromConfig(config->model()));
  {
    at::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0, 0.02);  // values do not matter for I/O; init is slower
  }
  AdamWOptions adam;
  AdamW optimizer(model->named_parameters().pairs(), adam);
  for (const auto& [name, t] : optimizer.state()) {
    at::NoGradGuard no_grad;
    t.uniform_();
  }
  const std::string run = dir + "/io_bench_run";
  RemoveTreeIfExists(run);
  std::vector<double> save, verify, load;
  uint64_t bytes = 0;
  for (int r = 0; r < rounds; ++r) {
    TrainerState state;
    state.step = r + 1;
    auto t0 = Clock::now();
    if (absl::Status s = SaveCheckpoint(run, model, optimizer, *config, state, /*keep_last=*/1); !s.ok()) {
      std::fprintf(stderr, "io_bench: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    save.push_back(Since(t0));
    const std::string ckpt = run + "/checkpoints/" + CheckpointDirName(r + 1);
    bytes = DirBytes(ckpt);
    dropped_each = DropPageCache() && dropped_each;
    t0 = Clock::now();
    if (absl::Status s = VerifyCheckpoint(ckpt); !s.ok()) {
      std::fprintf(stderr, "io_bench: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    verify.push_back(Since(t0));
    dropped_each = DropPageCache() && dropped_each;  // the load (which verifies as it reads) starts from the disk too
    t0 = Clock::now();
    auto loaded = LoadCheckpoint(ckpt, model, optimizer);
    if (!loaded.ok()) {
      std::fprintf(stderr, "io_bench: %s\n", std::string(loaded.status().message()).c_str());
      return 1;
    }
    load.push_back(Since(t0));
    std::fprintf(
        stderr,
        "[io_bench] round %d: %.2f GB saved in %.1f s, verified alone in %.1f s, loaded (verifying) in %.1f s\n", r,
        bytes / 1e9, save.back(), verify.back(), load.back());
  }
  RemoveTreeIfExists(run);
  auto gbs = [&](const std::vector<double>& s) {
    json j = json::array();
    for (double v : s) j.push_back(bytes / v / 1e9);
    return j;
  };
  report["checkpoint"] = {{"bytes", bytes},
                          {"save_gb_per_s", bytes / Median(save) / 1e9},
                          {"verify_gb_per_s", bytes / Median(verify) / 1e9},
                          {"load_gb_per_s", bytes / Median(load) / 1e9},
                          {"save_rounds", gbs(save)},
                          {"verify_rounds", gbs(verify)},
                          {"load_rounds", gbs(load)},
                          {"page_cache_dropped_before_each_pass", dropped_each}};
  std::printf("%s\n", report.dump(2).c_str());
  return 0;
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) { return hybridmoe::Main(argc, argv); }
