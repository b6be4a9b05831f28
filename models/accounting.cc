#include "models/accounting.h"

#include <algorithm>

#include "models/block.h"
#include "models/transformer.h"

namespace hybridmoe {
namespace {

// The norm slots TransformerBlockImpl registers for a sub-layer form.
int64_t NormsOfForm(SubLayerForm form) { return int64_t{UsesInputNorm(form)} + int64_t{UsesOutputNorm(form)}; }

ParamCount Dense(int64_t n) { return {n, n}; }

constexpr int64_t kGiB = int64_t{1} << 30;
constexpr int64_t kRuntimeBytes = kGiB / 4;

// Activation bytes per token of a micro-batch (everything AccountMemory's activations term counts).
int64_t ActivationBytesPerToken(const ModelConfig& m, const std::vector<BlockAccount>& blocks, bool bf16,
                                bool checkpointing) {
  const int64_t c = bf16 ? 2 : 4, d = m.d_model(), V = m.vocab_size();
  int64_t sum = 0, largest = 0;
  for (const BlockAccount& b : blocks) {
    const int64_t bytes =
        c * b.activation_elements_per_token + 4 * b.activation_fp32_elements_per_token + (bf16 ? 8 * d * b.norms : 0);
    sum += bytes;
    largest = std::max(largest, bytes);
  }
  // The head's peak, in its backward: logits (held by the step's output), the fp32 logits of the loss (BF16),
  // the log-softmax and its gradient (dlogits takes the freed log-softmax's place).
  const int64_t head = 2 * d * c + V * (c + 8 + (bf16 ? 4 : 0));
  // Backward runs the head first and frees its [T, V] tensors before it reaches the last block, so the head's
  // tensors and a block's gradients (as large as the activations the block saved) are not alive together.
  if (!checkpointing) return sum + std::max(head, largest);
  // With checkpointing the block being recomputed holds its activations and their gradients; the blocks' inputs
  // stay alive throughout.
  return static_cast<int64_t>(blocks.size()) * d * c + std::max(head, 2 * largest);
}

// All-to-all staging bytes per token (send + receive of one exchange), zero without expert parallelism.
int64_t AllToAllBytesPerToken(const ModelConfig& m, int ep, bool bf16) {
  if (ep <= 1) return 0;
  return 2 * int64_t{m.moe().top_k()} * m.d_model() * (bf16 ? 2 : 4);
}

}  // namespace

std::vector<std::pair<std::string, int64_t>> MemoryPerRank::Terms() const {
  return {{"weights", weights},         {"compute_copies", compute_copies},
          {"gradients", gradients},     {"optimizer", optimizer},
          {"activations", activations}, {"all_to_all", all_to_all},
          {"runtime", runtime},         {"total", total}};
}

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
    b.moe = IsMoeLayer(i, o.moe_every_n_layers, o.moe_first_dense_layers);
    ParamBreakdown& p = b.params;
    int64_t act = 7 * d;   // attention: projection input, q, k, v, roped q, k, output
    int64_t act_fp32 = H;  // softmax log-sum-exp

