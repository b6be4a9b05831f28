#include "models/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/config.h"
#include "core/crc32c.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "models/weights.h"

namespace hybridmoe {
namespace {

using json = nlohmann::json;

constexpr char kManifest[] = "MANIFEST.json";
constexpr char kState[] = "trainer_state.json";

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::Status RemoveTree(const std::string& path) {
  if (IsDirectory(path)) {
    for (const std::string& n : ListDir(path)) RETURN_IF_ERROR(RemoveTree(path + "/" + n));
    if (rmdir(path.c_str()) != 0) return absl::InternalError(absl::StrCat("cannot remove ", path));
  } else if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("cannot remove ", path));
  }
  return absl::OkStatus();
}

void SyncPath(const std::string& p) {
  const int fd = open(p.c_str(), O_RDONLY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

// The optimizer moments laid out like ModelWeightSlots: every slot of a parameter maps to the same slice
// of that parameter's state tensor (found from the slot's storage offset, so the key scheme lives in
// models/weights.cc alone).
std::vector<WeightSlot> OptimizerSlots(Transformer& model, const AdamW& optimizer) {
  std::map<const void*, std::pair<at::Tensor, at::Tensor>> by_storage;  // param storage -> (exp_avg, exp_avg_sq)
  const auto state = optimizer.state();
  for (size_t i = 0; i < optimizer.params().size(); ++i) {
    by_storage[optimizer.params()[i].second.storage().data()] = {state[2 * i].second, state[2 * i + 1].second};
  }
  std::vector<WeightSlot> slots;
  for (const WeightSlot& w : ModelWeightSlots(model)) {
    if (!w.trainable) continue;  // model state (selection bias): no moments
    auto it = by_storage.find(w.value.storage().data());
    TORCH_INTERNAL_ASSERT(it != by_storage.end(), "no optimizer state for ", w.key);
    const auto& [m, v] = it->second;
    auto slice = [&](const at::Tensor& s) {
      return s.as_strided(w.value.sizes(), w.value.strides(), w.value.storage_offset());
    };
    slots.push_back({w.key + ".exp_avg", slice(m)});
    slots.push_back({w.key + ".exp_avg_sq", slice(v)});
  }
  return slots;
}

// The floor bandwidth of the checkpoint deadline (see checkpoint.h).
double FloorMbPerSecond() {
  if (const char* v = std::getenv("HYBRIDMOE_CHECKPOINT_MIN_MB_PER_S")) {
    const double parsed = std::atof(v);
    if (parsed > 0) return parsed;
  }
  return 10;
}

// Seconds a rank may spend on `bytes` of checkpoint I/O in one phase.
double DeadlineSeconds(double timeout_s, uint64_t bytes) {
  return timeout_s + static_cast<double>(bytes) / (FloorMbPerSecond() * 1e6);
}

// Runs `work` on this rank while every rank runs its own, and returns when all are done: the same verdict
// on every rank (OK, or the status code of the lowest failing rank, ranks that found damage first; the root
// gets that rank's message).
// With several ranks the work runs on a helper thread and the calling thread reports progress through
// shard.sum every 0.25 s (the only collective; the work itself must not communicate), so that a rank
// with a lot of I/O does not trip its peers' collective deadline, and gives up when a rank's work outlives
// DeadlineSeconds(bytes). After such an error the process must end (the helper thread may still hold
// references to the caller's state).
absl::Status RunOnAllRanks(const CheckpointShard& shard, const std::string& what, uint64_t bytes,
                           std::function<absl::Status()> work) {
  if (shard.world <= 1) return work();
  struct Job {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    absl::Status status;
  };
  auto job = std::make_shared<Job>();
  std::thread([job, work = std::move(work)] {
    absl::Status s = work();
    std::lock_guard<std::mutex> lock(job->mu);
    job->status = std::move(s);
    job->done = true;
    job->cv.notify_all();
  }).detach();
  // Per rank: 0 busy, 1 done, 2 past its deadline, 100 + status code: failed.
  constexpr double kBusy = 0, kDone = 1, kOverdue = 2, kFailed = 100;
  const double deadline_s = DeadlineSeconds(shard.timeout_s, bytes);
  const auto start = std::chrono::steady_clock::now();
  std::vector<double> codes;
  absl::Status mine;
  for (int round = 0;; ++round) {
    double code = kBusy;
    {
      std::unique_lock<std::mutex> lock(job->mu);
      // A rank whose work is done waits the whole period too once a peer was seen busy, so that it does not
      // sit (spinning) in the all-reduce while the busy rank writes.
      const auto period = std::chrono::milliseconds(250);
      if (round > 0 && job->done) {
        lock.unlock();
        std::this_thread::sleep_for(period);
        lock.lock();
      }
      job->cv.wait_for(lock, period, [&] { return job->done; });
      if (job->done) {
        mine = job->status;
        code = mine.ok() ? kDone : kFailed + static_cast<int>(mine.code());
      } else if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > deadline_s) {
        code = kOverdue;
      }
    }
    codes.assign(shard.world, 0.0);
    codes[shard.rank] = code;
    shard.sum(codes);
    std::vector<int> overdue, busy;
    for (int r = 0; r < shard.world; ++r) {
      if (codes[r] == kOverdue) overdue.push_back(r);
      if (codes[r] == kBusy || codes[r] == kOverdue) busy.push_back(r);
    }
    if (!overdue.empty()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "checkpoint: ", what, " did not finish within its deadline on rank ", absl::StrJoin(overdue, ", "),
          " (parallel.timeout_s + that rank's bytes at ", absl::StrFormat("%g", FloorMbPerSecond()),
          " MB/s, see HYBRIDMOE_CHECKPOINT_MIN_MB_PER_S); still busy: rank ", absl::StrJoin(busy, ", "),
          "; is the file system stuck?"));
    }
    if (busy.empty()) break;
  }
  // The lowest rank that found damage (DataLoss / NotFound: a damaged checkpoint explains whatever its
  // readers ran into on other ranks), else the lowest failing rank.
  int failed = -1;
  for (const bool damage_only : {true, false}) {
    for (int r = 0; r < shard.world && failed < 0; ++r) {
      if (codes[r] < kFailed) continue;
      const auto code = static_cast<absl::StatusCode>(static_cast<int>(codes[r] - kFailed));
      if (!damage_only || code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kNotFound) failed = r;
    }
  }
  if (failed < 0) return absl::OkStatus();
  const std::vector<std::string> messages = shard.gather(mine.ok() ? "" : std::string(mine.message()));
  const auto code = static_cast<absl::StatusCode>(static_cast<int>(codes[failed] - kFailed));
  if (shard.root) return absl::Status(code, messages.at(failed));
  if (failed == shard.rank) return mine;
  return absl::Status(code, absl::StrCat("checkpoint: ", what, " failed on rank ", failed));
}

