// Every norm strategy: one block checked against a direct, independent evaluation of its docs/formulas.md section 2
// formula (plain tensor math: explicit causal softmax attention, RoPE from its definition, a per-token
// MoE loop), and a finite-difference gradient check of a tiny model per strategy.
// Tolerances: block outputs 2e-5 absolute in fp32 (different summation orders); gradients 1e-6 relative
// in fp64 with central differences of step 1e-6.
#include "models/block.h"

#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "models/transformer.h"

namespace hybridmoe {
namespace {

constexpr int64_t B = 2, S = 5, D = 16, H = 4, HD = D / H, E = 4, K = 2, F = 8, L = 4;

using Params = std::map<std::string, at::Tensor>;

Params ParamsOf(torch::nn::Module& m) {
  Params p;
  for (const auto& item : m.named_parameters()) p[item.key()] = item.value().detach();
  return p;
}

at::Tensor Get(const Params& p, const std::string& name) {
  auto it = p.find(name);
  TORCH_CHECK(it != p.end(), "missing parameter ", name);
  return it->second;
}

at::Tensor RefNorm(const at::Tensor& x, const Params& p, const std::string& name, NormKind kind) {
  const at::Tensor g = Get(p, name + ".weight");
  if (kind == NormKind::kRms) return g * x / at::sqrt(x.pow(2).mean(-1, true) + 1e-5);
  const at::Tensor mu = x.mean(-1, true), var = (x - mu).pow(2).mean(-1, true);
  return g * (x - mu) / at::sqrt(var + 1e-5) + Get(p, name + ".bias");
}

// RoPE from its definition: pair (i, i + h_d/2) rotated by angle pos * theta^(-2i/h_d).
at::Tensor RefRope(const at::Tensor& x_BHSd) {
  at::Tensor out = x_BHSd.clone();
  for (int64_t pos = 0; pos < S; ++pos) {
    for (int64_t i = 0; i < HD / 2; ++i) {
      const double a = pos * std::pow(10000.0, -2.0 * i / HD);
      const at::Tensor x1 = x_BHSd.select(2, pos).select(-1, i), x2 = x_BHSd.select(2, pos).select(-1, i + HD / 2);
      out.select(2, pos).select(-1, i).copy_(x1 * std::cos(a) - x2 * std::sin(a));
      out.select(2, pos).select(-1, i + HD / 2).copy_(x2 * std::cos(a) + x1 * std::sin(a));
    }
  }
  return out;
}

struct QkvNorms {
  bool q = false, k = false, v = false, per_head = false;
};

at::Tensor RefAttention(const at::Tensor& x, const Params& p, const std::string& pre, QkvNorms n, NormKind kind,
                        bool head_scale) {
  auto proj = [&](const char* w, bool norm, const char* norm_name) {
    at::Tensor y = at::matmul(x, Get(p, pre + w).t());
    if (norm && !n.per_head) y = RefNorm(y, p, pre + norm_name, kind);
    y = y.view({B, S, H, HD});
    if (norm && n.per_head) y = RefNorm(y, p, pre + norm_name, kind);
    return y.permute({0, 2, 1, 3});
  };
  const at::Tensor q = RefRope(proj("wq", n.q, "q_norm")), k = RefRope(proj("wk", n.k, "k_norm"));
  const at::Tensor v = proj("wv", n.v, "v_norm");
  at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(HD));
  const at::Tensor future = at::ones({S, S}, at::kBool).triu(1);
  scores = scores.masked_fill(future, -INFINITY);
  at::Tensor out = at::matmul(at::softmax(scores, -1), v);  // [B, H, S, h_d]
  if (head_scale) out = out * Get(p, pre + "head_scale").view({1, H, 1, 1});
  return at::matmul(out.permute({0, 2, 1, 3}).reshape({B, S, D}), Get(p, pre + "wo").t());
}

// Per-token MoE: softmax over all experts, top-k, sum of w * SwiGLU_e(x_t).
at::Tensor RefMoe(const at::Tensor& x, const Params& p, const std::string& pre, bool hidden_norm, NormKind kind) {
  const at::Tensor xt = x.reshape({-1, D});
  const at::Tensor probs = at::softmax(at::matmul(xt, Get(p, pre + "router").t()), -1);
  at::Tensor y = at::zeros_like(xt);
  for (int64_t t = 0; t < xt.size(0); ++t) {
    auto [w, idx] = at::topk(probs[t], K);
    for (int64_t j = 0; j < K; ++j) {
      const int64_t e = idx[j].item<int64_t>();
      at::Tensor h = at::silu(at::matmul(Get(p, pre + "experts.w_gate")[e], xt[t])) *
                     at::matmul(Get(p, pre + "experts.w_up")[e], xt[t]);
      if (hidden_norm) {
        Params row = {{"n.weight", Get(p, pre + "experts.hidden_norm")[e]}};
        if (kind == NormKind::kLayer) row["n.bias"] = Get(p, pre + "experts.hidden_norm_bias")[e];
        h = RefNorm(h, row, "n", kind);
      }
      y[t] += w[j] * at::matmul(Get(p, pre + "experts.w_down")[e], h);
    }
  }
  return y.view(x.sizes());
}

// The table of docs/formulas.md section 2.2, written out per strategy without models/block.h's layout resolution.
at::Tensor RefBlock(NormStrategy s, int64_t layer, NormKind kind, const at::Tensor& X, const Params& p) {
  auto N = [&](const std::string& name, const at::Tensor& x) { return RefNorm(x, p, name, kind); };
  auto MoE = [&](const at::Tensor& x, bool hidden_norm = false) { return RefMoe(x, p, "moe.", hidden_norm, kind); };
  auto MHA = [&](const at::Tensor& x, QkvNorms n = {}, bool head_scale = false) {
    return RefAttention(x, p, "attn.", n, kind, head_scale);
  };
  const QkvNorms qkv_per_head{true, true, true, true};
  switch (s) {
    case NormStrategy::kPreNorm: {
      const at::Tensor Y = X + MHA(N("attn_norm", X));
      return Y + MoE(N("ffn_norm", Y));
    }
    case NormStrategy::kPostNorm: {
      const at::Tensor Y = N("attn_out_norm", X + MHA(X));
      return N("ffn_out_norm", Y + MoE(Y));
    }
    case NormStrategy::kQkNorm: {
      const at::Tensor Y = X + MHA(N("attn_norm", X), {true, true, false, false});
      return Y + MoE(N("ffn_norm", Y));
    }
    case NormStrategy::kQkvNorm: {
      const at::Tensor Y = X + MHA(N("attn_norm", X), {true, true, true, false});
      return Y + MoE(N("ffn_norm", Y));
    }
    case NormStrategy::kHybridNorm: {
      const at::Tensor Y = X + MHA(X, qkv_per_head);
      return N("ffn_norm", Y) + MoE(N("ffn_norm", Y));
    }
    case NormStrategy::kHybridNormStar: {
      if (layer == 0) {
        const at::Tensor Y = X + MHA(N("attn_norm", X), qkv_per_head);
        return Y + MoE(N("ffn_norm", Y));
      }
      const at::Tensor Y = X + MHA(X, qkv_per_head);
      return N("ffn_norm", Y) + MoE(N("ffn_norm", Y));
    }
    case NormStrategy::kMixLn:  // alpha 0.25, L 4: block 0 Post-Norm, others Pre-Norm
      return RefBlock(layer < 1 ? NormStrategy::kPostNorm : NormStrategy::kPreNorm, layer, kind, X, p);
    case NormStrategy::kSandwich: {
      const at::Tensor Y = X + N("attn_out_norm", MHA(N("attn_norm", X)));
      return Y + N("ffn_out_norm", MoE(N("ffn_norm", Y)));
    }
    case NormStrategy::kDeepNorm: {
      const double alpha = std::pow(2.0 * L, 0.25);
      const at::Tensor Y = N("attn_out_norm", alpha * X + MHA(X));
      return N("ffn_out_norm", alpha * Y + MoE(Y));
    }
    case NormStrategy::kNormFormer: {
      const at::Tensor Y = X + N("attn_out_norm", MHA(N("attn_norm", X), {}, /*head_scale=*/true));
      return Y + Get(p, "ffn_residual_scale") * MoE(N("ffn_norm", Y), /*hidden_norm=*/true);
    }
  }
  TORCH_CHECK(false);
}

BlockOptions Options(NormStrategy s, int64_t layer, NormKind kind) {
  BlockOptions o;
  o.layer = layer;
  o.n_layers = L;
  o.attention.d_model = D;
  o.attention.n_heads = H;
  o.norm.strategy = s;
  o.norm.kind = kind;
  o.norm.normformer_residual_scale = true;
  o.moe = true;
  o.moe_options.d_model = D;
  o.moe_options.num_experts = E;
  o.moe_options.top_k = K;
  o.moe_options.hidden = F;
  return o;
}

const NormStrategy kAll[] = {NormStrategy::kPreNorm,   NormStrategy::kPostNorm,   NormStrategy::kQkNorm,
                             NormStrategy::kQkvNorm,   NormStrategy::kHybridNorm, NormStrategy::kHybridNormStar,
                             NormStrategy::kMixLn,     NormStrategy::kSandwich,   NormStrategy::kDeepNorm,
                             NormStrategy::kNormFormer};

TEST(BlockTest, EveryStrategyMatchesItsFormula) {
  for (NormStrategy s : kAll) {
    for (NormKind kind : {NormKind::kRms, NormKind::kLayer}) {
      for (int64_t layer : {0, 2}) {
        at::manual_seed(7 + layer);
        TransformerBlock block(Options(s, layer, kind));
        block->reset_parameters(InitPlan{}, "b.");
        {
          at::NoGradGuard no_grad;  // non-trivial norm weights and scales, so a misplaced norm shows
          for (auto& p : block->parameters()) {
            if (p.dim() <= 1 || p.size(-1) == F) p.copy_(1 + 0.5 * at::randn(p.sizes()));
          }
        }
        const at::Tensor X = at::randn({B, S, D});
        const at::Tensor got = block(X).x;
        const at::Tensor want = RefBlock(s, layer, kind, X, ParamsOf(*block));
        const double diff = (got - want).abs().max().item<double>();
        EXPECT_LT(diff, 2e-5) << NormStrategyName(s) << " kind " << static_cast<int>(kind) << " layer " << layer;
      }
    }
  }
}

TEST(BlockTest, DenseSlotFollowsTheSameLayout) {
  BlockOptions o = Options(NormStrategy::kHybridNorm, 1, NormKind::kRms);
  o.moe = false;
  o.ffn.d_model = D;
  o.ffn.hidden = F;
  TransformerBlock block(o);
  block->reset_parameters(InitPlan{}, "b.");
  const Params p = ParamsOf(*block);
  const at::Tensor X = at::randn({B, S, D});
  const at::Tensor Y = X + RefAttention(X, p, "attn.", {true, true, true, true}, NormKind::kRms, false);
  const at::Tensor h = RefNorm(Y, p, "ffn_norm", NormKind::kRms);
  const at::Tensor want =
      h + at::matmul(at::silu(at::matmul(h, Get(p, "ffn.w_gate").t())) * at::matmul(h, Get(p, "ffn.w_up").t()),
                     Get(p, "ffn.w_down").t());
  EXPECT_LT((block(X).x - want).abs().max().item<double>(), 2e-5);
  EXPECT_FALSE(block(X).lb_loss.defined());
}

TEST(BlockTest, LayoutNormsExistExactlyWhereTheStrategyPutsThem) {
  auto names = [](NormStrategy s, int64_t layer) {
    TransformerBlock b(Options(s, layer, NormKind::kRms));
    std::string out;
    for (const auto& item : b->named_parameters()) {
      if (item.key().find("norm") != std::string::npos && item.key().find("experts") == std::string::npos) {
        out += item.key() + " ";
      }
    }
    return out;
  };
  EXPECT_EQ(names(NormStrategy::kPreNorm, 0), "attn_norm.weight ffn_norm.weight ");
  EXPECT_EQ(names(NormStrategy::kHybridNorm, 0),
            "attn.q_norm.weight attn.k_norm.weight attn.v_norm.weight ffn_norm.weight ");
  EXPECT_EQ(names(NormStrategy::kHybridNormStar, 0),
            "attn.q_norm.weight attn.k_norm.weight attn.v_norm.weight attn_norm.weight ffn_norm.weight ");
  EXPECT_EQ(names(NormStrategy::kPostNorm, 0), "attn_out_norm.weight ffn_out_norm.weight ");
  EXPECT_EQ(names(NormStrategy::kSandwich, 0),
            "attn_norm.weight attn_out_norm.weight ffn_norm.weight ffn_out_norm.weight ");
}

TEST(GradientTest, FiniteDifferencesMatchAutogradForEveryStrategy) {
  for (NormStrategy s : kAll) {
    TransformerOptions o;
    o.vocab_size = 11;
    o.d_model = 8;
    o.n_layers = 2;
    o.n_heads = 2;
    o.dense_hidden = 8;
    o.norm.strategy = s;
    o.norm.normformer_residual_scale = true;
    o.moe = {};
    o.moe.d_model = 8;
    o.moe.num_experts = 3;
    o.moe.top_k = 2;
    o.moe.hidden = 6;
    o.moe_every_n_layers = 2;  // block 0 dense, block 1 MoE
    Transformer model(o);
    model->reset_parameters(3);
    model->to(at::kDouble);
    at::manual_seed(11);
    const at::Tensor tokens = at::randint(0, 11, {2, 4}, at::kLong), targets = at::randint(0, 11, {2, 4}, at::kLong);
    model->zero_grad();
    model(tokens, targets).loss.backward();
    int checked = 0;
    for (const auto& item : model->named_parameters()) {
      at::Tensor p = item.value();
      const at::Tensor grad = p.grad().defined() ? p.grad().clone() : at::zeros_like(p);
      at::Tensor flat = p.detach().view({-1});
      for (int64_t i : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
        const double orig = flat[i].item<double>(), h = 1e-6;
        at::NoGradGuard no_grad;
        flat[i] = orig + h;
        const double up = model(tokens, targets).loss.item<double>();
        flat[i] = orig - h;
        const double down = model(tokens, targets).loss.item<double>();
        flat[i] = orig;
        const double numeric = (up - down) / (2 * h), analytic = grad.view({-1})[i].item<double>();
        EXPECT_NEAR(analytic, numeric, 1e-6 * std::max(1.0, std::abs(numeric)))
            << NormStrategyName(s) << " " << item.key() << "[" << i << "]";
        ++checked;
      }
    }
    EXPECT_GT(checked, 30) << NormStrategyName(s);
  }
}

}  // namespace
}  // namespace hybridmoe
