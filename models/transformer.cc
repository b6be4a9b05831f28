#include "models/transformer.h"

#include <cmath>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace hybridmoe {

namespace {

// The tensors a block's forward reads as weights: its parameters, with the compute copies in their place under
// mixed precision.
std::vector<at::Tensor> BlockLeaves(TransformerBlockImpl& block, const ComputeCopies* copies) {
  std::vector<at::Tensor> params = block.parameters();
  return copies != nullptr ? copies->Leaves(params) : params;
}

// Activation checkpointing: forward runs the block without recording a graph and keeps only its input and, for
// an MoE block, the router's choice of experts; backward runs the block again with grad enabled, replaying that
// choice (no top-k: a near-tie cannot flip and change the all-to-all sizes; router statistics are not counted
// again), and backpropagates through that recomputation to the input and the block's parameters.
class CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
 public:
  // `params`: BlockLeaves(block, copies), the tensors the block's forward reads (gradients go to them).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                at::TensorList params, TransformerBlockImpl* block,
                                                ComputeCopies* copies) {
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["copies"] = reinterpret_cast<int64_t>(copies);
    const BlockOutput b = block->forward(x);
    if (b.experts_TK.defined()) ctx->saved_data["experts"] = b.experts_TK;
    return b.lb_loss.defined() ? torch::autograd::variable_list{b.x, b.lb_loss, b.z_loss}
                               : torch::autograd::variable_list{b.x};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto* block = reinterpret_cast<TransformerBlockImpl*>(ctx->saved_data["block"].toInt());
    auto* copies = reinterpret_cast<ComputeCopies*>(ctx->saved_data["copies"].toInt());
    const at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    const auto experts = ctx->saved_data.find("experts");
    BlockOutput b;
    {
      at::AutoGradMode grad_mode(true);
      b = block->forward(x, experts != ctx->saved_data.end() ? experts->second.toTensor() : at::Tensor());
    }
    const std::vector<at::Tensor> all = {b.x, b.lb_loss, b.z_loss};
    torch::autograd::variable_list outputs, grad_outputs;
    for (size_t i = 0; i < grads.size(); ++i) {
      if (all[i].requires_grad()) {
        outputs.push_back(all[i]);
        grad_outputs.push_back(grads[i]);
      }
    }
    torch::autograd::variable_list inputs = {x};
    for (const at::Tensor& p : BlockLeaves(*block, copies)) inputs.push_back(p);
    torch::autograd::variable_list result = torch::autograd::grad(outputs, inputs, grad_outputs, /*retain_graph=*/false,
                                                                  /*create_graph=*/false, /*allow_unused=*/true);
    result.emplace_back();  // the block pointer
    result.emplace_back();  // the copies pointer
    return result;
  }
};

NormStrategy StrategyFromProto(NormConfig::Strategy s) {
  switch (s) {
    case NormConfig::PRE_NORM: return NormStrategy::kPreNorm;
    case NormConfig::POST_NORM: return NormStrategy::kPostNorm;
    case NormConfig::QK_NORM: return NormStrategy::kQkNorm;
    case NormConfig::QKV_NORM: return NormStrategy::kQkvNorm;
    case NormConfig::HYBRID_NORM: return NormStrategy::kHybridNorm;
    case NormConfig::HYBRID_NORM_STAR: return NormStrategy::kHybridNormStar;
    case NormConfig::MIX_LN: return NormStrategy::kMixLn;
    case NormConfig::SANDWICH: return NormStrategy::kSandwich;
    case NormConfig::DEEPNORM: return NormStrategy::kDeepNorm;
    case NormConfig::NORMFORMER: return NormStrategy::kNormFormer;
  }
  TORCH_CHECK(false, "unknown norm strategy ", static_cast<int>(s));
}

}  // namespace

