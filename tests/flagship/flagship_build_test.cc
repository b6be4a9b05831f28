// The flagship built for real: OLMoE-1B-7B (configs/olmoe_1b7b*.textproto) constructed as modules on the meta
// device (core/init.h ParamDeviceScope: shapes, no storage), its parameters counted from the built modules'
// named_parameters() and held equal to models/accounting.h (what tools/plan prints) and to the published
// numbers: 6,919,161,856 total / 1,282,017,280 active (QK-norm), 6,919,069,696 (HybridNorm). One EP rank's
// shard (8-way) is built too and counted against plan's params_per_rank.
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "core/config.h"
#include "core/init.h"
#include "models/accounting.h"
#include "models/transformer.h"
#include "moe/dispatcher.h"
#include "tests/models/shard_dispatcher.h"

namespace hybridmoe {
namespace {

TrainConfig Load(const std::string& path, int world_size = 1, const std::vector<std::string>& overrides = {}) {
  auto config = LoadConfig(path, overrides);
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return TrainConfig();
  const absl::Status valid = ValidateConfig(*config, world_size, /*check_files=*/false);
  EXPECT_TRUE(valid.ok()) << path << ": " << valid;
  return *config;
}

int64_t ResidentKiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

struct Built {
  int64_t total = 0;
  int64_t active = 0;  // total minus the experts a token does not choose, counted from the expert modules
  int64_t experts = 0;
  int64_t blocks = 0;
  int64_t non_meta = 0;  // parameters that own storage (must be none)
};

Built Count(Transformer& model) {
  Built b;
  b.blocks = static_cast<int64_t>(model->blocks.size());
  for (const auto& p : model->named_parameters()) {
    b.total += p.value().numel();
    if (!p.value().is_meta()) ++b.non_meta;
    if (IsExpertName(p.key())) b.experts += p.value().numel();
  }
  b.active = b.total;
  const int64_t k = model->options.moe.top_k, E = model->options.moe.num_experts;
  for (const MoeLayer& moe : model->moe_layers()) {
    int64_t expert_numel = 0;
    for (const auto& p : moe->experts->parameters()) expert_numel += p.numel();
    b.active -= expert_numel / moe->experts->options.num_local_experts * (E - k);
  }
  return b;
}

void ExpectFlagship(const std::string& path, int64_t want_total, int64_t want_active) {
  SCOPED_TRACE(path);
  const TrainConfig config = Load(path);
  const ModelAccount plan = AccountModel(config, 1);
  const int64_t rss_before = ResidentKiB();
  Transformer model = nullptr;
  {
    ParamDeviceScope meta(at::kMeta);
    model = Transformer(TransformerOptionsFromConfig(config.model()));
    model->reset_parameters(config.train().seed());  // a no-op on meta, and must not fault in 27.7 GB
  }
  const Built built = Count(model);
  EXPECT_EQ(built.non_meta, 0);
  EXPECT_EQ(built.blocks, 16);
  EXPECT_EQ(built.total, want_total);
  EXPECT_EQ(built.active, want_active);
  EXPECT_EQ(built.total, plan.total_params);
  EXPECT_EQ(built.active, plan.active_params);
  EXPECT_EQ(built.experts, plan.params.expert_sharded);
  EXPECT_EQ(built.experts, int64_t{16} * 64 * 3 * 2048 * 1024);
  // Meta tensors hold no bytes: building the 6.9B model costs the module objects only.
  EXPECT_LT(ResidentKiB() - rss_before, 64 * 1024) << "KiB resident growth while building on meta";
  for (const auto& p : model->named_parameters()) EXPECT_EQ(p.value().scalar_type(), at::kFloat) << p.key();

  // One EP rank of eight: the same model with each MoE layer's experts sharded, as the trainer does.
  const TrainConfig ep8 = Load(path, 8, {"parallel { expert_parallel_size: 8 }"});
  const ModelAccount plan8 = AccountModel(ep8, 8);
  {
    ParamDeviceScope meta(at::kMeta);
    for (MoeLayer& moe : model->moe_layers()) moe->set_dispatcher(std::make_shared<ShardDispatcher>(24, 8));
  }
  const Built shard = Count(model);
  EXPECT_EQ(shard.non_meta, 0);
  EXPECT_EQ(shard.total, plan8.params_per_rank);
  EXPECT_EQ(shard.experts, plan8.params.expert_sharded / 8);
  for (const MoeLayer& moe : model->moe_layers()) EXPECT_EQ(moe->experts->options.first_expert, 24);
}

TEST(FlagshipBuildTest, OlmoeAsReleasedCountsEqualPlan) {
  ExpectFlagship("configs/olmoe_1b7b.textproto", 6919161856, 1282017280);
}

TEST(FlagshipBuildTest, HybridNormCountsEqualPlan) {
  // Per-head QKV norms instead of full-width QK norms: 16 * (3 * 128 - 2 * 2048) fewer, Post-Norm around the FFN.
  ExpectFlagship("configs/olmoe_1b7b_hybridnorm.textproto", 6919069696, 6919069696 - (6919161856 - 1282017280));
}

TEST(FlagshipBuildTest, ScopeRestoresTheCpu) {
  {
    ParamDeviceScope meta(at::kMeta);
    {
      ParamDeviceScope cpu(at::kCPU);
      EXPECT_TRUE(ParamOptions().device().is_cpu());
    }
    EXPECT_TRUE(ParamOptions().device().is_meta());
  }
  TransformerOptions tiny;
  Transformer model(tiny);
  model->reset_parameters(1);
  for (const auto& p : model->parameters()) ASSERT_TRUE(p.is_cpu());
  EXPECT_NE(model->embed.abs().sum().item<double>(), 0.0);  // initialised, not meta
}

}  // namespace
}  // namespace hybridmoe
