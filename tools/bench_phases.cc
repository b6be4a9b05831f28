#include "tools/bench_phases.h"

#include <ATen/SequenceNumber.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>

#include "moe/router.h"

namespace hybridmoe {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Phase of each range of autograd sequence numbers, filled during the re-enacted forward.
struct SeqRanges {
  std::vector<std::pair<int64_t, Phase>> starts;  // (first sequence number, phase), ascending
  Phase Find(int64_t seq) const {
    if (seq < 0 || starts.empty() || seq < starts.front().first) return Phase::kOther;
    auto it = std::upper_bound(starts.begin(), starts.end(), std::make_pair(seq, Phase::kCount),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    return std::prev(it)->second;
  }
};

// Backward attribution state (RecordFunction callbacks are plain function pointers).
struct BackwardTally {
  SeqRanges ranges;
  std::array<double, kNumPhases> seconds{};
  struct Frame {
    Phase phase;
    Clock::time_point resume;
  };
  std::vector<Frame> stack;
  std::mutex mu;
};
BackwardTally* g_tally = nullptr;

std::unique_ptr<at::ObserverContext> OnNodeStart(const at::RecordFunction& fn) {
  BackwardTally* t = g_tally;
  if (t == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(t->mu);
  const auto now = Clock::now();
  if (!t->stack.empty()) {
    BackwardTally::Frame& top = t->stack.back();
    t->seconds[static_cast<int>(top.phase)] += std::chrono::duration<double>(now - top.resume).count();
  }
  t->stack.push_back({t->ranges.Find(fn.seqNr()), now});
  return nullptr;
}

void OnNodeEnd(const at::RecordFunction&, at::ObserverContext*) {
  BackwardTally* t = g_tally;
  if (t == nullptr) return;
  std::lock_guard<std::mutex> lock(t->mu);
  if (t->stack.empty()) return;
  const auto now = Clock::now();
  const BackwardTally::Frame top = t->stack.back();
  t->seconds[static_cast<int>(top.phase)] += std::chrono::duration<double>(now - top.resume).count();
  t->stack.pop_back();
  if (!t->stack.empty()) t->stack.back().resume = now;
}

// Forward phase switches: wall time goes to the current phase; sequence numbers are recorded.
class ForwardClock {
 public:
  ForwardClock(PhaseTimes& times, SeqRanges& ranges) : times_(times), ranges_(ranges), since_(Clock::now()) {}
  void Enter(Phase p) {
    const auto now = Clock::now();
    times_.forward[static_cast<int>(current_)] += std::chrono::duration<double>(now - since_).count();
    since_ = now;
    current_ = p;
    ranges_.starts.emplace_back(static_cast<int64_t>(at::sequence_number::peek()), p);
  }

 private:
  PhaseTimes& times_;
  SeqRanges& ranges_;
  Phase current_ = Phase::kOther;
  Clock::time_point since_;
};

// MoeLayerImpl::forward, step by step.
MoeOutput MoeForward(MoeLayerImpl& m, const at::Tensor& x_TD, ForwardClock& clock) {
  const int64_t T = x_TD.size(0), E = m.options.num_experts, K = m.options.top_k;
  clock.Enter(Phase::kRouter);
  at::Tensor logits_TE = at::matmul(x_TD, m.router.t());
  if (!m.options.router_logit_bias.empty()) {
    logits_TE = logits_TE + at::tensor(m.options.router_logit_bias, at::kDouble).to(logits_TE.scalar_type());
  }
  const Routing r = route(logits_TE, K, m.options.normalize_topk);
  clock.Enter(Phase::kPermutation);
  const Permutation p = permute_by_expert(r.experts_TK, r.weights_TK, r.topk_probs_TK, E,
                                          expert_capacity(m.options.capacity_factor, T, K, E));
  std::vector<int64_t> local_counts;
  const at::Tensor x_SD = x_TD.index_select(0, p.token_S);
  clock.Enter(Phase::kAllToAll);
  const at::Tensor x_local = m.dispatcher->dispatch(x_SD, p.counts_E, local_counts);
  clock.Enter(Phase::kExperts);
  const at::Tensor local_y = m.experts(x_local, local_counts);
  clock.Enter(Phase::kAllToAll);
  const at::Tensor y_back = m.dispatcher->combine(local_y);
  clock.Enter(Phase::kPermutation);
  const at::Tensor y_SD = y_back * p.weight_S.unsqueeze(1).to(x_TD.scalar_type());
  MoeOutput out;
  out.y_TD = at::zeros_like(x_TD).index_add_(0, p.token_S, y_SD);
  clock.Enter(Phase::kRouter);
  out.lb_loss = load_balance_loss(r.probs_TE, r.experts_TK);
  out.z_loss = router_z_loss(r.logits_TE);
  if (m.collect_stats) m.stats.add(r, out.lb_loss, out.z_loss, p.dropped);
  return out;
}

// models/block.cc's ApplySubLayer.
at::Tensor SubLayer(SubLayerForm form, const at::Tensor& x, const std::function<at::Tensor(const at::Tensor&)>& f,
                    Norm& in_norm, Norm& out_norm, double alpha, const at::Tensor& branch_scale) {
  switch (form) {
    case SubLayerForm::kPre: {
      const at::Tensor y = f(in_norm(x));
      return x + (branch_scale.defined() ? y * branch_scale : y);
    }
    case SubLayerForm::kPost:
      return out_norm(x + f(x));
    case SubLayerForm::kNone:
      return x + f(x);
    case SubLayerForm::kNormResidual: {
      const at::Tensor h = in_norm(x);
      return h + f(h);
    }
    case SubLayerForm::kSandwich:
      return x + out_norm(f(in_norm(x)));
    case SubLayerForm::kDeep:
      return out_norm(alpha * x + f(x));
  }
  TORCH_INTERNAL_ASSERT(false, "unknown sub-layer form");
}

BlockOutput BlockForward(TransformerBlockImpl& b, const at::Tensor& x_BSD, ForwardClock& clock) {
  BlockOutput out;
  auto attn_fn = [&](const at::Tensor& h) {
    clock.Enter(Phase::kAttention);
    at::Tensor y = b.attn(h);
    clock.Enter(Phase::kOther);
    return y;
  };
  const at::Tensor y =
      SubLayer(b.layout.attn_form, x_BSD, attn_fn, b.attn_norm, b.attn_out_norm, b.layout.residual_alpha, {});
  auto ffn_fn = [&](const at::Tensor& h) -> at::Tensor {
    if (!b.ffn.is_empty()) {
      clock.Enter(Phase::kDenseFfn);
      at::Tensor z = b.ffn(h);
      clock.Enter(Phase::kOther);
      return z;
    }
    MoeOutput m = MoeForward(*b.moe, h.reshape({-1, h.size(-1)}), clock);
    clock.Enter(Phase::kOther);
    out.lb_loss = m.lb_loss;
    out.z_loss = m.z_loss;
    return m.y_TD.view(h.sizes());
  };
  out.x =
      SubLayer(b.layout.ffn_form, y, ffn_fn, b.ffn_norm, b.ffn_out_norm, b.layout.residual_alpha, b.ffn_residual_scale);
  return out;
}

}  // namespace

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kAttention:
      return "attention";
    case Phase::kRouter:
      return "router";
    case Phase::kPermutation:
      return "permutation";
    case Phase::kExperts:
      return "experts";
    case Phase::kAllToAll:
      return "all_to_all";
    case Phase::kDenseFfn:
      return "dense_ffn";
    case Phase::kOptimizer:
      return "optimizer";
    case Phase::kOther:
      return "other";
    case Phase::kCount:
      break;
  }
  return "?";
}

