#include "train/checkpoint/export.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "train/checkpoint/checkpoint.h"
#include "train/checkpoint/checkpoint_state.h"
#include "train/checkpoint/safetensors.h"
#include "train/cli/config.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

// Why Mixtral cannot express this model, or "".
std::string not_mixtral(const TransformerOptions& o) {
  const MoEOptions& m = o.moe;
  const RouterOptions& r = m.router;
  if (!o.is_moe()) return "it is a dense model (moe.num_experts 0)";
  if (m.layer_freq != 1 || m.first_dense_layers != 0)
    return "it has dense FFN layers between MoE layers (moe.layer_freq " + std::to_string(m.layer_freq) +
           ", moe.first_dense_layers " + std::to_string(m.first_dense_layers) + "); every Mixtral layer is MoE";
  if (m.num_shared_experts != 0) return "it has shared experts (moe.num_shared_experts); Mixtral has none";
  if (r.score_function != ScoreFunction::kSoftmax)
    return "its router scores are " + enum_name(r.score_function) + "; Mixtral's are softmax";
  if (!r.normalize_topk) return "its top-k weights are not renormalised (moe.normalize_topk false); Mixtral's are";
  if (m.expert_type != ExpertType::kSwiGLU)
    return "its experts are " + enum_name(m.expert_type) + "; Mixtral's are SwiGLU";
  if (r.bias_update_rate > 0) return "its router selects with an aux-loss-free expert bias; Mixtral's has none";
  return "";
}

}  // namespace

int64_t export_huggingface(const std::string& checkpoint_dir, const std::string& out_dir,
                           const ExportOptions& options) {
  MOE_INPUT_CHECK(options.dtype == "float32" || options.dtype == "bfloat16", "export: --dtype must be float32 or "
                  "bfloat16, got ", options.dtype);
  MOE_INPUT_CHECK(!fs::exists(out_dir), "export: ", out_dir, " already exists; nothing was overwritten");
  const nlohmann::json manifest = read_manifest(checkpoint_dir);
  std::set<std::string> inputs = {"model.safetensors"};
  for (int64_t j = 0; j < manifest["expert_parallel_size"].get<int64_t>(); ++j) inputs.insert(experts_file(j));
  std::map<std::string, Safetensors> files = verify_files(checkpoint_dir, manifest, inputs);
  const Config c = load_config(checkpoint_dir + "/config.yaml", {}, 0);
  const TransformerOptions& o = c.model;
  const std::string why = not_mixtral(o);
  MOE_INPUT_CHECK(why.empty(), "export: ", checkpoint_dir, " cannot be exported as Mixtral: ", why);
  const at::ScalarType dtype = options.dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;

  std::map<std::string, at::Tensor> saved;
  for (auto& [name, file] : files) saved.merge(file.tensors);
  const auto take = [&](const std::string& name) {
    const auto it = saved.find(name);
    MOE_INPUT_CHECK(it != saved.end(), "export: ", checkpoint_dir, " lacks tensor ", name);
    return it->second;
  };
  NamedTensors out;
  const auto put = [&](const std::string& name, const at::Tensor& t) {
    out.emplace_back(name, t.to(dtype).contiguous());
  };
  put("model.embed_tokens.weight", take("embed_tokens"));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    put(hf + "input_layernorm.weight", take(ours + "input_layernorm.weight"));
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      put(hf + "self_attn." + proj + ".weight", take(ours + "self_attn." + proj));
    }
    put(hf + "post_attention_layernorm.weight", take(ours + "post_attention_layernorm.weight"));
    put(hf + "block_sparse_moe.gate.weight", take(ours + "moe.router.weight"));
    for (int64_t e = 0; e < o.moe.router.num_experts; ++e) {
      const std::string dst = hf + "block_sparse_moe.experts." + std::to_string(e) + ".";
      // Ours multiply x @ w ([D, F]); nn.Linear stores [out, in] and computes x @ W^T.
      for (const char* w : {"w1", "w2", "w3"}) {
        put(dst + w + ".weight", take(expert_tensor_name(ours + "moe.experts." + w, e)).t());
      }
    }
  }
  put("model.norm.weight", take("norm.weight"));
  put("lm_head.weight", take("lm_head"));

  // A directory of our own beside out_dir, never one that is there already, removed if the export fails.
  const fs::path parent = fs::path(out_dir).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  std::string tmp = out_dir + ".tmp-XXXXXX";
  MOE_INPUT_CHECK(::mkdtemp(tmp.data()) != nullptr, "export: cannot create a directory beside ", out_dir, ": ",
                  std::strerror(errno));
  struct RemoveUnlessRenamed {
    std::string path;
    bool renamed = false;
    ~RemoveUnlessRenamed() {
      std::error_code ec;
      if (!renamed) fs::remove_all(path, ec);
    }
  } partial{tmp};
  // Shards in order, each below max_shard_bytes (a single tensor above it gets a shard of its own).
  std::vector<NamedTensors> shards(1);
  int64_t shard_bytes = 0, total_bytes = 0;
  for (auto& item : out) {
    const int64_t bytes = item.second.numel() * static_cast<int64_t>(item.second.element_size());
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(item);
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors(tmp + "/model.safetensors", shards[0], metadata);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors(tmp + "/" + name, shards[i], metadata);
      for (const auto& item : shards[i]) weight_map[item.first] = name;
    }
    write_text_file(tmp + "/model.safetensors.index.json",
                    nlohmann::json({{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}}).dump(2) +
                        "\n");
  }
  const TransformerOptions& m = o;
  const nlohmann::json config = {
      {"architectures", {"MixtralForCausalLM"}},
      {"model_type", "mixtral"},
      {"vocab_size", m.vocab_size},
      {"hidden_size", m.hidden_size},
      {"intermediate_size", m.moe.ffn_hidden_size},
      {"num_hidden_layers", m.num_layers},
      {"num_attention_heads", m.num_attention_heads},
      {"num_key_value_heads", m.kv_heads()},
      {"head_dim", m.head_dim()},
      {"hidden_act", "silu"},
      {"max_position_embeddings", m.max_seq_len},
      {"rms_norm_eps", m.norm_eps},
      {"rope_theta", m.rope_theta},
      {"num_local_experts", m.moe.router.num_experts},
      {"num_experts_per_tok", m.moe.router.top_k},
      {"router_aux_loss_coef", m.moe.router.aux_loss_coeff},
      {"output_router_logits", false},
      {"router_jitter_noise", 0.0},
      {"sliding_window", nullptr},
      {"attention_dropout", 0.0},
      {"initializer_range", m.init_std},
      {"tie_word_embeddings", false},
      {"use_cache", true},
      {"torch_dtype", options.dtype}};
  write_text_file(tmp + "/config.json", config.dump(2) + "\n");
  fsync_path(tmp);
  fs::rename(tmp, out_dir);
  partial.renamed = true;
  spdlog::info("exported {} ({} tensors, {} shard(s), {:.1f} MB, {}) to {}", checkpoint_dir, out.size(), shards.size(),
               total_bytes / 1e6, options.dtype, out_dir);
  return static_cast<int64_t>(out.size());
}

}  // namespace moe
