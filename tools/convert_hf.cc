// Hugging Face OLMoE <-> HybridMoE model directories.
//   convert_hf --from_hf=HF_DIR --out=OUR_DIR   import (config.json + model.safetensors or sharded index)
// Import streams tensor by tensor (models/weights.h ConvertToModelDir): the Hub's sharded bf16 flagship (14 GB)
// converts with about one tensor in memory (docs/flagship.md has the measurement).
//   convert_hf --to_hf=HF_DIR --from=OUR_DIR    export (config.json with model_type "olmoe" + model.safetensors)
// An imported model is QK_NORM with FULL_WIDTH q/k norms, RMSNorm (eps = rms_norm_eps), every block MoE.
// Import refuses, with one line naming the config.json key and value, what that cannot represent:
// grouped-query attention, clip_qkv, attention biases, tied embeddings, rope_scaling, a non-silu activation.
// HF's router_aux_loss_coef is not copied into model.moe.lb_loss_weight (HF's balance loss pools layers and
// equals k at balance, ours is a per-layer mean equal to 1): the original config.json is kept verbatim in the
// weights' metadata ("hf_config_json") and re-used as the base of an export, so token ids and the coefficient
// survive a round trip.

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/config.h"
#include "core/files.h"
#include "core/safetensors.h"
#include "core/status.h"
#include "models/weights.h"
#include "tools/cli.h"

namespace hybridmoe {
namespace {

using nlohmann::json;

// Per-layer names: HF suffix after "model.layers.<i>." <-> ours after "blocks.<i>.".
const std::pair<const char*, const char*> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn.wq"},
    {"self_attn.k_proj.weight", "attn.wk"},
    {"self_attn.v_proj.weight", "attn.wv"},
    {"self_attn.o_proj.weight", "attn.wo"},
    {"self_attn.q_norm.weight", "attn.q_norm.weight"},
    {"self_attn.k_norm.weight", "attn.k_norm.weight"},
    {"mlp.gate.weight", "moe.router"},
};
// Per-expert names: HF suffix after "model.layers.<i>.mlp.experts.<e>." <-> ours after "blocks.<i>.moe.experts.<e>.".
const std::pair<const char*, const char*> kExpertNames[] = {
    {"gate_proj.weight", "w_gate"}, {"up_proj.weight", "w_up"}, {"down_proj.weight", "w_down"}};
const std::pair<const char*, const char*> kTopNames[] = {
    {"model.embed_tokens.weight", "embed"}, {"model.norm.weight", "final_norm.weight"}, {"lm_head.weight", "lm_head"}};

// Splits "<prefix><int>.<rest>" into (int, rest).
bool SplitIndexed(const std::string& name, const std::string& prefix, int64_t* index, std::string* rest) {
  if (name.rfind(prefix, 0) != 0) return false;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || !absl::SimpleAtoi(name.substr(prefix.size(), dot - prefix.size()), index))
    return false;
  *rest = name.substr(dot + 1);
  return true;
}

// Renames one tensor between the two namings (table pairs: .first HF, .second ours). "" if unknown.
std::string Rename(const std::string& name, bool to_ours) {
  auto from = [&](const auto& p) -> std::string { return to_ours ? p.first : p.second; };
  auto to = [&](const auto& p) -> std::string { return to_ours ? p.second : p.first; };
  for (const auto& p : kTopNames) {
    if (name == from(p)) return to(p);
  }
  const std::string layer_from = to_ours ? "model.layers." : "blocks.",
                    layer_to = to_ours ? "blocks." : "model.layers.";
  const std::string experts_from = to_ours ? "mlp.experts." : "moe.experts.",
                    experts_to = to_ours ? "moe.experts." : "mlp.experts.";
  int64_t layer = 0, expert = 0;
  std::string rest, leaf;
  if (!SplitIndexed(name, layer_from, &layer, &rest)) return "";
  for (const auto& p : kLayerNames) {
    if (rest == from(p)) return absl::StrCat(layer_to, layer, ".", to(p));
  }
  if (!SplitIndexed(rest, experts_from, &expert, &leaf)) return "";
  for (const auto& p : kExpertNames) {
    if (leaf == from(p)) return absl::StrCat(layer_to, layer, ".", experts_to, expert, ".", to(p));
  }
  return "";
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be opened"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Typed config.json access with OlmoeConfig's defaults for absent (or null) keys.
class HfConfig {
 public:
  HfConfig(json j, std::string path) : j_(std::move(j)), path_(std::move(path)) {}
  absl::StatusOr<int64_t> Int(const std::string& key, int64_t fallback) const {
    if (!Present(key)) return fallback;
    if (!j_[key].is_number_integer()) return Bad(key, "must be an integer");
    return j_[key].get<int64_t>();
  }
  absl::StatusOr<double> Number(const std::string& key, double fallback) const {
    if (!Present(key)) return fallback;
    if (!j_[key].is_number()) return Bad(key, "must be a number");
    return j_[key].get<double>();
  }
  absl::StatusOr<bool> Bool(const std::string& key, bool fallback) const {
    if (!Present(key)) return fallback;
    if (!j_[key].is_boolean()) return Bad(key, "must be true or false");
    return j_[key].get<bool>();
  }
  bool Present(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }
  absl::Status Bad(const std::string& key, const std::string& why) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", key, " (", j_.contains(key) ? j_[key].dump() : "absent", ") ", why));
  }

 private:
  json j_;
  std::string path_;
};

