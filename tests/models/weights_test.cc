// Tests models/weights: bitwise save/load round trips, expert tensors split by global expert id so files
// move between expert shardings (split and merge), model directories, and one-line errors naming the
// tensor for wrong shapes, missing and unexpected tensors and non-float dtypes.
#include "models/weights.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "core/config.h"
#include "core/safetensors.h"
#include "moe/dispatcher.h"

namespace hybridmoe {
namespace {

std::string TmpDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t ? t : "/tmp";
}

// Stands in for the expert-parallel dispatcher: holds experts [first, first + n); never runs.
class ShardDispatcher : public TokenDispatcher {
 public:
  ShardDispatcher(int64_t first, int64_t n) : first_(first), n_(n) {}
  at::Tensor dispatch(const at::Tensor&, const std::vector<int64_t>&, std::vector<int64_t>&) override {
    TORCH_CHECK(false, "not used");
  }
  at::Tensor combine(const at::Tensor&) override { TORCH_CHECK(false, "not used"); }
  int64_t first_local_expert() const override { return first_; }
  int64_t num_local_experts() const override { return n_; }

 private:
  int64_t first_, n_;
};

TransformerOptions Tiny(NormStrategy strategy = NormStrategy::kQkNorm, NormKind kind = NormKind::kRms) {
  TransformerOptions o;
  o.vocab_size = 32;
  o.d_model = 16;
  o.n_layers = 2;
  o.n_heads = 2;
  o.dense_hidden = 24;
  o.norm.strategy = strategy;
  o.norm.kind = kind;
  o.moe.d_model = 16;
  o.moe.num_experts = 8;
  o.moe.top_k = 2;
  o.moe.hidden = 8;
  return o;
}

Transformer Build(const TransformerOptions& o, uint64_t seed, int64_t first_expert = 0, int64_t num_experts = 8) {
  Transformer m(o);
  for (MoeLayer layer : m->moe_layers()) {
    if (num_experts != o.moe.num_experts)
      layer->set_dispatcher(std::make_shared<ShardDispatcher>(first_expert, num_experts));
  }
  m->reset_parameters(seed);
  // Norm weights start at 1: make them distinct so that a swapped or skipped norm is seen.
  at::NoGradGuard no_grad;
  int i = 0;
  for (auto& p : m->named_parameters()) {
    if (p.key().find("norm") != std::string::npos)
      p.value().fill_(1.0 + 0.01 * (++i) + 0.001 * static_cast<double>(seed));
  }
  return m;
}

std::string ErrorText(const absl::Status& s) {
  EXPECT_FALSE(s.ok());
  const std::string m(s.message());
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  return m;
}

void ExpectModelsEqual(const Transformer& a, const Transformer& b) {
  auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& item : pa) {
    ASSERT_TRUE(pb.contains(item.key())) << item.key();
    EXPECT_TRUE(at::equal(item.value(), pb[item.key()])) << item.key();
  }
}

TEST(WeightsTest, RoundTripIsBitwiseForEveryParameterKind) {
  // QK_NORM (all MoE, RMS) and NORMFORMER with LayerNorm and a dense block (per-expert hidden norms + biases).
  TransformerOptions normformer = Tiny(NormStrategy::kNormFormer, NormKind::kLayer);
  normformer.moe_every_n_layers = 2;
  normformer.norm.normformer_residual_scale = true;
  for (const TransformerOptions& o : {Tiny(), normformer}) {
    Transformer a = Build(o, 1), b = Build(o, 2);
    const std::string path = TmpDir() + "/roundtrip.safetensors";
    ASSERT_TRUE(SaveModelWeights(a, path, {{"step", "5"}}).ok());
    ASSERT_TRUE(LoadModelWeights(b, path).ok());
    ExpectModelsEqual(a, b);

    std::map<std::string, std::string> metadata;
    auto file = ReadSafetensors(path, &metadata);
    ASSERT_TRUE(file.ok());
    EXPECT_EQ(metadata.at("format"), "pt");
    EXPECT_EQ(metadata.at("step"), "5");
    const int64_t moe_block = o.moe_every_n_layers == 2 ? 1 : 0;
    const std::string expert3 = "blocks." + std::to_string(moe_block) + ".moe.experts.3.";
    ASSERT_TRUE(file->count(expert3 + "w_gate"));
    EXPECT_TRUE(at::equal(file->at(expert3 + "w_gate"), a->blocks[moe_block]->moe->experts->w_gate[3]));
    EXPECT_EQ(file->at(expert3 + "w_down").sizes(), at::IntArrayRef({16, 8}));
    EXPECT_EQ(file->count("blocks.0.moe.experts.w_gate"), 0u);  // never the stacked form
    if (o.norm.strategy == NormStrategy::kNormFormer) {
      EXPECT_TRUE(at::equal(file->at(expert3 + "hidden_norm"), a->blocks[1]->moe->experts->hidden_norm[3]));
      EXPECT_EQ(file->count(expert3 + "hidden_norm_bias"), 1u);
      EXPECT_EQ(file->count("blocks.0.ffn.hidden_norm.weight") + file->count("blocks.1.ffn_residual_scale"), 2u);
    }
    size_t expected_keys = 0;
    for (const auto& p : a->named_parameters()) {
      expected_keys += p.key().find(".moe.experts.") != std::string::npos ? 8 : 1;
    }
    EXPECT_EQ(file->size(), expected_keys);
  }
}

