#include "core/token_dispatcher.h"

#include <gtest/gtest.h>

#include "core/check.h"
#include "mpi_testing.h"
#include "testing.h"

namespace moe {
namespace {

using testing::world;

constexpr int64_t kE = 8, kK = 2, kD = 3;

// Routing that every rank can compute for any rank: token t of rank s goes to experts ids(s, t, k).
int64_t expert_of(int s, int64_t t, int64_t k) { return (t * 3 + s + k * 5) % kE; }

// What route() fills in from the mask: the kept assignments per expert, on the device and on the host.
void count_kept(Routing& r) {
  r.tokens_per_expert_E = at::bincount(r.expert_ids_TK.masked_select(r.keep_TK), {}, kE);
  const at::Tensor c = r.tokens_per_expert_E.contiguous();
  r.tokens_per_expert.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + kE);
}

Routing make_routing(int s, int64_t T, const std::function<bool(int, int64_t, int64_t)>& keep) {
  Routing r;
  r.expert_ids_TK = at::empty({T, kK}, at::kLong);
  r.keep_TK = at::empty({T, kK}, at::kBool);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t k = 0; k < kK; ++k) {
      r.expert_ids_TK[t][k] = expert_of(s, t, k);
      r.keep_TK[t][k] = keep(s, t, k);
    }
  }
  r.probs_TK = at::full({T, kK}, 1.0 / kK) * r.keep_TK.to(at::kFloat);
  count_kept(r);
  return r;
}

// Token t of rank s carries (s, t, 1) so the receiving side can tell exactly which token arrived.
at::Tensor tokens_of(int s, int64_t T) {
  at::Tensor x = at::empty({T, kD});
  for (int64_t t = 0; t < T; ++t) {
    x[t][0] = s;
    x[t][1] = t;
    x[t][2] = 1;
  }
  return x;
}

// Dispatch, check that each local expert received exactly the (rank, token) pairs routed to it (by
// source rank, then token order), combine with identity experts, check output and input gradient.
void check_round_trip(int ep, int64_t T, const std::function<bool(int, int64_t, int64_t)>& keep,
                      bool check_splits = false, bool once_per_rank = false) {
  const int me = world().rank();
  auto ep_group = world().split(me / ep, me % ep);
  const int ep_rank = ep_group->rank();
  const auto dispatcher =
      make_token_dispatcher(ParallelDims(world().size(), me, ep, kE), ep_group.get(), check_splits, once_per_rank);
  const int64_t El = dispatcher->num_local_experts();
  ASSERT_EQ(El, kE / ep);
  Routing routing = make_routing(me, T, keep);
  at::Tensor probs = routing.probs_TK.clone().requires_grad_(true);
  routing.probs_TK = probs;
  at::Tensor x = tokens_of(me, T).requires_grad_(true);
  Dispatched d = dispatcher->dispatch(x, routing);

  int64_t row = 0;
  for (int64_t j = 0; j < El; ++j) {
    const int64_t e = ep_rank * El + j;
    int64_t expected = 0;
    for (int s_ep = 0; s_ep < ep; ++s_ep) {
      const int s = (me / ep) * ep + s_ep;  // world rank of EP rank s_ep in my group
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t k = 0; k < kK; ++k) {
          if (expert_of(s, t, k) != e || !keep(s, t, k)) continue;
          ASSERT_LT(row, d.x_ND.size(0));
          EXPECT_EQ(d.x_ND[row][0].item<float>(), s) << "expert " << e << " row " << row;
          EXPECT_EQ(d.x_ND[row][1].item<float>(), t) << "expert " << e << " row " << row;
          ++row;
          ++expected;
        }
      }
    }
    EXPECT_EQ(d.tokens_per_local_expert[j], expected) << "local expert " << j;
  }
  EXPECT_EQ(row, d.x_ND.size(0));
  // What went out: a row per kept assignment, or once per rank a row per token that reaches the rank.
  if (ep > 1) {
    ASSERT_EQ(static_cast<int>(d.handle.send_rows.size()), ep);
    for (int r = 0; r < ep; ++r) {
      int64_t rows = 0;
      for (int64_t t = 0; t < T; ++t) {
        int64_t here = 0;
        for (int64_t k = 0; k < kK; ++k) here += keep(me, t, k) && expert_of(me, t, k) / El == r;
        rows += once_per_rank ? std::min<int64_t>(here, 1) : here;
      }
      EXPECT_EQ(d.handle.send_rows[r], rows) << "to EP rank " << r;
    }
  }

  const at::Tensor y = dispatcher->combine(d.x_ND, d.handle);  // identity experts
  at::Tensor kept_weight = routing.probs_TK.detach().sum(1, true);
  EXPECT_TRUE(testing::close(y, x.detach() * kept_weight, 0, 1e-6));
  const at::Tensor g = at::randn({T, kD});
  (y * g).sum().backward();
  EXPECT_TRUE(testing::close(x.grad(), g * kept_weight, 1e-6));
  // A gate weight's gradient is its expert's output (here the token) against the output's gradient,
  // wherever the expert ran; a dropped assignment's is 0.
  const at::Tensor keep_TK = routing.keep_TK.to(at::kFloat);
  EXPECT_TRUE(testing::close(probs.grad(), (g * x.detach()).sum(1, true) * keep_TK, 1e-6)) << "gate gradient";

  // The telemetry: each exchange, forward and backward, to and from every other rank, in bytes. Per
  // assignment, rows of kD floats out and back, in forward and in backward; once per rank, a row per
  // distinct token likewise, and its El gate weights out in forward and their gradient back.
  int64_t bytes = 0;
  for (int r = 0; r < ep; ++r) {
    if (r == ep_rank) continue;
    const int s = (me / ep) * ep + r;  // world rank of EP rank r
    for (int64_t t = 0; t < T; ++t) {
      int64_t to = 0, from = 0;
      for (int64_t k = 0; k < kK; ++k) {
        to += keep(me, t, k) && expert_of(me, t, k) / El == r;
        from += keep(s, t, k) && expert_of(s, t, k) / El == ep_rank;
      }
      bytes += once_per_rank ? (std::min<int64_t>(to, 1) + std::min<int64_t>(from, 1)) * (2 * kD + El) * 4
                             : 2 * (to + from) * kD * 4;
    }
  }
  const ExchangeStats e = dispatcher->take_exchange_stats();
  EXPECT_EQ(e.bytes_sent, bytes);
  EXPECT_EQ(e.bytes_received, bytes);
  EXPECT_EQ(dispatcher->take_exchange_stats().bytes_sent, 0);  // taking zeroes them
}

