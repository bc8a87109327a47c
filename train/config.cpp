#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <sstream>

#include "core/check.h"

namespace moe {
namespace {

// The shortest decimal that reads back as the same double, so the resolved config loads back exactly.
std::string format_double(double v) {
  for (int precision = 6; precision <= 17; ++precision) {
    std::ostringstream os;
    os.precision(precision);
    os << v;
    if (std::stod(os.str()) == v) return os.str();
  }
  return std::to_string(v);
}

std::string describe(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  return node.IsMap() ? "a mapping" : "a list";
}

// Thrown by a field's setter; the loader adds the place and the key.
struct Invalid {
  std::string message;
};

struct Field {
  std::string key;  // "section.name"
  std::function<void(const YAML::Node&)> set;
  std::function<std::string()> get;  // the value as YAML
};

template <typename T>
T scalar_as(const YAML::Node& node, const char* type) {
  if (!node.IsScalar()) throw Invalid{"expected " + std::string(type) + ", got " + describe(node)};
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    throw Invalid{"expected " + std::string(type) + ", got " + describe(node)};
  }
}

// The table of every key: how to read it, its range, how to print it.
class Schema {
 public:
  explicit Schema(Config& c) {
    auto& m = c.model;
    integer("model.vocab_size", m.vocab_size, 1);
    integer("model.hidden_size", m.hidden_size, 1);
    integer("model.num_layers", m.num_layers, 1);
    integer("model.num_attention_heads", m.num_attention_heads, 1);
    integer("model.num_kv_heads", m.num_kv_heads, 0);
    integer("model.ffn_hidden_size", m.ffn_hidden_size, 1);
    integer("model.max_seq_len", m.max_seq_len, 1);
    real("model.rope_theta", m.rope_theta, 0, false);
    real("model.norm_eps", m.norm_eps, 0, false);
    real("model.init_std", m.init_std, 0, false);
    auto& e = c.moe;
    integer("moe.num_experts", e.num_experts, 0);
    integer("moe.top_k", e.top_k, 1);
    integer("moe.ffn_hidden_size", e.ffn_hidden_size, 1);
    integer("moe.layer_freq", e.layer_freq, 1);
    integer("moe.first_dense_layers", e.first_dense_layers, 0);
    integer("moe.num_shared_experts", e.num_shared_experts, 0);
    choice("moe.expert_type", e.expert_type, {"swiglu", "gelu"});
    choice("moe.score_function", e.score_function, {"softmax", "sigmoid"});
    boolean("moe.normalize_topk", e.normalize_topk);
    optional_real("moe.capacity_factor", e.capacity_factor);
    optional_real("moe.eval_capacity_factor", e.eval_capacity_factor);
    choice("moe.drop_policy", e.drop_policy, {"probability", "position"});
    real("moe.jitter_eps", e.jitter_eps, 0, true, 1);
    real("moe.aux_loss_coeff", e.aux_loss_coeff, 0, true);
    choice("moe.aux_loss_scope", e.aux_loss_scope, {"micro_batch", "global"});
    real("moe.z_loss_coeff", e.z_loss_coeff, 0, true);
    real("moe.bias_update_rate", e.bias_update_rate, 0, true);
    boolean("moe.check_splits", e.check_splits);
    integer("parallel.expert_parallel_size", c.parallel.expert_parallel_size, 1);
    choice("parallel.backend", c.parallel.backend, {"mpi", "nccl"});
    auto& d = c.data;
    text("data.train_path", d.train_path);
    text("data.val_path", d.val_path);
    choice("data.dtype", d.dtype, {"uint16", "uint32"});
    integer("data.seq_len", d.seq_len, 1);
    auto& t = c.train;
    integer("train.steps", t.steps, 1);
    integer("train.micro_batch_size", t.micro_batch_size, 1);
    integer("train.global_batch_size", t.global_batch_size, 1);
    seed("train.seed", t.seed);
    text("train.out_dir", t.out_dir);
    integer("train.eval_every", t.eval_every, 0);
    integer("train.eval_windows", t.eval_windows, 0);
    integer("train.log_every", t.log_every, 1);
    real("train.lr", t.lr, 0, false);
    real("train.min_lr", t.min_lr, 0, true);
    integer("train.warmup_steps", t.warmup_steps, 0);
    real("train.weight_decay", t.weight_decay, 0, true);
    real("train.beta1", t.beta1, 0, true, 1);
    real("train.beta2", t.beta2, 0, true, 1);
    real("train.adam_eps", t.adam_eps, 0, false);
    real("train.grad_clip", t.grad_clip, 0, true);
    integer("checkpoint.every", c.checkpoint.every, 0);
    integer("checkpoint.keep_last", c.checkpoint.keep_last, 0);
  }

