#include "train/cli/plan.h"

#include "train/cli/hardware.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/transformer.h"

namespace moe {
namespace {

int64_t numel(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

Config small(const std::vector<std::string>& overrides) {
  Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml", overrides, 1);
  return c;
}

// The plan counts parameters from shapes alone; the model it describes, built, must hold exactly that many.
TEST(Plan, TotalParametersMatchTheBuiltModel) {
  for (const auto& overrides : std::vector<std::vector<std::string>>{
           {},
           {"moe.num_shared_experts=2", "moe.first_dense_layers=1", "model.num_layers=3"},
           {"moe.layer_freq=2", "moe.expert_type=gelu", "model.num_layers=4"},
           {"moe.num_experts=0"}}) {
    const Config c = small(overrides);
    const Transformer model(c.model);
    EXPECT_EQ(make_plan(c, 1).total_params, numel(*model)) << overrides.size();
  }
}

TEST(Plan, ActiveParametersByHand) {
  // tiny: vocab 256, D 64, 2 layers, 4 heads of 16, 2 KV heads; 4 SwiGLU experts of 64, top-2.
  const Config c = small({});
  const int64_t attention = 2 * 64 * 64 + 2 * 64 * 32 + 2 * 64;
  const int64_t moe_active = 4 * 64 + 2 * 3 * 64 * 64;
  EXPECT_EQ(make_plan(c, 1).active_params, 2 * 256 * 64 + 64 + 2 * (attention + moe_active));
}

TEST(Plan, FlopsPerTokenByHand) {
  // tiny, per layer: 6 x (projections 2 x 64 x 64 + 2 x 64 x 32, router 4 x 64, top-2 experts
  // 2 x 3 x 64 x 64) + attention 12 x 4 heads x 16 x 32 tokens; twice; then the head 6 x 256 x 64.
  const int64_t layer = 6 * (12288 + 256 + 24576) + 12 * 4 * 16 * 32;
  EXPECT_EQ(make_plan(small({}), 1).flops_per_token, 2 * layer + 6 * 256 * 64);
  // Recomputation and dtype change the memory, not the model FLOPs.
  EXPECT_EQ(make_plan(small({"train.recompute=full", "train.dtype=bfloat16"}), 1).flops_per_token,
            2 * layer + 6 * 256 * 64);
}

TEST(Plan, ActivationsByRecomputeByHand) {
  // tiny: D 64, 4 heads of 16, 2 KV heads, S 32, 4 SwiGLU experts of 64, top-2, vocab 256; a
  // micro-batch of 2 x 32 = 64 tokens. Bytes a block keeps per token in float32:
  //   each norm its output, 64 floats, and one float of reciprocal RMS: 260; attention: norm + (q, k
  //   before and after rotation 2 x 64 + 2 x 32, v 32, heads' output 64, residual 64) floats + FlashAttention's output and log-sum-exp 4 x (16 + 1)
  //   floats = 260 + 1408 + 272 = 1940;
  //   MoE: norm 260 + router (3 x 4 + 2 x 2) floats 64 + copies 4 x 2 x 64 and residual 64 floats 2304 +
  //   the experts' 2 copies x 3 x 64 floats (x w1, x w3, their gated product) 1536 = 4164. Block 6104;
  //   with its input 6360.
  // Logits, log-softmax and gradient 3 x 256 floats: 3072; one exchange's send buffer 2 x 64 floats: 512.
  const int64_t T = 64, block = 1940 + 4164, experts = 1536, input = 256, logits = 3072, send = 512;
  EXPECT_EQ(make_plan(small({}), 1).activation_bytes, T * (2 * (input + block) + logits + send));
  // moe: the experts' buffers go; one layer's come back while its experts are replayed.
  EXPECT_EQ(make_plan(small({"train.recompute=moe"}), 1).activation_bytes,
            T * (2 * (input + block - experts) + experts + logits + send));
  // full: each block keeps its input; one whole block is replayed at a time.
  EXPECT_EQ(make_plan(small({"train.recompute=full"}), 1).activation_bytes, T * (2 * input + block + logits + send));
  // bfloat16: 2-byte activations, float32 where the code computes in float32: each norm its bf16 output
  // and float32 reciprocal RMS (132), the attention's output and log-sum-exp in float32 (272); the
  // logits float32 after a bf16 first. Attention 132 + 704 + 272, MoE 132 + 64 + 1152 + 768: block
  // 3224, input 128.
  const Plan bf16 = make_plan(small({"train.dtype=bfloat16"}), 1);
  EXPECT_EQ(bf16.activation_bytes, T * (2 * (128 + 3224) + (12 + 2) * 256 + 256));
  // Weights gain the bf16 copies of every matmul weight (kept for backward): the head 256 x 64 and per
  // layer the projections 2 x 64 x 64 + 2 x 64 x 32 and the experts 4 x 3 x 64 x 64.
  EXPECT_EQ(bf16.param_bytes, 4 * bf16.params_per_rank + 2 * (256 * 64 + 2 * (12288 + 49152)));
  EXPECT_EQ(bf16.grad_bytes, 4 * bf16.params_per_rank);
  // Buffers: no gradient bucket (unsharded, the gradients live in GradSync's buckets), and the largest of
  // a layer's and the head's new gradients (4 bytes, 6 in bf16: the bf16 gradient and its float32
  // conversion).
  const Plan f32 = make_plan(small({}), 1);
  const int64_t layer = 12288 + 49152 + 4 * 64 + 2 * 64;
  EXPECT_EQ(f32.buffer_bytes, 4 * layer);
  EXPECT_EQ(bf16.buffer_bytes, 6 * layer);
  // The all-to-all carries bf16 rows: half the bytes (a row per assignment, nothing beside the rows).
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  const Plan f32_ep2 =
      make_plan(load_config(tiny, {"parallel.expert_parallel_size=2", "moe.dispatch_once_per_rank=false"}, 2), 2);
  const Plan bf16_ep2 = make_plan(
      load_config(tiny, {"parallel.expert_parallel_size=2", "moe.dispatch_once_per_rank=false", "train.dtype=bfloat16"}, 2),
      2);
  EXPECT_GT(f32_ep2.a2a_bytes_per_step, 0);
  EXPECT_EQ(2 * bf16_ep2.a2a_bytes_per_step, f32_ep2.a2a_bytes_per_step);
}

// Shadow experts on tiny at EP 2 (2 MoE layers, 4 SwiGLU experts of 3 x 64 x 64 = 12288 weights, 2 a
// rank), one a layer: every rank holds a copied expert per layer until backward, float32 (4 bytes), its
// bf16 cast instead in bfloat16 (2), with recompute moe the float32 copies and one layer's cast again,
// with full one block's; backward's new gradients gain the copy's and the owner's returned shard (2
// experts), at 4 bytes (6 in bfloat16). Without EP there is nothing to copy from.
TEST(Plan, ShadowExpertsByHand) {
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  const auto delta = [&](std::vector<std::string> overrides, int world) {
    const Plan off = make_plan(load_config(tiny, overrides, world), world);
    overrides.push_back("moe.shadow_experts=1");
    const Plan on = make_plan(load_config(tiny, overrides, world), world);
    EXPECT_EQ(on.activation_bytes, off.activation_bytes);
    EXPECT_EQ(on.grad_bytes, off.grad_bytes);
    return std::make_pair(on.param_bytes - off.param_bytes, on.buffer_bytes - off.buffer_bytes);
  };
  const int64_t expert = 12288;
  const std::string ep2 = "parallel.expert_parallel_size=2";
  EXPECT_EQ(delta({ep2}, 2), std::make_pair(2 * expert * 4, 4 * 3 * expert));
  EXPECT_EQ(delta({ep2, "train.dtype=bfloat16"}, 2), std::make_pair(2 * expert * 2, 6 * 3 * expert));
  EXPECT_EQ(delta({ep2, "train.dtype=bfloat16", "train.recompute=moe"}, 2).first, 2 * expert * 4 + expert * 2);
  EXPECT_EQ(delta({ep2, "train.recompute=full"}, 2).first, expert * 4);
  EXPECT_EQ(delta({}, 1), std::make_pair(int64_t{0}, int64_t{0}));
}

TEST(Plan, ShardedOptimizerSplitsTheStateOverItsGroups) {
  // 4 ranks, EP 2: the dense parameters' moments and reduced gradient (12 bytes each) over 4 ranks, each
  // rank's experts' over their expert-data-parallel group of 2.
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  const Plan whole = make_plan(load_config(tiny, {"parallel.expert_parallel_size=2", "train.global_batch_size=8"}, 4), 4);
  const Plan sharded = make_plan(
      load_config(tiny, {"parallel.expert_parallel_size=2", "train.global_batch_size=8", "train.shard_optimizer=true"}, 4), 4);
  const int64_t experts = 2 * 2 * 3 * 64 * 64, dense = whole.params_per_rank - experts;
  EXPECT_EQ(whole.optimizer_bytes, 8 * whole.params_per_rank);
  EXPECT_EQ(sharded.optimizer_bytes, 12 * ((dense + 3) / 4 + experts / 2));
  // All else alike but the reduce-scatter's buffer, one bucket (here all of tiny's gradients): unsharded,
  // the gradients are reduced where they live, in GradSync's buckets.
  EXPECT_EQ(sharded.total_bytes() - sharded.optimizer_bytes,
            whole.total_bytes() - whole.optimizer_bytes + sharded.grad_bytes);
}

TEST(Plan, StepEstimateOnHardwareByHand) {
  // tiny in bf16 on 16 H100s (2 nodes of 8), EP 2 x EDP 8, 32 sequences of 32 tokens a step: 64 tokens a
  // rank, no accumulation; GEMMs at half the 989 TFLOP/s peak.
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  const Config c = load_config(tiny, {"parallel.expert_parallel_size=2", "train.global_batch_size=32",
                                      "train.dtype=bfloat16"}, 16);
  const Plan p = make_plan(c, 16);
  const StepEstimate e = estimate_step(c, 16, p, find_hardware("h100-sxm"), 0.5);
  const double flops = 2 * (6 * (12288 + 256 + 24576) + 12 * 4 * 16 * 32) + 6 * 256 * 64;  // FlopsPerTokenByHand
  EXPECT_DOUBLE_EQ(e.tokens_per_rank, 64);
  EXPECT_NEAR(e.compute_s, flops * 64 / (0.5 * 989e12), 1e-12 * e.compute_s);
  // All-to-all: 2 layers x 64 tokens, 5/6 of them reaching the other rank of the EP group (top-2 of 4
  // experts, 2 a rank), each 4 rows of 64 bf16 values, 2 float32 gate weights both ways and a 2-byte mask
  // (Plan.AllToAllBytesByHand), inside the node: NVLink's 450 GB/s.
  EXPECT_TRUE(e.a2a_inside_node);
  EXPECT_NEAR(e.a2a_s, std::llround(2 * 64 * 5.0 / 6 * (4 * 64 * 2 + 2 * 4 * 2 + 2)) / 450e9, 1e-12 * e.a2a_s);
  // Gradients, float32, rings over InfiniBand's 50 GB/s (the world spans 2 nodes): dense 2 x 32768 + 64
  // (embedding, head, final norm) + 2 layers x (12288 + 128 + 256) over 16 ranks; the 2 local experts
  // of 3 x 64 x 64 in 2 layers over the EDP group of 8.
  const double dense = 2 * 256 * 64 + 64 + 2 * (12288 + 128 + 256), experts = 2 * 2 * 3 * 64 * 64;
  EXPECT_EQ(p.dense_params_per_rank, dense);
  EXPECT_NEAR(e.grad_sync_s, (2 * 15.0 / 16 * 4 * dense + 2 * 7.0 / 8 * 4 * experts) / 50e9, 1e-12 * e.grad_sync_s);
  EXPECT_DOUBLE_EQ(e.step_s, e.compute_s + e.a2a_s + e.grad_sync_s);
  EXPECT_NEAR(e.mfu, flops * 64 / e.step_s / 989e12, 1e-12);
  EXPECT_NEAR(e.tokens_per_s, 32 * 32 / e.step_s, 1e-9 * e.tokens_per_s);
  // An EP group wider than a node sends the share of its peers outside the node over InfiniBand.
  const Config wide = load_config(tiny, {"parallel.expert_parallel_size=4", "moe.num_experts=16",
                                         "train.global_batch_size=32"}, 16);
  const Plan wp = make_plan(wide, 16);
  const Hardware& a100 = find_hardware("a100-sxm");
  EXPECT_TRUE(estimate_step(wide, 16, wp, a100, 0.75).a2a_inside_node);
  const Config wider = load_config(tiny, {"parallel.expert_parallel_size=16", "moe.num_experts=16",
                                          "train.global_batch_size=32"}, 16);
  const Plan wq = make_plan(wider, 16);
  const StepEstimate across = estimate_step(wider, 16, wq, a100, 0.75);
  EXPECT_FALSE(across.a2a_inside_node);
  const double bytes = static_cast<double>(wq.a2a_bytes_per_step);
  EXPECT_NEAR(across.a2a_s, std::max(bytes * 8 / 15 / 25e9, bytes * 7 / 15 / 300e9), 1e-12 * across.a2a_s);
  // Recomputation costs time, not model FLOPs: full adds a forward, a third.
  const Config full = load_config(tiny, {"parallel.expert_parallel_size=2", "train.global_batch_size=32",
                                         "train.dtype=bfloat16", "train.recompute=full"}, 16);
  const StepEstimate rf = estimate_step(full, 16, make_plan(full, 16), find_hardware("h100-sxm"), 0.5);
  EXPECT_NEAR(rf.compute_s, e.compute_s * 4 / 3, 1e-6 * e.compute_s);
  EXPECT_THROW(find_hardware("b200"), Error);
  EXPECT_THROW(estimate_step(c, 16, p, find_hardware("h200"), 0), Error);
}

TEST(Plan, AllToAllBytesByHand) {
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  // A row per assignment: 2 MoE layers x 4 exchanges x accumulation 2 x (2 x 32 tokens x top-2 x 64 floats x
  // 4 bytes) x (EP-1)/EP.
  const Config per_expert =
      load_config(tiny, {"parallel.expert_parallel_size=2", "moe.dispatch_once_per_rank=false"}, 2);
  EXPECT_EQ(make_plan(per_expert, 2).a2a_bytes_per_step, 2 * 4 * 2 * (2 * 32 * 2 * 64 * 4) / 2);
  EXPECT_EQ(make_plan(per_expert, 2).params_per_rank, make_plan(per_expert, 1).total_params - 2 * 2 * 3 * 64 * 64);
  // Once per rank: top-2 of 4 experts, 2 a rank, miss the other rank's pair with chance 1 / C(4, 2): a
  // token reaches it 5/6 of the time. Each time 4 rows of 64 floats (out, back, both gradients), 2 gate
  // weights and their gradients (float32) and a 2-byte mask: 2 layers x accumulation 2 x 64 tokens x 5/6 x
  // 1042 bytes.
  const Config once = load_config(tiny, {"parallel.expert_parallel_size=2"}, 2);
  EXPECT_EQ(make_plan(once, 2).a2a_bytes_per_step, std::llround(2 * 2 * 64 * 5.0 / 6 * (4 * 64 * 4 + 2 * 4 * 2 + 2)));
  // 16 experts top-4 on 4 ranks in 4 groups (a group a rank), 2 groups a token: a token's groups include a
  // given rank's half the time, and its 4 picks among the 8 experts of its groups miss that rank's 4 with
  // chance 1 / C(8, 4): 3 x (1/2) x (69/70) other ranks a token (the layer benchmark measured 1.50).
  const Config groups = load_config(tiny,
                                    {"parallel.expert_parallel_size=4", "moe.num_experts=16", "moe.top_k=4",
                                     "moe.num_groups=4", "moe.group_topk=2", "train.global_batch_size=8"},
                                    4);
  const double rows = 2 * 1 * 64 * 3 * 0.5 * 69.0 / 70;
  EXPECT_EQ(make_plan(groups, 4).a2a_bytes_per_step, std::llround(rows * (4 * 64 * 4 + 4 * 4 * 2 + 4)));
  // Without groups: 3 x (1 - C(12, 4) / C(16, 4)) = 3 x 1325/1820 (the benchmark measured 2.17).
  const Config unlimited = load_config(tiny,
                                  {"parallel.expert_parallel_size=4", "moe.num_experts=16", "moe.top_k=4",
                                   "train.global_batch_size=8"},
                                  4);
  EXPECT_EQ(make_plan(unlimited, 4).a2a_bytes_per_step,
            std::llround(2 * 1 * 64 * 3 * 1325.0 / 1820 * (4 * 64 * 4 + 4 * 4 * 2 + 4)));
}

TEST(Plan, Mixtral8x7bHasMistralsPublishedSizes) {
  const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/mixtral-8x7b.yaml", {}, 64);
  const Plan p = make_plan(c, 64);
  EXPECT_NEAR(static_cast<double>(p.total_params), 46.7e9, 0.01 * 46.7e9);
  EXPECT_NEAR(static_cast<double>(p.active_params), 12.9e9, 0.01 * 12.9e9);
}

// xAI publishes 314B parameters; moe keeps the output head apart from the embedding, which Grok-1 ties
// (131072 x 6144 = 0.81B more). Active: 2 of 8 experts in 64 layers are 77.3B of the 84.6B moe counts
// (configs/grok-1.yaml says why that is xAI's "25% of the weights").
TEST(Plan, Grok1HasXaisPublishedSize) {
  const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/grok-1.yaml", {}, 64);
  const Plan p = make_plan(c, 64);
  EXPECT_NEAR(static_cast<double>(p.total_params), 314e9, 0.02 * 314e9);
  EXPECT_NEAR(static_cast<double>(p.total_params - 131072 * 6144), 314e9, 0.01 * 314e9);  // 315.7B tied
  const double active_experts = 64.0 * 2 * 3 * 6144 * 32768;
  EXPECT_NEAR(active_experts, 0.25 * 314e9, 0.02 * 0.25 * 314e9);
  EXPECT_NEAR(static_cast<double>(p.active_params), 84.56e9, 0.001 * 84.56e9);
}

// DeepSeek-V3 publishes 671B and 37B active. Its attention is MLA, which moe models as standard attention
// of 128 heads: 205.5M parameters a layer against MLA's 187.1M (configs/deepseek-v3-671b.yaml), the one
// documented gap; without it both counts land within 2%.
TEST(Plan, DeepSeekV3HasItsPublishedSizesButForMLA) {
  const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/deepseek-v3-671b.yaml", {}, 256);
  const Plan p = make_plan(c, 256);
  const double D = 7168, H = 128;
  const double mla = D * 1536 + 1536 * H * 192 + D * 576 + 512 * H * 256 + H * 128 * D;
  const double gap = 61 * (4 * D * D - mla);
  EXPECT_NEAR(gap, 1.123e9, 0.001e9);
  EXPECT_NEAR(static_cast<double>(p.total_params) - gap, 671e9, 0.02 * 671e9);
  EXPECT_NEAR(static_cast<double>(p.active_params) - gap, 37e9, 0.02 * 37e9);
  EXPECT_EQ(p.num_moe_layers, 58);
}

// Snowflake Arctic publishes 480B and 17B active: a 10B dense transformer (attention and a 7168-wide MLP
// in each of 35 layers, embedding and head) and 128 experts of 3.66B over the model, 2 active.
TEST(Plan, ArcticHasSnowflakesPublishedSizes) {
  const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/arctic-480b.yaml", {}, 128);
  const Plan p = make_plan(c, 128);
  EXPECT_NEAR(static_cast<double>(p.total_params), 480e9, 0.02 * 480e9);
  EXPECT_NEAR(static_cast<double>(p.active_params), 17e9, 0.02 * 17e9);
  const double dense = 35.0 * (2 * 7168.0 * 7168 + 2 * 7168.0 * 1024 + 3 * 7168.0 * 7168) + 2 * 32000.0 * 7168;
  EXPECT_NEAR(dense, 10e9, 0.01 * 10e9);
  EXPECT_NEAR(35.0 * 3 * 7168 * 4864, 3.66e9, 0.01 * 3.66e9);  // one expert over the model
}

// A shared-expert width of its own (Arctic's dense MLP) sizes the shared MLP instead of the routed width.
TEST(Plan, SharedExpertWidthOfItsOwn) {
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  const Plan a = make_plan(load_config(tiny, {"moe.num_shared_experts=2"}, 1), 1);
  const Plan b = make_plan(load_config(tiny, {"moe.num_shared_experts=2", "moe.shared_expert_ffn_hidden_size=100"}, 1), 1);
  EXPECT_EQ(b.total_params - a.total_params, 2 * 3 * 64 * (100 - 2 * 64));
  EXPECT_EQ(b.active_params - a.active_params, 2 * 3 * 64 * (100 - 2 * 64));
  EXPECT_THROW(load_config(tiny, {"moe.shared_expert_ffn_hidden_size=100"}, 1), Error);
}

}  // namespace
}  // namespace moe