TEST(WeightsTest, SplitsAndMergesExpertsAcrossShardings) {
  const TransformerOptions o = Tiny();
  Transformer full = Build(o, 1);
  const std::string path = TmpDir() + "/full.safetensors";
  ASSERT_TRUE(SaveModelWeights(full, path).ok());

  // A model holding experts [4, 8) loads its slice of the full file (the other experts are skipped).
  Transformer upper = Build(o, 9, 4, 4), lower = Build(o, 9, 0, 4);
  ASSERT_TRUE(LoadModelWeights(upper, path).ok());
  ASSERT_TRUE(LoadModelWeights(lower, path).ok());
  for (int64_t l = 0; l < o.n_layers; ++l) {
    const auto& fe = full->blocks[l]->moe->experts;
    EXPECT_TRUE(at::equal(upper->blocks[l]->moe->experts->w_up, fe->w_up.narrow(0, 4, 4)));
    EXPECT_TRUE(at::equal(lower->blocks[l]->moe->experts->w_down, fe->w_down.narrow(0, 0, 4)));
    EXPECT_TRUE(at::equal(upper->blocks[l]->attn->wq, full->blocks[l]->attn->wq));
  }

  // Each half saves only its experts, under global ids; merged through a shard index they rebuild the full model.
  const std::string dir = TmpDir() + "/merged";
  ASSERT_EQ(system(("rm -rf " + dir + " && mkdir -p " + dir).c_str()), 0);
  ASSERT_TRUE(SaveModelWeights(lower, dir + "/lower.safetensors").ok());
  std::map<std::string, at::Tensor> upper_experts;
  std::map<std::string, std::string> weight_map;
  for (const WeightSlot& s : ModelWeightSlots(upper)) {
    if (s.key.find(".moe.experts.") != std::string::npos) upper_experts[s.key] = s.value;
  }
  ASSERT_EQ(upper_experts.count("blocks.1.moe.experts.7.w_gate"), 1u);
  ASSERT_EQ(upper_experts.count("blocks.1.moe.experts.3.w_gate"), 0u);
  ASSERT_TRUE(WriteSafetensors(dir + "/upper.safetensors", upper_experts).ok());
  for (const WeightSlot& s : ModelWeightSlots(lower)) weight_map[s.key] = "lower.safetensors";
  for (const auto& kv : upper_experts) weight_map[kv.first] = "upper.safetensors";
  ASSERT_TRUE(WriteSafetensorsIndex(dir + "/model.safetensors.index.json", weight_map).ok());
  Transformer merged = Build(o, 3);
  const absl::Status s = LoadModelWeights(merged, dir);
  ASSERT_TRUE(s.ok()) << s;
  ExpectModelsEqual(full, merged);

  // The full model cannot load from one half alone, unless allowed to keep what is missing.
  Transformer partial = Build(o, 3);
  const std::string e = ErrorText(LoadModelWeights(partial, dir + "/lower.safetensors"));
  EXPECT_NE(e.find("missing tensor blocks.0.moe.experts.4.w_down (the model expects shape [16,8]) (and 23 more)"),
            std::string::npos)
      << e;
  Transformer reference = Build(o, 3);
  ASSERT_TRUE(LoadModelWeights(partial, dir + "/lower.safetensors", /*allow_missing=*/true).ok());
  EXPECT_TRUE(at::equal(partial->blocks[0]->moe->experts->w_gate.narrow(0, 0, 4),
                        full->blocks[0]->moe->experts->w_gate.narrow(0, 0, 4)));
  EXPECT_TRUE(at::equal(partial->blocks[0]->moe->experts->w_gate.narrow(0, 4, 4),
                        reference->blocks[0]->moe->experts->w_gate.narrow(0, 4, 4)));
}

// Saves `model`, edits the file's tensors with `edit`, and returns the error of loading it into `target`.
std::string LoadEdited(Transformer& model, Transformer& target,
                       const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const std::string path = TmpDir() + "/edited.safetensors";
  EXPECT_TRUE(SaveModelWeights(model, path).ok());
  auto tensors = ReadSafetensors(path);
  EXPECT_TRUE(tensors.ok());
  edit(*tensors);
  EXPECT_TRUE(WriteSafetensors(path, *tensors, {{"format", "pt"}}).ok());
  const std::string e = ErrorText(LoadModelWeights(target, path));
  EXPECT_NE(e.find(path), std::string::npos) << e;
  return e;
}

