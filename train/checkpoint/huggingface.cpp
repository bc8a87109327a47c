#include "train/checkpoint/huggingface.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

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
  if (r.num_groups > 0) return "its routing is limited to groups of experts (moe.num_groups); Mixtral's is not";
  if (r.routed_scaling_factor != 1.0)
    return "its gate weights are scaled (moe.routed_scaling_factor " + format_double(r.routed_scaling_factor) +
           "); Mixtral's are not";
  return "";
}

// One tensor of the Mixtral layout: its Hugging Face name and ours. An expert's (expert >= 0) is the
// expert's slice of our stacked [E, in, out] parameter, which Hugging Face stores transposed, as
// nn.Linear's [out, in].
struct MixtralTensor {
  std::string hf, ours;
  int64_t expert = -1;
};

std::vector<MixtralTensor> mixtral_tensors(const TransformerOptions& o) {
  std::vector<MixtralTensor> out = {{"model.embed_tokens.weight", "embed_tokens"}};
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string ours = "layers." + std::to_string(l) + ".", hf = "model.layers." + std::to_string(l) + ".";
    out.push_back({hf + "input_layernorm.weight", ours + "input_layernorm.weight"});
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      out.push_back({hf + "self_attn." + proj + ".weight", ours + "self_attn." + proj});
    }
    out.push_back({hf + "post_attention_layernorm.weight", ours + "post_attention_layernorm.weight"});
    out.push_back({hf + "block_sparse_moe.gate.weight", ours + "moe.router.weight"});
    for (int64_t e = 0; e < o.moe.router.num_experts; ++e) {
      for (const char* w : {"w1", "w2", "w3"}) {
        out.push_back({hf + "block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight",
                       expert_tensor_name(ours + "moe.experts." + w, e), e});
      }
    }
  }
  out.push_back({"model.norm.weight", "norm.weight"});
  out.push_back({"lm_head.weight", "lm_head"});
  return out;
}

nlohmann::json mixtral_config(const TransformerOptions& m, const std::string& dtype) {
  return {{"architectures", {"MixtralForCausalLM"}},
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
          {"router_jitter_noise", m.moe.router.jitter_eps},
          {"sliding_window", nullptr},
          {"attention_dropout", 0.0},
          {"initializer_range", m.init_std},
          {"tie_word_embeddings", false},
          {"use_cache", true},
          {"torch_dtype", dtype}};
}

