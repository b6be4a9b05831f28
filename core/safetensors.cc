#include "core/safetensors.h"

#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/crc32c.h"
#include "core/files.h"
#include "core/status.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; so must the host be");

namespace hybridmoe {
namespace {

using nlohmann::json;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  int bytes;
  int rank;  // Python's writer lays data out by descending rank, then name
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8, 8}, {"F32", at::kFloat, 4, 7}, {"F16", at::kHalf, 2, 4},  {"BF16", at::kBFloat16, 2, 5},
    {"I64", at::kLong, 8, 9},   {"I32", at::kInt, 4, 6},   {"I16", at::kShort, 2, 3}, {"I8", at::kChar, 1, 2},
    {"U8", at::kByte, 1, 1},    {"BOOL", at::kBool, 1, 0},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string KnownDtypes() {
  std::vector<std::string> names;
  for (const DtypeInfo& d : kDtypes) names.push_back(d.name);
  return absl::StrJoin(names, " ");
}

std::string ShapeString(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

std::string Dirname(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

absl::StatusOr<json> ParseJson(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": malformed JSON: ", e.what()));
  }
}

// Parses one tensor entry of a header; `where` is "<file>: tensor <name>".
absl::StatusOr<SafetensorsEntry> ParseEntry(const json& v, const std::string& where, uint64_t data_bytes) {
  if (!v.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": entry must be a JSON object"));
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown field \"", it.key(), "\" (valid: dtype, shape, data_offsets)"));
    }
  }
  SafetensorsEntry e;
  if (!v.contains("dtype") || !v["dtype"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"dtype\" must be a string"));
  }
  e.dtype = v["dtype"].get<std::string>();
  const DtypeInfo* info = FindDtype(e.dtype);
  if (info == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unknown dtype \"", e.dtype, "\" (known: ", KnownDtypes(), ")"));
  }
  e.scalar_type = info->type;
  if (!v.contains("shape") || !v["shape"].is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": \"shape\" must be an array of non-negative integers"));
  }
  unsigned __int128 numel = 1;
  for (const json& d : v["shape"]) {
    if (!d.is_number_unsigned()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": shape ", v["shape"].dump(), " must hold non-negative integers"));
    }
    e.shape.push_back(d.get<int64_t>());
    numel *= d.get<uint64_t>();
    if (numel > (static_cast<unsigned __int128>(1) << 62)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape ", v["shape"].dump(), " is too large"));
    }
  }
  const json& off = v.contains("data_offsets") ? v["data_offsets"] : json();
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"data_offsets\" must be two non-negative integers [begin, end]"));
  }
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  const std::string range = absl::StrCat("data_offsets [", e.begin, ",", e.end, ")");
  if (e.begin > e.end) return absl::InvalidArgumentError(absl::StrCat(where, ": ", range, " begin after end"));
  if (e.end > data_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", range, " end past the data section (", data_bytes, " bytes; truncated file?)"));
  }
  const unsigned __int128 expected = numel * static_cast<unsigned>(info->bytes);
  if (expected != e.end - e.begin) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", range, " holds ", e.end - e.begin, " bytes but shape ",
                                                   ShapeString(e.shape), " of ", e.dtype, " needs ",
                                                   static_cast<uint64_t>(expected)));
  }
  return e;
}

// Tensors must tile the data section exactly: sorted by offset, each starting where the previous ended.
absl::Status CheckTiling(const std::string& path, const std::map<std::string, SafetensorsEntry>& entries,
                         uint64_t data_bytes) {
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> order;
  for (const auto& [name, e] : entries) order.push_back({&name, &e});
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::make_pair(a.second->begin, a.second->end) < std::make_pair(b.second->begin, b.second->end);
  });
  uint64_t pos = 0;
  const std::string* prev = nullptr;
  for (const auto& [name, e] : order) {
    if (e->begin != pos) {
      const std::string what = e->begin < pos ? "overlaps" : "leaves a gap after";
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", *name, ": data_offsets [", e->begin, ",", e->end, ") ", what, " ",
                       prev ? absl::StrCat("tensor ", *prev, " (ending at ", pos, ")") : std::string("offset 0"),
                       "; tensors must be contiguous and non-overlapping"));
    }
    pos = e->end;
    prev = name;
  }
  if (pos != data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the data section has ", data_bytes,
                                                   " bytes but the tensors cover ", pos, " (trailing bytes)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SafetensorsDtypeName(at::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (d.type == type) return std::string(d.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", c10::toString(type), " cannot be stored in safetensors (supported: ", KnownDtypes(), ")"));
}

