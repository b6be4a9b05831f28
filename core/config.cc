#include "core/config.h"

#include <numeric>

#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/files.h"
#include "core/status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace hybridmoe {
namespace {

// Collects the first parse error with its position instead of printing to stderr.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  void AddWarning(int, int, const std::string&) override {}
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

absl::Status ParseInto(const std::string& text, const std::string& origin, TrainConfig& config) {
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  TrainConfig parsed;
  if (!parser.ParseFromString(text, &parsed)) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", errors.first()));
  }
  MergeOverride(parsed, config);
  return absl::OkStatus();
}

// Clears in `base` every repeated field that `override` sets, at any depth, so that MergeFrom then replaces
// those lists instead of appending to them.
void ClearRepeatedSetBy(const google::protobuf::Message& override, google::protobuf::Message& base) {
  const google::protobuf::Reflection* r = override.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(override, &fields);  // the set fields; a repeated field only when non-empty
  for (const google::protobuf::FieldDescriptor* f : fields) {
    if (f->is_repeated()) {
      base.GetReflection()->ClearField(&base, f);
    } else if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      ClearRepeatedSetBy(r->GetMessage(override, f), *base.GetReflection()->MutableMessage(&base, f));
    }
  }
}

// Accumulates the first violated rule.
class Checker {
 public:
  template <typename T>
  void Range(const std::string& field, T value, T lo, T hi) {
    if (!status_.ok()) return;
    if (!(value >= lo && value <= hi)) {
      status_ = absl::InvalidArgumentError(absl::StrCat(field, " (", value, ") must be in [", lo, ", ", hi, "]"));
    }
  }
  void Require(bool ok, const std::string& message) {
    if (status_.ok() && !ok) status_ = absl::InvalidArgumentError(message);
  }
  void Require(const absl::Status& s) {
    if (status_.ok()) status_ = s;
  }
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

}  // namespace

void MergeOverride(const TrainConfig& override, TrainConfig& config) {
  ClearRepeatedSetBy(override, config);
  config.MergeFrom(override);
}

absl::StatusOr<TrainConfig> ParseConfigText(const std::string& text, const std::string& origin) {
  TrainConfig config;
  RETURN_IF_ERROR(ParseInto(text, origin, config));
  return config;
}

absl::StatusOr<TrainConfig> LoadConfig(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config file ", path, ": cannot be opened"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  TrainConfig config;
  RETURN_IF_ERROR(ParseInto(buffer.str(), path, config));
  for (const std::string& text : overrides) RETURN_IF_ERROR(ParseInto(text, "--override", config));
  ResolveDefaults(config);
  return config;
}

namespace {

// Sets every unset scalar field to its declared default, recursively, so the resolved config written to
// a run directory shows every value the run used.
void FillDefaults(google::protobuf::Message& message) {
  const google::protobuf::Descriptor* d = message.GetDescriptor();
  const google::protobuf::Reflection* r = message.GetReflection();
  using FD = google::protobuf::FieldDescriptor;
  for (int i = 0; i < d->field_count(); ++i) {
    const FD* f = d->field(i);
    if (f->is_repeated()) {
      if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
        for (int j = 0; j < r->FieldSize(message, f); ++j) FillDefaults(*r->MutableRepeatedMessage(&message, f, j));
      }
      continue;
    }
    if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      FillDefaults(*r->MutableMessage(&message, f));
      continue;
    }
    if (r->HasField(message, f) || f->real_containing_oneof() != nullptr) continue;
    switch (f->cpp_type()) {
      case FD::CPPTYPE_INT32: r->SetInt32(&message, f, f->default_value_int32()); break;
      case FD::CPPTYPE_INT64: r->SetInt64(&message, f, f->default_value_int64()); break;
      case FD::CPPTYPE_UINT32: r->SetUInt32(&message, f, f->default_value_uint32()); break;
      case FD::CPPTYPE_UINT64: r->SetUInt64(&message, f, f->default_value_uint64()); break;
      case FD::CPPTYPE_DOUBLE: r->SetDouble(&message, f, f->default_value_double()); break;
      case FD::CPPTYPE_FLOAT: r->SetFloat(&message, f, f->default_value_float()); break;
      case FD::CPPTYPE_BOOL: r->SetBool(&message, f, f->default_value_bool()); break;
      case FD::CPPTYPE_ENUM: r->SetEnum(&message, f, f->default_value_enum()); break;
      case FD::CPPTYPE_STRING: r->SetString(&message, f, f->default_value_string()); break;
      case FD::CPPTYPE_MESSAGE: break;
    }
  }
}

}  // namespace