PhaseTimes TimePhasesForwardBackward(Transformer& model, const at::Tensor& inputs, const at::Tensor& targets) {
  PhaseTimes times;
  BackwardTally tally;
  const auto t0 = Clock::now();
  for (const at::Tensor& p : model->parameters()) p.mutable_grad().reset();
  at::Tensor loss;
  {
    ForwardClock clock(times, tally.ranges);
    clock.Enter(Phase::kOther);
    const TransformerOptions& o = model->options;
    at::Tensor x = at::embedding(model->embed, inputs);
    std::vector<at::Tensor> lb, z;
    for (auto& block : model->blocks) {
      BlockOutput b = BlockForward(*block, x, clock);
      x = b.x;
      if (b.lb_loss.defined()) {
        lb.push_back(b.lb_loss);
        z.push_back(b.z_loss);
      }
    }
    const at::Tensor logits = at::matmul(model->final_norm(x), model->lm_head.t());
    loss = at::cross_entropy_loss(at_least_fp32(logits.reshape({-1, o.vocab_size})), targets.reshape({-1}));
    if (!lb.empty()) loss = loss + o.lb_loss_weight * at::stack(lb).mean() + o.z_loss_weight * at::stack(z).mean();
    clock.Enter(Phase::kOther);
  }
  const double forward_seconds = Since(t0);
  const auto t1 = Clock::now();
  g_tally = &tally;
  auto handle = at::addGlobalCallback(
      at::RecordFunctionCallback(OnNodeStart, OnNodeEnd).scopes({at::RecordScope::BACKWARD_FUNCTION}));
  loss.backward();
  at::removeCallback(handle);
  g_tally = nullptr;
  const double backward_seconds = Since(t1);
  double attributed = 0;
  for (int i = 0; i < kNumPhases; ++i) {
    times.backward[i] = tally.seconds[i];
    attributed += tally.seconds[i];
  }
  times.backward[static_cast<int>(Phase::kOther)] += std::max(0.0, backward_seconds - attributed);
  times.loss = loss.item<double>();
  times.total = forward_seconds + backward_seconds;
  return times;
}

}  // namespace hybridmoe
