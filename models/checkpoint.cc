#include "models/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

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

struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc = 0;
};

absl::StatusOr<FileDigest> Digest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": missing"));
  FileDigest d;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const size_t n = static_cast<size_t>(in.gcount());
    d.crc = Crc32cExtend(d.crc, buffer.data(), n);
    d.bytes += n;
  }
  return d;
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

absl::Status WriteShard(const std::string& dir, const std::string& stem, const std::vector<WeightSlot>& slots,
                        const CheckpointShard& shard) {
  std::map<std::string, at::Tensor> tensors;
  for (const WeightSlot& s : slots) {
    // Expert slices are written by their own shard, everything else by shard 0.
    if (shard.index == 0 || IsExpertName(s.key)) tensors[s.key] = s.value.detach().to(at::kCPU).contiguous();
  }
  const std::string name = shard.count == 1
                               ? stem + ".safetensors"
                               : absl::StrFormat("%s-%05d-of-%05d.safetensors", stem, shard.index, shard.count);
  return WriteSafetensors(dir + "/" + name, tensors);
}

absl::Status WriteIndex(const std::string& dir, const std::string& stem, int count) {
  std::map<std::string, std::string> weight_map;
  for (int i = 0; i < count; ++i) {
    const std::string file = absl::StrFormat("%s-%05d-of-%05d.safetensors", stem, i, count);
    ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(dir + "/" + file));
    for (const std::string& n : reader->names()) weight_map[n] = file;
  }
  return WriteSafetensorsIndex(dir + "/" + stem + ".safetensors.index.json", weight_map);
}

absl::Status LoadSlots(const std::string& path, std::vector<WeightSlot> slots) {
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  for (WeightSlot& s : slots) {
    const SafetensorsEntry* e = reader->entry(s.key);
    if (e == nullptr) return absl::NotFoundError(absl::StrCat(reader->path(), ": missing tensor ", s.key));
    if (at::IntArrayRef(e->shape) != s.value.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(reader->file_of(s.key), ": tensor ", s.key, " has shape [",
                                                     absl::StrJoin(e->shape, ","), "], expected [",
                                                     absl::StrJoin(s.value.sizes(), ","), "]"));
    }
    ASSIGN_OR_RETURN(at::Tensor t, reader->Read(s.key));
    at::NoGradGuard no_grad;
    s.value.copy_(t);
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
  if (shard.root) {
    RETURN_IF_ERROR(MakeDirs(root));
    for (const std::string& n : ListDir(root)) {
      if (n.rfind(".tmp-", 0) == 0) RETURN_IF_ERROR(RemoveTree(root + "/" + n));  // debris of a killed run
    }
    RETURN_IF_ERROR(MakeDirs(tmp));
  }
  shard.barrier();
  absl::Status written = absl::OkStatus();
  if (shard.writes) {
    written = WriteShard(tmp, "model", ModelWeightSlots(model), shard);
    if (written.ok()) written = WriteShard(tmp, "optimizer", OptimizerSlots(model, optimizer), shard);
  }
  shard.barrier();
  RETURN_IF_ERROR(written);
  if (!shard.root) {
    shard.barrier();
    return absl::OkStatus();
  }
  if (const char* pause = std::getenv("HYBRIDMOE_FAULT_PAUSE_IN_CHECKPOINT_S")) {
    // Fault injection for tests: widen the window in which a kill hits a half-written checkpoint.
    std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(pause)));
  }
  absl::Status s = absl::OkStatus();
  if (shard.count > 1) {
    s = WriteIndex(tmp, "model", shard.count);
    if (s.ok()) s = WriteIndex(tmp, "optimizer", shard.count);
  }
  json st = {{"step", state.step},
             {"optimizer_steps", state.optimizer_steps},
             {"skipped_steps", state.skipped_steps},
             {"consecutive_bad_steps", state.consecutive_bad_steps},
             {"seed", state.seed},
             {"expert_parallel_shards", shard.count}};
  if (s.ok()) s = WriteFileAtomically(tmp + "/" + kState, st.dump(2) + "\n");
  if (s.ok()) s = WriteFileAtomically(tmp + "/config.textproto", ConfigToText(config));
  json manifest = {{"step", state.step}, {"files", json::object()}};
  for (const std::string& n : ListDir(tmp)) {
    if (!s.ok()) break;
    auto d = Digest(tmp + "/" + n);
    if (!d.ok()) {
      s = d.status();
      break;
    }
    manifest["files"][n] = {{"bytes", d->bytes}, {"crc32c", d->crc}};
    SyncPath(tmp + "/" + n);
  }
  if (s.ok()) s = WriteFileAtomically(tmp + "/" + kManifest, manifest.dump(2) + "\n");
  if (s.ok()) {
    SyncPath(tmp);
    if (IsDirectory(final_dir)) s = RemoveTree(final_dir);  // an older checkpoint of the same step (re-run)
    if (s.ok() && std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
      s = absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", final_dir, ": ", strerror(errno)));
    }
    SyncPath(root);
  }
  if (s.ok()) {
    std::vector<std::string> complete;
    for (const std::string& n : ListDir(root)) {
      if (n.rfind("step_", 0) == 0) complete.push_back(n);
    }
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < complete.size(); ++i) {
      s = RemoveTree(root + "/" + complete[i]);
      if (!s.ok()) break;
    }
  }
  shard.barrier();
  return s;
}

absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  std::vector<std::string> names = ListDir(root);
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    const std::string dir = root + "/" + *it;
    struct stat st;
    if (it->rfind("step_", 0) == 0 && stat((dir + "/" + kManifest).c_str(), &st) == 0) return dir;
  }
  return absl::NotFoundError(absl::StrCat("no complete checkpoint under ", root));
}

absl::Status VerifyCheckpoint(const std::string& dir) {
  std::ifstream in(dir + "/" + kManifest);
  if (!in) return absl::NotFoundError(absl::StrCat(dir, "/", kManifest, ": missing (incomplete checkpoint)"));
  json manifest;
  try {
    in >> manifest;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(dir, "/", kManifest, ": not valid JSON (", e.what(), ")"));
  }
  if (!manifest.contains("files") || !manifest["files"].is_object() || manifest["files"].empty()) {
    return absl::DataLossError(absl::StrCat(dir, "/", kManifest, ": no \"files\" entry"));
  }
  for (const auto& [name, want] : manifest["files"].items()) {
    const std::string path = dir + "/" + name;
    auto d = Digest(path);
    if (!d.ok()) return absl::DataLossError(absl::StrCat("checkpoint file ", path, " is missing"));
    if (d->bytes != want.value("bytes", uint64_t{0})) {
      return absl::DataLossError(absl::StrCat("checkpoint file ", path, " has ", d->bytes,
                                              " bytes, MANIFEST.json says ", want.value("bytes", uint64_t{0}),
                                              " (truncated or replaced)"));
    }
    if (d->crc != want.value("crc32c", uint32_t{0})) {
      return absl::DataLossError(
          absl::StrFormat("checkpoint file %s: CRC-32C %08x does not match MANIFEST.json "
                          "(%08x); the file is corrupted",
                          path, d->crc, want.value("crc32c", uint32_t{0})));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainerState> LoadCheckpoint(const std::string& dir, Transformer& model, AdamW& optimizer) {
  RETURN_IF_ERROR(VerifyCheckpoint(dir));
  std::ifstream in(dir + "/" + kState);
  json st;
  try {
    in >> st;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(dir, "/", kState, ": not valid JSON (", e.what(), ")"));
  }
  RETURN_IF_ERROR(LoadModelWeights(model, dir));
  RETURN_IF_ERROR(LoadSlots(IsDirectory(dir) && Digest(dir + "/optimizer.safetensors").ok()
                                ? dir + "/optimizer.safetensors"
                                : dir + "/optimizer.safetensors.index.json",
                            OptimizerSlots(model, optimizer)));
  TrainerState state;
  state.step = st.value("step", int64_t{0});
  state.optimizer_steps = st.value("optimizer_steps", int64_t{0});
  state.skipped_steps = st.value("skipped_steps", int64_t{0});
  state.consecutive_bad_steps = st.value("consecutive_bad_steps", int64_t{0});
  state.seed = st.value("seed", uint64_t{0});
  optimizer.set_steps_taken(state.optimizer_steps);
  return state;
}

}  // namespace hybridmoe
