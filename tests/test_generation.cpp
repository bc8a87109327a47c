// Generation: the KV cache against the full forward, greedy decoding with the cache against decoding that
// recomputes the whole prefix, and the sampler. Under mpirun with any number of ranks: every rank holds
// the same model (and, with experts sharded over the ranks, its shard), and rank 0's tokens are everyone's.
#include "train/generation.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "mpi_testing.h"
#include "parallel/parallel_dims.h"
#include "testing.h"

namespace moe {
namespace {

using testing::world;

TransformerOptions small_moe() {
  TransformerOptions o;
  o.vocab_size = 64;
  o.hidden_size = 32;
  o.num_layers = 2;
  o.num_attention_heads = 4;
  o.num_kv_heads = 2;
  o.ffn_hidden_size = 48;
  o.max_seq_len = 40;
  o.init_std = 0.3;  // decisive logits: no near-ties between two ways of rounding
  o.moe.router.num_experts = 4;
  o.moe.router.top_k = 2;
  o.moe.ffn_hidden_size = 24;
  return o;  // dropless: a token's routing does not depend on the others
}

// The model with its experts sharded over all the ranks (EP = world size), the same on every layout.
struct Sharded {
  ParallelDims dims;
  ProcessGroups groups;
  Transformer model{nullptr};
  explicit Sharded(const TransformerOptions& o)
      : dims(world().size(), world().rank(), world().size(), o.moe.router.num_experts),
        groups(make_process_groups(world(), dims)) {
    model = Transformer(o, ExpertParallel{dims, groups.ep.get(), &world()});
    model->init_weights(11);
    model->eval();
  }
};

TEST(Generation, CachedForwardsGiveTheFullForwardsLogits) {
  if (world().size() > 4) GTEST_SKIP() << "4 experts";
  Sharded s(small_moe());
  at::NoGradGuard no_grad;
  at::manual_seed(3);
  const at::Tensor tokens = at::randint(0, 64, {2, 12}, at::kLong);
  const at::Tensor full = s.model->forward(tokens).logits;
  std::vector<KVCache> caches;
  int64_t at = 0;
  for (int64_t n : {5, 1, 1, 3, 2}) {  // the prompt, then single tokens, then chunks
    const at::Tensor part = s.model->forward(tokens.narrow(1, at, n), &caches).logits;
    EXPECT_TRUE(testing::close(part, full.narrow(1, at, n), 1e-5)) << "positions " << at << ".." << at + n - 1;
    at += n;
  }
  EXPECT_EQ(caches.size(), 2u);
  EXPECT_EQ(caches[0].length, 12);
}

TEST(Generation, GreedyWithTheCacheEqualsRecomputingThePrefix) {
  if (world().size() > 4) GTEST_SKIP() << "4 experts";
  Sharded s(small_moe());
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 30;
  const std::vector<int64_t> prompt = {1, 7, 7, 3};
  const std::vector<int64_t> cached = generate(s.model, prompt, o, world(), /*use_cache=*/true);
  const std::vector<int64_t> recomputed = generate(s.model, prompt, o, world(), /*use_cache=*/false);
  EXPECT_EQ(cached, recomputed);
  EXPECT_EQ(cached.size(), 30u);
  // And by hand: each token is the argmax of the full forward over the sequence before it.
  at::NoGradGuard no_grad;
  std::vector<int64_t> sequence = prompt;
  for (int64_t t : cached) {
    const at::Tensor logits = s.model->forward(at::tensor(sequence, at::kLong).view({1, -1})).logits;
    EXPECT_EQ(logits[0][-1].argmax().item<int64_t>(), t);
    sequence.push_back(t);
  }
  // The context ends at model.max_seq_len (40): 36 more at most.
  o.max_new_tokens = 100;
  EXPECT_EQ(generate(s.model, prompt, o, world()).size(), 36u);
}

TEST(Generation, SamplerTemperatureTopPAndSeed) {
  const at::Tensor logits = at::tensor({0.0, 2.0, 1.0, -1.0}, at::kFloat);
  SamplingOptions o;
  at::Generator g = at::detail::createCPUGenerator(1);
  o.temperature = 0;
  EXPECT_EQ(sample_token(logits, o, g), 1);
  o.temperature = 1;
  o.top_p = 0.5;  // token 1 alone holds 0.64 of the probability: the nucleus is {1}
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, o, g), 1);
  o.top_p = 0.9;  // tokens 1 and 2 hold 0.88, below 0.9, with 0 0.97: {1, 2, 0}, never 3
  std::vector<int> seen(4, 0);
  for (int i = 0; i < 400; ++i) seen[sample_token(logits, o, g)]++;
  EXPECT_EQ(seen[3], 0);
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], seen[2]);
  EXPECT_GT(seen[2], seen[0]);
  // The same seed, the same draws.
  o.top_p = 1;
  at::Generator a = at::detail::createCPUGenerator(9), b = at::detail::createCPUGenerator(9);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, o, a), sample_token(logits, o, b));
}

}  // namespace
}  // namespace moe