TEST(WeightsTest, ErrorsNameTheTensor) {
  const TransformerOptions o = Tiny();
  Transformer a = Build(o, 1), b = Build(o, 2);
  const Transformer untouched = Build(o, 2);
  std::string e = LoadEdited(a, b, [](auto& t) { t["blocks.1.attn.wq"] = at::zeros({16, 8}); });
  EXPECT_NE(e.find("tensor blocks.1.attn.wq has shape [16,8], the model expects [16,16]"), std::string::npos) << e;
  e = LoadEdited(a, b, [](auto& t) { t["blocks.0.moe.experts.5.w_up"] = at::zeros({9, 16}); });
  EXPECT_NE(e.find("tensor blocks.0.moe.experts.5.w_up has shape [9,16], the model expects [8,16]"), std::string::npos)
      << e;
  e = LoadEdited(a, b, [](auto& t) { t.erase("final_norm.weight"); });
  EXPECT_NE(e.find("missing tensor final_norm.weight (the model expects shape [16])"), std::string::npos) << e;
  EXPECT_EQ(e.find("more"), std::string::npos) << e;
  e = LoadEdited(a, b, [](auto& t) { t["blocks.0.attn.bogus"] = at::zeros({2}); });
  EXPECT_NE(e.find("unexpected tensor blocks.0.attn.bogus (shape [2]): not a parameter of this model"),
            std::string::npos)
      << e;
  e = LoadEdited(a, b, [](auto& t) { t["blocks.0.moe.experts.8.w_gate"] = at::zeros({8, 16}); });  // global id 8 of 8
  EXPECT_NE(e.find("unexpected tensor blocks.0.moe.experts.8.w_gate"), std::string::npos) << e;
  e = LoadEdited(a, b, [](auto& t) { t["embed"] = t["embed"].to(at::kLong); });
  EXPECT_NE(e.find("tensor embed has dtype Long; the model expects floating point"), std::string::npos) << e;
  // Every failure above was found before anything was copied.
  ExpectModelsEqual(b, untouched);
}

TEST(WeightsTest, ConvertsHalfPrecisionFiles) {
  const TransformerOptions o = Tiny();
  Transformer a = Build(o, 1), b = Build(o, 2);
  const std::string path = TmpDir() + "/bf16.safetensors";
  ASSERT_TRUE(SaveModelWeights(a, path).ok());
  auto tensors = ReadSafetensors(path);
  ASSERT_TRUE(tensors.ok());
  for (auto& kv : *tensors) kv.second = kv.second.to(kv.first == "embed" ? at::kHalf : at::kBFloat16);
  ASSERT_TRUE(WriteSafetensors(path, *tensors).ok());
  ASSERT_TRUE(LoadModelWeights(b, path).ok());
  EXPECT_EQ(b->embed.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(b->embed, a->embed.to(at::kHalf).to(at::kFloat)));
  EXPECT_TRUE(at::equal(b->lm_head, a->lm_head.to(at::kBFloat16).to(at::kFloat)));
  EXPECT_FALSE(at::equal(b->lm_head, a->lm_head));  // the conversion really rounded
}

TEST(WeightsTest, ModelDirectoryRoundTrip) {
  auto config = ParseConfigText(R"(
      model { vocab_size: 32 d_model: 16 n_layers: 2 n_heads: 2 norm { strategy: QK_NORM }
              moe { num_experts: 4 top_k: 2 expert_hidden: 8 } }
      data { seq_len: 8 micro_batch_size: 2 }
      parallel { expert_parallel_size: 2 })",
                                "test");
  ASSERT_TRUE(config.ok()) << config.status();
  Transformer a(TransformerOptionsFromConfig(config->model()));
  a->reset_parameters(5);
  const std::string dir = TmpDir() + "/model_dir/nested";
  ASSERT_TRUE(SaveModelDir(a, *config, dir).ok());
  TrainConfig read;
  auto b = LoadModelDir(dir, &read);
  ASSERT_TRUE(b.ok()) << b.status();
  ExpectModelsEqual(a, *b);
  TrainConfig want, got;  // model sections compared as fully rendered text (defaults filled in)
  TrainConfig resolved = *config;
  ResolveDefaults(resolved);
  *want.mutable_model() = resolved.model();
  *got.mutable_model() = read.model();
  EXPECT_EQ(ConfigToText(got), ConfigToText(want));
  EXPECT_EQ(read.parallel().expert_parallel_size(), 2);  // kept as written; loading is single-process
  const at::Tensor tensor_out = (*b)->forward(at::zeros({1, 4}, at::kLong)).logits;
  EXPECT_TRUE(at::allclose(tensor_out, a->forward(at::zeros({1, 4}, at::kLong)).logits));

  const std::string e = ErrorText(LoadModelDir(TmpDir() + "/no_such_dir").status());
  EXPECT_NE(e.find("no_such_dir/config.textproto: cannot be opened"), std::string::npos) << e;
}

}  // namespace
}  // namespace hybridmoe