// The model a Mixtral config.json describes, or a refusal naming the field moe cannot express. Fields
// that only concern inference or tokenisation (bos_token_id, use_cache, torch_dtype, ...) are ignored.
TransformerOptions from_mixtral_config(const nlohmann::json& j, const std::string& path) {
  MOE_INPUT_CHECK(!j.is_discarded(), path, ": not valid JSON");
  MOE_INPUT_CHECK(j.is_object(), path, ": not a JSON object");
  const auto field = [&](const char* key) -> const nlohmann::json* {
    const auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  const std::string type = field("model_type") && field("model_type")->is_string()
                               ? field("model_type")->get<std::string>() : "(none)";
  MOE_INPUT_CHECK(type == "mixtral", path, ": model_type is ", type, "; moe imports Mixtral (model_type mixtral)");
  const auto integer = [&](const char* key, std::optional<int64_t> fallback = std::nullopt) {
    const nlohmann::json* v = field(key);
    MOE_INPUT_CHECK(v || fallback, path, ": ", key, " is missing");
    if (!v) return *fallback;
    MOE_INPUT_CHECK(v->is_number_integer() && v->get<int64_t>() > 0, path, ": ", key, " must be a positive integer, "
                    "got ", v->dump());
    return v->get<int64_t>();
  };
  const auto real = [&](const char* key, double fallback) {
    const nlohmann::json* v = field(key);
    if (!v) return fallback;
    MOE_INPUT_CHECK(v->is_number() && std::isfinite(v->get<double>()), path, ": ", key, " must be a number, got ",
                    v->dump());
    return v->get<double>();
  };
  // What Mixtral's config can say that this model cannot.
  const auto refuse_unless = [&](bool ok, const char* key, const std::string& why) {
    MOE_INPUT_CHECK(ok, path, ": ", key, " is ", field(key) ? field(key)->dump() : "set", ", which moe cannot express: ",
                    why);
  };
  const nlohmann::json* act = field("hidden_act");
  refuse_unless(!act || *act == "silu", "hidden_act", "its experts are SwiGLU (silu)");
  const nlohmann::json* tie = field("tie_word_embeddings");
  refuse_unless(!tie || *tie == false, "tie_word_embeddings", "the embedding and the output head are separate");
  refuse_unless(!field("rope_scaling"), "rope_scaling", "rotary angles are unscaled");
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    const nlohmann::json* b = field(key);
    refuse_unless(!b || *b == false, key, "its projections have no bias");
  }
  refuse_unless(real("attention_dropout", 0) == 0, "attention_dropout", "it has no dropout");

  TransformerOptions o;
  o.vocab_size = integer("vocab_size");
  o.hidden_size = integer("hidden_size");
  o.num_layers = integer("num_hidden_layers");
  o.num_attention_heads = integer("num_attention_heads");
  o.num_kv_heads = integer("num_key_value_heads", o.num_attention_heads);
  o.max_seq_len = integer("max_position_embeddings");
  o.rope_theta = real("rope_theta", 1e6);  // transformers' MixtralConfig defaults
  o.norm_eps = real("rms_norm_eps", 1e-5);
  o.init_std = real("initializer_range", 0.02);
  refuse_unless(!field("head_dim") || integer("head_dim") == o.hidden_size / o.num_attention_heads, "head_dim",
                "a head is hidden_size / num_attention_heads wide");
  const nlohmann::json* window = field("sliding_window");
  refuse_unless(!window || (window->is_number_integer() && window->get<int64_t>() >= o.max_seq_len), "sliding_window",
                "attention is causal over the whole sequence");
  MoEOptions& m = o.moe;
  m.ffn_hidden_size = integer("intermediate_size");
  m.expert_type = ExpertType::kSwiGLU;
  m.router.num_experts = integer("num_local_experts");
  m.router.top_k = integer("num_experts_per_tok");
  m.router.score_function = ScoreFunction::kSoftmax;
  m.router.normalize_topk = true;
  m.router.capacity_factor = std::nullopt;  // dropless, as Mixtral
  m.router.aux_loss_coeff = real("router_aux_loss_coef", 0.001);
  m.router.jitter_eps = real("router_jitter_noise", 0);
  return o;
}

// Every tensor of a Hugging Face folder: model.safetensors, or the shards model.safetensors.index.json
// names, each tensor in exactly one shard and the index naming each once.
std::map<std::string, at::Tensor> read_hf_weights(const std::string& dir) {
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (!fs::exists(index_path)) {
    MOE_INPUT_CHECK(fs::exists(dir + "/model.safetensors"), dir, ": has neither model.safetensors nor "
                    "model.safetensors.index.json");
    return read_safetensors(dir + "/model.safetensors").tensors;
  }
  const nlohmann::json index = nlohmann::json::parse(read_text_file(index_path), nullptr, false);
  MOE_INPUT_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(), index_path,
                  ": expected a JSON object with a weight_map");
  std::map<std::string, std::string> where;  // tensor -> shard
  for (const auto& [name, shard] : index["weight_map"].items()) {
    MOE_INPUT_CHECK(shard.is_string() && shard.get<std::string>().find('/') == std::string::npos, index_path,
                    ": the shard of ", name, " must be a file name in ", dir);
    where[name] = shard.get<std::string>();
  }
  std::map<std::string, at::Tensor> out;
  std::set<std::string> shards;
  for (const auto& item : where) shards.insert(item.second);
  for (const std::string& shard : shards) {
    for (auto& [name, t] : read_safetensors(dir + "/" + shard).tensors) {
      const auto it = where.find(name);
      MOE_INPUT_CHECK(it != where.end() && it->second == shard, dir, "/", shard, ": holds ", name, ", which ",
                      index_path, (it == where.end() ? " does not list" : " places in " + it->second));
      out.emplace(name, t);
    }
  }
  for (const auto& [name, shard] : where) {
    MOE_INPUT_CHECK(out.count(name), index_path, ": lists ", name, " in ", shard, ", which does not hold it");
  }
  return out;
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
  NamedTensors out;
  for (const MixtralTensor& m : mixtral_tensors(o)) {
    const auto it = saved.find(m.ours);
    MOE_INPUT_CHECK(it != saved.end(), "export: ", checkpoint_dir, " lacks tensor ", m.ours);
    out.emplace_back(m.hf, (m.expert >= 0 ? it->second.t() : it->second).to(dtype).contiguous());
  }

  StagingDirectory staging(out_dir, "export");
  const std::string& tmp = staging.path();
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
  const nlohmann::json config = mixtral_config(o, options.dtype);
  write_text_file(tmp + "/config.json", config.dump(2) + "\n");
  staging.commit();
  spdlog::info("exported {} ({} tensors, {} shard(s), {:.1f} MB, {}) to {}", checkpoint_dir, out.size(), shards.size(),
               total_bytes / 1e6, options.dtype, out_dir);
  return static_cast<int64_t>(out.size());
}