void ResolveDefaults(TrainConfig& config) {
  if (config.data().train_size() == 0) config.mutable_data()->add_train()->set_path("data/corpus/train.bin");
  NormConfig* norm = config.mutable_model()->mutable_norm();
  if (!norm->has_qk_norm_granularity()) {
    const bool per_head =
        norm->strategy() == NormConfig::HYBRID_NORM || norm->strategy() == NormConfig::HYBRID_NORM_STAR;
    norm->set_qk_norm_granularity(per_head ? NormConfig::PER_HEAD : NormConfig::FULL_WIDTH);
  }
  FillDefaults(config);
}

namespace {

std::string Divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; ++i) {
    if (n % i == 0) d.push_back(i);
  }
  return absl::StrJoin(d, ", ");
}

}  // namespace

absl::Status ValidateParallelConfig(const TrainConfig& config, int world_size) {
  const ParallelConfig& p = config.parallel();
  const int ep = p.expert_parallel_size();
  if (ep < 1 || (world_size > 0 && world_size % ep != 0)) {
    return absl::InvalidArgumentError(
        world_size > 0 ? absl::StrCat("parallel.expert_parallel_size (", ep, ") must divide the number of ranks (",
                                      world_size, "); valid: ", Divisors(world_size))
                       : absl::StrCat("parallel.expert_parallel_size (", ep, ") must be >= 1"));
  }
  const int experts = config.model().moe().num_experts();
  if (config.model().moe().every_n_layers() > 0 && experts % ep != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.moe.num_experts (", experts, ") must be divisible by parallel.expert_parallel_size (", ep,
                     "); valid sizes here: ", Divisors(world_size > 0 ? std::gcd(experts, world_size) : experts)));
  }
  if (!(p.timeout_s() > 0) || p.timeout_s() > 1e7) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.timeout_s (", p.timeout_s(), ") must be > 0 seconds (and at most 1e7)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateConfig(const TrainConfig& config, int world_size, bool check_files) {
  Checker c;
  const ModelConfig& m = config.model();
  const MoeConfig& moe = m.moe();
  const int kMax = 1 << 30;
  c.Range("model.vocab_size", m.vocab_size(), 2, kMax);
  c.Range("model.d_model", m.d_model(), 1, kMax);
  c.Range("model.n_layers", m.n_layers(), 1, 100000);
  c.Range("model.n_heads", m.n_heads(), 1, m.d_model());
  c.Require(m.d_model() % std::max(1, m.n_heads()) == 0,
            absl::StrCat("model.d_model (", m.d_model(), ") must be divisible by model.n_heads (", m.n_heads(), ")"));
  c.Require(m.d_model() / std::max(1, m.n_heads()) % 2 == 0,
            absl::StrCat("model.d_model / model.n_heads (", m.d_model() / std::max(1, m.n_heads()),
                         ") must be even for rotary embeddings"));
  c.Range("model.max_seq_len", m.max_seq_len(), 1, kMax);
  c.Range("model.rope_theta", m.rope_theta(), 1.0, 1e12);
  c.Range("model.dense_hidden", m.dense_hidden(), 1, kMax);
  c.Range("model.norm.eps", m.norm().eps(), 1e-12, 1.0);
  c.Range("model.norm.mix_ln_alpha", m.norm().mix_ln_alpha(), 0.0, 1.0);
  c.Range("model.moe.num_experts", moe.num_experts(), 1, 1 << 20);
  c.Range("model.moe.top_k", moe.top_k(), 1, moe.num_experts());
  c.Range("model.moe.expert_hidden", moe.expert_hidden(), 1, kMax);
  c.Range("model.moe.every_n_layers", moe.every_n_layers(), 0, m.n_layers());
  c.Require(moe.capacity_factor() == 0 || moe.capacity_factor() > 0,
            absl::StrCat("model.moe.capacity_factor (", moe.capacity_factor(), ") must be 0 (dropless) or > 0"));
  c.Range("model.moe.capacity_factor", moe.capacity_factor(), 0.0, 1e6);
  c.Range("model.moe.lb_loss_weight", moe.lb_loss_weight(), 0.0, 1e6);
  c.Range("model.moe.z_loss_weight", moe.z_loss_weight(), 0.0, 1e6);
  c.Require(moe.router_logit_bias_size() == 0 || moe.router_logit_bias_size() == moe.num_experts(),
            absl::StrCat("model.moe.router_logit_bias has ", moe.router_logit_bias_size(),
                         " values; it must be empty or have model.moe.num_experts (", moe.num_experts(), ")"));
  c.Range("model.moe.first_dense_layers", moe.first_dense_layers(), 0, m.n_layers());
  c.Require(!moe.softmax_after_topk() || moe.score_function() == MoeConfig::SOFTMAX,
            absl::StrCat("model.moe.softmax_after_topk applies to score_function SOFTMAX only, not ",
                         MoeConfig::ScoreFunction_Name(moe.score_function())));
  c.Range("model.moe.bias_update_rate", moe.bias_update_rate(), 0.0, 1e3);
  c.Range("model.moe.shared_expert_hidden", moe.shared_expert_hidden(), 0, kMax);
  c.Require(!moe.shared_expert_gate() || moe.shared_expert_hidden() > 0,
            "model.moe.shared_expert_gate needs a shared expert (model.moe.shared_expert_hidden > 0)");
  c.Range("model.init.std", m.init().std(), 1e-8, 10.0);

  const DataConfig& d = config.data();
  c.Range("data.seq_len", d.seq_len(), 1, m.max_seq_len());
  c.Range("data.micro_batch_size", d.micro_batch_size(), 1, kMax);
  c.Range("data.grad_accum_steps", d.grad_accum_steps(), 1, 1 << 20);
  c.Require(d.dtype() == DataConfig::UINT32 || m.vocab_size() <= 65536,
            absl::StrCat("model.vocab_size (", m.vocab_size(), ") needs data.dtype UINT32 (UINT16 holds ids < 65536)"));
  c.Require(d.train_size() > 0, "data.train must list at least one file");
  for (int i = 0; i < d.train_size(); ++i) {
    const std::string field = absl::StrCat("data.train[", i, "]");
    c.Require(!d.train(i).path().empty(), field + ".path must be set");
    c.Range(field + ".weight", d.train(i).weight(), 1e-12, 1e12);
    if (check_files) {
      c.Require(IsFile(d.train(i).path()),
                absl::StrCat(field, ".path (", d.train(i).path(), ") does not exist or is not a file",
                             d.train(i).path().rfind("data/corpus/", 0) == 0 ? "; run tools/setup.sh" : ""));
    }
  }
  if (check_files && !d.validation().empty()) {
    c.Require(IsFile(d.validation()), absl::StrCat("data.validation (", d.validation(),
                                                   ") does not exist or is not a file; set it to a token "
                                                   "file or to \"\" to disable validation"));
  }

  const OptimConfig& o = config.optim();
  c.Range("optim.lr", o.lr(), 0.0, 10.0);
  c.Range("optim.beta1", o.beta1(), 0.0, 0.999999);
  c.Range("optim.beta2", o.beta2(), 0.0, 0.99999999);
  c.Range("optim.eps", o.eps(), 0.0, 1.0);
  c.Range("optim.weight_decay", o.weight_decay(), 0.0, 10.0);
  c.Range("optim.grad_clip", o.grad_clip(), 0.0, 1e9);
  c.Range("optim.warmup_steps", o.warmup_steps(), 0, kMax);
  c.Range("optim.warmup_start_ratio", o.warmup_start_ratio(), 0.0, 1.0);
  c.Range("optim.min_lr_ratio", o.min_lr_ratio(), 0.0, 1.0);

  const ParallelConfig& p = config.parallel();
  if (c.status().ok()) c.Require(ValidateParallelConfig(config, world_size));
  c.Range("parallel.num_threads", p.num_threads(), 0, 4096);

  c.Range("checkpoint.interval", config.checkpoint().interval(), 0, kMax);
  c.Range("checkpoint.keep_last", config.checkpoint().keep_last(), 1, 1000000);
  c.Range("logging.log_interval", config.logging().log_interval(), 1, kMax);
  c.Range("train.steps", config.train().steps(), 1, kMax);
  c.Range("train.eval_interval", config.train().eval_interval(), 0, kMax);
  c.Range("train.eval_batches", config.train().eval_batches(), 1, kMax);
  c.Range("train.max_consecutive_bad_steps", config.train().max_consecutive_bad_steps(), 1, kMax);
  return c.status();
}

std::string ConfigToText(const TrainConfig& config) {
  std::string text;
  google::protobuf::TextFormat::Printer printer;
  printer.PrintToString(config, &text);
  return text;
}

}  // namespace hybridmoe
