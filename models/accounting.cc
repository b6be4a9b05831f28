#include "models/accounting.h"

#include <algorithm>

#include "models/block.h"
#include "models/transformer.h"

namespace hybridmoe {
namespace {

// The norm slots TransformerBlockImpl registers for a sub-layer form.
int64_t NormsOfForm(SubLayerForm form) { return int64_t{UsesInputNorm(form)} + int64_t{UsesOutputNorm(form)}; }

ParamCount Dense(int64_t n) { return {n, n}; }

}  // namespace

ParamCount ParamBreakdown::Sum() const {
  ParamCount s;
  for (const auto& [name, c] : Components()) {
    s.total += c.total;
    s.active += c.active;
  }
  return s;
}

std::vector<std::pair<std::string, ParamCount>> ParamBreakdown::Components() const {
  return {{"embedding", embedding},     {"lm_head", lm_head},      {"attention", attention}, {"qkv_norms", qkv_norms},
          {"block_norms", block_norms}, {"router", router},        {"experts", experts},     {"dense_ffn", dense_ffn},
          {"final_norm", final_norm},   {"normformer", normformer}};
}

ParamBreakdown& ParamBreakdown::operator+=(const ParamBreakdown& o) {
  auto add = [](ParamCount& mine, const ParamCount& theirs) {
    mine.total += theirs.total;
    mine.active += theirs.active;
  };
  add(embedding, o.embedding);
  add(lm_head, o.lm_head);
  add(attention, o.attention);
  add(qkv_norms, o.qkv_norms);
  add(block_norms, o.block_norms);
  add(router, o.router);
  add(experts, o.experts);
  add(dense_ffn, o.dense_ffn);
  add(final_norm, o.final_norm);
  add(normformer, o.normformer);
  expert_sharded += o.expert_sharded;
  return *this;
}

std::vector<BlockAccount> AccountBlocks(const ModelConfig& model) {
  const TransformerOptions o = TransformerOptionsFromConfig(model);
  const int64_t d = o.d_model, H = o.n_heads, hd = d / H, L = o.n_layers;
  const int64_t E = o.moe.num_experts, k = o.moe.top_k, f = o.moe.hidden, F = o.dense_hidden;
  const int64_t norm_factor = o.norm.kind == NormKind::kLayer ? 2 : 1;  // weight (+ bias)

  std::vector<BlockAccount> blocks;
  for (int64_t i = 0; i < L; ++i) {
    const BlockLayout layout = ResolveBlockLayout(o.norm, i, L);
    BlockAccount b;
    b.layer = i;
    b.moe = IsMoeLayer(i, o.moe_every_n_layers);
    ParamBreakdown& p = b.params;
    int64_t act = 7 * d + H;  // attention: projection input, q, k, v, roped q, k, output; log-sum-exp

    p.attention = Dense(4 * d * d);
    const int64_t n_qkv_norms = int64_t{layout.q_norm} + layout.k_norm + layout.v_norm;
    p.qkv_norms = Dense(n_qkv_norms * (layout.per_head_norm ? hd : d) * norm_factor);
    act += n_qkv_norms * d;
    const int64_t n_block_norms = NormsOfForm(layout.attn_form) + NormsOfForm(layout.ffn_form);
    p.block_norms = Dense(n_block_norms * d * norm_factor);
    act += n_block_norms * d;

    int64_t extras = layout.head_scale ? H : 0;
    if (layout.head_scale) act += d;
    if (layout.ffn_residual_scale) extras += 1;
    p.normformer = Dense(extras);
    if (b.moe) {
      const int64_t expert = 3 * d * f;
      const int64_t hidden_norm = layout.ffn_hidden_norm ? f * norm_factor : 0;
      p.router = Dense(E * d);
      p.experts = {E * expert, k * expert};
      p.normformer.total += E * hidden_norm;
      p.normformer.active += k * hidden_norm;
      p.expert_sharded = E * (expert + hidden_norm);
      act += d + 2 * E + k * (2 * d + 4 * f) + (layout.ffn_hidden_norm ? k * f : 0);
    } else {
      p.dense_ffn = Dense(3 * d * F);
      if (layout.ffn_hidden_norm) {
        p.normformer.total += F * norm_factor;
        p.normformer.active += F * norm_factor;
      }
      act += d + 4 * F + (layout.ffn_hidden_norm ? F : 0);
    }
    b.activation_elements_per_token = act;
    blocks.push_back(b);
  }
  return blocks;
}

ParamBreakdown CountParams(const ModelConfig& model) {
  ParamBreakdown p;
  const int64_t V = model.vocab_size(), d = model.d_model();
  p.embedding = Dense(V * d);
  p.lm_head = Dense(V * d);
  p.final_norm = Dense(model.norm().kind() == NormConfig::LAYER ? 2 * d : d);
  for (const BlockAccount& b : AccountBlocks(model)) p += b.params;
  return p;
}

ModelAccount AccountModel(const TrainConfig& config, int world_size) {
  const ModelConfig& m = config.model();
  ModelAccount a;
  a.blocks = AccountBlocks(m);
  a.params = CountParams(m);
  const ParamCount sum = a.params.Sum();
  a.total_params = sum.total;
  a.active_params = sum.active;

  const ParamBreakdown& p = a.params;
  a.matmul_params_active =
      p.attention.active + p.router.active + p.experts.active + p.dense_ffn.active + p.lm_head.active;
  const int64_t V = m.vocab_size(), d = m.d_model(), L = m.n_layers(), S = config.data().seq_len();
  a.flops_per_token_forward = 2 * a.matmul_params_active + 4 * L * S * d;
  a.flops_per_token_train = 3 * a.flops_per_token_forward;

  a.world_size = world_size;
  a.expert_parallel_size = std::max(1, config.parallel().expert_parallel_size());
  a.params_per_rank = a.total_params - p.expert_sharded + p.expert_sharded / a.expert_parallel_size;
  a.tokens_per_micro_batch = int64_t{config.data().micro_batch_size()} * S;

  int64_t act_per_token = 2 * d + 2 * V;
  for (const BlockAccount& b : a.blocks) act_per_token += b.activation_elements_per_token;
  constexpr int64_t kFp32 = 4;
  MemoryPerRank& mem = a.memory;
  mem.weights = kFp32 * a.params_per_rank;
  mem.gradients = kFp32 * a.params_per_rank;
  mem.optimizer = 2 * kFp32 * a.params_per_rank;
  mem.activations = kFp32 * a.tokens_per_micro_batch * act_per_token;
  mem.total = mem.weights + mem.gradients + mem.optimizer + mem.activations;
  return a;
}

}  // namespace hybridmoe
