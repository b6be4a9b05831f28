// Importing a Hugging Face OLMoE checkpoint as the Hub ships it (bf16 model-0000N-of-0000M.safetensors shards +
// model.safetensors.index.json), at a tiny size:
//   - ConvertToModelDir (models/weights.h, what convert_hf --from_hf runs) holds one source tensor at a time
//     (counted: every tensor it reads is freed before the next is read) and writes the same bytes as building
//     the model, loading it and SaveModelDir;
//   - the convert_hf binary on a 3-shard checkpoint written by make_hf_checkpoint.py (the generator of the
//     flagship-sized measurement in docs/flagship.md) imports every tensor exactly (bf16 -> fp32).
// Args: CONVERT_HF_BINARY MAKE_HF_CHECKPOINT_PY.
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "core/config.h"
#include "core/safetensors.h"
#include "models/weights.h"

namespace hybridmoe {
namespace {

std::string g_convert_hf, g_make_checkpoint;

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(base ? base : "/tmp") + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TrainConfig TinyOlmoe() {
  auto config = LoadConfig("configs/olmoe_1b7b.textproto", {"model { vocab_size: 96 d_model: 32 n_layers: 2 n_heads: 4 "
                                                            "moe { num_experts: 4 top_k: 2 expert_hidden: 16 } }"});
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

TEST(HfImportTest, ConvertToModelDirHoldsOneSourceTensorAtATime) {
  const TrainConfig config = TinyOlmoe();
  Transformer reference(TransformerOptionsFromConfig(config.model()));
  std::map<std::string, at::Tensor> values;  // bf16, as the Hub ships
  int64_t i = 0;
  for (const WeightSlot& s : ModelWeightSlots(reference)) {
    values[s.key] =
        (at::randn(s.value.sizes(), at::TensorOptions().dtype(at::kFloat)) * 0.02 + (i++ % 3)).to(at::kBFloat16);
  }
  static std::atomic<int> live{0}, most{0}, reads{0};
  TensorSource source;
  source.origin = "test source";
  for (const auto& [key, v] : values) {
    const at::Tensor* value = &v;
    source.tensors[key] = {v.sizes().vec(), at::kBFloat16, key, [value]() -> absl::StatusOr<at::Tensor> {
                             // A private copy whose release is counted: `live` is how many reads are alive.
                             auto* bytes = new at::Tensor(value->clone());
                             most = std::max(most.load(), ++live);
                             ++reads;
                             return at::from_blob(
                                 bytes->data_ptr(), bytes->sizes(),
                                 [bytes](void*) {
                                   --live;
                                   delete bytes;
                                 },
                                 bytes->options());
                           }};
  }
  const std::string dir = TempDir("streamed");
  ASSERT_TRUE(ConvertToModelDir(config, source, dir, {{"converted_from", "test"}}).ok());
  EXPECT_EQ(reads.load(), static_cast<int>(values.size()));
  EXPECT_EQ(most.load(), 1) << "source tensors alive at once";
  EXPECT_EQ(live.load(), 0);

  // The same files as the in-memory path: build the model, load, SaveModelDir.
  ASSERT_TRUE(LoadModelWeightsFrom(reference, source).ok());
  const std::string whole = TempDir("whole");
  ASSERT_TRUE(SaveModelDir(reference, config, whole, {{"converted_from", "test"}}).ok());
  EXPECT_EQ(Slurp(dir + "/model.safetensors"), Slurp(whole + "/model.safetensors"));
  EXPECT_EQ(Slurp(dir + "/config.textproto"), Slurp(whole + "/config.textproto"));
  EXPECT_GT(Slurp(dir + "/model.safetensors").size(), 4 * 20000u);

  // A missing tensor is refused before anything is written.
  source.tensors.erase("lm_head");
  const std::string refused = TempDir("refused");
  const absl::Status s = ConvertToModelDir(config, source, refused);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("missing tensor lm_head"), std::string::npos) << s;
  EXPECT_FALSE(std::ifstream(refused + "/model.safetensors").good());
}

TEST(HfImportTest, ShardedBf16HubCheckpointImportsExactly) {
  const char* venv = std::getenv("HYBRIDMOE_VENV");
  const std::string python = venv ? std::string(venv) + "/bin/python" : "python3";
  const std::string hf = TempDir("hf"), out = TempDir("ours");
  ASSERT_EQ(std::system((python + " " + g_make_checkpoint + " --preset=tiny --shards=3 --out=" + hf).c_str()), 0);
  for (const char* shard : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(std::ifstream(hf + "/" + shard).good()) << shard;
  }
  ASSERT_EQ(std::system((g_convert_hf + " --from_hf=" + hf + " --out=" + out).c_str()), 0);

  auto theirs = SafetensorsReader::Open(hf);  // the index
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  auto ours = ReadSafetensors(out + "/model.safetensors");
  ASSERT_TRUE(ours.ok()) << ours.status();
  // Per-layer and per-expert names map one to one; every value is the bf16 value widened to fp32.
  const std::map<std::string, std::string> names = {
      {"model.embed_tokens.weight", "embed"},
      {"lm_head.weight", "lm_head"},
      {"model.norm.weight", "final_norm.weight"},
      {"model.layers.1.self_attn.q_proj.weight", "blocks.1.attn.wq"},
      {"model.layers.0.self_attn.k_norm.weight", "blocks.0.attn.k_norm.weight"},
      {"model.layers.0.mlp.gate.weight", "blocks.0.moe.router"},
      {"model.layers.1.mlp.experts.3.down_proj.weight", "blocks.1.moe.experts.3.w_down"},
      {"model.layers.0.post_attention_layernorm.weight", "blocks.0.ffn_norm.weight"}};
  for (const auto& [hf_name, our_name] : names) {
    ASSERT_TRUE(ours->count(our_name)) << our_name;
    auto t = (*theirs)->Read(hf_name);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->scalar_type(), at::kBFloat16);
    EXPECT_EQ(ours->at(our_name).scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(ours->at(our_name), t->to(at::kFloat))) << our_name;
  }
  // Every tensor came across: 3 top-level + per layer 9 + 3 per expert.
  EXPECT_EQ(ours->size(), (*theirs)->names().size());
  EXPECT_EQ(ours->size(), 3u + 2 * (9 + 3 * 4));
  double sum_ours = 0, sum_theirs = 0;
  for (const std::string& n : (*theirs)->names())
    sum_theirs += (*theirs)->Read(n)->to(at::kDouble).sum().item<double>();
  for (const auto& [n, t] : *ours) sum_ours += t.to(at::kDouble).sum().item<double>();
  EXPECT_EQ(sum_ours, sum_theirs);
}

}  // namespace
}  // namespace hybridmoe

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CONVERT_HF MAKE_HF_CHECKPOINT_PY\n", argv[0]);
    return 2;
  }
  hybridmoe::g_convert_hf = argv[1];
  hybridmoe::g_make_checkpoint = argv[2];
  return RUN_ALL_TESTS();
}
