#include "train/cli/config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <sstream>

#include "core/check.h"

namespace moe {
namespace {

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

// The YAML binding of every key of visit_config_options: how to read its type from a node and how to
// print it. Ranges are not checked here but by RangeCheck once every key is set, so that one range
// check serves the config and the modules alike.
class Schema {
 public:
  explicit Schema(Config& c) { visit_config_options(c, *this); }

  const Field* find(const std::string& key) const {
    for (const Field& f : fields_) {
      if (f.key == key) return &f;
    }
    return nullptr;
  }
  const std::vector<Field>& fields() const { return fields_; }

  // The visitor.
  void integer(const char* key, int64_t& v, int64_t) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<int64_t>(n, "an integer"); },
                       [&v] { return std::to_string(v); }});
  }
  void seed(const char* key, uint64_t& v) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<uint64_t>(n, "a non-negative integer"); },
                       [&v] { return std::to_string(v); }});
  }
  void real(const char* key, double& v, double, bool, double) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<double>(n, "a number"); },
                       [&v] { return format_double(v); }});
  }
  void optional_real(const char* key, std::optional<double>& v, double) {
    fields_.push_back({key,
                       [&v](const YAML::Node& n) {
                         if (n.IsNull()) {
                           v.reset();
                         } else {
                           v = scalar_as<double>(n, "a number or null");
                         }
                       },
                       [&v] { return v ? format_double(*v) : std::string("null"); }});
  }
  void boolean(const char* key, bool& v) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<bool>(n, "true or false"); },
                       [&v] { return std::string(v ? "true" : "false"); }});
  }
  void text(const char* key, std::string& v) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<std::string>(n, "a string"); },
                       [&v] { return YAML::Dump(YAML::Node(v)); }});
  }
  void choice(const char* key, std::string& v, const std::vector<std::string>&) {
    fields_.push_back({key, [&v](const YAML::Node& n) { v = scalar_as<std::string>(n, "a string"); },
                       [&v] { return v; }});
  }
  // An enum, by the names of its enum_names() table.
  template <typename E>
  void choice(const char* key, E& v) {
    fields_.push_back({key,
                       [&v](const YAML::Node& n) {
                         const auto x = scalar_as<std::string>(n, "a string");
                         std::string list;
                         for (const auto& [name, value] : enum_names(E{})) {
                           if (x == name) {
                             v = value;
                             return;
                           }
                           list += (list.empty() ? "" : " | ") + std::string(name);
                         }
                         throw Invalid{"must be one of " + list + ", got " + describe(n)};
                       },
                       [&v] { return enum_name(v); }});
  }

 private:
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

// A section or key name: a plain scalar, not a YAML complex key ("? [a, b]").
std::string key_name(const std::string& file, const YAML::Node& key) {
  if (!key.IsScalar()) throw Error(line_of(file, key) + ": a key must be a plain name, got " + describe(key), true);
  return key.Scalar();
}

