// Gradient accumulation: one global batch of 16 sequences run as one micro-batch per rank and as four
// gives the same synchronised gradients and loss, within float32 rounding (on 1 rank: 1 x 16 against
// 4 x 4). The balance loss is off here: it is computed per micro-batch by definition (as in Megatron),
// so it is the one term that legitimately differs between the two splits.
#include "train/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "mpi_testing.h"
#include "testing.h"

namespace moe {
namespace {

using testing::world;

// A token file every rank writes for itself: a fixed pseudo-random byte sequence.
std::string token_file(const std::string& name) {
  const std::string path = ::testing::TempDir() + name + "-rank" + std::to_string(world().rank()) + ".bin";
  std::ofstream os(path, std::ios::binary | std::ios::trunc);
  uint32_t state = 12345;
  for (int i = 0; i < 6000; ++i) {
    state = state * 1664525u + 1013904223u;
    const uint16_t token = static_cast<uint16_t>((state >> 16) % 256);
    os.write(reinterpret_cast<const char*>(&token), sizeof token);
  }
  return path;
}

Config accumulation_config(int64_t micro_batch_size, const std::string& out_dir) {
  const int W = world().size();
  const std::string data = token_file("accumulation");
  Config c = load_config(std::string(MOE_SOURCE_DIR) + "/configs/tiny.yaml",
                         {"data.train_path=" + data, "data.val_path=" + data, "train.out_dir=" + out_dir,
                          "train.global_batch_size=16", "train.micro_batch_size=" + std::to_string(micro_batch_size),
                          "parallel.expert_parallel_size=" + std::to_string(W), "moe.aux_loss_coeff=0",
                          "train.grad_clip=0"},
                         W);
  if (world().rank() == 0) std::filesystem::remove_all(out_dir);  // rank 0 alone writes the run directory
  return c;
}

TEST(Trainer, GradientAccumulationMatchesOneLargeMicroBatch) {
  const int W = world().size();
  if (16 % (4 * W) != 0) GTEST_SKIP() << "16 sequences do not split into 4 micro-batches on " << W << " ranks";
  const std::string root = ::testing::TempDir() + "accumulation-run-";
  Trainer whole(accumulation_config(16 / W, root + "whole"), world(), world(), at::kCPU);
  Trainer split(accumulation_config(4 / W, root + "split"), world(), world(), at::kCPU);
  StepStats a = whole.train_step(1), b = split.train_step(1);
  StepStats::read_all({&a, &b});

  EXPECT_NEAR(a.lm_loss / W, b.lm_loss / (4 * W), 1e-6) << "the step's mean loss";
  EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-6 * a.grad_norm);
  const ParameterList& pa = whole.model()->parameter_records();
  const ParameterList& pb = split.model()->parameter_records();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(testing::close(pb[i].tensor.grad(), pa[i].tensor.grad(), 2e-6)) << pa[i].name;
  }
}

}  // namespace
}  // namespace moe
