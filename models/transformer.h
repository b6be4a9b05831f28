// The full model: token embedding -> blocks -> final norm -> untied LM head, and the training loss
//   loss = token-mean cross-entropy + w_lb * mean_l LB_l + w_z * mean_l Z_l   (docs/formulas.md section 6.1),
// the means taken over the MoE blocks. Model code is single-device; expert parallelism is applied from
// outside by swapping each MoE layer's dispatcher (parallel/).
// TransformerOptionsFromConfig is the one place where the config proto becomes module options.
// Parameter names are checkpoint keys: embed, blocks.<i>.<...>, final_norm.weight, lm_head.
// Precision (core/precision.h, docs/formulas.md section 10): fp32 by default; set_compute_dtype(kBFloat16)
// keeps the parameters fp32 masters and computes the GEMMs, attention and the activations between them in bf16
// from one bf16 copy of the GEMM weights per optimizer step, on the CPU and CUDA alike; the embedding lookup,
// norm statistics, router, losses stay fp32. After each backward, accumulate_compute_grads() moves the copies'
// gradients into the masters' .grad (the trainer does this). activation_checkpointing keeps only each
// block's input and recomputes it in backward.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "core/precision.h"
#include "models/block.h"
#include "proto/config.pb.h"

namespace hybridmoe {

enum class InitScheme { kNormal, kMegatron };

struct TransformerOptions {
  int64_t vocab_size = 256;
  int64_t d_model = 128;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  double rope_theta = 10000;
  int64_t dense_hidden = 512;
  NormStrategyOptions norm;
  MoeOptions moe;
  int64_t moe_every_n_layers = 1;      // 0: no MoE block
  int64_t moe_first_dense_layers = 0;  // blocks before this one are dense
  double lb_loss_weight = 0.01;
  double z_loss_weight = 0.001;
  InitScheme init = InitScheme::kNormal;
  double init_std = 0.02;
  // Training forwards keep only each block's input and recompute the block in backward.
  bool activation_checkpointing = false;
};

TransformerOptions TransformerOptionsFromConfig(const ModelConfig& config);
// Whether block `layer` has an MoE FFN: every every_n_layers-th block (n-1, 2n-1, ...) from first_dense_layers on.
bool IsMoeLayer(int64_t layer, int64_t every_n_layers, int64_t first_dense_layers = 0);
InitPlan MakeInitPlan(const TransformerOptions& options, uint64_t seed);

// Expert parameters are the tensors of each MoE layer's GroupedExperts module: blocks.<i>.moe.experts.<leaf>
// ([E_local, ...]), stored in checkpoints per expert as blocks.<i>.moe.experts.<e>.<leaf> (models/weights.h).
// The one test of whether a parameter or checkpoint key is an expert's (gradient sync, the trainer's
// per-block norms, checkpoints and weights all use it; tests/models/accounting_test holds it equal to
// module membership for every strategy and layout).
inline constexpr char kExpertsInfix[] = ".moe.experts.";
bool IsExpertName(std::string_view name);

struct ModelOutput {
  at::Tensor logits;   // [B, S, V]
  at::Tensor loss;     // lm_loss + weighted lb + weighted z (only with targets)
  at::Tensor lm_loss;  // token-mean cross-entropy
  at::Tensor lb_loss;  // w_lb * mean_l LB_l
  at::Tensor z_loss;   // w_z * mean_l Z_l
};

class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(const TransformerOptions& options);
  // tokens_BS int64; targets_BS optional (undefined: logits only).
  ModelOutput forward(const at::Tensor& tokens_BS, const at::Tensor& targets_BS = {});
  void reset_parameters(uint64_t seed);
  // The routing of a forward of tokens_BS, without a graph and without counting it anywhere: the slots routed to
  // each expert (int64 [E]) per MoE layer, in moe_layers() order. Runs the blocks up to the last MoE block (under
  // expert parallelism a collective: every rank calls it). The global-batch LB scope's first pass.
  std::vector<at::Tensor> count_routing(const at::Tensor& tokens_BS);
  std::vector<MoeLayer> moe_layers() const;
  // kFloat: fp32 throughout (the default); kBFloat16: mixed precision (see the top of this file). Call after
  // the experts are sharded and the model is on its device.
  void set_compute_dtype(at::ScalarType dtype);
  at::ScalarType compute_dtype() const { return compute_copies_ ? compute_copies_->dtype() : at::kFloat; }
  // Adds the compute copies' gradients to the fp32 parameters' .grad (no-op in fp32); after every backward.
  void accumulate_compute_grads() {
    if (compute_copies_) compute_copies_->AccumulateGrads();
  }
  ComputeCopies* compute_copies() const { return compute_copies_.get(); }

  TransformerOptions options;
  at::Tensor embed;                      // [V, D]
  std::vector<TransformerBlock> blocks;  // also registered under "blocks" (a ModuleList)
  Norm final_norm{nullptr};
  at::Tensor lm_head;  // [V, D]

 private:
  std::shared_ptr<ComputeCopies> compute_copies_;  // null in fp32
};
TORCH_MODULE(Transformer);

}  // namespace hybridmoe
