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
// Memory per rank in bytes (AccountMemory; tools/plan prints it), no ZeRO, one micro-batch alive:
//   expert parameters (experts + expert hidden norms) are sharded over parallel.expert_parallel_size,
//   everything else is replicated: P_rank = P_total - P_expert + P_expert / EP.
//   weights: fp32 masters 4*P_rank;  compute_copies (train.precision BF16 only): one bf16 copy of the GEMM
//     weights (attention, this rank's experts, dense FFNs, LM head; core/precision.h) 2*G_rank;
//   gradients: fp32 4*P_rank (BF16: the copies' bf16 gradients are folded into fp32 group by group after
//     backward, never more than 4*P_rank together);  optimizer: AdamW exp_avg + exp_avg_sq 8*P_rank;
//   activations (balanced routing: each rank's experts see T*k slots; T = micro-batch x seq_len tokens):
//     T * (sum over blocks of the bytes a block saves for backward + max(head, largest block)), or with
//     activation checkpointing T * (L * d * c (each block's input) + max(head, 2 x the largest block's bytes)):
//     backward runs the head first and frees its [T, V] tensors before it reaches a block, whose gradients are
//     as large as what it saved (the recomputed block holds both); head = 2d*c (final norm in/out) +
//     V*(c + 8) (logits in the compute dtype, the log-softmax and its fp32 gradient; dlogits reuses the freed
//     log-softmax) + 4V in BF16 (the fp32 logits of the loss); c = 4 (FP32) or 2 (BF16). Checked on the
//     full-width flagship block (docs/flagship.md: peak RSS within 5%, 1 rank FP32/BF16 and EP=2). A block saves, per
//     token, c bytes for each of: 7d (attention projection input, q, k, v, roped q, k, output), d per q/k/v norm, d per
//     block norm, d for a head scale, MoE: d (router input) + k*(2d + 4f) (gathered input, gate, up, silu(gate),
//     silu*up, expert output) (+ k*f hidden norm); dense: d + 4F (+ F); and 4 bytes for each of: H (softmax
//     log-sum-exp), 2E (router logits and probabilities, always fp32), in BF16 2d per norm (its fp32 statistics input
//     and normalised output);
//   all_to_all (EP > 1): the send and receive buffers of one exchange, 2 * T*k*d*c;
//   runtime: the process itself (LibTorch, oneDNN/MKL and MPI code and buffers), 0.25 GiB, measured on the
//     CPU (docs/flagship.md); a GPU's CUDA context and workspace add about as much again (not measured here).
// WhatFits answers, for a device memory, which layouts fit: per EP degree, precision and checkpointing,
// whether the configured micro-batch fits and the largest micro-batch and sequence length that do
// (activations are linear in tokens: SDPA keeps O(T) per head, not the [S, S] scores).
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
  ParamCount dense_ffn;  // w_gate, w_up, w_down of dense blocks and of MoE blocks' shared experts (+ gate)
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
  int64_t activation_elements_per_token = 0;       // saved for backward in the compute dtype
  int64_t activation_fp32_elements_per_token = 0;  // saved in fp32 whatever the precision (router, lse)
  int64_t norms = 0;                               // norm modules (BF16 keeps 2d fp32 elements for each)
};

struct MemoryPerRank {
  int64_t weights = 0;         // fp32 masters
  int64_t compute_copies = 0;  // BF16: bf16 copies of the GEMM weights
  int64_t gradients = 0;
  int64_t optimizer = 0;
  int64_t activations = 0;
  int64_t all_to_all = 0;
  int64_t runtime = 0;
  int64_t total = 0;
  // Everything except activations and all-to-all buffers (independent of the tokens per micro-batch).
  int64_t fixed() const { return weights + compute_copies + gradients + optimizer + runtime; }
  // (name, bytes) in a fixed order, total last; the names are the JSON keys of tools/plan.
  std::vector<std::pair<std::string, int64_t>> Terms() const;
};

// What the memory of one rank depends on besides the model (taken from a TrainConfig by AccountModel).
struct MemoryLayout {
  int expert_parallel_size = 1;
  bool bf16 = false;  // train.precision BF16
  bool activation_checkpointing = false;
  int64_t micro_batch_size = 1;
  int64_t seq_len = 1;
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
  int64_t gemm_params_per_rank = 0;    // parameters with a bf16 compute copy under BF16
  MemoryLayout layout;
  MemoryPerRank memory;
};

// One row of WhatFits.
struct FitRow {
  int expert_parallel_size = 1;
  bool bf16 = false;
  bool activation_checkpointing = false;
  MemoryPerRank at_config;      // the configured micro-batch and sequence length in this layout
  bool fits = false;            // at_config.total <= device memory
  int64_t max_tokens = 0;       // tokens per micro-batch that fit (0: the model states alone do not)
  int64_t max_micro_batch = 0;  // at the configured seq_len
  int64_t max_seq_len = 0;      // at micro-batch 1 (may exceed model.max_seq_len: compare yourself)
};

// Parameters of one model; `model` must pass ValidateConfig (core/config.h).
ParamBreakdown CountParams(const ModelConfig& model);
// Per-block parameters and activation elements per token, in layer order.
std::vector<BlockAccount> AccountBlocks(const ModelConfig& model);

// Everything above for a run on `world_size` ranks; `config` must pass ValidateConfig(config, world_size).
ModelAccount AccountModel(const TrainConfig& config, int world_size = 1);
// Memory per rank of `config`'s model in `layout`.
MemoryPerRank AccountMemory(const ModelConfig& model, const MemoryLayout& layout);
// For every EP degree that divides both world_size and the expert count, FP32 and BF16, checkpointing off and
// on: what fits in `device_bytes` per rank, in that order.
std::vector<FitRow> WhatFits(const TrainConfig& config, int world_size, int64_t device_bytes);

}  // namespace hybridmoe