  const Field* find(const std::string& key) const {
    for (const Field& f : fields_) {
      if (f.key == key) return &f;
    }
    return nullptr;
  }
  const std::vector<Field>& fields() const { return fields_; }

 private:
  void integer(const char* key, int64_t& v, int64_t min) {
    fields_.push_back({key,
                       [&v, min](const YAML::Node& n) {
                         const int64_t x = scalar_as<int64_t>(n, "an integer");
                         if (x < min) throw Invalid{"must be at least " + std::to_string(min) + ", got " + n.Scalar()};
                         v = x;
                       },
                       [&v] { return std::to_string(v); }});
  }
  void seed(const char* key, uint64_t& v) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<uint64_t>(n, "a non-negative integer"); },
                       [&v] { return std::to_string(v); }});
  }
  // A double >= min (> min when !inclusive), and < max.
  void real(const char* key, double& v, double min, bool inclusive,
            double max = std::numeric_limits<double>::infinity()) {
    fields_.push_back({key,
                       [&v, min, inclusive, max](const YAML::Node& n) {
                         const double x = scalar_as<double>(n, "a number");
                         if (!std::isfinite(x) || (inclusive ? x < min : x <= min) || x >= max) {
                           std::string range = (inclusive ? "must be >= " : "must be > ") + format_double(min);
                           if (std::isfinite(max)) range += " and < " + format_double(max);
                           throw Invalid{range + ", got " + n.Scalar()};
                         }
                         v = x;
                       },
                       [&v] { return format_double(v); }});
  }
  // A positive double, or null.
  void optional_real(const char* key, std::optional<double>& v) {
    fields_.push_back({key,
                       [&v](const YAML::Node& n) {
                         if (n.IsNull()) {
                           v.reset();
                           return;
                         }
                         const double x = scalar_as<double>(n, "a number or null");
                         if (!std::isfinite(x) || x <= 0) throw Invalid{"must be > 0 or null, got " + n.Scalar()};
                         v = x;
                       },
                       [&v] { return v ? format_double(*v) : std::string("null"); }});
  }
  void boolean(const char* key, bool& v) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<bool>(n, "true or false"); },
                       [&v] { return std::string(v ? "true" : "false"); }});
  }
  void text(const char* key, std::string& v) {
    fields_.push_back({key,
                       [&v](const YAML::Node& n) {
                         v = scalar_as<std::string>(n, "a string");
                         if (v.empty()) throw Invalid{"must not be empty"};
                       },
                       [&v] { return YAML::Dump(YAML::Node(v)); }});
  }
  void choice(const char* key, std::string& v, std::vector<std::string> choices) {
    fields_.push_back({key,
                       [&v, choices](const YAML::Node& n) {
                         const auto x = scalar_as<std::string>(n, "a string");
                         std::string list;
                         for (const auto& c : choices) {
                           if (x == c) {
                             v = x;
                             return;
                           }
                           list += (list.empty() ? "" : " | ") + c;
                         }
                         throw Invalid{"must be one of " + list + ", got " + describe(n)};
                       },
                       [&v] { return v; }});
  }

  std::vector<Field> fields_;
};

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string suggestion(const Schema& schema, const std::string& key) {
  std::string best;
  size_t best_distance = 5;  // suggest within 4 edits
  for (const Field& f : schema.fields()) {
    const size_t d = edit_distance(key, f.key);
    if (d < best_distance) {
      best_distance = d;
      best = f.key;
    }
  }
  return best.empty() ? "" : " (did you mean " + best + "?)";
}

// Where each key was set, for messages: "configs/x.yaml:12" or "--set train.lr=abc".
class Places {
 public:
  explicit Places(std::string file) : file_(std::move(file)) {}
  void set(const std::string& key, std::string place) { places_[key] = std::move(place); }
  std::string of(const std::string& key) const {
    const auto it = places_.find(key);
    return it != places_.end() ? it->second : file_;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& message) const {
    throw Error(of(key) + ": " + key + " " + message, /*bad_input=*/true);
  }

