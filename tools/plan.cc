// bazel-bin/tools/plan --config=FILE [--override=TEXTPROTO]... [--world_size=N] [--format=text|json]
//   [--expert_parallel_size=N] [--precision=fp32|bf16] [--micro_batch_size=N] [--seq_len=N]
//   [--activation_checkpointing=true|false] [--device_memory=SIZE]
// Parameters (total, active, by component and by block), FLOPs per token and memory per rank of a run,
// from the config alone (models/accounting.h); nothing is allocated. The layout flags override the config's
// fields (parallel.expert_parallel_size, train.precision, data.micro_batch_size, data.seq_len,
// model.activation_checkpointing). --device_memory (bytes per rank: 141GB, 80GiB, 24e9) adds "what fits":
// for each EP degree dividing --world_size, FP32/BF16 and checkpointing off/on, whether the configured
// micro-batch fits and the largest micro-batch and sequence length that do. Errors: one line, exit 1.
#include <cmath>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/config.h"
#include "models/accounting.h"
#include "tools/cli.h"

namespace hybridmoe {
namespace {

std::string Thousands(int64_t v) {
  const std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

std::string Human(double v, const char* unit, double base) {
  const char* si[] = {"", "k", "M", "G", "T", "P"};
  const char* binary[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi"};
  int i = 0;
  while (v >= base && i < 5) {
    v /= base;
    ++i;
  }
  return absl::StrFormat("%.2f %s%s", v, base == 1024 ? binary[i] : si[i], unit);
}

std::string FormatText(const std::string& path, const TrainConfig& c, const ModelAccount& a,
                       const std::vector<FitRow>* fits, int64_t device_bytes) {
  const ModelConfig& m = c.model();
  int64_t n_moe = 0;
  for (const BlockAccount& b : a.blocks) n_moe += b.moe;
  std::string out = absl::StrCat("config  ", path, "\n");
  absl::StrAppend(&out, "model   d_model ", Thousands(m.d_model()), ", ", m.n_layers(), " layers (", n_moe, " MoE, ",
                  m.n_layers() - n_moe, " dense), ", m.n_heads(), " heads, vocab ", Thousands(m.vocab_size()), "; ",
                  m.moe().num_experts(), " experts top-", m.moe().top_k(), ", expert_hidden ",
                  Thousands(m.moe().expert_hidden()), "\n");
  absl::StrAppend(&out, "norm    ", NormConfig::Strategy_Name(m.norm().strategy()), ", ",
                  NormConfig::Kind_Name(m.norm().kind()), "\n");
  absl::StrAppend(&out, "ranks   world ", a.world_size, " = expert-parallel ", a.expert_parallel_size,
                  " x data-parallel ", a.world_size / a.expert_parallel_size, "\n\n");

  absl::StrAppend(&out, absl::StrFormat("%-14s %17s %17s\n", "parameters", "total", "active"));
  for (const auto& [name, count] : a.params.Components()) {
    if (count.total == 0) continue;
    absl::StrAppend(&out, absl::StrFormat("%-14s %17s %17s\n", name, Thousands(count.total), Thousands(count.active)));
  }
  absl::StrAppend(&out,
                  absl::StrFormat("%-14s %17s %17s\n", "total", Thousands(a.total_params), Thousands(a.active_params)));
  absl::StrAppend(&out, absl::StrFormat("%-14s %17s %17s\n\n", "", Human(a.total_params, "", 1000),
                                        Human(a.active_params, "", 1000)));

  // Consecutive blocks with equal counts share a line ("1-15 MoE").
  absl::StrAppend(&out, absl::StrFormat("%-14s %17s %17s\n", "blocks", "total", "active"));
  for (size_t i = 0; i < a.blocks.size();) {
    const ParamCount s = a.blocks[i].params.Sum();
    size_t j = i + 1;
    while (j < a.blocks.size() && a.blocks[j].moe == a.blocks[i].moe && a.blocks[j].params.Sum().total == s.total &&
           a.blocks[j].params.Sum().active == s.active) {
      ++j;
    }
    const std::string range = j - i == 1 ? absl::StrCat(i) : absl::StrCat(i, "-", j - 1);
    absl::StrAppend(&out, absl::StrFormat("%-14s %17s %17s\n", range + (a.blocks[i].moe ? " MoE" : " dense"),
                                          Thousands(s.total), Thousands(s.active)));
    i = j;
  }

  absl::StrAppend(&out, "\nFLOPs per token (seq_len ", Thousands(c.data().seq_len()), ")\n");
  absl::StrAppend(&out, absl::StrFormat("%-14s %23s  (%s)\n", "forward", Thousands(a.flops_per_token_forward),
                                        Human(a.flops_per_token_forward, "FLOP", 1000)));
  absl::StrAppend(&out, absl::StrFormat("%-14s %23s  (%s)\n", "train (3x)", Thousands(a.flops_per_token_train),
                                        Human(a.flops_per_token_train, "FLOP", 1000)));

  const MemoryLayout& l = a.layout;
  absl::StrAppend(&out, "\nmemory per rank (", l.bf16 ? "BF16: fp32 masters + bf16 GEMM copies" : "FP32",
                  ", AdamW, EP ", l.expert_parallel_size, "; ", Thousands(a.params_per_rank),
                  " parameters per rank; activations for ", l.micro_batch_size, " x ", Thousands(l.seq_len),
                  " tokens, checkpointing ", l.activation_checkpointing ? "on" : "off", ")\n");
  for (const auto& [name, bytes] : a.memory.Terms()) {
    absl::StrAppend(&out, absl::StrFormat("%-14s %23s B  (%s)\n", name, Thousands(bytes), Human(bytes, "B", 1024)));
  }
  if (fits != nullptr) {
    absl::StrAppend(&out, "\nwhat fits in ", Human(static_cast<double>(device_bytes), "B", 1000), " (",
                    Thousands(device_bytes), " B) per rank, ", a.world_size, " rank(s), seq_len ", Thousands(l.seq_len),
                    ", micro-batch ", l.micro_batch_size, "\n");
    absl::StrAppend(&out, absl::StrFormat("%-4s %-9s %-13s %-14s %-5s %-17s %-15s\n", "EP", "precision",
                                          "checkpointing", "memory/rank", "fits", "max micro-batch", "max seq (mb 1)"));
    for (const FitRow& r : *fits) {
      absl::StrAppend(&out, absl::StrFormat("%-4d %-9s %-13s %-14s %-5s %-17s %-15s\n", r.expert_parallel_size,
                                            r.bf16 ? "BF16" : "FP32", r.activation_checkpointing ? "on" : "off",
                                            Human(r.at_config.total, "B", 1000), r.fits ? "yes" : "no",
                                            Thousands(r.max_micro_batch), Thousands(r.max_seq_len)));
    }
  }
  return out;
}

std::string FormatJson(const std::string& path, const TrainConfig& c, const ModelAccount& a,
                       const std::vector<FitRow>* fits, int64_t device_bytes) {
  nlohmann::ordered_json j;
  j["config"] = path;
  j["norm_strategy"] = NormConfig::Strategy_Name(c.model().norm().strategy());
  j["world_size"] = a.world_size;
  j["expert_parallel_size"] = a.expert_parallel_size;
  j["data_parallel_size"] = a.world_size / a.expert_parallel_size;
  j["total_params"] = a.total_params;
  j["active_params"] = a.active_params;
  j["params_per_rank"] = a.params_per_rank;
  j["seq_len"] = c.data().seq_len();
  j["tokens_per_micro_batch"] = a.tokens_per_micro_batch;
  j["flops_per_token_forward"] = a.flops_per_token_forward;
  j["flops_per_token_train"] = a.flops_per_token_train;
  j["components"] = nlohmann::ordered_json::object();
  for (const auto& [name, count] : a.params.Components()) {
    j["components"][name] = {{"total", count.total}, {"active", count.active}};
  }
  j["blocks"] = nlohmann::ordered_json::array();
  for (const BlockAccount& b : a.blocks) {
    const ParamCount s = b.params.Sum();
    j["blocks"].push_back({{"layer", b.layer}, {"moe", b.moe}, {"total", s.total}, {"active", s.active}});
  }
  const MemoryLayout& l = a.layout;
  j["layout"] = {{"precision", l.bf16 ? "BF16" : "FP32"},
                 {"micro_batch_size", l.micro_batch_size},
                 {"seq_len", l.seq_len},
                 {"activation_checkpointing", l.activation_checkpointing}};
  j["gemm_params_per_rank"] = a.gemm_params_per_rank;
  j["memory_per_rank_bytes"] = nlohmann::ordered_json::object();
  for (const auto& [name, bytes] : a.memory.Terms()) j["memory_per_rank_bytes"][name] = bytes;
  if (fits != nullptr) {
    j["device_memory_bytes"] = device_bytes;
    j["fits"] = nlohmann::ordered_json::array();
    for (const FitRow& r : *fits) {
      j["fits"].push_back({{"expert_parallel_size", r.expert_parallel_size},
                           {"precision", r.bf16 ? "BF16" : "FP32"},
                           {"activation_checkpointing", r.activation_checkpointing},
                           {"memory_per_rank_bytes", r.at_config.total},
                           {"fits", r.fits},
                           {"max_tokens_per_micro_batch", r.max_tokens},
                           {"max_micro_batch_size", r.max_micro_batch},
                           {"max_seq_len", r.max_seq_len}});
    }
  }
  // A config path need not be UTF-8; nlohmann would refuse to encode it.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

// "141GB", "80GiB", "24e9", "12.5G" (SI unless the unit says i) -> bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  size_t end = 0;
  double value = 0;
  try {
    value = std::stod(text, &end);
  } catch (...) {
    end = 0;
  }
  const std::string unit = text.substr(end);
  double scale = -1;
  for (const auto& [name, s] : std::vector<std::pair<std::string, double>>{{"", 1},
                                                                           {"B", 1},
                                                                           {"K", 1e3},
                                                                           {"KB", 1e3},
                                                                           {"M", 1e6},
                                                                           {"MB", 1e6},
                                                                           {"G", 1e9},
                                                                           {"GB", 1e9},
                                                                           {"T", 1e12},
                                                                           {"TB", 1e12},
                                                                           {"KiB", 1024.0},
                                                                           {"MiB", 1048576.0},
                                                                           {"GiB", 1073741824.0},
                                                                           {"TiB", 1099511627776.0}}) {
    if (unit == name) scale = s;
  }
  if (end == 0 || scale < 0 || !(value > 0) || value * scale > 9e18) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device_memory (", text, ") must be a positive size such as 141GB, 80GiB or 24000000000"));
  }
  return static_cast<int64_t>(std::llround(value * scale));
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  using namespace hybridmoe;
  const std::vector<FlagSpec> specs = {
      {"config", "text-format TrainConfig file (required)"},
      {"override", "text-format TrainConfig merged on top, e.g. 'model { n_layers: 8 }' (repeatable)", false, true},
      {"world_size", "number of ranks of the planned run (default 1)"},
      {"format", "text (default) or json"},
      {"expert_parallel_size", "memory layout: experts sharded over N ranks (overrides parallel.expert_parallel_size)"},
      {"precision", "memory layout: fp32 or bf16 (overrides train.precision)"},
      {"micro_batch_size", "memory layout: sequences per micro-batch (overrides data.micro_batch_size)"},
      {"seq_len", "memory layout: tokens per sequence (overrides data.seq_len)"},
      {"activation_checkpointing", "memory layout: true or false (overrides model.activation_checkpointing)"},
      {"device_memory", "memory per rank, e.g. 141GB or 80GiB: adds what fits (EP x precision x checkpointing)"},
      {"help", "show this help", true},
  };
  auto fail = [](const std::string& message) {
    std::fprintf(stderr, "plan: %s\n", message.c_str());
    return 1;
  };
  int exit_code = 0;
  auto cl = CommandLine::ParseOrExit(argc, argv, "plan", "Counts parameters, FLOPs and memory per rank of a config.",
                                     specs, &exit_code);
  if (!cl) return exit_code;
  if (!cl->Has("config")) return fail("--config=FILE.textproto is required (see configs/)");
  const std::string format = cl->Get("format", "text");
  if (format != "text" && format != "json") return fail("--format (" + format + ") must be text or json");
  auto world_size = cl->GetInt("world_size", 1);
  if (!world_size.ok()) return fail(std::string(world_size.status().message()));
  if (*world_size < 1 || *world_size > (1 << 24)) {
    return fail(absl::StrCat("--world_size (", *world_size, ") must be in [1, ", 1 << 24, "]"));
  }

  const std::string path = cl->Get("config");
  auto config = LoadConfig(path, cl->GetAll("override"));
  if (!config.ok()) return fail(std::string(config.status().message()));
  // The layout flags, applied to the config before it is validated (so their values are checked by its rules).
  for (const char* name : {"expert_parallel_size", "micro_batch_size", "seq_len"}) {
    if (!cl->Has(name)) continue;
    auto v = cl->GetInt(name, 0);
    if (!v.ok()) return fail(std::string(v.status().message()));
    if (*v < 1 || *v > (int64_t{1} << 30)) return fail(absl::StrCat("--", name, " (", *v, ") must be in [1, 2^30]"));
    const std::string field = name;
    if (field == "expert_parallel_size") config->mutable_parallel()->set_expert_parallel_size(static_cast<int>(*v));
    if (field == "micro_batch_size") config->mutable_data()->set_micro_batch_size(static_cast<int>(*v));
    if (field == "seq_len") config->mutable_data()->set_seq_len(static_cast<int>(*v));
  }
  if (cl->Has("precision")) {
    const std::string p = cl->Get("precision");
    if (p != "fp32" && p != "bf16") return fail("--precision (" + p + ") must be fp32 or bf16");
    config->mutable_train()->set_precision(p == "bf16" ? TrainRunConfig::BF16 : TrainRunConfig::FP32);
  }
  if (cl->Has("activation_checkpointing")) {
    const std::string v = cl->Get("activation_checkpointing");
    if (v != "true" && v != "false") return fail("--activation_checkpointing (" + v + ") must be true or false");
    config->mutable_model()->set_activation_checkpointing(v == "true");
  }
  int64_t device_bytes = 0;
  if (cl->Has("device_memory")) {
    auto bytes = ParseBytes(cl->Get("device_memory"));
    if (!bytes.ok()) return fail(std::string(bytes.status().message()));
    device_bytes = *bytes;
  }
  if (absl::Status s = ValidateConfig(*config, static_cast<int>(*world_size), /*check_files=*/false); !s.ok()) {
    return fail(absl::StrCat(path, ": ", s.message()));
  }
  const ModelAccount account = AccountModel(*config, static_cast<int>(*world_size));
  std::vector<FitRow> fit_rows;
  if (device_bytes > 0) fit_rows = WhatFits(*config, static_cast<int>(*world_size), device_bytes);
  const std::vector<FitRow>* fits = device_bytes > 0 ? &fit_rows : nullptr;
  const std::string text = format == "json" ? FormatJson(path, *config, account, fits, device_bytes)
                                            : FormatText(path, *config, account, fits, device_bytes);
  std::fputs(text.c_str(), stdout);
  return 0;
}