TransformerOptions TransformerOptionsFromConfig(const ModelConfig& c) {
  TransformerOptions o;
  o.vocab_size = c.vocab_size();
  o.d_model = c.d_model();
  o.n_layers = c.n_layers();
  o.n_heads = c.n_heads();
  o.rope_theta = c.rope_theta();
  o.dense_hidden = c.dense_hidden();
  o.norm.strategy = StrategyFromProto(c.norm().strategy());
  o.norm.kind = c.norm().kind() == NormConfig::LAYER ? NormKind::kLayer : NormKind::kRms;
  o.norm.eps = c.norm().eps();
  o.norm.per_head_qkv_norm =
      c.norm().has_qk_norm_granularity() ? (c.norm().qk_norm_granularity() == NormConfig::PER_HEAD ? 1 : 0) : -1;
  o.norm.mix_ln_alpha = c.norm().mix_ln_alpha();
  o.norm.normformer_residual_scale = c.norm().normformer_residual_scale();
  o.moe.d_model = c.d_model();
  o.moe.num_experts = c.moe().num_experts();
  o.moe.top_k = c.moe().top_k();
  o.moe.hidden = c.moe().expert_hidden();
  o.moe.normalize_topk = c.moe().normalize_topk();
  o.moe.capacity_factor = c.moe().capacity_factor();
  o.moe.score = c.moe().score_function() == MoeConfig::SIGMOID ? RouterScore::kSigmoid : RouterScore::kSoftmax;
  o.moe.softmax_after_topk = c.moe().softmax_after_topk();
  o.moe.bias_update_rate = c.moe().bias_update_rate();
  switch (c.moe().lb_loss_scope()) {
    case MoeConfig::MICRO_BATCH: o.moe.lb_scope = LoadBalanceScope::kMicroBatch; break;
    case MoeConfig::GLOBAL_BATCH: o.moe.lb_scope = LoadBalanceScope::kGlobalBatch; break;
    case MoeConfig::SEQUENCE: o.moe.lb_scope = LoadBalanceScope::kSequence; break;
  }
  o.moe.shared_hidden = c.moe().shared_expert_hidden();
  o.moe.shared_gate = c.moe().shared_expert_gate();
  o.moe.router_logit_bias.assign(c.moe().router_logit_bias().begin(), c.moe().router_logit_bias().end());
  o.moe_every_n_layers = c.moe().every_n_layers();
  o.moe_first_dense_layers = c.moe().first_dense_layers();
  o.lb_loss_weight = c.moe().lb_loss_weight();
  o.z_loss_weight = c.moe().z_loss_weight();
  o.init = c.init().scheme() == InitConfig::MEGATRON ? InitScheme::kMegatron : InitScheme::kNormal;
  o.init_std = c.init().std();
  o.activation_checkpointing = c.activation_checkpointing();
  return o;
}

bool IsExpertName(std::string_view name) {
  return name.rfind("blocks.", 0) == 0 && name.find(kExpertsInfix) != std::string_view::npos;
}

bool IsMoeLayer(int64_t layer, int64_t every_n_layers, int64_t first_dense_layers) {
  return every_n_layers > 0 && (layer + 1) % every_n_layers == 0 && layer >= first_dense_layers;
}

InitPlan MakeInitPlan(const TransformerOptions& o, uint64_t seed) {
  InitPlan plan;
  plan.seed = seed;
  switch (o.init) {
    case InitScheme::kNormal: plan.std_in = plan.std_out = plan.std_head = o.init_std; break;
    case InitScheme::kMegatron: {
      const double s = std::sqrt(2.0 / (5.0 * static_cast<double>(o.d_model)));
      plan.std_in = s;
      plan.std_out = s / std::sqrt(2.0 * static_cast<double>(o.n_layers));
      plan.std_head = 1.0 / std::sqrt(static_cast<double>(o.d_model));
      break;
    }
  }
  plan.residual_scale = ResidualInitScale(o.norm, o.n_layers);
  return plan;
}

TransformerImpl::TransformerImpl(const TransformerOptions& o) : options(o) {
  embed = register_parameter("embed", at::empty({o.vocab_size, o.d_model}, ParamOptions()));
  auto list = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.n_layers; ++i) {
    BlockOptions b;
    b.layer = i;
    b.n_layers = o.n_layers;
    b.attention.d_model = o.d_model;
    b.attention.n_heads = o.n_heads;
    b.attention.rope_theta = o.rope_theta;
    b.norm = o.norm;
    b.moe = IsMoeLayer(i, o.moe_every_n_layers, o.moe_first_dense_layers);
    b.ffn.d_model = o.d_model;
    b.ffn.hidden = o.dense_hidden;
    b.moe_options = o.moe;
    blocks.push_back(TransformerBlock(b));
    list->push_back(blocks.back());
  }
  NormOptions n(o.d_model);
  n.kind = o.norm.kind;
  n.eps = o.norm.eps;
  final_norm = register_module("final_norm", Norm(n));
  lm_head = register_parameter("lm_head", at::empty({o.vocab_size, o.d_model}, ParamOptions()));
}