absl::StatusOr<TrainConfig> ConfigFromHf(const std::string& path, const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": malformed JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": must be a JSON object"));
  const HfConfig c(j, path);
  if (!j.contains("model_type") || j["model_type"] != "olmoe") return c.Bad("model_type", "is not \"olmoe\"");
  ASSIGN_OR_RETURN(const int64_t heads, c.Int("num_attention_heads", 16));
  ASSIGN_OR_RETURN(const int64_t hidden, c.Int("hidden_size", 2048));
  ASSIGN_OR_RETURN(const int64_t kv_heads, c.Int("num_key_value_heads", heads));
  if (kv_heads != heads) {
    return c.Bad("num_key_value_heads",
                 absl::StrCat("!= num_attention_heads (", heads, "): grouped-query attention cannot be represented"));
  }
  if (c.Present("clip_qkv")) return c.Bad("clip_qkv", "is set: q/k/v clipping cannot be represented (need null)");
  ASSIGN_OR_RETURN(const bool bias, c.Bool("attention_bias", false));
  if (bias) return c.Bad("attention_bias", "is true: attention biases cannot be represented (need false)");
  ASSIGN_OR_RETURN(const bool tied, c.Bool("tie_word_embeddings", false));
  if (tied) return c.Bad("tie_word_embeddings", "is true: tied embeddings cannot be represented (need false)");
  if (c.Present("rope_scaling")) return c.Bad("rope_scaling", "is set: only plain RoPE can be represented (need null)");
  if (c.Present("hidden_act") && j["hidden_act"] != "silu")
    return c.Bad("hidden_act", "is not \"silu\" (SwiGLU experts)");
  if (c.Present("head_dim")) {
    ASSIGN_OR_RETURN(const int64_t head_dim, c.Int("head_dim", 0));
    if (heads > 0 && head_dim != hidden / heads) {
      return c.Bad("head_dim", absl::StrCat("!= hidden_size / num_attention_heads (", hidden / heads, ")"));
    }
  }

  TrainConfig config;
  ModelConfig* m = config.mutable_model();
  ASSIGN_OR_RETURN(const int64_t vocab, c.Int("vocab_size", 50304));
  ASSIGN_OR_RETURN(const int64_t layers, c.Int("num_hidden_layers", 16));
  ASSIGN_OR_RETURN(const int64_t max_pos, c.Int("max_position_embeddings", 4096));
  ASSIGN_OR_RETURN(const double theta, c.Number("rope_theta", 10000.0));
  ASSIGN_OR_RETURN(const double eps, c.Number("rms_norm_eps", 1e-5));
  ASSIGN_OR_RETURN(const int64_t experts, c.Int("num_experts", 64));
  ASSIGN_OR_RETURN(const int64_t top_k, c.Int("num_experts_per_tok", 8));
  ASSIGN_OR_RETURN(const int64_t f, c.Int("intermediate_size", 2048));
  ASSIGN_OR_RETURN(const bool norm_topk, c.Bool("norm_topk_prob", false));
  ASSIGN_OR_RETURN(const double init_std, c.Number("initializer_range", 0.02));
  m->set_vocab_size(vocab);
  m->set_d_model(hidden);
  m->set_n_layers(layers);
  m->set_n_heads(heads);
  m->set_max_seq_len(max_pos);
  m->set_rope_theta(theta);
  m->mutable_norm()->set_strategy(NormConfig::QK_NORM);
  m->mutable_norm()->set_kind(NormConfig::RMS);
  m->mutable_norm()->set_eps(eps);
  m->mutable_norm()->set_qk_norm_granularity(NormConfig::FULL_WIDTH);
  m->mutable_moe()->set_num_experts(experts);
  m->mutable_moe()->set_top_k(top_k);
  m->mutable_moe()->set_expert_hidden(f);
  m->mutable_moe()->set_every_n_layers(1);
  m->mutable_moe()->set_normalize_topk(norm_topk);
  m->mutable_init()->set_scheme(InitConfig::NORMAL);
  m->mutable_init()->set_std(init_std);
  if (vocab > 65536) config.mutable_data()->set_dtype(DataConfig::UINT32);
  if (max_pos < config.data().seq_len()) config.mutable_data()->set_seq_len(max_pos);
  ResolveDefaults(config);
  if (absl::Status s = ValidateConfig(config, 1, /*check_files=*/false); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": converted config is invalid: ", s.message()));
  }
  return config;
}

