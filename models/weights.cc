#include "models/weights.h"

#include <ATen/core/grad_mode.h>

#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/files.h"
#include "core/init.h"
#include "core/status.h"

namespace hybridmoe {
namespace {

std::string ShapeString(at::IntArrayRef shape) { return absl::StrCat("[", absl::StrJoin(shape, ","), "]"); }

// "blocks.<i>.moe.experts.<leaf>" -> (i, leaf); false for any other name.
bool SplitExpertParam(const std::string& name, int64_t* block, std::string* leaf) {
  if (!IsExpertName(name)) return false;
  const size_t pos = name.find(kExpertsInfix);
  *leaf = name.substr(pos + sizeof(kExpertsInfix) - 1);
  return leaf->find('.') == std::string::npos && absl::SimpleAtoi(name.substr(7, pos - 7), block);
}

// Whether `key` is blocks.<i>.moe.experts.<g>.<leaf> for an expert of this model that another rank holds.
bool IsOtherRanksExpert(Transformer& model, const std::string& key, const std::set<std::string>& param_names) {
  if (!IsExpertName(key)) return false;
  const size_t pos = key.find(kExpertsInfix);
  const std::vector<std::string> rest = absl::StrSplit(key.substr(pos + sizeof(kExpertsInfix) - 1), '.');
  int64_t block = 0, expert = 0;
  if (rest.size() != 2 || !absl::SimpleAtoi(key.substr(7, pos - 7), &block) || !absl::SimpleAtoi(rest[0], &expert)) {
    return false;
  }
  if (block < 0 || block >= static_cast<int64_t>(model->blocks.size()) || model->blocks[block]->moe.is_empty()) {
    return false;
  }
  return expert >= 0 && expert < model->blocks[block]->moe->options.num_experts &&
         param_names.count(key.substr(0, pos + sizeof(kExpertsInfix) - 1) + rest[1]) > 0;
}

template <typename Names>
std::string FirstAndCount(const Names& names, const std::function<std::string(const std::string&)>& describe) {
  std::string out = describe(*names.begin());
  if (names.size() > 1) absl::StrAppend(&out, " (and ", names.size() - 1, " more)");
  return out;
}

}  // namespace

std::vector<WeightSlot> ModelWeightSlots(Transformer& model) {
  std::vector<WeightSlot> slots;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) {
    int64_t block = 0;
    std::string leaf;
    if (!SplitExpertParam(item.key(), &block, &leaf)) {
      slots.push_back({item.key(), item.value()});
      continue;
    }
    const ExpertsOptions& e = model->blocks.at(block)->moe->experts->options;
    const std::string prefix = item.key().substr(0, item.key().size() - leaf.size());
    for (int64_t i = 0; i < e.num_local_experts; ++i) {
      slots.push_back({absl::StrCat(prefix, e.first_expert + i, ".", leaf), item.value()[i]});
    }
  }
  for (size_t i = 0; i < model->blocks.size(); ++i) {
    const auto& moe = model->blocks[i]->moe;
    if (!moe.is_empty() && moe->selection_bias.defined()) {
      slots.push_back({absl::StrCat("blocks.", i, ".moe.selection_bias"), moe->selection_bias, /*trainable=*/false});
    }
  }
  return slots;
}

TensorSource SourceFromReader(const SafetensorsReader& reader) {
  TensorSource source;
  source.origin = reader.path();
  for (const std::string& name : reader.names()) {
    const SafetensorsEntry* e = reader.entry(name);
    source.tensors[name] = {e->shape, e->scalar_type, absl::StrCat(reader.file_of(name), ": tensor ", name),
                            [&reader, name] { return reader.Read(name); },
                            [&reader, name](const at::Tensor& dst) { return reader.ReadInto(name, dst); }};
  }
  return source;
}

