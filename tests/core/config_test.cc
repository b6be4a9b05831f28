// Config parsing, overrides and every validation rule (core/config.h).
#include "core/config.h"

#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace hybridmoe {
namespace {

TrainConfig Valid() {
  auto c = ParseConfigText("data { train { path: \"x.bin\" } validation: \"\" }", "test");
  EXPECT_TRUE(c.ok()) << c.status();
  ResolveDefaults(*c);
  return *c;
}

// Applies `text` as an override on a valid config and returns the validation message ("" if valid).
std::string Check(const std::string& text, int world_size = 1) {
  TrainConfig c = Valid();
  auto o = ParseConfigText(text, "--override");
  EXPECT_TRUE(o.ok()) << o.status();
  MergeOverride(*o, c);
  absl::Status s = ValidateConfig(c, world_size, /*check_files=*/false);
  return s.ok() ? "" : std::string(s.message());
}

TEST(ConfigTest, DefaultsAreValid) { EXPECT_EQ(Check(""), ""); }

TEST(ConfigTest, ResolveFillsEveryDefault) {
  TrainConfig c = Valid();
  EXPECT_TRUE(c.model().has_d_model());
  EXPECT_TRUE(c.model().norm().has_strategy());
  EXPECT_TRUE(c.optim().has_lr());
  EXPECT_TRUE(c.train().has_steps());
  // qk granularity follows the strategy when unset.
  EXPECT_EQ(c.model().norm().qk_norm_granularity(), NormConfig::PER_HEAD);  // HYBRID_NORM default
  auto qk = ParseConfigText("model { norm { strategy: QK_NORM } }", "t");
  ResolveDefaults(*qk);
  EXPECT_EQ(qk->model().norm().qk_norm_granularity(), NormConfig::FULL_WIDTH);
  EXPECT_NE(ConfigToText(c).find("d_model: 128"), std::string::npos);
}

TEST(ConfigTest, EachRuleNamesFieldAndValue) {
  struct Case {
    std::string text;
    std::string expect;
    int world = 1;
  };
  const Case cases[] = {
      {"model { vocab_size: 1 }", "model.vocab_size (1)"},
      {"model { d_model: 0 }", "model.d_model (0)"},
      {"model { n_layers: 0 }", "model.n_layers (0)"},
      {"model { n_heads: 0 }", "model.n_heads (0)"},
      {"model { d_model: 130 n_heads: 4 }", "model.d_model (130) must be divisible by model.n_heads (4)"},
      {"model { d_model: 12 n_heads: 4 }", "must be even for rotary"},
      {"model { max_seq_len: 0 }", "model.max_seq_len (0)"},
      {"model { rope_theta: 0 }", "model.rope_theta (0)"},
      {"model { dense_hidden: 0 }", "model.dense_hidden (0)"},
      {"model { norm { eps: 0 } }", "model.norm.eps (0)"},
      {"model { norm { mix_ln_alpha: 1.5 } }", "model.norm.mix_ln_alpha (1.5)"},
      {"model { moe { num_experts: 0 } }", "model.moe.num_experts (0)"},
      {"model { moe { num_experts: 8 top_k: 9 } }", "model.moe.top_k (9) must be in [1, 8]"},
      {"model { moe { top_k: 0 } }", "model.moe.top_k (0)"},
      {"model { moe { expert_hidden: 0 } }", "model.moe.expert_hidden (0)"},
      {"model { moe { every_n_layers: 5 } }", "model.moe.every_n_layers (5)"},
      {"model { moe { capacity_factor: -1 } }", "model.moe.capacity_factor (-1)"},
      {"model { moe { lb_loss_weight: -1 } }", "model.moe.lb_loss_weight (-1)"},
      {"model { moe { z_loss_weight: -1 } }", "model.moe.z_loss_weight (-1)"},
      {"model { moe { router_logit_bias: 1 } }", "model.moe.router_logit_bias has 1 values"},
      {"model { moe { first_dense_layers: 5 } }", "model.moe.first_dense_layers (5) must be in [0, 4]"},
      {"model { moe { score_function: SIGMOID softmax_after_topk: true } }",
       "model.moe.softmax_after_topk applies to score_function SOFTMAX only, not SIGMOID"},
      {"model { moe { bias_update_rate: -0.1 } }", "model.moe.bias_update_rate (-0.1)"},
      {"model { moe { shared_expert_hidden: -1 } }", "model.moe.shared_expert_hidden (-1)"},
      {"model { moe { shared_expert_gate: true } }", "model.moe.shared_expert_gate needs a shared expert"},
      {"model { init { std: 0 } }", "model.init.std (0)"},
      {"data { seq_len: 0 }", "data.seq_len (0)"},
      {"data { seq_len: 8192 }", "data.seq_len (8192) must be in [1, 4096]"},
      {"data { micro_batch_size: 0 }", "data.micro_batch_size (0)"},
      {"data { grad_accum_steps: 0 }", "data.grad_accum_steps (0)"},
      {"model { vocab_size: 70000 }", "model.vocab_size (70000) needs data.dtype UINT32"},
      {"data { train { path: \"\" } }", "data.train[0].path must be set"},
      {"data { train { path: \"a\" weight: 0 } }", "data.train[0].weight (0)"},
      {"optim { lr: -1 }", "optim.lr (-1)"},
      {"optim { beta1: 1 }", "optim.beta1 (1)"},
      {"optim { beta2: 1 }", "optim.beta2 (1)"},
      {"optim { eps: -1 }", "optim.eps (-1)"},
      {"optim { weight_decay: -1 }", "optim.weight_decay (-1)"},
      {"optim { grad_clip: -1 }", "optim.grad_clip (-1)"},
      {"optim { warmup_steps: -1 }", "optim.warmup_steps (-1)"},
      {"optim { warmup_start_ratio: 2 }", "optim.warmup_start_ratio (2)"},
      {"optim { min_lr_ratio: 2 }", "optim.min_lr_ratio (2)"},
      {"parallel { expert_parallel_size: 8 }",
       "parallel.expert_parallel_size (8) must divide the number of ranks (4); valid: 1, 2, 4", 4},
      {"parallel { expert_parallel_size: 4 }", "parallel.expert_parallel_size (4) must divide the number of ranks (6)",
       6},
      {"model { moe { num_experts: 6 } } parallel { expert_parallel_size: 4 }",
       "model.moe.num_experts (6) must be divisible by parallel.expert_parallel_size (4)", 4},
      {"parallel { num_threads: -1 }", "parallel.num_threads (-1)"},
      {"parallel { timeout_s: 0 }", "parallel.timeout_s (0)"},
      {"checkpoint { interval: -1 }", "checkpoint.interval (-1)"},
      {"checkpoint { keep_last: 0 }", "checkpoint.keep_last (0)"},
      {"logging { log_interval: 0 }", "logging.log_interval (0)"},
      {"train { steps: 0 }", "train.steps (0)"},
      {"train { eval_interval: -1 }", "train.eval_interval (-1)"},
      {"train { eval_batches: 0 }", "train.eval_batches (0)"},
      {"train { max_consecutive_bad_steps: 0 }", "train.max_consecutive_bad_steps (0)"},
  };
  for (const Case& c : cases) {
    const std::string message = Check(c.text, c.world);
    EXPECT_NE(message.find(c.expect), std::string::npos) << c.text << " -> \"" << message << "\"";
    EXPECT_EQ(message.find('\n'), std::string::npos) << "error must be one line: " << message;
  }
}

TEST(ConfigTest, MissingFilesAreNamed) {
  TrainConfig c = Valid();
  c.mutable_data()->set_validation("/nonexistent/val.bin");
  absl::Status s = ValidateConfig(c, 1, /*check_files=*/true);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("data.train[0].path (x.bin) does not exist"), std::string::npos) << s;
}

