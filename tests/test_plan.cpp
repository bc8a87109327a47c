#include "train/cli/plan.h"

#include <gtest/gtest.h>

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

TEST(Plan, ActivationsByRecomputeByHand) {
  // tiny, per token and layer (both MoE): attention 5 x 64 + 4 x 2 x 16 + 2 x 4 x 16 + 3 x 4 x 32 = 960;
  // the MoE FFN 2 x 64 + 4 + 2 x 3 x 64 = 516 plus the experts' hidden buffers 2 x 3 x 64 = 384.
  // Logits and log-softmax 2 x 256. A micro-batch of 2 x 32 tokens, 4 bytes a float.
  const int64_t block = 960 + 516 + 384, bytes = 4 * 2 * 32;
  EXPECT_EQ(make_plan(small({}), 1).activation_bytes, bytes * (512 + 2 * block));
  // moe: the hidden buffers go, one layer's come back while its experts are recomputed.
  EXPECT_EQ(make_plan(small({"train.recompute=moe"}), 1).activation_bytes, bytes * (512 + 2 * (block - 384) + 384));
  // full: each block keeps its input; one whole block is rebuilt at a time.
  EXPECT_EQ(make_plan(small({"train.recompute=full"}), 1).activation_bytes, bytes * (512 + 2 * 64 + block));
  // bfloat16: the blocks' floats take 2 bytes, the logits stay float32; weights gain their bf16 copies.
  const Plan bf16 = make_plan(small({"train.dtype=bfloat16"}), 1);
  EXPECT_EQ(bf16.activation_bytes, 2 * 32 * (4 * 512 + 2 * 2 * block));
  EXPECT_EQ(bf16.param_bytes, 6 * bf16.params_per_rank);
  EXPECT_EQ(bf16.grad_bytes, 4 * bf16.params_per_rank);
  // The all-to-all carries bf16 rows: half the bytes.
  const std::string tiny = std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml";
  const Plan f32_ep2 = make_plan(load_config(tiny, {"parallel.expert_parallel_size=2"}, 2), 2);
  const Plan bf16_ep2 = make_plan(load_config(tiny, {"parallel.expert_parallel_size=2", "train.dtype=bfloat16"}, 2), 2);
  EXPECT_GT(f32_ep2.a2a_bytes_per_step, 0);
  EXPECT_EQ(2 * bf16_ep2.a2a_bytes_per_step, f32_ep2.a2a_bytes_per_step);
}

TEST(Plan, AllToAllBytesByHand) {
  // 2 MoE layers x 4 exchanges x accumulation 2 x (2 x 32 tokens x top-2 x 64 floats x 4 bytes) x (EP-1)/EP.
  const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml",
                               {"parallel.expert_parallel_size=2"}, 2);
  EXPECT_EQ(make_plan(c, 2).a2a_bytes_per_step, 2 * 4 * 2 * (2 * 32 * 2 * 64 * 4) / 2);
  EXPECT_EQ(make_plan(c, 2).params_per_rank, make_plan(c, 1).total_params - 2 * 2 * 3 * 64 * 64);
}

TEST(Plan, Mixtral8x7bHasMistralsPublishedSizes) {
  const Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/mixtral-8x7b.yaml", {}, 64);
  const Plan p = make_plan(c, 64);
  EXPECT_NEAR(static_cast<double>(p.total_params), 46.7e9, 0.01 * 46.7e9);
  EXPECT_NEAR(static_cast<double>(p.active_params), 12.9e9, 0.01 * 12.9e9);
}

}  // namespace
}  // namespace moe
