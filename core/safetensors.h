// Reading and writing .safetensors files (the Hugging Face tensor format).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [a, b], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>"}}
// (padded with trailing spaces), then the raw little-endian tensor data; offsets are relative to the
// first byte after the header. Known dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
//
// SafetensorsReader memory-maps one file, or every shard of a Hugging Face sharded checkpoint
// (`model.safetensors.index.json` with its "weight_map"), validates every header up front (header length
// vs file size, well-formed JSON, known dtypes, offsets in range, tensors contiguous and covering the data
// section, byte size = numel * dtype size) and reads tensors on demand, copied out of the map into CPU
// at::Tensors. Every error is one line naming the file and tensor, e.g.
//   ckpt/model.safetensors: tensor blocks.0.attn.wq: data_offsets [0,4096) end past the data section
//   (1024 bytes; truncated file?)
// Read copies a tensor out of the map and then drops the mapped pages it touched (madvise DONTNEED; the page
// cache keeps them), so reading every tensor of a 14 GB checkpoint one at a time keeps the process's resident
// memory at about one tensor, not the checkpoint. WriteSafetensorsStreamed writes tensors whose bytes are
// produced one at a time, in file order (header first, from the declared shapes and dtypes).
// SafetensorsReader can also checksum each file in the same pass that reads it (TrackChecksums, Digest).
// WriteSafetensors writes keys sorted, data in the order Python's writer uses (by dtype, larger elements
// first, then by name, so every tensor is naturally aligned and the data section is byte-identical), the header padded
// with spaces to a multiple of 8 bytes, to a temporary file that is renamed into place: a failed write never damages an
// existing file.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/files.h"

namespace hybridmoe {

struct SafetensorsEntry {
  std::string dtype;           // as in the file, e.g. "BF16"
  at::ScalarType scalar_type;  // the matching at:: type
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // data_offsets, relative to the data section
  int file = 0;                 // index into the reader's files
};

class SafetensorsReader {
 public:
  // `path` is a .safetensors file, a model.safetensors.index.json, or a directory holding either
  // model.safetensors or model.safetensors.index.json.
  static absl::StatusOr<std::unique_ptr<SafetensorsReader>> Open(const std::string& path);
  ~SafetensorsReader() = default;
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // nullptr when absent.
  const SafetensorsEntry* entry(const std::string& name) const;
  // Copies one tensor out of the map (CPU, contiguous, the file's dtype).
  absl::StatusOr<at::Tensor> Read(const std::string& name) const;
  // Copies one tensor out of the map into `dst` (same shape; a CPU tensor of the file's dtype is written in
  // place: contiguous straight from the map, one copy; anything else through a temporary). The pages are
  // asked for ahead of the copy (madvise WILLNEED), so a cold file streams instead of faulting page by page.
  absl::Status ReadInto(const std::string& name, at::Tensor dst) const;
  // The file (shard) holding `name`, for error messages; the opened path when absent.
  const std::string& file_of(const std::string& name) const;
  // The checkpoint loader's single pass over each file. After TrackChecksums(), every Read also takes the
  // CRC-32C of the bytes it copies, piece by piece while they are in cache; Digest(file) then checksums what
  // no Read covered (the header, tensors not read) and joins the pieces in file order (Crc32cCombine). So a
  // file that is loaded and verified is read from disk once, whatever order its tensors are read in.
  void TrackChecksums() { track_ = true; }
  // Size and CRC-32C of `file` (a path as file_of gives it, or the index's path()); NotFound when this reader
  // does not hold it.
  absl::StatusOr<FileDigest> Digest(const std::string& file) const;
  // The files this reader maps (one, or every shard of an index), in the order they were opened.
  std::vector<std::string> files() const;
  // "__metadata__" of the first file (of the index for a sharded checkpoint: its "metadata" strings).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  struct Shard {
    MappedFile file;
    const uint8_t* data = nullptr;  // first byte of the data section
    uint64_t data_bytes = 0;
    // Under TrackChecksums: data-relative begin -> (end, CRC-32C) of every tensor Read so far.
    mutable std::map<uint64_t, std::pair<uint64_t, uint32_t>> pieces;
  };
  SafetensorsReader() = default;
  absl::Status AddFile(const std::string& path, std::map<std::string, SafetensorsEntry>* entries,
                       std::map<std::string, std::string>* metadata);

  std::string path_;
  std::vector<Shard> files_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  bool track_ = false;
  FileDigest index_digest_;  // of the index file, when path_ is one
};

// Reads every tensor of a file, index or directory (see SafetensorsReader::Open).
absl::StatusOr<std::map<std::string, at::Tensor>> ReadSafetensors(
    const std::string& path, std::map<std::string, std::string>* metadata = nullptr);

// Writes `tensors` (any device; must have a known dtype) atomically to `path`. `digest` (optional) receives
// the size and CRC-32C of the bytes written, taken as they are written (no second read of the file).
absl::Status WriteSafetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {}, FileDigest* digest = nullptr);

// A tensor of WriteSafetensorsStreamed: its name, dtype and shape up front, its value produced on demand.
struct StreamedTensor {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  // Called once, in file order; must return a tensor of exactly `dtype` and `shape` (any device, any layout).
  std::function<absl::StatusOr<at::Tensor>()> produce;
};

// Writes `tensors` atomically to `path`, the same bytes WriteSafetensors writes for the same values, holding
// one produced tensor at a time. An error from `produce` or a tensor that differs from its declaration is
// returned (naming the tensor) and leaves no file.
absl::Status WriteSafetensorsStreamed(const std::string& path, std::vector<StreamedTensor> tensors,
                                      const std::map<std::string, std::string>& metadata = {},
                                      FileDigest* digest = nullptr);

// Writes a Hugging Face shard index (`weight_map`: tensor name -> shard file name, relative to the
// index's directory) atomically to `path`.
absl::Status WriteSafetensorsIndex(const std::string& path, const std::map<std::string, std::string>& weight_map,
                                   const std::map<std::string, std::string>& metadata = {});

// The format's dtype name of an at:: type ("F32", ...), or an error naming the type and the known ones.
absl::StatusOr<std::string> SafetensorsDtypeName(at::ScalarType type);

}  // namespace hybridmoe