TEST(ConfigTest, LoadMergesOverridesAndReplacesRepeatedFields) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/c.textproto";
  std::ofstream(path) << "model { d_model: 64 }\ndata { train { path: \"a\" } train { path: \"b\" } }\n";
  auto c = LoadConfig(path, {"model { n_layers: 2 }", "data { train { path: \"c\" } }", "model { d_model: 96 }"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model().d_model(), 96);
  EXPECT_EQ(c->model().n_layers(), 2);
  ASSERT_EQ(c->data().train_size(), 1);
  EXPECT_EQ(c->data().train(0).path(), "c");
}

// Every repeated field an override names replaces the file's list, at any depth; lists it does not name stay.
TEST(ConfigTest, OverrideReplacesEveryRepeatedFieldItSets) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/lists.textproto";
  std::ofstream(path) << "model { moe { num_experts: 4 router_logit_bias: [1, 2, 3, 4] } }\n"
                         "data { train { path: \"a\" } train { path: \"b\" } }\n";
  auto c = LoadConfig(path, {"model { moe { router_logit_bias: [8, 0, 0, 0] } }"});
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->model().moe().router_logit_bias_size(), 4);
  EXPECT_EQ(c->model().moe().router_logit_bias(0), 8);
  EXPECT_EQ(c->model().moe().router_logit_bias(1), 0);
  ASSERT_EQ(c->data().train_size(), 2);  // not named by the override
  EXPECT_EQ(c->data().train(1).path(), "b");
  EXPECT_EQ(ValidateConfig(*c, 1, /*check_files=*/false), absl::OkStatus());

  // An override that names a sibling of a list leaves the list alone; later overrides replace earlier ones.
  c = LoadConfig(path, {"model { moe { top_k: 1 } }", "model { moe { router_logit_bias: [5, 5, 5, 5] } }",
                        "model { moe { router_logit_bias: [6, 6, 6, 6] } }"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model().moe().top_k(), 1);
  ASSERT_EQ(c->model().moe().router_logit_bias_size(), 4);
  EXPECT_EQ(c->model().moe().router_logit_bias(3), 6);

  TrainConfig base;
  base.mutable_model()->mutable_moe()->add_router_logit_bias(1);
  base.mutable_data()->add_train()->set_path("x");
  TrainConfig override;
  override.mutable_data()->add_train()->set_path("y");
  override.mutable_model()->set_d_model(32);
  MergeOverride(override, base);
  ASSERT_EQ(base.data().train_size(), 1);
  EXPECT_EQ(base.data().train(0).path(), "y");
  EXPECT_EQ(base.model().moe().router_logit_bias_size(), 1);
  EXPECT_EQ(base.model().d_model(), 32);
}

TEST(ConfigTest, ParseErrorsNameOriginAndPosition) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/bad.textproto";
  std::ofstream(path) << "model {\n  d_model: \"wide\"\n}\n";
  auto c = LoadConfig(path, {});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find(path + ": line 2"), std::string::npos) << c.status();

  std::ofstream(std::string(getenv("TEST_TMPDIR")) + "/ok.textproto") << "";
  auto o = LoadConfig(std::string(getenv("TEST_TMPDIR")) + "/ok.textproto", {"model { widht: 3 }"});
  ASSERT_FALSE(o.ok());
  EXPECT_NE(std::string(o.status().message()).find("--override: line 1"), std::string::npos) << o.status();
  EXPECT_NE(std::string(o.status().message()).find("widht"), std::string::npos) << o.status();

  auto bad_enum = ParseConfigText("model { norm { strategy: NORM_PRE } }", "x");
  ASSERT_FALSE(bad_enum.ok());
  EXPECT_NE(std::string(bad_enum.status().message()).find("NORM_PRE"), std::string::npos);

  auto missing = LoadConfig("/nonexistent.textproto", {});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("/nonexistent.textproto"), std::string::npos);
}

}  // namespace
}  // namespace hybridmoe