void TransformerImpl::reset_parameters(uint64_t seed) {
  const InitPlan plan = MakeInitPlan(options, seed);
  trunc_normal_(embed, plan.std_in, InitSeed(seed, "embed"));
  trunc_normal_(lm_head, plan.std_head, InitSeed(seed, "lm_head"));
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i]->reset_parameters(plan, "blocks." + std::to_string(i) + ".");
  final_norm->reset_parameters();
}

std::vector<MoeLayer> TransformerImpl::moe_layers() const {
  std::vector<MoeLayer> layers;
  for (const auto& b : blocks) {
    if (!b->moe.is_empty()) layers.push_back(b->moe);
  }
  return layers;
}

void TransformerImpl::set_compute_dtype(at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "compute dtype must be float32 or bfloat16, not ", dtype);
  compute_copies_ = dtype == at::kFloat ? nullptr : std::make_shared<ComputeCopies>(dtype);
  ComputeCopies* copies = compute_copies_.get();
  for (auto& block : blocks) block->set_compute_copies(copies);
  if (copies != nullptr) copies->AddGroup({lm_head});
}

std::vector<at::Tensor> TransformerImpl::count_routing(const at::Tensor& tokens_BS) {
  at::NoGradGuard no_grad;
  ComputeCopies* copies = compute_copies_.get();
  if (copies != nullptr) copies->Refresh();
  int64_t last_moe = -1;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!blocks[i]->moe.is_empty()) last_moe = static_cast<int64_t>(i);
  }
  std::vector<at::Tensor> counts;
  for (auto& layer : moe_layers()) layer->training_forward = false;
  at::Tensor x = ToComputeDtype(copies, at::embedding(embed, tokens_BS));
  for (int64_t i = 0; i <= last_moe; ++i) {
    BlockOutput b = blocks[i](x);
    x = b.x;
    if (b.counts_E.defined()) counts.push_back(b.counts_E);
  }
  return counts;
}

ModelOutput TransformerImpl::forward(const at::Tensor& tokens_BS, const at::Tensor& targets_BS) {
  ComputeCopies* copies = compute_copies_.get();
  if (copies != nullptr) copies->Refresh();  // a no-op unless an optimizer step or a load changed the masters
  // The lookup reads the fp32 table (its gradient, a scatter-add of many rows, accumulates in fp32).
  at::Tensor x = ToComputeDtype(copies, at::embedding(embed, tokens_BS));
  std::vector<at::Tensor> lb, z;
  const bool training = at::GradMode::is_enabled();  // a training forward: routing is counted (moe/moe_layer.h)
  for (auto& layer : moe_layers()) layer->training_forward = training;
  const bool checkpoint = options.activation_checkpointing && training;
  for (auto& block : blocks) {
    BlockOutput b;
    if (checkpoint) {
      const std::vector<at::Tensor> params = BlockLeaves(*block, copies);
      const torch::autograd::variable_list y = CheckpointedBlock::apply(x, at::TensorList(params), block.get(), copies);
      b.x = y[0];
      if (y.size() == 3) {
        b.lb_loss = y[1];
        b.z_loss = y[2];
      }
    } else {
      b = block(x);
    }
    x = b.x;
    if (b.lb_loss.defined()) {
      lb.push_back(b.lb_loss);
      z.push_back(b.z_loss);
    }
  }
  ModelOutput out;
  out.logits = at::matmul(final_norm(x), ComputeWeight(copies, lm_head).t());
  if (!targets_BS.defined()) return out;
  out.lm_loss =
      at::cross_entropy_loss(at_least_fp32(out.logits.reshape({-1, options.vocab_size})), targets_BS.reshape({-1}));
  if (lb.empty()) {
    out.lb_loss = at::zeros({}, out.lm_loss.options());
    out.z_loss = at::zeros({}, out.lm_loss.options());
  } else {
    out.lb_loss = options.lb_loss_weight * at::stack(lb).mean();
    out.z_loss = options.z_loss_weight * at::stack(z).mean();
  }
  out.loss = out.lm_loss + out.lb_loss + out.z_loss;
  return out;
}

}  // namespace hybridmoe
