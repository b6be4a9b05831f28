// bazel-bin/tools/plan --config=FILE [--override=TEXTPROTO]... [--world_size=N] [--format=text|json]
// Parameters (total, active, by component and by block), FLOPs per token and memory per rank of a run,
// from the config alone (models/accounting.h); nothing is allocated. Errors end with one line and exit 1.
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

std::string FormatText(const std::string& path, const TrainConfig& c, const ModelAccount& a) {
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

  absl::StrAppend(&out, "\nmemory per rank (fp32, AdamW; ", Thousands(a.params_per_rank),
                  " parameters per rank; activations for ", c.data().micro_batch_size(), " x ",
                  Thousands(c.data().seq_len()), " tokens, no checkpointing)\n");
  const MemoryPerRank& mem = a.memory;
  for (const auto& [name, bytes] : {std::pair<const char*, int64_t>{"weights", mem.weights},
                                    {"gradients", mem.gradients},
                                    {"optimizer", mem.optimizer},
                                    {"activations", mem.activations},
                                    {"total", mem.total}}) {
    absl::StrAppend(&out, absl::StrFormat("%-14s %23s B  (%s)\n", name, Thousands(bytes), Human(bytes, "B", 1024)));
  }
  return out;
}

std::string FormatJson(const std::string& path, const TrainConfig& c, const ModelAccount& a) {
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
  const MemoryPerRank& mem = a.memory;
  j["memory_per_rank_bytes"] = {{"weights", mem.weights},
                                {"gradients", mem.gradients},
                                {"optimizer", mem.optimizer},
                                {"activations", mem.activations},
                                {"total", mem.total}};
  // A config path need not be UTF-8; nlohmann would refuse to encode it.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
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
  if (absl::Status s = ValidateConfig(*config, static_cast<int>(*world_size), /*check_files=*/false); !s.ok()) {
    return fail(absl::StrCat(path, ": ", s.message()));
  }
  const ModelAccount account = AccountModel(*config, static_cast<int>(*world_size));
  const std::string text = format == "json" ? FormatJson(path, *config, account) : FormatText(path, *config, account);
  std::fputs(text.c_str(), stdout);
  return 0;
}