// Where each document of a YAML stream starts, and nothing else.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// The one document of a config file. Not YAML::LoadAll: yaml-cpp 0.7's loops for ever, allocating, on
// some malformed streams (a lone ",": yaml-cpp #1040, fixed in 0.8.1 by #1319; found by
// tests/fuzz/fuzz_config.cpp). The parser is asked for two documents at most.
YAML::Node load_one_document(const std::string& path, const std::string& text) {
  YAML::Node root = YAML::Load(text);
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts documents;
  for (int i = 0; i < 2 && parser.HandleNextDocument(documents); ++i) {
  }
  if (documents.starts.size() > 1) {
    throw Error(path + ":" + std::to_string(documents.starts[1].line + 1) +
                    ": a second YAML document, or text outside the first: a config is one document (no ---)",
                /*bad_input=*/true);
  }
  return root;
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

// The model's ranges and rules (validate, as its modules run it), the job's ranges, then what depends on
// the layout and the world size.
void check_consistency(const Config& c, const Places& p, int world_size) {
  try {
    validate(c.model);
    RangeCheck check;
    visit_job_options(c, check);
  } catch (const OptionError& e) {
    p.fail(e.key(), e.detail());
  }
  const int64_t ep = c.parallel.expert_parallel_size;
  if (c.data.seq_len > c.model.max_seq_len) {
    p.fail("data.seq_len", "(" + std::to_string(c.data.seq_len) + ") must not exceed model.max_seq_len (" +
                               std::to_string(c.model.max_seq_len) + ")");
  }
  if (c.model.is_moe()) {
    const int64_t E = c.model.moe.router.num_experts;
    if (E % ep != 0) {
      p.fail("parallel.expert_parallel_size",
             "(" + std::to_string(ep) + ") must divide moe.num_experts (" + std::to_string(E) + ")");
    }
    if (const std::string why = groups_misfit_ranks(c.model.moe.router, ep); !why.empty()) p.fail("moe.num_groups", why);
  } else if (ep != 1) {
    p.fail("parallel.expert_parallel_size", "(" + std::to_string(ep) + ") must be 1 for a dense model (moe.num_experts 0)");
  }
  if (const std::string why = backend_unavailable(c.parallel.backend); !why.empty()) p.fail("parallel.backend", why);
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

Config load_config(const std::string& path, const std::vector<std::string>& overrides, int world_size) {
  MOE_INPUT_CHECK(!std::filesystem::is_directory(path), "cannot read config file ", path, ": it is a directory");
  std::string text;
  {
    std::ifstream is(path, std::ios::binary);
    MOE_INPUT_CHECK(is.good(), "cannot read config file ", path);
    text.assign(std::istreambuf_iterator<char>(is), std::istreambuf_iterator<char>());
  }
  return parse_config(text, path, overrides, world_size);
}

Config parse_config(const std::string& text, const std::string& path, const std::vector<std::string>& overrides,
                    int world_size) {
  Config config;
  config.source = path;
  Schema schema(config);
  Places places(path);
  YAML::Node root;
  try {
    root = load_one_document(path, text);
  } catch (const YAML::DeepRecursion& e) {  // its own text says "bad file"
    throw Error(path + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: nested too deeply", true);
  } catch (const YAML::Exception& e) {
    throw Error(path + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg, /*bad_input=*/true);
  }
  if (!root.IsNull()) {
    if (!root.IsMap()) throw Error(line_of(path, root) + ": expected a mapping of sections (model:, moe:, ...)", true);
    // YAML forbids a key twice in one mapping, but yaml-cpp keeps both: the later would silently win.
    std::map<std::string, std::string> seen;  // section or key -> where it was first given
    const auto once = [&](const std::string& what, const YAML::Node& node) {
      const std::string here = line_of(path, node);
      const auto [it, fresh] = seen.emplace(what, here);
      if (!fresh) throw Error(here + ": " + what + " is given twice (first at " + it->second + ")", /*bad_input=*/true);
    };
    // Every value of a config is one line: a quote left open would swallow the keys after it.
    std::vector<std::string> lines;
    {
      std::istringstream is(text);
      for (std::string line; std::getline(is, line);) lines.push_back(line);
    }
    const auto one_line = [&](const std::string& key, const YAML::Node& key_node) {
      const auto l = static_cast<size_t>(key_node.Mark().line);
      if (l >= lines.size()) return;
      const std::string& text = lines[l];
      const size_t colon = text.find(':', static_cast<size_t>(key_node.Mark().column));
      const size_t start = colon == std::string::npos ? colon : text.find_first_not_of(" \t", colon + 1);
      if (start == std::string::npos || (text[start] != '"' && text[start] != '\'')) return;
      bool closed = false;
      for (size_t i = start + 1; i < text.size() && !closed; ++i) {
        if (text[start] == '"' && text[i] == '\\') {
          ++i;  // an escaped character
        } else {
          closed = text[i] == text[start];
        }
      }
      if (!closed) {
        throw Error(line_of(path, key_node) + ": " + key + ": the quote opened on this line is not closed on it " +
                        "(a config value is one line)",
                    /*bad_input=*/true);
      }
    };
    for (const auto& section : root) {
      const std::string name = key_name(path, section.first);
      once(name, section.first);
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
        const std::string key = name + "." + key_name(path, item.first);
        once(key, item.first);
        one_line(key, item.first);
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