 private:
  std::string file_;
  std::map<std::string, std::string> places_;
};

std::string line_of(const std::string& file, const YAML::Node& node) {
  return file + ":" + std::to_string(node.Mark().line + 1);
}

void apply(const Schema& schema, Places& places, const std::string& key, const YAML::Node& value,
           const std::string& place) {
  const Field* field = schema.find(key);
  places.set(key, place);
  if (!field) places.fail(key, "is not a config key" + suggestion(schema, key));
  try {
    field->set(value);
  } catch (const Invalid& e) {
    places.fail(key, e.message);
  }
}

void check_consistency(const Config& c, const Places& p, int world_size) {
  const auto& m = c.model;
  if (m.hidden_size % m.num_attention_heads != 0) {
    p.fail("model.num_attention_heads", "(" + std::to_string(m.num_attention_heads) +
                                            ") must divide model.hidden_size (" + std::to_string(m.hidden_size) + ")");
  }
  const int64_t kv = m.num_kv_heads == 0 ? m.num_attention_heads : m.num_kv_heads;
  if (m.num_attention_heads % kv != 0) {
    p.fail("model.num_kv_heads", "(" + std::to_string(kv) + ") must divide model.num_attention_heads (" +
                                     std::to_string(m.num_attention_heads) + ")");
  }
  if ((m.hidden_size / m.num_attention_heads) % 2 != 0) {
    p.fail("model.num_attention_heads", "gives an odd head dimension (" +
                                            std::to_string(m.hidden_size / m.num_attention_heads) +
                                            "); rotary embeddings need an even one");
  }
  if (c.data.seq_len > m.max_seq_len) {
    p.fail("data.seq_len", "(" + std::to_string(c.data.seq_len) + ") must not exceed model.max_seq_len (" +
                               std::to_string(m.max_seq_len) + ")");
  }
  const auto& e = c.moe;
  const int64_t ep = c.parallel.expert_parallel_size;
  if (e.num_experts > 0) {
    if (e.top_k > e.num_experts) {
      p.fail("moe.top_k", "(" + std::to_string(e.top_k) + ") must not exceed moe.num_experts (" +
                              std::to_string(e.num_experts) + ")");
    }
    if (e.num_experts % ep != 0) {
      p.fail("parallel.expert_parallel_size", "(" + std::to_string(ep) + ") must divide moe.num_experts (" +
                                                  std::to_string(e.num_experts) + ")");
    }
    if (e.first_dense_layers >= m.num_layers) {
      p.fail("moe.first_dense_layers", "(" + std::to_string(e.first_dense_layers) +
                                           ") leaves no MoE layer in a model of " + std::to_string(m.num_layers) +
                                           " layers");
    }
    if (m.num_layers / e.layer_freq <= e.first_dense_layers / e.layer_freq) {  // no multiple in (first, layers]
      p.fail("moe.layer_freq", "(" + std::to_string(e.layer_freq) + ") leaves no MoE layer in a model of " +
                                   std::to_string(m.num_layers) + " layers");
    }
  } else if (ep != 1) {
    p.fail("parallel.expert_parallel_size", "(" + std::to_string(ep) + ") must be 1 for a dense model (moe.num_experts 0)");
  }
#ifndef MOE_WITH_NCCL
  if (c.parallel.backend == "nccl") p.fail("parallel.backend", "nccl: this moe was built without NCCL (CPU build)");
#endif
  if (c.train.min_lr > c.train.lr) {
    p.fail("train.min_lr", "(" + format_double(c.train.min_lr) + ") must not exceed train.lr (" +
                               format_double(c.train.lr) + ")");
  }
  if (world_size > 0) {
    if (world_size % ep != 0) {
      p.fail("parallel.expert_parallel_size", "(" + std::to_string(ep) + ") must divide the world size (" +
                                                  std::to_string(world_size) + ")");
    }
    const int64_t per_step = c.train.micro_batch_size * world_size;
    if (c.train.global_batch_size % per_step != 0) {
      p.fail("train.global_batch_size", "(" + std::to_string(c.train.global_batch_size) +
                                            ") must be a multiple of train.micro_batch_size (" +
                                            std::to_string(c.train.micro_batch_size) + ") x world size (" +
                                            std::to_string(world_size) + ")");
    }
  }
}

}  // namespace