// The tensors this shard writes: expert slices by their own shard, everything else by shard 0.
std::map<std::string, at::Tensor> ShardTensors(const std::vector<WeightSlot>& slots, const CheckpointShard& shard) {
  std::map<std::string, at::Tensor> tensors;
  for (const WeightSlot& s : slots) {
    if (shard.index == 0 || IsExpertName(s.key)) tensors[s.key] = s.value.detach().to(at::kCPU).contiguous();
  }
  return tensors;
}

std::string ShardFileName(const std::string& stem, const CheckpointShard& shard) {
  return shard.count == 1 ? stem + ".safetensors"
                          : absl::StrFormat("%s-%05d-of-%05d.safetensors", stem, shard.index, shard.count);
}

// "model-00001-of-00004.safetensors" -> ("model", 1, 4); "optimizer.safetensors" -> ("optimizer", 0, 1).
bool ParseShardName(const std::string& name, std::string* stem, int* index, int* count) {
  const std::string ext = ".safetensors";
  if (name.size() <= ext.size() || name.compare(name.size() - ext.size(), ext.size(), ext) != 0) return false;
  const std::string base = name.substr(0, name.size() - ext.size());
  int i = 0, n = 0;
  char tail = 0;
  const size_t dash = base.find('-');
  if (dash == std::string::npos) {
    *stem = base;
    *index = 0;
    *count = 1;
    return true;
  }
  if (std::sscanf(base.c_str() + dash, "-%5d-of-%5d%c", &i, &n, &tail) != 2 || n <= 0 || i < 0 || i >= n) {
    return false;
  }
  *stem = base.substr(0, dash);
  *index = i;
  *count = n;
  return true;
}