int64_t import_huggingface(const std::string& hf_dir, const std::string& out_dir, const ImportOptions& options) {
  MOE_INPUT_CHECK(!fs::exists(out_dir), "import: ", out_dir, " already exists; nothing was overwritten");
  const std::string config_path = hf_dir + "/config.json";
  MOE_INPUT_CHECK(fs::is_regular_file(config_path), "import: ", config_path, " is missing");
  const nlohmann::json hf_config = nlohmann::json::parse(read_text_file(config_path), nullptr, false);
  Config c;
  c.model = from_mixtral_config(hf_config, config_path);
  const int64_t E = c.model.moe.router.num_experts, ep = options.expert_parallel_size;
  MOE_INPUT_CHECK(ep >= 1 && E % ep == 0, "import: --ep ", ep, " must divide the ", E, " experts (num_local_experts)");
  c.parallel.expert_parallel_size = ep;
  c.data.seq_len = std::min(c.data.seq_len, c.model.max_seq_len);
  // The config.yaml it will write, read back with every check a run makes: refused here, nothing written.
  const std::string yaml = to_yaml(c);
  parse_config(yaml, config_path + " (as moe's config.yaml)", {}, 0);
  std::map<std::string, at::Tensor> weights = read_hf_weights(hf_dir);

  FreshCheckpoint checkpoint(c.model);
  at::NoGradGuard no_grad;
  for (const MixtralTensor& m : mixtral_tensors(c.model)) {
    const auto it = weights.find(m.hf);
    MOE_INPUT_CHECK(it != weights.end(), "import: ", hf_dir, " lacks tensor ", m.hf);
    const at::Tensor& w = it->second;
    MOE_INPUT_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kHalf,
                    "import: ", hf_dir, ": tensor ", m.hf, " is ", w.scalar_type(),
                    "; expected float32, bfloat16 or float16");
    at::Tensor dst = checkpoint.live.at(m.ours);
    if (m.expert >= 0) dst = dst.t();
    MOE_INPUT_CHECK(w.sizes() == dst.sizes(), "import: ", hf_dir, ": tensor ", m.hf, " is ", w.sizes(),
                    "; config.json makes it ", dst.sizes());
    dst.copy_(w);
    weights.erase(it);
  }
  MOE_INPUT_CHECK(weights.empty(), "import: ", hf_dir, " holds tensors a Mixtral of this config.json does not have: ",
                  weights.begin()->first, weights.size() > 1 ? " and " + std::to_string(weights.size() - 1) + " more" : "");

  checkpoint.write(out_dir, yaml, ep, c.train.seed);
  spdlog::info("imported {} ({} layers, {} experts top-{}, {} parameters) to {} (step 0, fresh optimizer, {} expert "
               "file(s))", hf_dir, c.model.num_layers, E, c.model.moe.router.top_k, checkpoint.num_parameters(), out_dir,
               ep);
  return static_cast<int64_t>(mixtral_tensors(c.model).size());
}

}  // namespace moe