namespace {

// LoadModelWeightsFrom's checks, before anything is read.
absl::Status CheckSource(Transformer& model, const std::vector<WeightSlot>& slots, const TensorSource& source,
                         bool allow_missing) {
  std::set<std::string> param_names, slot_keys, missing, extra;
  for (const auto& item : model->named_parameters(/*recurse=*/true)) param_names.insert(item.key());
  for (const WeightSlot& s : slots) {
    slot_keys.insert(s.key);
    if (!source.tensors.count(s.key)) missing.insert(s.key);
  }
  std::map<std::string, at::IntArrayRef> expected;
  for (const WeightSlot& s : slots) expected.emplace(s.key, s.value.sizes());
  if (!allow_missing && !missing.empty()) {
    return absl::NotFoundError(
        absl::StrCat(source.origin, ": missing tensor ", FirstAndCount(missing, [&](const std::string& k) {
                       return absl::StrCat(k, " (the model expects shape ", ShapeString(expected.at(k)), ")");
                     })));
  }
  for (const auto& [key, t] : source.tensors) {
    if (!slot_keys.count(key) && !IsOtherRanksExpert(model, key, param_names)) extra.insert(key);
  }
  if (!extra.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source.origin, ": unexpected tensor ",
                     FirstAndCount(extra,
                                   [&](const std::string& k) {
                                     return absl::StrCat(k, " (shape ", ShapeString(source.tensors.at(k).shape), ")");
                                   }),
                     ": not a parameter of this model"));
  }
  for (const WeightSlot& s : slots) {
    auto it = source.tensors.find(s.key);
    if (it == source.tensors.end()) continue;
    const SourceTensor& t = it->second;
    if (at::IntArrayRef(t.shape) != s.value.sizes()) {
      return absl::InvalidArgumentError(absl::StrCat(t.where, " has shape ", ShapeString(t.shape),
                                                     ", the model expects ", ShapeString(s.value.sizes())));
    }
    if (!at::isFloatingType(t.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(t.where, " has dtype ", c10::toString(t.dtype),
                                                     "; the model expects floating point (F32, F16, BF16 or F64)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadModelWeightsFrom(Transformer& model, const TensorSource& source, bool allow_missing) {
  const std::vector<WeightSlot> slots = ModelWeightSlots(model);
  RETURN_IF_ERROR(CheckSource(model, slots, source, allow_missing));
  at::NoGradGuard no_grad;
  for (const WeightSlot& s : slots) {
    auto it = source.tensors.find(s.key);
    if (it == source.tensors.end()) continue;
    if (it->second.read_into) {
      RETURN_IF_ERROR(it->second.read_into(s.value));
      continue;
    }
    ASSIGN_OR_RETURN(const at::Tensor t, it->second.read());
    if (t.sizes() != s.value.sizes()) {
      return absl::InternalError(absl::StrCat(it->second.where, ": read shape ", ShapeString(t.sizes()),
                                              " differs from the header's ", ShapeString(s.value.sizes())));
    }
    at::Tensor dst = s.value;
    dst.copy_(t);
  }
  return absl::OkStatus();
}

absl::Status LoadModelWeights(Transformer& model, const std::string& path, bool allow_missing) {
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  return LoadModelWeightsFrom(model, SourceFromReader(*reader), allow_missing);
}

absl::Status SaveModelWeights(Transformer& model, const std::string& path,
                              const std::map<std::string, std::string>& metadata) {
  std::map<std::string, at::Tensor> tensors;
  for (const WeightSlot& s : ModelWeightSlots(model)) tensors[s.key] = s.value;
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  return WriteSafetensors(path, tensors, meta);
}

absl::Status SaveModelDir(Transformer& model, const TrainConfig& config, const std::string& dir,
                          const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(MakeDirs(dir));
  RETURN_IF_ERROR(SaveModelWeights(model, dir + "/" + kWeightsFileName, metadata));
  TrainConfig full = config;
  ResolveDefaults(full);
  return WriteFileAtomically(dir + "/" + kConfigFileName, ConfigToText(full));
}

absl::Status ConvertToModelDir(const TrainConfig& config, const TensorSource& source, const std::string& dir,
                               const std::map<std::string, std::string>& metadata) {
  // The model's keys, shapes and dtypes without its storage (core/init.h).
  Transformer model = nullptr;
  {
    ParamDeviceScope meta(at::kMeta);
    model = Transformer(TransformerOptionsFromConfig(config.model()));
  }
  const std::vector<WeightSlot> slots = ModelWeightSlots(model);
  RETURN_IF_ERROR(CheckSource(model, slots, source, /*allow_missing=*/false));
  std::vector<StreamedTensor> tensors;
  for (const WeightSlot& s : slots) {
    const SourceTensor* from = &source.tensors.at(s.key);
    const at::ScalarType dtype = s.value.scalar_type();
    const std::vector<int64_t> shape = s.value.sizes().vec();
    tensors.push_back({s.key, dtype, shape, [from, dtype, shape]() -> absl::StatusOr<at::Tensor> {
                         ASSIGN_OR_RETURN(const at::Tensor t, from->read());
                         if (t.sizes() != at::IntArrayRef(shape)) {
                           return absl::InternalError(absl::StrCat(from->where, ": read shape ", ShapeString(t.sizes()),
                                                                   " differs from the header's ", ShapeString(shape)));
                         }
                         return t.to(dtype);
                       }});
  }
  RETURN_IF_ERROR(MakeDirs(dir));
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  RETURN_IF_ERROR(WriteSafetensorsStreamed(dir + "/" + kWeightsFileName, std::move(tensors), meta));
  TrainConfig full = config;
  ResolveDefaults(full);
  return WriteFileAtomically(dir + "/" + kConfigFileName, ConfigToText(full));
}

absl::StatusOr<TrainConfig> ReadModelDirConfig(const std::string& dir) {
  const std::string path = dir + "/" + kConfigFileName;
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be opened (is ", dir, " a model directory?)"));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(TrainConfig config, ParseConfigText(text.str(), path));
  ResolveDefaults(config);
  TrainConfig single = config;
  single.mutable_parallel()->set_expert_parallel_size(1);
  if (absl::Status s = ValidateConfig(single, /*world_size=*/1, /*check_files=*/false); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", s.message()));
  }
  return config;
}

absl::StatusOr<Transformer> LoadModelDir(const std::string& dir, TrainConfig* config_out) {
  ASSIGN_OR_RETURN(TrainConfig config, ReadModelDirConfig(dir));
  Transformer model(TransformerOptionsFromConfig(config.model()));
  RETURN_IF_ERROR(LoadModelWeights(model, dir + "/" + kWeightsFileName));
  if (config_out != nullptr) *config_out = config;
  return model;
}

}  // namespace hybridmoe
