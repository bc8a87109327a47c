#include "train/checkpoint/upcycle.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "core/check.h"
#include "train/checkpoint/checkpoint.h"
#include "train/checkpoint/checkpoint_state.h"

namespace moe {

void upcycle_checkpoint(const std::string& dense_dir, const Config& config, const std::string& out_dir) {
  MOE_INPUT_CHECK(!std::filesystem::exists(out_dir), "upcycle: ", out_dir, " already exists; nothing was overwritten");
  const nlohmann::json manifest = read_manifest(dense_dir);
  const Config dense_config = load_config(dense_dir + "/config.yaml", {}, 0);
  const TransformerOptions& d = dense_config.model;
  const TransformerOptions& o = config.model;
  const std::string source = "upcycle: " + dense_dir;
  MOE_INPUT_CHECK(!d.is_moe(), source, " is not a dense checkpoint (moe.num_experts ", d.moe.router.num_experts, ")");
  MOE_INPUT_CHECK(o.is_moe(), "upcycle: ", config.source, " describes a dense model (moe.num_experts 0)");
  const auto same = [&](const char* key, auto ours, auto theirs) {
    MOE_INPUT_CHECK(ours == theirs, "upcycle: ", key, " is ", ours, " in ", config.source, " but ", theirs, " in ",
                    dense_dir, "/config.yaml");
  };
  same("model.vocab_size", o.vocab_size, d.vocab_size);
  same("model.hidden_size", o.hidden_size, d.hidden_size);
  same("model.num_layers", o.num_layers, d.num_layers);
  same("model.num_attention_heads", o.num_attention_heads, d.num_attention_heads);
  same("model.num_kv_heads", o.kv_heads(), d.kv_heads());
  same("model.max_seq_len", o.max_seq_len, d.max_seq_len);
  same("model.rope_theta", o.rope_theta, d.rope_theta);
  same("model.norm_eps", o.norm_eps, d.norm_eps);
  MOE_INPUT_CHECK(o.moe.ffn_hidden_size == d.ffn_hidden_size, "upcycle: moe.ffn_hidden_size is ",
                  o.moe.ffn_hidden_size, " in ", config.source, "; each expert starts as a copy of the dense FFN, of "
                  "width model.ffn_hidden_size ", d.ffn_hidden_size, " in ", dense_dir, "/config.yaml");
  for (int64_t l = 0; l < o.num_layers; ++l) {
    if (!o.is_moe_layer(l)) same("model.ffn_hidden_size (of the layers that stay dense)", o.ffn_hidden_size, d.ffn_hidden_size);
  }
  MOE_INPUT_CHECK(o.moe.num_shared_experts == 0, "upcycle: ", config.source, " has shared experts "
                  "(moe.num_shared_experts); a copy of the dense FFN beside the routed ones would double it");
  MOE_INPUT_CHECK(o.moe.expert_type == ExpertType::kSwiGLU, "upcycle: ", config.source,
                  " has GELU experts; the dense FFN is SwiGLU");
  if (!o.moe.router.normalize_topk) {
    spdlog::warn("upcycle: moe.normalize_topk is false in {}: at step 0 each MoE layer computes the dense FFN "
                 "scaled by the sum of its top-k scores, not the dense model's function", config.source);
  }
  if (o.moe.router.routed_scaling_factor != 1.0) {
    spdlog::warn("upcycle: moe.routed_scaling_factor is {} in {}: at step 0 each MoE layer computes the dense FFN "
                 "scaled by it, not the dense model's function", o.moe.router.routed_scaling_factor, config.source);
  }

  const Safetensors dense = std::move(verify_files(dense_dir, manifest, {"model.safetensors"})["model.safetensors"]);
  const std::string dense_file = dense_dir + "/model.safetensors";
  const auto take = [&](const std::string& name, const at::Tensor& like) {
    const auto it = dense.tensors.find(name);
    MOE_INPUT_CHECK(it != dense.tensors.end(), source, ": model.safetensors lacks ", name);
    MOE_INPUT_CHECK(it->second.sizes() == like.sizes() && it->second.scalar_type() == like.scalar_type(), dense_file,
                    ": ", name, " is ", it->second.sizes(), ", the upcycled model needs ", like.sizes());
    return it->second;
  };
  at::manual_seed(config.train.seed);  // the routers' initialisation
  FreshCheckpoint checkpoint(o);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : checkpoint.live) {
    const bool moment = name.rfind("exp_avg", 0) == 0;
    if (moment || name.find(".moe.router.") != std::string::npos) continue;  // zero; the config's init
    // "layers.L.moe.experts.G.wI" starts as expert 0 of "layers.L.mlp.wI" (a dense FFN is one expert).
    const size_t experts = name.find(".moe.experts.");
    if (experts == std::string::npos) {
      t.copy_(take(name, t));
      continue;
    }
    const std::string w = name.substr(name.rfind('.') + 1);
    const std::string mlp = name.substr(0, experts) + ".mlp." + w;
    t.copy_(take(mlp, t.unsqueeze(0))[0]);
  }
  // The dense run's step carries over, so a run resumed from here continues its schedule (and its batches);
  // AdamW's bias correction restarts with the fresh moments.
  checkpoint.state.step = manifest["step"].get<int64_t>();
  checkpoint.write(out_dir, to_yaml(config), config.parallel.expert_parallel_size, config.train.seed);
  spdlog::info("upcycled {} to {}: {} experts top-{} in {} MoE layer(s), each expert a copy of its layer's dense FFN, "
               "{} parameters (step {}, fresh optimizer)", dense_dir, out_dir, o.moe.router.num_experts,
               o.moe.router.top_k, [&] {
                 int64_t n = 0;
                 for (int64_t l = 0; l < o.num_layers; ++l) n += o.is_moe_layer(l);
                 return n;
               }(), checkpoint.num_parameters(), checkpoint.state.step);
}

}  // namespace moe