absl::Status Import(const std::string& hf_dir, const std::string& out_dir, bool overwrite) {
  if (!overwrite && Exists(out_dir + "/" + kWeightsFileName)) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_dir, "/", kWeightsFileName, " exists; pass --overwrite or choose another --out"));
  }
  const std::string config_path = hf_dir + "/config.json";
  ASSIGN_OR_RETURN(const std::string text, ReadText(config_path));
  ASSIGN_OR_RETURN(const TrainConfig config, ConfigFromHf(config_path, text));
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(hf_dir));
  TensorSource source;
  source.origin = reader->path();
  for (const std::string& name : reader->names()) {
    const std::string ours = Rename(name, /*to_ours=*/true);
    if (ours.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader->file_of(name), ": tensor ", name,
                       " has no counterpart in an OLMoE model (not an OLMoE checkpoint?)"));
    }
    const SafetensorsEntry* e = reader->entry(name);
    source.tensors[ours] = {e->shape, e->scalar_type, absl::StrCat(reader->file_of(name), ": tensor ", name),
                            [&reader, name] { return reader->Read(name); }};
  }
  return ConvertToModelDir(config, source, out_dir, {{"hf_config_json", text}, {"converted_from", hf_dir}});
}

// Checks that the model is what OlmoeForCausalLM computes; one line naming the field otherwise.
absl::Status CheckExportable(const ModelConfig& m, const std::string& origin) {
  auto refuse = [&](const std::string& field, const std::string& value, const std::string& need) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": ", field, " (", value, ") cannot be exported to Hugging Face OLMoE (need ", need, ")"));
  };
  if (m.norm().strategy() != NormConfig::QK_NORM) {
    return refuse("model.norm.strategy", NormConfig::Strategy_Name(m.norm().strategy()), "QK_NORM");
  }
  if (m.norm().qk_norm_granularity() != NormConfig::FULL_WIDTH) {
    return refuse("model.norm.qk_norm_granularity", NormConfig::Granularity_Name(m.norm().qk_norm_granularity()),
                  "FULL_WIDTH");
  }
  if (m.norm().kind() != NormConfig::RMS)
    return refuse("model.norm.kind", NormConfig::Kind_Name(m.norm().kind()), "RMS");
  if (m.moe().every_n_layers() != 1) {
    return refuse("model.moe.every_n_layers", std::to_string(m.moe().every_n_layers()), "1: every block MoE");
  }
  for (double b : m.moe().router_logit_bias()) {
    if (b != 0) return refuse("model.moe.router_logit_bias", std::to_string(b), "no router logit bias");
  }
  // Routing features OlmoeForCausalLM cannot hold (OLMoE: softmax over all experts, top-k, no bias, no shared
  // expert, every block MoE).
  if (m.moe().first_dense_layers() != 0) {
    return refuse("model.moe.first_dense_layers", std::to_string(m.moe().first_dense_layers()), "0: every block MoE");
  }
  if (m.moe().score_function() != MoeConfig::SOFTMAX) {
    return refuse("model.moe.score_function", MoeConfig::ScoreFunction_Name(m.moe().score_function()), "SOFTMAX");
  }
  if (m.moe().softmax_after_topk()) return refuse("model.moe.softmax_after_topk", "true", "false");
  if (m.moe().bias_update_rate() != 0) {
    return refuse("model.moe.bias_update_rate", absl::StrCat(m.moe().bias_update_rate()),
                  "0: OLMoE has no selection bias");
  }
  if (m.moe().shared_expert_hidden() != 0) {
    return refuse("model.moe.shared_expert_hidden", std::to_string(m.moe().shared_expert_hidden()),
                  "0: OLMoE has no shared expert");
  }
  return absl::OkStatus();
}

