// AllToAllDispatcher: an MoE layer sharded over EP = world size ranks gives the outputs, losses and the
// input / router / expert gradients of the single-process layer (LocalDispatcher, all experts) run on
// every rank's tokens. Each rank builds that reference itself and compares its own slice / shard.
// Tolerance: 1e-5 (absolute and relative), fp32.
#include "parallel/ep_dispatcher.h"

#include "parallel/mpi_communicator.h"

#include <gtest/gtest.h>

#include "core/precision.h"
#include "moe/moe_layer.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace hybridmoe {
namespace {

constexpr double kTol = 1e-5;
constexpr int64_t kTokens = 5, kWidth = 8, kExperts = 8;

struct Case {
  const char* name;
  bool starve = false;  // experts 0 and all of ep rank 1's experts get no tokens
  double capacity_factor = 0;
  bool hidden_norm = false;
};

MoeOptions Options(const Case& c, int P) {
  MoeOptions o;
  o.d_model = kWidth;
  o.num_experts = kExperts;
  o.top_k = 2;
  o.hidden = 12;
  o.capacity_factor = c.capacity_factor;
  o.hidden_norm = c.hidden_norm;
  if (c.starve) {
    const int64_t L = kExperts / P;
    o.router_logit_bias.assign(kExperts, 0.0);
    o.router_logit_bias[0] = -100;
    for (int64_t e = L; e < 2 * L; ++e) o.router_logit_bias[e] = -100;
  }
  return o;
}

InitPlan Plan() {
  InitPlan plan;
  plan.seed = 7;
  plan.std_in = plan.std_out = 0.3;  // large enough for uneven routing
  return plan;
}

// Rank r's tokens and output-gradient weights, the same on every rank.
std::pair<at::Tensor, at::Tensor> Tokens(int r) {
  at::manual_seed(1000 + r);
  return {at::randn({kTokens, kWidth}), at::randn({kTokens, kWidth})};
}

void ExpectClose(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double err = (got - want).abs().max().item<double>();
  const double scale = std::max(1.0, want.abs().max().item<double>());
  EXPECT_LE(err, kTol * scale) << what << " (rank " << WorldRank() << ")";
}

void RunCase(const Case& c) {
  SCOPED_TRACE(c.name);
  const int P = WorldSize(), me = WorldRank();
  auto world = MpiCommunicator::World(60);
  const MoeOptions options = Options(c, P);

  // Reference: one process, all experts, every rank's micro-batch (per-micro-batch LB loss, as under EP).
  MoeLayer ref(options);
  ref->reset_parameters(Plan(), "blocks.0.moe.");
  at::Tensor ref_total = at::zeros({});
  std::vector<at::Tensor> ref_x(P);
  MoeOutput ref_mine;
  for (int r = 0; r < P; ++r) {
    auto [x, g] = Tokens(r);
    ref_x[r] = x.requires_grad_(true);
    MoeOutput out = ref(ref_x[r]);
    ref_total = ref_total + (out.y_TD * g).sum() + out.lb_loss + out.z_loss;
    if (r == me) ref_mine = out;
  }
  ref_total.backward();

  // Expert parallel: this rank's tokens only, E / P experts.
  MoeLayer ep(options);
  auto dispatcher = std::make_shared<AllToAllDispatcher>(world, kExperts, /*layer=*/0);
  ep->set_dispatcher(dispatcher);
  ep->reset_parameters(Plan(), "blocks.0.moe.");
  const int64_t L = kExperts / P, first = me * L;
  ASSERT_EQ(ep->experts->options.first_expert, first);
  ASSERT_EQ(ep->experts->options.num_local_experts, L);
  ASSERT_TRUE(at::equal(ep->experts->w_up, ref->experts->w_up.narrow(0, first, L)));
  ASSERT_TRUE(at::equal(ep->router, ref->router));

  auto [x_cpu, g] = Tokens(me);
  const at::Tensor x = x_cpu.requires_grad_(true);
  {  // a no-grad forward first (evaluation) must leave nothing behind
    at::NoGradGuard no_grad;
    ExpectClose(ep(x).y_TD, ref_mine.y_TD.detach(), "no-grad output");
  }
  dispatcher->counters.reset();
  ep->stats.reset();
  MoeOutput out = ep(x);
  ExpectClose(out.y_TD, ref_mine.y_TD, "output");
  ExpectClose(out.lb_loss, ref_mine.lb_loss, "lb loss");
  ExpectClose(out.z_loss, ref_mine.z_loss, "z loss");
  const double forward_seconds = dispatcher->counters.exchange_seconds;
  ((out.y_TD * g).sum() + out.lb_loss + out.z_loss).backward();
  EXPECT_GT(dispatcher->counters.exchange_seconds, forward_seconds) << "backward exchanges were not counted";

  ExpectClose(x.grad(), ref_x[me].grad(), "input gradient");
  at::Tensor router_grad = ep->router.grad().clone();  // this micro-batch only; the reference has all of them
  world->AllReduce(router_grad, ReduceOp::kSum, "router grad");
  ExpectClose(router_grad, ref->router.grad(), "router gradient (summed over ranks)");
  for (const auto& item : ref->experts->named_parameters()) {
    const at::Tensor mine = ep->experts->named_parameters()[item.key()];
    // Experts that received no rows are outside the graph: no gradient, i.e. zero.
    const at::Tensor grad = mine.grad().defined() ? mine.grad() : at::zeros_like(mine);
    ExpectClose(grad, item.value().grad().narrow(0, first, L), "expert gradient " + item.key());
  }

  // Counters: every kept slot is received by exactly one rank.
  const int64_t kept = ep->stats.tokens * options.top_k - ep->stats.dropped;
  at::Tensor totals = at::tensor({static_cast<double>(dispatcher->counters.rows_received), static_cast<double>(kept),
                                  static_cast<double>(dispatcher->counters.rows_sent)},
                                 at::kDouble);
  world->AllReduce(totals, ReduceOp::kSum, "counters");
  EXPECT_EQ(totals[0].item<double>(), totals[1].item<double>());
  EXPECT_LE(totals[2].item<double>(), totals[1].item<double>());
  if (c.starve && me == 1) {
    EXPECT_EQ(dispatcher->counters.rows_received, 0);
    EXPECT_FALSE(ep->experts->w_up.grad().defined() && ep->experts->w_up.grad().abs().sum().item<double>() > 0);
  }
}

TEST(AllToAllDispatcher, MatchesSingleProcessLayer) { RunCase({"random routing"}); }
TEST(AllToAllDispatcher, ExpertsAndRanksWithZeroTokens) { RunCase({"starved", /*starve=*/true}); }
TEST(AllToAllDispatcher, CapacityDrops) { RunCase({"capacity 1.0", false, /*capacity_factor=*/1.0}); }
TEST(AllToAllDispatcher, NormFormerHiddenNorm) { RunCase({"hidden norm", false, 0, /*hidden_norm=*/true}); }

// bf16 compute (core/precision.h) with a rank whose experts get no rows: that rank's experts must return bf16
// (zero) rows like its peers', so the exchange completes and the outputs match the fp32 layer to bf16 accuracy.
TEST(AllToAllDispatcher, Bf16WithAStarvedRank) {
  const int P = WorldSize(), me = WorldRank();
  auto world = MpiCommunicator::World(60);
  const MoeOptions options = Options({"starved bf16", /*starve=*/true}, P);
  MoeLayer ref(options);
  ref->reset_parameters(Plan(), "blocks.0.moe.");
  MoeLayer ep(options);
  ep->set_dispatcher(std::make_shared<AllToAllDispatcher>(world, kExperts, /*layer=*/0));
  ep->reset_parameters(Plan(), "blocks.0.moe.");
  ComputeCopies copies(at::kBFloat16);
  ep->experts->set_compute_copies(&copies);
  copies.Refresh();
  auto [x, g] = Tokens(me);
  const at::Tensor x_bf16 = x.to(at::kBFloat16).requires_grad_(true);
  MoeOutput out = ep(x_bf16);
  EXPECT_EQ(out.y_TD.scalar_type(), at::kBFloat16);
  EXPECT_EQ(out.lb_loss.scalar_type(), at::kFloat) << "router losses stay fp32";
  (out.y_TD.to(at::kFloat) * g).sum().backward();
  copies.AccumulateGrads();
  const at::Tensor want = ref(x.to(at::kBFloat16).to(at::kFloat)).y_TD.detach();
  const double err = (out.y_TD.to(at::kFloat) - want).abs().max().item<double>();
  EXPECT_LE(err, 2e-2 * std::max(1.0, want.abs().max().item<double>())) << "rank " << me;
  EXPECT_EQ(x_bf16.grad().scalar_type(), at::kBFloat16);
  ASSERT_TRUE(ep->experts->w_up.grad().defined() || me == 1);
  if (ep->experts->w_up.grad().defined()) {
    EXPECT_EQ(ep->experts->w_up.grad().scalar_type(), at::kFloat);
  }
}

// One rank computing in bf16 while its peers send fp32 is refused by every rank at the counts exchange, with a
// message naming both dtypes, instead of an exchange of mismatched byte counts.
TEST(AllToAllDispatcher, MixedDtypesAcrossRanksAreRefused) {
  const int me = WorldRank();
  auto world = MpiCommunicator::World(60);
  auto dispatcher = std::make_shared<AllToAllDispatcher>(world, kExperts, /*layer=*/5);
  const at::Tensor x = at::ones({kExperts, kWidth}, me == 0 ? at::kBFloat16 : at::kFloat);
  std::vector<int64_t> local_counts;
  try {
    dispatcher->dispatch(x, std::vector<int64_t>(kExperts, 1), local_counts);
    ADD_FAILURE() << "rank " << me << ": mixed dtypes were not refused";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    EXPECT_NE(message.find("dispatch in layer 5"), std::string::npos) << message;
    EXPECT_NE(message.find("BFloat16"), std::string::npos) << message;
    EXPECT_NE(message.find("one precision"), std::string::npos) << message;
  }
}

TEST(AllToAllDispatcher, ExchangeRowsBackwardIsTheReverseExchange) {
  // Rank r sends (r + p) % 2 + 1 rows to p; the gradient of sum(w * y) must come back to the sender rows.
  auto world = MpiCommunicator::World(60);
  const int P = world->size(), me = world->rank();
  std::vector<int64_t> send(P), recv(P);
  for (int p = 0; p < P; ++p) {
    send[p] = (me + p) % 2 + 1;
    recv[p] = (p + me) % 2 + 1;
  }
  int64_t n_send = 0, n_recv = 0;
  for (int p = 0; p < P; ++p) n_send += send[p], n_recv += recv[p];
  const at::Tensor x = at::randn({n_send, 3}).requires_grad_(true);
  const at::Tensor y = ExchangeRows(x, send, recv, world, "test exchange");
  // d sum(c * y) / dy = c, with c = value of the sender's world rank: the rows we sent to p get p's rank.
  at::Tensor weight = at::full({n_recv, 3}, static_cast<double>(me + 1), at::kFloat);
  (y * weight).sum().backward();
  int64_t row = 0;
  for (int p = 0; p < P; ++p) {
    for (int64_t i = 0; i < send[p]; ++i, ++row) {
      EXPECT_TRUE(at::equal(x.grad()[row], at::full({3}, static_cast<float>(p + 1)))) << "row " << row;
    }
  }
}

}  // namespace
}  // namespace hybridmoe
