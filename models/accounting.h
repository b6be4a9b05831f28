// Parameter, FLOP and memory accounting from a config alone: nothing is allocated, so it works for
// OLMoE-1B-7B (6.9B parameters) on a laptop. tests/models/accounting_test.cc holds the counts equal to
// the numel of a built Transformer for every preset and norm strategy.
//
// Which norms each block has comes from models/block.h's ResolveBlockLayout (the one place a norm
// strategy is interpreted) and which blocks are MoE from models/transformer.h's IsMoeLayer; this file
// only multiplies shapes. Consequently the library links LibTorch, although it never builds a tensor.
//
// Shapes counted (d model width, H heads, h_d = d/H, E experts, k top-k, f expert hidden, F dense
// hidden, V vocab; a LayerNorm-kind norm of width n has 2n parameters, an RMSNorm n):
//   embedding V*d; lm_head V*d; final_norm d
//   per block: attention wq,wk,wv,wo 4*d^2; q/k/v norms d each (FULL_WIDTH) or h_d each (PER_HEAD);
//     block norms d each (attn_norm, attn_out_norm, ffn_norm, ffn_out_norm as the layout says);
//     MoE block: router E*d, experts E*3*d*f; dense block: 3*d*F;
//     NormFormer extras: head_scale H, expert hidden norms E*f (dense: F), ffn_residual_scale 1.
// Active (per token): every parameter except the experts not chosen, i.e. an MoE block's experts and
// expert hidden norms count k/E; embedding and LM head count as active (OLMoE's convention).
//
// FLOPs per token (forward), PaLM's convention: 2 * (active matmul parameters: attention projections,
// router, the k active experts, dense FFNs, LM head; the embedding lookup and norm weights do no matmul)
// + 4 * L * seq_len * d for attention scores and values (full, not causally halved). Training = 3x.
//
// Memory per rank in bytes, fp32 throughout (the trainer has no mixed precision), no ZeRO:
//   expert parameters (experts + expert hidden norms) are sharded over parallel.expert_parallel_size,
//   everything else is replicated: P_rank = P_total - P_expert + P_expert / EP.
//   weights 4*P_rank; gradients 4*P_rank; optimizer (AdamW exp_avg + exp_avg_sq) 8*P_rank;
//   activations (estimate, no activation checkpointing, one micro-batch alive, balanced routing so each
//   rank's experts see T*k slots) 4 * T * a, T = data.micro_batch_size * data.seq_len, with a, the
//   elements saved for backward per token:
//     per block: d per block norm + attention 7d (projection input, q, k, v, roped q, k, output)
//       + d per q/k/v norm + d for a head scale + H (softmax log-sum-exp)
//       MoE: d (router input) + 2E (fp32 logits, probs) + k*(2d + 4f) (gathered input, gate, up,
//         silu(gate), silu*up, expert output) + k*f for a hidden norm
//       dense: d + 4F (+ F for a hidden norm)
//     final: 2d (final norm input and output) + 2V (logits and log-softmax).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proto/config.pb.h"

namespace hybridmoe {

struct ParamCount {
  int64_t total = 0;
  int64_t active = 0;
};

// Parameters by component, for one block or the whole model.
struct ParamBreakdown {
  ParamCount embedding;
  ParamCount lm_head;
  ParamCount attention;    // wq, wk, wv, wo
  ParamCount qkv_norms;    // q_norm, k_norm, v_norm
  ParamCount block_norms;  // attn_norm, attn_out_norm, ffn_norm, ffn_out_norm
  ParamCount router;
  ParamCount experts;    // w_gate, w_up, w_down of all experts
  ParamCount dense_ffn;  // w_gate, w_up, w_down of dense blocks
  ParamCount final_norm;
  ParamCount normformer;       // head_scale, expert/dense hidden norms, ffn_residual_scale
  int64_t expert_sharded = 0;  // parameters sharded over expert parallelism (experts + their hidden norms)

  ParamCount Sum() const;
  // (name, count) in a fixed order; the names are the JSON keys of tools/plan.
  std::vector<std::pair<std::string, ParamCount>> Components() const;
  ParamBreakdown& operator+=(const ParamBreakdown& other);
};

struct BlockAccount {
  int64_t layer = 0;
  bool moe = false;
  ParamBreakdown params;
  int64_t activation_elements_per_token = 0;
};

struct MemoryPerRank {
  int64_t weights = 0;
  int64_t gradients = 0;
  int64_t optimizer = 0;
  int64_t activations = 0;
  int64_t total = 0;
};

struct ModelAccount {
  ParamBreakdown params;             // whole model
  std::vector<BlockAccount> blocks;  // one per layer
  int64_t total_params = 0;
  int64_t active_params = 0;
  int64_t matmul_params_active = 0;
  int64_t params_per_rank = 0;  // what one rank stores (experts sharded over EP)
  int64_t flops_per_token_forward = 0;
  int64_t flops_per_token_train = 0;
  int world_size = 1;
  int expert_parallel_size = 1;
  int64_t tokens_per_micro_batch = 0;  // data.micro_batch_size * data.seq_len
  MemoryPerRank memory;
};

// Parameters of one model; `model` must pass ValidateConfig (core/config.h).
ParamBreakdown CountParams(const ModelConfig& model);
// Per-block parameters and activation elements per token, in layer order.
std::vector<BlockAccount> AccountBlocks(const ModelConfig& model);

// Everything above for a run on `world_size` ranks; `config` must pass ValidateConfig(config, world_size).
ModelAccount AccountModel(const TrainConfig& config, int world_size = 1);

}  // namespace hybridmoe