absl::Status Export(const std::string& from_dir, const std::string& hf_dir, bool overwrite) {
  if (!overwrite && (Exists(hf_dir + "/config.json") || Exists(hf_dir + "/model.safetensors"))) {
    return absl::AlreadyExistsError(
        absl::StrCat(hf_dir, " already holds a Hugging Face model; pass --overwrite or choose another --to_hf"));
  }
  ASSIGN_OR_RETURN(const TrainConfig config, ReadModelDirConfig(from_dir));
  const ModelConfig& m = config.model();
  RETURN_IF_ERROR(CheckExportable(m, absl::StrCat(from_dir, "/", kConfigFileName)));
  ASSIGN_OR_RETURN(Transformer model, LoadModelDir(from_dir));
  if (m.moe().capacity_factor() != 0) {
    std::fprintf(stderr,
                 "convert_hf: note: model.moe.capacity_factor (%g) is dropped; Hugging Face OLMoE is dropless\n",
                 m.moe().capacity_factor());
  }
  std::map<std::string, at::Tensor> tensors;
  for (const WeightSlot& s : ModelWeightSlots(model)) {
    const std::string hf = Rename(s.key, /*to_ours=*/false);
    if (hf.empty()) return absl::InternalError(absl::StrCat(from_dir, ": tensor ", s.key, " has no Hugging Face name"));
    tensors[hf] = s.value;
  }
  // The imported config.json (if any) is the base, so keys we do not model (token ids, ...) survive.
  std::map<std::string, std::string> metadata;
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(from_dir + "/" + kWeightsFileName));
  json j = json::object();
  if (reader->metadata().count("hf_config_json")) {
    j = json::parse(reader->metadata().at("hf_config_json"), nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) j = json::object();
  }
  j["architectures"] = {"OlmoeForCausalLM"};
  j["model_type"] = "olmoe";
  j["vocab_size"] = m.vocab_size();
  j["hidden_size"] = m.d_model();
  j["num_hidden_layers"] = m.n_layers();
  j["num_attention_heads"] = m.n_heads();
  j["num_key_value_heads"] = m.n_heads();
  j["intermediate_size"] = m.moe().expert_hidden();
  j["num_experts"] = m.moe().num_experts();
  j["num_experts_per_tok"] = m.moe().top_k();
  j["norm_topk_prob"] = m.moe().normalize_topk();
  j["max_position_embeddings"] = m.max_seq_len();
  j["rope_theta"] = m.rope_theta();
  j["rope_scaling"] = nullptr;
  j["rms_norm_eps"] = m.norm().eps();
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["clip_qkv"] = nullptr;
  j["tie_word_embeddings"] = false;
  j["initializer_range"] = m.init().std();
  if (!j.contains("router_aux_loss_coef")) j["router_aux_loss_coef"] = m.moe().lb_loss_weight();
  // transformers >= 4.56 writes "dtype"; keep an older config's "torch_dtype" key.
  j[j.contains("torch_dtype") && !j.contains("dtype") ? "torch_dtype" : "dtype"] = "float32";
  RETURN_IF_ERROR(MakeDirs(hf_dir));
  RETURN_IF_ERROR(WriteSafetensors(hf_dir + "/model.safetensors", tensors, {{"format", "pt"}}));
  return WriteFileAtomically(hf_dir + "/config.json", j.dump(2) + "\n");
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const std::vector<FlagSpec> specs = {
      {"from_hf", "import: Hugging Face OLMoE directory (config.json + model.safetensors or its shard index)"},
      {"out", "import: our model directory to write (model.safetensors + config.textproto)"},
      {"to_hf", "export: Hugging Face directory to write (config.json + model.safetensors)"},
      {"from", "export: our model directory to read"},
      {"overwrite", "replace an existing model in the output directory", true},
      {"help", "show this help", true},
  };
  const std::string summary = "Converts between Hugging Face OLMoE checkpoints and HybridMoE model directories.";
  int exit_code = 0;
  auto cl = CommandLine::ParseOrExit(argc, argv, "convert_hf", summary, specs, &exit_code);
  if (!cl) return exit_code;
  absl::Status status;
  if (cl->Has("from_hf") && cl->Has("out") && !cl->Has("to_hf") && !cl->Has("from")) {
    status = Import(cl->Get("from_hf"), cl->Get("out"), cl->GetBool("overwrite"));
  } else if (cl->Has("to_hf") && cl->Has("from") && !cl->Has("from_hf") && !cl->Has("out")) {
    status = Export(cl->Get("from"), cl->Get("to_hf"), cl->GetBool("overwrite"));
  } else {
    std::fprintf(stderr, "convert_hf: give either --from_hf=HF_DIR --out=OUR_DIR or --to_hf=HF_DIR --from=OUR_DIR\n");
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "convert_hf: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  std::printf("convert_hf: wrote %s\n", (cl->Has("out") ? cl->Get("out") : cl->Get("to_hf")).c_str());
  return 0;
}