    p.attention = Dense(4 * d * d);
    const int64_t n_qkv_norms = int64_t{layout.q_norm} + layout.k_norm + layout.v_norm;
    p.qkv_norms = Dense(n_qkv_norms * (layout.per_head_norm ? hd : d) * norm_factor);
    act += n_qkv_norms * d;
    const int64_t n_block_norms = NormsOfForm(layout.attn_form) + NormsOfForm(layout.ffn_form);
    p.block_norms = Dense(n_block_norms * d * norm_factor);
    act += n_block_norms * d;
    b.norms = n_qkv_norms + n_block_norms;

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
      act += d + k * (2 * d + 4 * f) + (layout.ffn_hidden_norm ? k * f : 0);
      act_fp32 += 2 * E;                                     // router logits and probabilities
      if (const int64_t fs = o.moe.shared_hidden; fs > 0) {  // the shared expert: a dense SwiGLU (+ its gate)
        p.dense_ffn = Dense(3 * d * fs + (o.moe.shared_gate ? d : 0));
        if (layout.ffn_hidden_norm) {
          p.normformer.total += fs * norm_factor;
          p.normformer.active += fs * norm_factor;
        }
        act += d + 4 * fs + (layout.ffn_hidden_norm ? fs : 0);
        act_fp32 += o.moe.shared_gate ? 1 : 0;
      }
    } else {
      p.dense_ffn = Dense(3 * d * F);
      if (layout.ffn_hidden_norm) {
        p.normformer.total += F * norm_factor;
        p.normformer.active += F * norm_factor;
      }
      act += d + 4 * F + (layout.ffn_hidden_norm ? F : 0);
    }
    b.activation_fp32_elements_per_token = act_fp32;
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
  const int64_t d = m.d_model(), L = m.n_layers(), S = config.data().seq_len();
  a.flops_per_token_forward = 2 * a.matmul_params_active + 4 * L * S * d;
  a.flops_per_token_train = 3 * a.flops_per_token_forward;

  a.world_size = world_size;
  a.expert_parallel_size = std::max(1, config.parallel().expert_parallel_size());
  a.params_per_rank = a.total_params - p.expert_sharded + p.expert_sharded / a.expert_parallel_size;
  a.tokens_per_micro_batch = int64_t{config.data().micro_batch_size()} * S;

  MemoryLayout& l = a.layout;
  l.expert_parallel_size = a.expert_parallel_size;
  l.bf16 = config.train().precision() == TrainRunConfig::BF16;
  l.activation_checkpointing = m.activation_checkpointing();
  l.micro_batch_size = config.data().micro_batch_size();
  l.seq_len = S;
  a.gemm_params_per_rank =
      p.attention.total + p.dense_ffn.total + p.lm_head.total + p.experts.total / a.expert_parallel_size;
  a.memory = AccountMemory(m, l);
  return a;
}

MemoryPerRank AccountMemory(const ModelConfig& m, const MemoryLayout& l) {
  const std::vector<BlockAccount> blocks = AccountBlocks(m);
  const ParamBreakdown p = CountParams(m);
  const int ep = std::max(1, l.expert_parallel_size);
  const int64_t params = p.Sum().total - p.expert_sharded + p.expert_sharded / ep;
  const int64_t gemm = p.attention.total + p.dense_ffn.total + p.lm_head.total + p.experts.total / ep;
  const int64_t tokens = l.micro_batch_size * l.seq_len;
  MemoryPerRank mem;
  mem.weights = 4 * params;
  mem.compute_copies = l.bf16 ? 2 * gemm : 0;
  mem.gradients = 4 * params;
  mem.optimizer = 8 * params;
  mem.activations = tokens * ActivationBytesPerToken(m, blocks, l.bf16, l.activation_checkpointing);
  mem.all_to_all = tokens * AllToAllBytesPerToken(m, ep, l.bf16);
  mem.runtime = kRuntimeBytes;
  mem.total = mem.fixed() + mem.activations + mem.all_to_all;
  return mem;
}

std::vector<FitRow> WhatFits(const TrainConfig& config, int world_size, int64_t device_bytes) {
  const ModelConfig& m = config.model();
  const int64_t E = m.moe().every_n_layers() > 0 ? m.moe().num_experts() : 1;
  const std::vector<BlockAccount> blocks = AccountBlocks(m);
  std::vector<FitRow> rows;
  for (int ep = 1; ep <= world_size; ++ep) {
    if (world_size % ep != 0 || E % ep != 0) continue;
    for (const bool bf16 : {false, true}) {
      for (const bool checkpointing : {false, true}) {
        FitRow r;
        r.expert_parallel_size = ep;
        r.bf16 = bf16;
        r.activation_checkpointing = checkpointing;
        MemoryLayout l;
        l.expert_parallel_size = ep;
        l.bf16 = bf16;
        l.activation_checkpointing = checkpointing;
        l.micro_batch_size = config.data().micro_batch_size();
        l.seq_len = config.data().seq_len();
        r.at_config = AccountMemory(m, l);
        r.fits = r.at_config.total <= device_bytes;
        const int64_t per_token =
            ActivationBytesPerToken(m, blocks, bf16, checkpointing) + AllToAllBytesPerToken(m, ep, bf16);
        const int64_t room = device_bytes - r.at_config.fixed();
        r.max_tokens = room > 0 ? room / per_token : 0;
        r.max_micro_batch = r.max_tokens / std::max<int64_t>(1, l.seq_len);
        r.max_seq_len = r.max_tokens;
        rows.push_back(r);
      }
    }
  }
  return rows;
}

}  // namespace hybridmoe