absl::StatusOr<json> ReadManifest(const std::string& dir) {
  std::ifstream in(dir + "/" + kManifest);
  if (!in) return absl::NotFoundError(absl::StrCat(dir, "/", kManifest, ": missing (incomplete checkpoint)"));
  json manifest;
  try {
    in >> manifest;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(dir, "/", kManifest, ": not valid JSON (", e.what(), ")"));
  }
  if (!manifest.is_object() || !manifest.contains("files") || !manifest["files"].is_object() ||
      manifest["files"].empty()) {
    return absl::DataLossError(absl::StrCat(dir, "/", kManifest, ": no \"files\" entry"));
  }
  return manifest;
}

// The manifest's entry for a file against the file's size (before anything is read) and, once known, its
// digest. DataLoss names the file.
absl::Status CheckSize(const std::string& path, const json& want) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::DataLossError(absl::StrCat("checkpoint file ", path, " is missing"));
  }
  const uint64_t bytes = want.is_object() ? want.value("bytes", uint64_t{0}) : 0;
  if (static_cast<uint64_t>(st.st_size) != bytes) {
    return absl::DataLossError(absl::StrCat("checkpoint file ", path, " has ", st.st_size,
                                            " bytes, MANIFEST.json says ", bytes, " (truncated or replaced)"));
  }
  return absl::OkStatus();
}

absl::Status CheckDigest(const std::string& path, const json& want, const FileDigest& d) {
  const uint64_t bytes = want.is_object() ? want.value("bytes", uint64_t{0}) : 0;
  const uint32_t crc = want.is_object() ? want.value("crc32c", uint32_t{0}) : 0;
  if (d.bytes != bytes) {
    return absl::DataLossError(absl::StrCat("checkpoint file ", path, " has ", d.bytes, " bytes, MANIFEST.json says ",
                                            bytes, " (truncated or replaced)"));
  }
  if (d.crc32c != crc) {
    return absl::DataLossError(
        absl::StrFormat("checkpoint file %s: CRC-32C %08x does not match MANIFEST.json (%08x); the file is corrupted",
                        path, d.crc32c, crc));
  }
  return absl::OkStatus();
}

absl::Status VerifyFile(const std::string& path, const json& want) {
  RETURN_IF_ERROR(CheckSize(path, want));
  absl::StatusOr<FileDigest> d = DigestFile(path);
  if (!d.ok()) return absl::DataLossError(absl::StrCat("checkpoint file ", path, " is missing"));
  return CheckDigest(path, want, *d);
}

// The files of `manifest` this rank checksums (see checkpoint.h "Verifying"), with their manifest entries.
std::vector<std::pair<std::string, json>> FilesThisRankVerifies(const json& manifest, const CheckpointShard& shard) {
  std::vector<std::pair<std::string, json>> mine;
  int position = 0;  // among the .safetensors files, for the round-robin assignment
  for (const auto& [name, want] : manifest["files"].items()) {
    std::string stem;
    int index = 0, count = 0;
    bool verifies = shard.root;
    if (ParseShardName(name, &stem, &index, &count)) {
      if (count == shard.count) {
        // The replicas of the shard read it whole: the model file on the first, the optimizer file on the
        // second (when there is one).
        verifies = shard.index == index && shard.replica == (stem == "optimizer" ? 1 : 0) % shard.replicas;
      } else {
        verifies = position % shard.world == shard.rank;
      }
      ++position;
    }
    if (verifies) mine.emplace_back(name, want);
  }
  return mine;
}

