// Model weights <-> safetensors files, and model directories.
//
// File keys are the model's named_parameters() names, except that stacked expert tensors are split by
// GLOBAL expert id: the module tensor blocks.<i>.moe.experts.w_gate [E_local, F, D] of a model holding
// experts [first, first + E_local) is stored as blocks.<i>.moe.experts.<first + e>.w_gate [F, D] (same for
// w_up, w_down, hidden_norm, hidden_norm_bias). A file therefore does not depend on the expert sharding:
// a file saved from a model holding experts [0, 8) loads into one holding experts [4, 8) (the experts of
// other ranks are skipped), and a model saves only the experts it holds.
//
// Loading checks, before copying anything, that every tensor the model holds is present (unless
// allow_missing), that no tensor is left over (other ranks' experts aside), shapes match exactly and dtypes
// are floating point (F16/BF16/F64 are converted to the parameter's dtype). Errors are one line, e.g.
//   run/model.safetensors: tensor blocks.0.attn.wq has shape [64,32], the model expects [64,64]
//
// A model directory (what `convert_hf` and checkpoints produce, what `eval` reads) holds
//   model.safetensors   the weights (metadata "format": "pt", as Hugging Face expects)
//   config.textproto    a full TrainConfig; its model section builds the model
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/safetensors.h"
#include "models/transformer.h"
#include "proto/config.pb.h"

namespace hybridmoe {

inline constexpr char kWeightsFileName[] = "model.safetensors";
inline constexpr char kConfigFileName[] = "config.textproto";

// One file key and the model tensor behind it: the parameter, or one expert's slice (a view) of it, or a
// model-state buffer (trainable = false: no gradient, no optimizer state).
struct WeightSlot {
  std::string key;
  at::Tensor value;
  bool trainable = true;
};

// The model's tensors under their file keys, in named_parameters() order, then the model-state buffers: the
// aux-loss-free selection bias of each MoE layer that has one (blocks.<i>.moe.selection_bias [E], replicated).
std::vector<WeightSlot> ModelWeightSlots(Transformer& model);

// Named tensors to load from, with shapes and dtypes known before reading.
struct SourceTensor {
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;
  std::string where;  // for errors, e.g. "dir/model.safetensors: tensor embed"
  std::function<absl::StatusOr<at::Tensor>()> read;
  // Optional: reads straight into a destination of the same shape (SafetensorsReader::ReadInto).
  std::function<absl::Status(const at::Tensor&)> read_into;
};
struct TensorSource {
  std::string origin;                           // the file or directory, for errors
  std::map<std::string, SourceTensor> tensors;  // by file key (our naming)
};

// Every tensor of `reader` under its own name. The reader must outlive the source.
TensorSource SourceFromReader(const SafetensorsReader& reader);

// Copies `source` into the model (see the header comment for the checks).
absl::Status LoadModelWeightsFrom(Transformer& model, const TensorSource& source, bool allow_missing = false);
// `path`: a .safetensors file, an index.json, or a directory holding either.
absl::Status LoadModelWeights(Transformer& model, const std::string& path, bool allow_missing = false);
// Writes the model's tensors (CPU copies) to `path` atomically; "format": "pt" is added to `metadata`.
absl::Status SaveModelWeights(Transformer& model, const std::string& path,
                              const std::map<std::string, std::string>& metadata = {});

// Model directories: creates `dir` if needed and writes model.safetensors then config.textproto.
absl::Status SaveModelDir(Transformer& model, const TrainConfig& config, const std::string& dir,
                          const std::map<std::string, std::string>& metadata = {});
// Writes the model directory of `config`'s model straight from `source`, without holding the model: the
// model is built on the meta device (core/init.h) for its keys, shapes and dtypes, `source` passes the checks
// of LoadModelWeightsFrom, and each tensor is read, converted to the parameter's dtype and written one at a
// time (core/safetensors.h WriteSafetensorsStreamed). The files are those SaveModelDir writes for the model
// loaded from `source`; peak memory is about two copies of the largest tensor (convert_hf --from_hf).
absl::Status ConvertToModelDir(const TrainConfig& config, const TensorSource& source, const std::string& dir,
                               const std::map<std::string, std::string>& metadata = {});
// Parses dir/config.textproto and validates it (files not checked, as for a single process).
absl::StatusOr<TrainConfig> ReadModelDirConfig(const std::string& dir);
// Builds the model of dir/config.textproto (CPU, fp32) and loads dir/model.safetensors into it.
absl::StatusOr<Transformer> LoadModelDir(const std::string& dir, TrainConfig* config = nullptr);

}  // namespace hybridmoe