// Every case with a row per assignment and with a row per (token, rank) (dispatch_once_per_rank): the
// experts must receive the same rows in the same order either way.
void for_each_layout(const std::function<void(int ep, bool once_per_rank)>& check) {
  for (int ep : testing::ep_sizes(kE)) {
    for (bool once : {false, true}) {
      SCOPED_TRACE("ep " + std::to_string(ep) + (once ? ", once per rank" : ", once per expert"));
      check(ep, once);
    }
  }
}

TEST(TokenDispatcher, CombineOfDispatchRestoresInputAndGradient) {
  for_each_layout([](int ep, bool once) {
    check_round_trip(ep, 13, [](int, int64_t, int64_t) { return true; }, false, once);
    check_round_trip(ep, 13, [](int, int64_t, int64_t) { return true; }, /*check_splits=*/true, once);
  });
}

TEST(TokenDispatcher, DroppedAssignmentsAreNotSent) {
  for_each_layout([](int ep, bool once) {
    check_round_trip(ep, 11, [](int s, int64_t t, int64_t k) { return (s + t + k) % 3 != 0; }, false, once);
  });
}

TEST(TokenDispatcher, RanksThatSendNothing) {
  // Only rank 0 sends anything; every other rank drops all its assignments (and so receives only).
  for_each_layout([](int ep, bool once) { check_round_trip(ep, 9, [](int s, int64_t, int64_t) { return s == 0; }, false, once); });
}

TEST(TokenDispatcher, ZeroTokensOnEveryRank) {
  for_each_layout([](int ep, bool once) { check_round_trip(ep, 0, [](int, int64_t, int64_t) { return true; }, false, once); });
}

TEST(TokenDispatcher, OneRankSendsEverythingToOneRemoteExpert) {
  // Rank 0's tokens all go to the last expert (owned by the last EP rank); other ranks send nothing, so
  // every other expert receives nothing.
  const int me = world().rank(), R = world().size();
  const int64_t T = 17;
  auto ep_group = world().split(0, me);
  const auto dispatcher =
      make_token_dispatcher(ParallelDims(R, me, R, kE), ep_group.get(), /*check_splits=*/true, /*once_per_rank=*/false);
  Routing r;
  r.expert_ids_TK = at::full({T, 1}, kE - 1, at::kLong);
  r.keep_TK = at::full({T, 1}, me == 0, at::kBool);
  r.probs_TK = r.keep_TK.to(at::kFloat);
  count_kept(r);
  at::Tensor x = tokens_of(me, T).requires_grad_(true);
  Dispatched d = dispatcher->dispatch(x, r);
  const int64_t El = kE / R;
  for (int64_t j = 0; j < El; ++j) {
    const bool hot = me == R - 1 && j == El - 1;
    EXPECT_EQ(d.tokens_per_local_expert[j], hot ? T : 0) << "local expert " << j;
  }
  if (me == R - 1) {
    EXPECT_TRUE(testing::close(d.x_ND, tokens_of(0, T), 0));
  }
  const at::Tensor y = dispatcher->combine(d.x_ND * 2.0, d.handle);
  EXPECT_TRUE(testing::close(y, me == 0 ? x.detach() * 2.0 : at::zeros({T, kD}), 0));
  y.sum().backward();
  EXPECT_TRUE(testing::close(x.grad(), at::full({T, kD}, me == 0 ? 2.0 : 0.0), 0));
}

TEST(TokenDispatcher, CheckSplitsReportsRanksOutOfStep) {
  const int me = world().rank(), R = world().size();
  if (R == 1) GTEST_SKIP() << "needs two ranks";
  auto ep_group = world().split(0, me);
  const auto a = make_token_dispatcher(ParallelDims(R, me, R, kE), ep_group.get(), true, false);
  const auto b = make_token_dispatcher(ParallelDims(R, me, R, kE), ep_group.get(), true, false);
  const Routing routing = make_routing(me, 5, [](int, int64_t, int64_t) { return true; });
  const at::Tensor x = tokens_of(me, 5);
  // Rank 0 runs its first exchange on `a`, the others on `b`: the collectives still pair up.
  (me == 0 ? a : b)->dispatch(x, routing);
  // Now rank 0's `a` is at exchange #1 and everyone else's at #0: all ranks must refuse, none hang.
  try {
    a->dispatch(x, routing);
    ADD_FAILURE() << "expected moe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ran different numbers of MoE layers"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