uint64_t ManifestBytes(const std::vector<std::pair<std::string, json>>& files) {
  uint64_t bytes = 0;
  for (const auto& [name, want] : files) {
    if (want.is_object()) bytes += want.value("bytes", uint64_t{0});
  }
  return bytes;
}

absl::Status LoadSlots(const SafetensorsReader& reader, std::vector<WeightSlot> slots) {
  for (WeightSlot& s : slots) {
    const SafetensorsEntry* e = reader.entry(s.key);
    if (e == nullptr) return absl::NotFoundError(absl::StrCat(reader.path(), ": missing tensor ", s.key));
    if (at::IntArrayRef(e->shape) != s.value.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(reader.file_of(s.key), ": tensor ", s.key, " has shape [",
                                                     absl::StrJoin(e->shape, ","), "], expected [",
                                                     absl::StrJoin(s.value.sizes(), ","), "]"));
    }
    RETURN_IF_ERROR(reader.ReadInto(s.key, s.value));
  }
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step_%08d", step); }

absl::Status SaveCheckpoint(const std::string& run_dir, Transformer& model, const AdamW& optimizer,
                            const TrainConfig& config, const TrainerState& state, int keep_last,
                            const CheckpointShard& shard) {
  const std::string root = run_dir + "/checkpoints";
  const std::string final_dir = root + "/" + CheckpointDirName(state.step);
  const std::string tmp = root + "/.tmp-" + CheckpointDirName(state.step);
  // 1. The root makes the temporary directory (and clears debris of a killed run).
  RETURN_IF_ERROR(RunOnAllRanks(shard, "preparing " + tmp, 0, [&]() -> absl::Status {
    if (!shard.root) return absl::OkStatus();
    RETURN_IF_ERROR(MakeDirs(root));
    for (const std::string& n : ListDir(root)) {
      if (n.rfind(".tmp-", 0) == 0) RETURN_IF_ERROR(RemoveTree(root + "/" + n));
    }
    return MakeDirs(tmp);
  }));

  // 2. Each writer writes its shard files, checksumming the bytes as it writes them.
  json mine = {{"files", json::object()}, {"tensors", json::object()}};
  std::vector<std::pair<std::string, std::map<std::string, at::Tensor>>> files;
  uint64_t bytes = 0;
  if (shard.replica == 0) {
    // Host copies on this thread (device tensors are copied where the training runs); the I/O on the helper.
    files.emplace_back(ShardFileName("model", shard), ShardTensors(ModelWeightSlots(model), shard));
    files.emplace_back(ShardFileName("optimizer", shard), ShardTensors(OptimizerSlots(model, optimizer), shard));
    for (const auto& file : files) {
      for (const auto& [key, t] : file.second) bytes += static_cast<uint64_t>(t.nbytes());
    }
  }
  RETURN_IF_ERROR(RunOnAllRanks(shard, "writing the shards of " + tmp, bytes, [&]() -> absl::Status {
    if (const char* pause = std::getenv("HYBRIDMOE_FAULT_PAUSE_IN_SHARD_WRITE_S");
        pause && shard.rank == shard.world - 1) {
      // Fault injection for tests: the last rank's shard write is slow (the checkpoint deadline).
      std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(pause)));
    }
    for (const auto& [name, tensors] : files) {
      const std::string path = tmp + "/" + name;
      FileDigest d;
      RETURN_IF_ERROR(WriteSafetensors(path, tensors, {}, &d));
      SyncPath(path);
      mine["files"][name] = {{"bytes", d.bytes}, {"crc32c", d.crc32c}};
      json names = json::array();
      for (const auto& [key, t] : tensors) names.push_back(key);
      mine["tensors"][name] = std::move(names);
    }
    return absl::OkStatus();
  }));
  files.clear();

  // 3. One small gather: every shard file's size, checksum and tensor names, on the root.
  const std::vector<std::string> parts = shard.gather(mine.dump());

  // 4. The root writes the shared files and the manifest, publishes the directory and prunes old ones.
  return RunOnAllRanks(shard, "publishing " + final_dir, 0, [&]() -> absl::Status {
    if (!shard.root) return absl::OkStatus();
    if (const char* pause = std::getenv("HYBRIDMOE_FAULT_PAUSE_IN_CHECKPOINT_S")) {
      // Fault injection for tests: widen the window in which a kill hits a half-written checkpoint.
      std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(pause)));
    }
    json manifest = {{"step", state.step}, {"files", json::object()}};
    std::map<std::string, std::map<std::string, std::string>> weight_maps;  // stem -> tensor -> file
    for (const std::string& part : parts) {
      const json p = json::parse(part, nullptr, /*allow_exceptions=*/false);
      if (!p.is_object() || !p.contains("files") || !p.contains("tensors")) {
        return absl::InternalError(absl::StrCat("checkpoint: malformed shard report while publishing ", final_dir));
      }
      for (const auto& [name, d] : p["files"].items()) manifest["files"][name] = d;
      for (const auto& [name, keys] : p["tensors"].items()) {
        std::string stem;
        int index = 0, count = 0;
        if (!ParseShardName(name, &stem, &index, &count)) continue;
        for (const auto& key : keys) weight_maps[stem][key.get<std::string>()] = name;
      }
    }
    std::vector<std::string> shared = {kState, "config.textproto"};
    if (shard.count > 1) {
      for (const auto& [stem, weight_map] : weight_maps) {
        const std::string index = stem + ".safetensors.index.json";
        RETURN_IF_ERROR(WriteSafetensorsIndex(tmp + "/" + index, weight_map));
        shared.push_back(index);
      }
    }
    json st = {{"step", state.step},
               {"optimizer_steps", state.optimizer_steps},
               {"skipped_steps", state.skipped_steps},
               {"consecutive_bad_steps", state.consecutive_bad_steps},
               {"seed", state.seed},
               {"expert_parallel_shards", shard.count}};
    RETURN_IF_ERROR(WriteFileAtomically(tmp + "/" + kState, st.dump(2) + "\n"));
    RETURN_IF_ERROR(WriteFileAtomically(tmp + "/config.textproto", ConfigToText(config)));
    for (const std::string& n : shared) {
      ASSIGN_OR_RETURN(const FileDigest d, DigestFile(tmp + "/" + n));
      manifest["files"][n] = {{"bytes", d.bytes}, {"crc32c", d.crc32c}};
    }
    RETURN_IF_ERROR(WriteFileAtomically(tmp + "/" + kManifest, manifest.dump(2) + "\n"));
    SyncPath(tmp);
    if (IsDirectory(final_dir)) RETURN_IF_ERROR(RemoveTree(final_dir));  // an older checkpoint of the same step
    if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", final_dir, ": ", strerror(errno)));
    }
    SyncPath(root);
    std::vector<std::string> complete;
    for (const std::string& n : ListDir(root)) {
      if (n.rfind("step_", 0) == 0) complete.push_back(n);
    }
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < complete.size(); ++i) {
      RETURN_IF_ERROR(RemoveTree(root + "/" + complete[i]));
    }
    return absl::OkStatus();
  });
}

