#include "train/cli/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/check.h"
#include "train/cli/plan.h"

namespace moe {
namespace {

std::string source_path(const std::string& relative) { return std::string(MOE_SOURCE_DIR) + "/" + relative; }

std::string write_config(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path, std::ios::trunc) << text;
  return path;
}

TEST(Config, ResolvedConfigLoadsBackAsItWas) {
  const Config a = load_config(source_path("configs/deepseek-v3.yaml"), {"moe.capacity_factor=1.5"}, 2);
  EXPECT_EQ(a.model.moe.router.capacity_factor, 1.5);
  const std::string yaml = to_yaml(a);
  const Config b = load_config(write_config("resolved.yaml", yaml), {}, 2);
  EXPECT_EQ(to_yaml(b), yaml);
  EXPECT_EQ(b.model.moe.num_shared_experts, 1);
  EXPECT_EQ(b.model.moe.router.score_function, ScoreFunction::kSigmoid);
}

TEST(Config, OverridesParseAsYaml) {
  const Config c = load_config(source_path("configs/switch.yaml"),
                               {"moe.capacity_factor=null", "train.lr=3e-4", "moe.normalize_topk=true"}, 2);
  EXPECT_FALSE(c.model.moe.router.capacity_factor.has_value());
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  EXPECT_TRUE(c.model.moe.router.normalize_topk);
  const TransformerOptions& o = c.model;
  EXPECT_EQ(o.moe.router.top_k, 1);
  EXPECT_EQ(o.moe.expert_type, ExpertType::kGELU);
  EXPECT_EQ(o.moe.router.drop_policy, DropPolicy::kPosition);
}

TEST(Config, EveryShippedConfigLoads) {
  for (const auto& entry : std::filesystem::directory_iterator(source_path("configs"))) {
    const std::string path = entry.path().string();
    const bool full_size = path.find("8x7b") != std::string::npos || path.find("grok-1") != std::string::npos;
    const int world = path.find("671b") != std::string::npos   ? 256
                      : path.find("480b") != std::string::npos ? 128
                      : full_size                              ? 64
                                                               : 2;
    EXPECT_NO_THROW(load_config(path, {}, world)) << path;
  }
}

// docs/config.md documents every key with its default: a table row "| `key` | `default` | ... |".
TEST(Config, DocsListEveryKeyWithItsDefault) {
  std::ifstream is(source_path("docs/config.md"));
  std::stringstream doc;
  doc << is.rdbuf();
  for (const std::string& line : config_keys()) {
    const size_t colon = line.find(": ");
    const std::string row = "| `" + line.substr(0, colon) + "` | `" + line.substr(colon + 2) + "` |";
    EXPECT_NE(doc.str().find(row), std::string::npos) << "docs/config.md lacks the row " << row;
  }
}

TEST(Config, EmptyFileMeansDefaults) {
  const Config c = load_config(write_config("empty.yaml", ""), {}, 1);
  EXPECT_EQ(to_yaml(c), to_yaml(Config{}));
}

}  // namespace
}  // namespace moe
