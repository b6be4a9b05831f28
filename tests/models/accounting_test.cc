// Holds models/accounting.h equal to the real model: for every preset and a cross product of strategies,
// norm kinds, q/k/v granularities and dense/MoE mixes, the counts from the config alone must equal the
// numel of a built Transformer's named_parameters(), per component and per block, exactly. The OLMoE
// numbers are checked against docs/formulas.md section 5.4 without building the 6.9B model.
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "models/accounting.h"
#include "models/transformer.h"
#include "moe/dispatcher.h"
#include "tests/models/shard_dispatcher.h"

namespace hybridmoe {
namespace {

TrainConfig Load(const std::string& path, const std::vector<std::string>& overrides = {}) {
  auto config = LoadConfig(path, overrides);
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return TrainConfig();
  const absl::Status valid = ValidateConfig(*config, 1, /*check_files=*/false);
  EXPECT_TRUE(valid.ok()) << path << ": " << valid;
  return *config;
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The accounting component a checkpoint key belongs to, decided from the name alone.
std::string ComponentOf(const std::string& name) {
  if (name == "embed") return "embedding";
  if (name == "lm_head") return "lm_head";
  if (name.rfind("final_norm.", 0) == 0) return "final_norm";
  if (Contains(name, "head_scale") || Contains(name, "hidden_norm") || EndsWith(name, "ffn_residual_scale")) {
    return "normformer";
  }
  if (Contains(name, ".attn.q_norm.") || Contains(name, ".attn.k_norm.") || Contains(name, ".attn.v_norm.")) {
    return "qkv_norms";
  }
  if (Contains(name, ".attn.w")) return "attention";
  if (Contains(name, "_norm.")) return "block_norms";
  if (EndsWith(name, ".moe.router")) return "router";
  if (Contains(name, ".moe.experts.w_")) return "experts";
  if (Contains(name, ".ffn.w_")) return "dense_ffn";
  if (Contains(name, ".moe.shared_expert")) return "dense_ffn";  // the shared expert and its gate
  return "unknown:" + name;
}

struct Counted {
  std::map<std::string, int64_t> by_component;
  std::vector<int64_t> by_block;
  int64_t total = 0;
  int64_t active = 0;  // total minus the (E - k) experts not chosen in each MoE block
  int64_t experts = 0;
};

Counted CountBuilt(Transformer& model) {
  Counted c;
  // IsExpertName (the name test everything else uses) agrees with module membership.
  std::set<const c10::TensorImpl*> in_expert_modules;
  for (const MoeLayer& moe : model->moe_layers()) {
    for (const at::Tensor& p : moe->experts->parameters()) in_expert_modules.insert(p.unsafeGetTensorImpl());
  }
  c.by_block.assign(model->blocks.size(), 0);
  for (const auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    c.total += p.value().numel();
    c.by_component[ComponentOf(name)] += p.value().numel();
    if (name.rfind("blocks.", 0) == 0) c.by_block[std::stoll(name.substr(7))] += p.value().numel();
    if (Contains(name, ".moe.experts.")) c.experts += p.value().numel();
    EXPECT_EQ(IsExpertName(name), in_expert_modules.count(p.value().unsafeGetTensorImpl()) > 0) << name;
  }
  c.active = c.total;
  const int64_t k = model->options.moe.top_k;
  for (const MoeLayer& moe : model->moe_layers()) {
    int64_t expert_numel = 0;
    for (const auto& p : moe->experts->named_parameters()) expert_numel += p.value().numel();
    const int64_t E = moe->experts->options.num_local_experts;
    EXPECT_EQ(expert_numel % E, 0);
    c.active -= (E - k) * (expert_numel / E);
  }
  return c;
}

void ExpectMatchesBuiltModel(const TrainConfig& config, const std::string& label) {
  SCOPED_TRACE(label);
  const ModelAccount a = AccountModel(config, 1);
  Transformer model(TransformerOptionsFromConfig(config.model()));
  const Counted built = CountBuilt(model);

  EXPECT_EQ(a.total_params, built.total);
  EXPECT_EQ(a.active_params, built.active);
  EXPECT_EQ(a.params.expert_sharded, built.experts);
  for (const auto& [name, count] : a.params.Components()) {
    const auto it = built.by_component.find(name);
    EXPECT_EQ(count.total, it == built.by_component.end() ? 0 : it->second) << "component " << name;
  }
  for (const auto& [name, n] : built.by_component) EXPECT_NE(name.rfind("unknown:", 0), 0u) << name;
  ASSERT_EQ(a.blocks.size(), built.by_block.size());
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    EXPECT_EQ(a.blocks[i].params.Sum().total, built.by_block[i]) << "block " << i;
    EXPECT_EQ(a.blocks[i].moe, !model->blocks[i]->moe.is_empty()) << "block " << i;
  }
}

TEST(AccountingTest, PresetsMatchBuiltModel) {
  std::set<std::string> strategies;
  int files = 0;
  std::vector<std::string> paths = {"configs/tiny.textproto"};
  for (const auto& entry : std::filesystem::directory_iterator("configs/presets")) {
    if (entry.path().extension() == ".textproto") paths.push_back(entry.path().string());
  }
  for (const std::string& path : paths) {
    const TrainConfig config = Load(path);
    ExpectMatchesBuiltModel(config, path);
    strategies.insert(NormConfig::Strategy_Name(config.model().norm().strategy()));
    ++files;
  }
  EXPECT_EQ(files, 11);
  EXPECT_EQ(static_cast<int>(strategies.size()), NormConfig::Strategy_ARRAYSIZE) << "a preset per norm strategy";
}

TEST(AccountingTest, EveryStrategyKindGranularityAndMixMatchesBuiltModel) {
  const std::vector<std::string> granularities = {"", "qk_norm_granularity: FULL_WIDTH",
                                                  "qk_norm_granularity: PER_HEAD"};
  int cases = 0;
  for (int s = NormConfig::Strategy_MIN; s <= NormConfig::Strategy_MAX; ++s) {
    const std::string strategy = NormConfig::Strategy_Name(static_cast<NormConfig::Strategy>(s));
    for (const std::string kind : {"RMS", "LAYER"}) {
      for (const std::string& granularity : granularities) {
        for (int every : {0, 1, 2, 3}) {
          const std::string text = absl::StrCat(
              "model { vocab_size: 50 d_model: 24 n_layers: 3 n_heads: 3 dense_hidden: 40 norm { strategy: ", strategy,
              " kind: ", kind, " ", granularity, " normformer_residual_scale: ", every % 2 ? "true" : "false",
              " mix_ln_alpha: 0.4 } moe { num_experts: 5 top_k: 2 expert_hidden: 12 every_n_layers: ", every, " } }");
          ExpectMatchesBuiltModel(Load("configs/tiny.textproto", {text}), text);
          ++cases;
        }
      }
    }
  }
  EXPECT_EQ(cases, 10 * 2 * 3 * 4);
}

TEST(AccountingTest, SharedExpertsAndDenseFirstBlocksMatchBuiltModel) {
  int cases = 0;
  for (const std::string strategy : {"PRE_NORM", "HYBRID_NORM", "NORMFORMER"}) {
    for (const std::string kind : {"RMS", "LAYER"}) {
      for (int shared : {0, 7}) {
        for (const std::string gate : {"false", "true"}) {
          if (shared == 0 && gate == "true") continue;
          for (int first_dense : {0, 1, 3}) {
            for (int every : {1, 2}) {
              const std::string text = absl::StrCat(
                  "model { vocab_size: 50 d_model: 24 n_layers: 3 n_heads: 3 dense_hidden: 40 norm { strategy: ",
                  strategy, " kind: ", kind,
                  " } moe { num_experts: 5 top_k: 2 expert_hidden: 12 every_n_layers: ", every,
                  " first_dense_layers: ", first_dense, " shared_expert_hidden: ", shared,
                  " shared_expert_gate: ", gate, " } }");
              ExpectMatchesBuiltModel(Load("configs/tiny.textproto", {text}), text);
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(cases, 3 * 2 * 3 * 3 * 2);
}

TEST(AccountingTest, ExpertParallelShardMatchesBuiltShard) {
  const TrainConfig config =
      Load("configs/presets/normformer.textproto", {"model { moe { num_experts: 8 every_n_layers: 1 } }"});
  for (int ep : {1, 2, 4, 8}) {
    TrainConfig c = config;
    c.mutable_parallel()->set_expert_parallel_size(ep);
    ASSERT_TRUE(ValidateConfig(c, 8, false).ok());
    const ModelAccount a = AccountModel(c, 8);
    Transformer model(TransformerOptionsFromConfig(c.model()));
    for (MoeLayer& moe : model->moe_layers()) moe->set_dispatcher(std::make_shared<ShardDispatcher>(0, 8 / ep));
    int64_t numel = 0;
    for (const auto& p : model->parameters()) numel += p.numel();
    EXPECT_EQ(a.params_per_rank, numel) << "EP " << ep;
    EXPECT_EQ(a.memory.weights, 4 * numel);
    EXPECT_EQ(a.memory.gradients, 4 * numel);
    EXPECT_EQ(a.memory.optimizer, 8 * numel);
    int64_t sum = 0;
    for (const auto& [name, bytes] : a.memory.Terms()) sum += name == "total" ? 0 : bytes;
    EXPECT_EQ(a.memory.total, sum);
    EXPECT_EQ(a.memory.compute_copies, 0);  // FP32
    EXPECT_EQ(a.memory.all_to_all > 0, ep > 1);
  }
}

// docs/formulas.md section 5.4, without building the model.
TEST(AccountingTest, OlmoeMatchesSpec) {
  const ModelAccount a = AccountModel(Load("configs/olmoe_1b7b.textproto"), 1);
  EXPECT_EQ(a.total_params, 6919161856);
  EXPECT_EQ(a.active_params, 1282017280);
  EXPECT_EQ(a.params.embedding.total, 103022592);
  EXPECT_EQ(a.params.lm_head.total, 103022592);
  EXPECT_EQ(a.params.lm_head.active, 103022592);
  EXPECT_EQ(a.params.final_norm.total, 2048);
  ASSERT_EQ(a.blocks.size(), 16u);
  for (const BlockAccount& b : a.blocks) {
    EXPECT_TRUE(b.moe);
    EXPECT_EQ(b.params.attention.total, 16777216);
    EXPECT_EQ(b.params.qkv_norms.total, 4096);
    EXPECT_EQ(b.params.block_norms.total, 4096);
    EXPECT_EQ(b.params.router.total, 131072);
    EXPECT_EQ(b.params.experts.total, 402653184);
    EXPECT_EQ(b.params.Sum().total, 419569664);
    EXPECT_EQ(b.params.Sum().active, 67248128);
  }
  // FLOPs: 2 x (16 x (attention 4d^2 + router E d + 8 experts x 3 d f) + LM head V d) + 4 L S d.
  const int64_t matmul = 16 * (4LL * 2048 * 2048 + 64LL * 2048 + 8LL * 3 * 2048 * 1024) + 50304LL * 2048;
  EXPECT_EQ(a.matmul_params_active, matmul);
  EXPECT_EQ(a.flops_per_token_forward, 2 * matmul + 4LL * 16 * 4096 * 2048);
  EXPECT_EQ(a.flops_per_token_train, 3 * a.flops_per_token_forward);
  EXPECT_EQ(a.memory.weights, 4 * a.total_params);
  EXPECT_EQ(a.memory.optimizer, 8 * a.total_params);
}

TEST(AccountingTest, OlmoeHybridNormMatchesSpec) {
  const ModelAccount h = AccountModel(Load("configs/olmoe_1b7b_hybridnorm.textproto"), 1);
  EXPECT_EQ(h.total_params, 6919069696);
  // Per block: one block norm (ffn_norm) and three per-head (128) q/k/v norms.
  EXPECT_EQ(h.blocks[3].params.block_norms.total, 2048);
  EXPECT_EQ(h.blocks[3].params.qkv_norms.total, 384);
  // HybridNorm*: block 0 is Pre-Norm, so it adds the attention-input norm.
  const ModelAccount s = AccountModel(Load("configs/olmoe_1b7b_hybridnorm_star.textproto"), 1);
  EXPECT_EQ(s.total_params, 6919069696 + 2048);
  EXPECT_EQ(s.active_params, h.active_params + 2048);
}

TEST(AccountingTest, OlmoeExpertParallelMemory) {
  TrainConfig config = Load("configs/olmoe_1b7b.textproto");
  config.mutable_parallel()->set_expert_parallel_size(8);
  const ModelAccount a = AccountModel(config, 16);
  const int64_t expert_params = 16LL * 64 * 3 * 2048 * 1024;
  EXPECT_EQ(a.params_per_rank, 6919161856 - expert_params + expert_params / 8);
  EXPECT_EQ(a.memory.weights, 4 * a.params_per_rank);
  const ModelAccount one = AccountModel(Load("configs/olmoe_1b7b.textproto"), 1);
  EXPECT_EQ(a.memory.activations, one.memory.activations);  // balanced routing: same slots per rank
  EXPECT_LT(a.memory.total, one.memory.total);
}

// The memory terms of tools/plan for the layouts a run can choose (models/accounting.h has the formulas).
TEST(AccountingTest, MemoryFollowsPrecisionCheckpointingAndTokens) {
  const TrainConfig config = Load("configs/olmoe_1b7b.textproto");
  const ModelAccount a = AccountModel(config, 1);
  MemoryLayout l = a.layout;
  EXPECT_FALSE(l.bf16);
  EXPECT_EQ(l.micro_batch_size, 2);
  EXPECT_EQ(l.seq_len, 4096);
  const MemoryPerRank fp32 = AccountMemory(config.model(), l);
  EXPECT_EQ(fp32.total, a.memory.total);
  l.bf16 = true;
  const MemoryPerRank bf16 = AccountMemory(config.model(), l);
  // One bf16 copy of the GEMM weights: everything but the embedding, the router and the norms.
  const int64_t gemm = a.total_params - a.params.embedding.total - a.params.router.total - a.params.qkv_norms.total -
                       a.params.block_norms.total - a.params.final_norm.total;
  EXPECT_EQ(a.gemm_params_per_rank, gemm);
  EXPECT_EQ(bf16.compute_copies, 2 * gemm);
  EXPECT_EQ(bf16.weights, fp32.weights);
  EXPECT_EQ(bf16.gradients, fp32.gradients);
  EXPECT_LT(bf16.activations, fp32.activations);
  EXPECT_GT(bf16.activations, fp32.activations / 2);  // the router, norm statistics and loss stay fp32
  l.activation_checkpointing = true;
  const MemoryPerRank ckpt = AccountMemory(config.model(), l);
  EXPECT_LT(ckpt.activations, bf16.activations / 4);
  // Activations and all-to-all buffers are linear in tokens; the rest does not depend on them.
  l.expert_parallel_size = 8;
  const MemoryPerRank one = AccountMemory(config.model(), l);
  l.seq_len *= 3;
  const MemoryPerRank three = AccountMemory(config.model(), l);
  EXPECT_EQ(three.activations, 3 * one.activations);
  EXPECT_EQ(three.all_to_all, 3 * one.all_to_all);
  EXPECT_GT(one.all_to_all, 0);
  EXPECT_EQ(three.fixed(), one.fixed());
}

TEST(AccountingTest, WhatFitsIsConsistentWithAccountMemory) {
  const TrainConfig config = Load("configs/olmoe_1b7b.textproto");
  const int64_t h200 = 141'000'000'000, a100 = 80'000'000'000;
  // One 141 GB GPU: the fp32 states alone are 16 B x 6.92B = 110.7 GB; 2 x 4096 tokens of activations without
  // checkpointing do not fit on top, with checkpointing they do.
  const std::vector<FitRow> one = WhatFits(config, 1, h200);
  ASSERT_EQ(one.size(), 4u);  // EP 1 x {FP32, BF16} x {off, on}
  EXPECT_FALSE(one[0].fits);
  EXPECT_TRUE(one[1].fits);
  EXPECT_TRUE(one[1].activation_checkpointing && !one[1].bf16);
  // Eight 80 GB GPUs: EP 1, 2, 4, 8 (the divisors of 8 that divide 64 experts).
  const std::vector<FitRow> eight = WhatFits(config, 8, a100);
  ASSERT_EQ(eight.size(), 16u);
  for (const FitRow& r : eight) {
    MemoryLayout l;
    l.expert_parallel_size = r.expert_parallel_size;
    l.bf16 = r.bf16;
    l.activation_checkpointing = r.activation_checkpointing;
    l.seq_len = 4096;
    l.micro_batch_size = r.max_micro_batch + 1;
    EXPECT_GT(AccountMemory(config.model(), l).total, a100) << r.expert_parallel_size;
    EXPECT_EQ(r.fits, r.at_config.total <= a100);
    if (r.max_tokens == 0) {
      EXPECT_GT(AccountMemory(config.model(), l).fixed(), a100);  // the states alone do not fit
      continue;
    }
    l.micro_batch_size = r.max_micro_batch;
    EXPECT_LE(AccountMemory(config.model(), l).total, a100) << r.expert_parallel_size;
    l.micro_batch_size = 1;
    l.seq_len = r.max_seq_len;
    EXPECT_LE(AccountMemory(config.model(), l).total, a100);
    l.seq_len = r.max_seq_len + 1;
    EXPECT_GT(AccountMemory(config.model(), l).total, a100);
  }
  EXPECT_EQ(eight[0].max_tokens, 0);           // EP 1 fp32: 110.7 GB of states on an 80 GB GPU
  EXPECT_GT(eight.back().max_micro_batch, 2);  // EP 8 BF16 with checkpointing
}

}  // namespace
}  // namespace hybridmoe