TransformerOptions Config::transformer_options() const {
  TransformerOptions o;
  o.vocab_size = model.vocab_size;
  o.num_layers = model.num_layers;
  o.attention.hidden_size = model.hidden_size;
  o.attention.num_heads = model.num_attention_heads;
  o.attention.num_kv_heads = model.num_kv_heads == 0 ? model.num_attention_heads : model.num_kv_heads;
  o.attention.rope_theta = model.rope_theta;
  o.attention.init_std = model.init_std;
  o.norm_eps = model.norm_eps;
  o.ffn_hidden_size = model.ffn_hidden_size;
  o.init_std = model.init_std;
  o.moe_layer_freq = moe.layer_freq;
  o.first_dense_layers = moe.first_dense_layers;
  MoELayerOptions& l = o.moe;
  l.ffn_hidden_size = moe.ffn_hidden_size;
  l.expert_type = moe.expert_type == "gelu" ? ExpertType::kGELU : ExpertType::kSwiGLU;
  l.num_shared_experts = moe.num_shared_experts;
  l.check_splits = moe.check_splits;
  RouterOptions& r = l.router;
  r.hidden_size = model.hidden_size;
  r.num_experts = moe.num_experts;
  r.top_k = moe.top_k;
  r.score_function = moe.score_function == "sigmoid" ? ScoreFunction::kSigmoid : ScoreFunction::kSoftmax;
  r.normalize_topk = moe.normalize_topk;
  r.capacity_factor = moe.capacity_factor;
  r.eval_capacity_factor = moe.eval_capacity_factor;
  r.drop_policy = moe.drop_policy == "position" ? DropPolicy::kPosition : DropPolicy::kProbability;
  r.jitter_eps = moe.jitter_eps;
  r.aux_loss_coeff = moe.aux_loss_coeff;
  r.aux_loss_scope = moe.aux_loss_scope == "global" ? AuxLossScope::kGlobal : AuxLossScope::kMicroBatch;
  r.z_loss_coeff = moe.z_loss_coeff;
  r.bias_update_rate = moe.bias_update_rate;
  r.init_std = model.init_std;
  return o;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides, int world_size) {
  Config config;
  config.source = path;
  Schema schema(config);
  Places places(path);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw Error("cannot read config file " + path, /*bad_input=*/true);
  } catch (const YAML::ParserException& e) {
    throw Error(path + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg, /*bad_input=*/true);
  }
  if (!root.IsNull()) {
    if (!root.IsMap()) throw Error(line_of(path, root) + ": expected a mapping of sections (model:, moe:, ...)", true);
    for (const auto& section : root) {
      const std::string name = section.first.as<std::string>();
      const bool known = std::any_of(schema.fields().begin(), schema.fields().end(),
                                     [&](const Field& f) { return f.key.rfind(name + ".", 0) == 0; });
      if (!known) {
        throw Error(line_of(path, section.first) + ": " + name +
                        " is not a config section (model, moe, parallel, data, train, checkpoint)",
                    /*bad_input=*/true);
      }
      if (!section.second.IsMap()) {
        throw Error(line_of(path, section.first) + ": " + name + " must be a mapping of keys, got " +
                        describe(section.second),
                    /*bad_input=*/true);
      }
      for (const auto& item : section.second) {
        const std::string key = name + "." + item.first.as<std::string>();
        apply(schema, places, key, item.second, line_of(path, item.first));
      }
    }
  }
  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error("--set " + o + ": expected key.path=value", /*bad_input=*/true);
    }
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw Error("--set " + o + ": the value is not valid YAML: " + e.msg, /*bad_input=*/true);
    }
    apply(schema, places, o.substr(0, eq), value, "--set " + o);
  }
  check_consistency(config, places, world_size);
  return config;
}

std::string to_yaml(const Config& config) {
  Config copy = config;
  Schema schema(copy);
  std::string out, section;
  for (const Field& f : schema.fields()) {
    const size_t dot = f.key.find('.');
    if (f.key.substr(0, dot) != section) {
      section = f.key.substr(0, dot);
      out += section + ":\n";
    }
    out += "  " + f.key.substr(dot + 1) + ": " + f.get() + "\n";
  }
  return out;
}

std::vector<std::string> config_keys() {
  Config config;
  Schema schema(config);
  std::vector<std::string> out;
  for (const Field& f : schema.fields()) out.push_back(f.key + ": " + f.get());
  return out;
}

}  // namespace moe