absl::Status SafetensorsReader::AddFile(const std::string& path, std::map<std::string, SafetensorsEntry>* entries,
                                        std::map<std::string, std::string>* metadata) {
  ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  const size_t file_bytes = mapped.size();
  const uint8_t* bytes = mapped.data();
  files_.push_back(Shard{std::move(mapped)});  // unmapped by the destructor, whatever happens below
  if (file_bytes < 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": file is ", file_bytes,
                                                   " bytes, too short for the 8-byte header length (truncated file?)"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > file_bytes - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_len, " exceeds the ",
                                                   file_bytes - 8,
                                                   " bytes after it (truncated file, or not a safetensors file?)"));
  }
  const std::string header(reinterpret_cast<const char*>(bytes + 8), header_len);
  if (header.empty() || header[0] != '{') {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header (", header_len, " bytes) does not start with '{' (not a safetensors file?)"));
  }
  ASSIGN_OR_RETURN(const json root, ParseJson(header, path + ": header"));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": header must be a JSON object"));
  files_.back().data = bytes + 8 + header_len;
  files_.back().data_bytes = file_bytes - 8 - header_len;
  const uint64_t data_bytes = files_.back().data_bytes;

  std::map<std::string, SafetensorsEntry> local;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object())
        return absl::InvalidArgumentError(absl::StrCat(path, ": __metadata__ must be an object"));
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": __metadata__ value of \"", m.key(), "\" must be a string, got ", m.value().dump()));
        }
        metadata->emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }
    ASSIGN_OR_RETURN(SafetensorsEntry e, ParseEntry(it.value(), absl::StrCat(path, ": tensor ", it.key()), data_bytes));
    e.file = static_cast<int>(files_.size()) - 1;
    local.emplace(it.key(), std::move(e));
  }
  RETURN_IF_ERROR(CheckTiling(path, local, data_bytes));
  for (auto& [name, e] : local) {
    if (entries->count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", name, " also appears in ", files_[entries->at(name).file].file.path()));
    }
    entries->emplace(name, std::move(e));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(const std::string& path) {
  std::unique_ptr<SafetensorsReader> r(new SafetensorsReader());
  std::string file = path;
  if (IsDirectory(path)) {
    if (IsFile(path + "/model.safetensors")) {
      file = path + "/model.safetensors";
    } else if (IsFile(path + "/model.safetensors.index.json")) {
      file = path + "/model.safetensors.index.json";
    } else {
      return absl::NotFoundError(
          absl::StrCat(path, ": directory holds neither model.safetensors nor model.safetensors.index.json"));
    }
  }
  r->path_ = file;
  if (!EndsWith(file, ".index.json")) {
    RETURN_IF_ERROR(r->AddFile(file, &r->entries_, &r->metadata_));
    return r;
  }

  ASSIGN_OR_RETURN(const std::string index_text, ReadFile(file));
  r->index_digest_ = {index_text.size(), Crc32c(index_text)};
  ASSIGN_OR_RETURN(const json index, ParseJson(index_text, file));
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": must be a JSON object with a \"weight_map\" object"));
  }
  if (index.contains("metadata") && index["metadata"].is_object()) {
    for (auto m = index["metadata"].begin(); m != index["metadata"].end(); ++m) {
      r->metadata_.emplace(m.key(), m.value().is_string() ? m.value().get<std::string>() : m.value().dump());
    }
  }
  std::map<std::string, std::string> weight_map;
  std::set<std::string> shards;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it.value().is_string() || it.value().get<std::string>().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": weight_map[\"", it.key(), "\"] must be a shard file name, got ", it.value().dump()));
    }
    weight_map[it.key()] = it.value().get<std::string>();
    shards.insert(it.value().get<std::string>());
  }
  const std::string dir = Dirname(file);
  for (const std::string& shard : shards) {
    std::map<std::string, SafetensorsEntry> shard_entries;
    RETURN_IF_ERROR(r->AddFile(dir + "/" + shard, &shard_entries, &r->metadata_));
    for (auto& [name, e] : shard_entries) {
      auto it = weight_map.find(name);
      if (it == weight_map.end() || it->second != shard) {
        return absl::InvalidArgumentError(absl::StrCat(dir, "/", shard, ": holds tensor ", name, " that ", file,
                                                       " maps to ", it == weight_map.end() ? "no shard" : it->second));
      }
      r->entries_.emplace(name, std::move(e));
    }
  }
  for (const auto& [name, shard] : weight_map) {
    if (!r->entries_.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": weight_map maps tensor ", name, " to ", shard, ", which does not hold it"));
    }
  }
  return r;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry* SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const std::string& SafetensorsReader::file_of(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? path_ : files_[it->second.file].file.path();
}