std::vector<std::string> ListCheckpoints(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  std::vector<std::string> dirs;
  const std::vector<std::string> names = ListDir(root);
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    if (it->rfind("step_", 0) == 0 && IsDirectory(root + "/" + *it)) dirs.push_back(root + "/" + *it);
  }
  return dirs;
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& run_dir) {
  for (const std::string& dir : ListCheckpoints(run_dir)) {
    if (IsFile(dir + "/" + kManifest)) return dir;
  }
  return absl::NotFoundError(absl::StrCat("no complete checkpoint under ", run_dir, "/checkpoints"));
}

absl::StatusOr<std::string> SetAsideCheckpoint(const std::string& dir) {
  const size_t slash = dir.find_last_of('/');
  const std::string parent = slash == std::string::npos ? "." : dir.substr(0, slash);
  const std::string base = "damaged-" + (slash == std::string::npos ? dir : dir.substr(slash + 1));
  std::string to = parent + "/" + base;
  for (int i = 1; Exists(to); ++i) to = absl::StrCat(parent, "/", base, ".", i);
  if (std::rename(dir.c_str(), to.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", dir, " to ", to, ": ", strerror(errno)));
  }
  SyncPath(parent);
  return to;
}

absl::Status VerifyCheckpoint(const std::string& dir, const CheckpointShard& shard) {
  // Every rank reads the (small) manifest; each file is checksummed by one rank.
  absl::StatusOr<json> manifest = ReadManifest(dir);
  std::vector<std::pair<std::string, json>> mine;
  if (manifest.ok()) mine = FilesThisRankVerifies(*manifest, shard);
  return RunOnAllRanks(shard, "verifying " + dir, ManifestBytes(mine), [&]() -> absl::Status {
    RETURN_IF_ERROR(manifest.status());
    for (const auto& [name, want] : mine) RETURN_IF_ERROR(VerifyFile(dir + "/" + name, want));
    return absl::OkStatus();
  });
}

absl::StatusOr<TrainerState> LoadCheckpoint(const std::string& dir, Transformer& model, AdamW& optimizer,
                                            const CheckpointShard& shard) {
  absl::StatusOr<json> manifest = ReadManifest(dir);
  std::vector<std::pair<std::string, json>> mine;
  if (manifest.ok()) mine = FilesThisRankVerifies(*manifest, shard);
  uint64_t bytes = ManifestBytes(mine);  // what this rank reads: its weights, their two moments, its checks
  for (const WeightSlot& w : ModelWeightSlots(model)) bytes += 3 * static_cast<uint64_t>(w.value.nbytes());
  TrainerState state;
  RETURN_IF_ERROR(RunOnAllRanks(shard, "loading " + dir, bytes, [&]() -> absl::Status {
    RETURN_IF_ERROR(manifest.status());
    // Sizes first: a missing or truncated file is reported before anything is read.
    for (const auto& [name, want] : mine) RETURN_IF_ERROR(CheckSize(dir + "/" + name, want));
    // The load, with every file it maps checksummed in the same pass (SafetensorsReader::TrackChecksums).
    std::vector<std::unique_ptr<SafetensorsReader>> readers;
    std::map<std::string, FileDigest> read;  // small files read whole here: their digests
    absl::Status loaded = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(const std::string text, ReadFile(dir + "/" + kState));
      read[dir + "/" + kState] = {text.size(), Crc32c(text)};
      const json st = json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (!st.is_object()) return absl::DataLossError(absl::StrCat(dir, "/", kState, ": not a JSON object"));
      const std::string single = dir + "/optimizer.safetensors";
      for (const std::string& path : {dir, IsFile(single) ? single : dir + "/optimizer.safetensors.index.json"}) {
        ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsReader> reader, SafetensorsReader::Open(path));
        reader->TrackChecksums();
        readers.push_back(std::move(reader));
      }
      RETURN_IF_ERROR(LoadModelWeightsFrom(model, SourceFromReader(*readers[0])));
      RETURN_IF_ERROR(LoadSlots(*readers[1], OptimizerSlots(model, optimizer)));
      state.step = st.value("step", int64_t{0});
      state.optimizer_steps = st.value("optimizer_steps", int64_t{0});
      state.skipped_steps = st.value("skipped_steps", int64_t{0});
      state.consecutive_bad_steps = st.value("consecutive_bad_steps", int64_t{0});
      state.seed = st.value("seed", uint64_t{0});
      return absl::OkStatus();
    }();
    // This rank's checksums: a file a reader mapped from the pieces the load read (plus what it did not
    // read), any other file read whole. After a failed load they say whether damage explains the failure.
    for (const auto& [name, want] : mine) {
      const std::string path = dir + "/" + name;
      absl::StatusOr<FileDigest> d = absl::NotFoundError("");
      if (read.count(path)) d = read.at(path);
      for (const auto& reader : readers) {
        if (d.ok()) break;
        d = reader->Digest(path);
      }
      RETURN_IF_ERROR(d.ok() ? CheckDigest(path, want, *d) : VerifyFile(path, want));
    }
    return loaded;
  }));
  optimizer.set_steps_taken(state.optimizer_steps);
  return state;
}

}  // namespace hybridmoe
