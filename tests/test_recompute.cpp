// Activation recomputation (train.recompute): the same gradients bit for bit as keeping everything,
// with capacity dropping and router jitter, whose draws the re-run must replay.
#include "core/recompute.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "core/transformer.h"
#include "testing.h"

namespace moe {
namespace {

TransformerOptions small_moe() {
  TransformerOptions o;
  o.vocab_size = 64;
  o.hidden_size = 32;
  o.num_layers = 3;
  o.num_attention_heads = 4;
  o.num_kv_heads = 2;
  o.ffn_hidden_size = 48;
  o.max_seq_len = 16;
  o.moe.first_dense_layers = 1;  // a dense block too
  o.moe.ffn_hidden_size = 24;
  o.moe.num_shared_experts = 1;
  RouterOptions& r = o.moe.router;
  r.num_experts = 4;
  r.top_k = 2;
  r.capacity_factor = 0.75;  // drops: which ones depends on the jittered scores
  r.jitter_eps = 0.1;
  r.aux_loss_coeff = 0.01;
  r.z_loss_coeff = 0.001;
  return o;
}

struct StepResult {
  std::map<std::string, at::Tensor> grads;
  std::vector<int64_t> dropped;
  at::Tensor loss;
  at::Tensor next_draw;  // what the generator gives after the step: the re-run must leave it as it was
};

// Two micro-batches accumulated, as the trainer does: each a forward under the same seed, a loss of the
// logits and the routers' losses, and a backward.
StepResult step(Recompute recompute) {
  Transformer model(small_moe());
  model->init_weights(11);
  model->to(testing::device());
  model->set_recompute(recompute);
  model->train();
  at::manual_seed(5);
  StepResult run;
  for (int micro = 0; micro < 2; ++micro) {
    const at::Tensor tokens = at::randint(0, 64, {3, 16}, at::TensorOptions().dtype(at::kLong)).to(testing::device());
    TransformerOutput out = model->forward(tokens);
    const at::Tensor loss = at::cross_entropy_loss(out.logits.reshape({-1, 64}), tokens.reshape({-1})) + out.router_loss;
    loss.backward();
    run.loss = run.loss.defined() ? run.loss + loss.detach() : loss.detach();
    for (const Routing& r : out.routings) run.dropped.push_back(r.num_dropped);
  }
  for (const auto& p : model->named_parameters()) {
    if (p.value().grad().defined()) run.grads[p.key()] = p.value().grad().cpu();
  }
  run.next_draw = at::rand({4}).cpu();
  return run;
}

TEST(Recompute, GradientsBitIdenticalToKeepingEverything) {
  const StepResult none = step(Recompute::kNone);
  int64_t dropped = 0;
  for (int64_t d : none.dropped) dropped += d;
  ASSERT_GT(dropped, 0) << "the case must drop tokens to test that the re-run drops the same ones";
  for (Recompute r : {Recompute::kMoE, Recompute::kFull}) {
    const StepResult again = step(r);
    const std::string name = enum_name(r);
    EXPECT_TRUE(at::equal(again.loss, none.loss)) << name;
    EXPECT_EQ(again.dropped, none.dropped) << name;
    EXPECT_TRUE(at::equal(again.next_draw, none.next_draw)) << name << ": the re-run left the generator elsewhere";
    ASSERT_EQ(again.grads.size(), none.grads.size()) << name;
    for (const auto& [key, g] : none.grads) {
      ASSERT_TRUE(again.grads.count(key)) << name << " " << key;
      EXPECT_TRUE(at::equal(again.grads.at(key), g)) << name << ": gradient of " << key << " differs by up to "
                                                      << (again.grads.at(key) - g).abs().max().item<double>();
    }
  }
}

// The re-run must draw the jitter the first run drew: with the generator's state not restored, the
// re-run's drops (and so its gradients) would differ. Shown by running the piece by hand.
TEST(Recompute, ReplaysTheFirstRunsRandomDraws) {
  at::Tensor x = at::randn({8});
  x.requires_grad_(true);
  const Recomputable noisy = [](const std::vector<at::Tensor>& in, bool) {
    return std::vector<at::Tensor>{in[0] * at::rand({8})};
  };
  at::manual_seed(3);
  const at::Tensor y = recompute(noisy, {x})[0];
  at::manual_seed(3);
  const at::Tensor draws = at::rand({8});
  y.sum().backward();
  EXPECT_TRUE(at::equal(x.grad(), draws));
}

TEST(Recompute, OutsideGradModeIsThePlainCall) {
  at::NoGradGuard no_grad;
  int calls = 0;
  const Recomputable f = [&calls](const std::vector<at::Tensor>& in, bool replay) {
    ++calls;
    EXPECT_FALSE(replay);
    return std::vector<at::Tensor>{in[0] * 2};
  };
  const at::Tensor y = recompute(f, {at::ones({2})})[0];
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(y.requires_grad());
}

}  // namespace
}  // namespace moe