namespace {
// Reads and checksums go through the map in pieces this size, so a piece copied is still in cache when
// it is checksummed, and pages are dropped as the pass moves on.
constexpr uint64_t kPassPiece = uint64_t{1} << 18;
}  // namespace

absl::StatusOr<at::Tensor> SafetensorsReader::Read(const std::string& name) const {
  const SafetensorsEntry* e = entry(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat(path_, ": no tensor named ", name));
  at::Tensor t = at::empty(e->shape, at::TensorOptions().dtype(e->scalar_type));
  RETURN_IF_ERROR(ReadInto(name, t));
  return t;
}

absl::Status SafetensorsReader::ReadInto(const std::string& name, at::Tensor dst) const {
  const SafetensorsEntry* e = entry(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat(path_, ": no tensor named ", name));
  if (dst.sizes() != at::IntArrayRef(e->shape)) {
    return absl::InvalidArgumentError(absl::StrCat(file_of(name), ": tensor ", name, " has shape ",
                                                   ShapeString(e->shape), ", the destination ",
                                                   ShapeString(dst.sizes().vec())));
  }
  if (!dst.device().is_cpu() || dst.scalar_type() != e->scalar_type || !dst.is_contiguous()) {
    at::Tensor t = at::empty(e->shape, at::TensorOptions().dtype(e->scalar_type));
    RETURN_IF_ERROR(ReadInto(name, t));
    at::NoGradGuard no_grad;
    dst.copy_(t);
    return absl::OkStatus();
  }
  if (e->end == e->begin) return absl::OkStatus();
  const Shard& shard = files_[e->file];
  const uint8_t* src = shard.data + e->begin;
  const uint64_t n = e->end - e->begin;
  auto* out = static_cast<uint8_t*>(dst.data_ptr());
  const bool checksum = track_ && !shard.pieces.count(e->begin);
  shard.file.Prefetch(src, n);
  uint32_t crc = 0;
  for (uint64_t at = 0; at < n; at += kPassPiece) {
    const uint64_t m = std::min(kPassPiece, n - at);
    std::memcpy(out + at, src + at, m);
    if (checksum) crc = Crc32cExtend(crc, out + at, m);
    // Drop the pages just read from this process (a neighbour's page read again later comes back from the
    // page cache), so reading a checkpoint tensor by tensor keeps resident memory at about one tensor.
    shard.file.Release(src + at, m);
  }
  if (checksum) shard.pieces.emplace(e->begin, std::make_pair(e->end, crc));
  // An in-place write like copy_: whoever keys on the version (bf16 compute copies, autograd) sees it.
  if (!dst.is_inference()) dst.unsafeGetTensorImpl()->bump_version();
  return absl::OkStatus();
}

std::vector<std::string> SafetensorsReader::files() const {
  std::vector<std::string> out;
  for (const Shard& shard : files_) out.push_back(shard.file.path());
  return out;
}

absl::StatusOr<FileDigest> SafetensorsReader::Digest(const std::string& file) const {
  if (file == path_ && EndsWith(path_, ".index.json")) return index_digest_;  // read whole by Open
  for (const Shard& shard : files_) {
    if (shard.file.path() != file) continue;
    // The bytes [from, to) of the file that no tracked Read covered, read here from the map.
    auto through = [&](uint32_t crc, const uint8_t* from, const uint8_t* to) {
      if (to > from) shard.file.Prefetch(from, to - from);
      for (; from < to; from += std::min<uint64_t>(kPassPiece, to - from)) {
        const uint64_t m = std::min<uint64_t>(kPassPiece, to - from);
        crc = Crc32cExtend(crc, from, m);
        shard.file.Release(from, m);
      }
      return crc;
    };
    uint32_t crc = through(0, shard.file.data(), shard.data);  // length and header
    uint64_t at = 0;                                           // data-relative
    for (const auto& [begin, piece] : shard.pieces) {
      crc = through(crc, shard.data + at, shard.data + begin);
      crc = Crc32cCombine(crc, piece.second, piece.first - begin);
      at = piece.first;
    }
    crc = through(crc, shard.data + at, shard.data + shard.data_bytes);
    return FileDigest{static_cast<uint64_t>(shard.file.size()), crc};
  }
  return absl::NotFoundError(absl::StrCat(path_, ": the reader holds no file ", file));
}

absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensors(const std::string& path,
                                                                  std::map<std::string, std::string>* metadata) {
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : reader->names()) {
    ASSIGN_OR_RETURN(out[name], reader->Read(name));
  }
  if (metadata != nullptr) *metadata = reader->metadata();
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata, FileDigest* digest) {
  std::vector<StreamedTensor> items;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, " is undefined"));
    const at::Tensor* value = &t;
    items.push_back({name, t.scalar_type(), t.sizes().vec(), [value] { return *value; }});
  }
  return WriteSafetensorsStreamed(path, std::move(items), metadata, digest);
}

absl::Status WriteSafetensorsStreamed(const std::string& path, std::vector<StreamedTensor> tensors,
                                      const std::map<std::string, std::string>& metadata, FileDigest* digest) {
  struct Item {
    StreamedTensor* tensor;
    const DtypeInfo* dtype;
    uint64_t bytes;
  };
  std::sort(tensors.begin(), tensors.end(),
            [](const StreamedTensor& a, const StreamedTensor& b) { return a.name < b.name; });
  std::vector<Item> items;
  for (StreamedTensor& t : tensors) {
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor name __metadata__ is reserved"));
    }
    if (!items.empty() && items.back().tensor->name == t.name) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", t.name, " appears twice"));
    }
    auto dtype = SafetensorsDtypeName(t.dtype);
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", t.name, ": ", dtype.status().message()));
    }
    const DtypeInfo* info = FindDtype(*dtype);
    uint64_t numel = 1;
    for (const int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    items.push_back({&t, info, numel * static_cast<uint64_t>(c10::elementSize(t.dtype))});
  }
  // Python's order (ranks descend with element size, so every tensor is naturally aligned), then by name.
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.dtype->rank > b.dtype->rank; });
  json header = json::object();
  uint64_t offset = 0;
  for (const Item& item : items) {
    header[item.tensor->name] = {
        {"dtype", item.dtype->name}, {"shape", item.tensor->shape}, {"data_offsets", {offset, offset + item.bytes}}};
    offset += item.bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  absl::Status produced = absl::OkStatus();
  FileDigest sum;
  auto put = [&](FILE* f, const void* bytes, uint64_t n) {
    sum.crc32c = Crc32cExtend(sum.crc32c, bytes, n);
    sum.bytes += n;
    return std::fwrite(bytes, 1, n, f) == n;
  };
  absl::Status written = WriteFileAtomically(path, [&](FILE* f) {
    const uint64_t len = text.size();
    if (!put(f, &len, 8) || !put(f, text.data(), text.size())) return false;
    for (const Item& item : items) {
      absl::StatusOr<at::Tensor> t = item.tensor->produce();
      if (!t.ok()) {
        produced = absl::Status(t.status().code(),
                                absl::StrCat(path, ": tensor ", item.tensor->name, ": ", t.status().message()));
        return false;
      }
      if (!t->defined() || t->scalar_type() != item.tensor->dtype ||
          t->sizes() != at::IntArrayRef(item.tensor->shape)) {
        produced = absl::InternalError(absl::StrCat(
            path, ": tensor ", item.tensor->name, " was declared ", c10::toString(item.tensor->dtype), " [",
            absl::StrJoin(item.tensor->shape, ","), "] but produced ",
            t->defined() ? absl::StrCat(c10::toString(t->scalar_type()), " [", absl::StrJoin(t->sizes(), ","), "]")
                         : "an undefined tensor"));
        return false;
      }
      const at::Tensor host = t->detach().to(at::kCPU).contiguous();
      if (item.bytes > 0 && !put(f, host.data_ptr(), item.bytes)) return false;
    }
    return true;
  });
  if (!produced.ok()) return produced;
  if (written.ok() && digest != nullptr) *digest = sum;
  return written;
}

absl::Status WriteSafetensorsIndex(const std::string& path, const std::map<std::string, std::string>& weight_map,
                                   const std::map<std::string, std::string>& metadata) {
  json index = {{"metadata", metadata}, {"weight_map", weight_map}};
  return WriteFileAtomically(path, index.dump(2) + "\n");
}

}  // namespace hybridmoe
