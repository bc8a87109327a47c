#include "train/generation.h"

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include "core/check.h"
#include "train/evaluation.h"

namespace moe {

int64_t sample_token(const at::Tensor& logits, const SamplingOptions& o, at::Generator& generator) {
  const at::Tensor l = logits.detach().to(at::kCPU, at::kDouble).reshape({-1});
  if (o.temperature == 0) return l.argmax().item<int64_t>();
  const at::Tensor probs = at::softmax(l / o.temperature, 0);
  // Nucleus: the fewest most likely tokens whose probabilities reach top_p (at least one), renormalised.
  const auto [sorted, order] = at::sort(probs, 0, /*descending=*/true);
  const at::Tensor before = sorted.cumsum(0) - sorted;  // probability of the tokens ranked above each
  const at::Tensor kept = sorted.masked_fill(before >= o.top_p, 0.0);
  const int64_t pick = at::multinomial(kept / kept.sum(), 1, /*replacement=*/false, generator).item<int64_t>();
  return order[pick].item<int64_t>();
}

std::vector<int64_t> generate(Transformer& model, const std::vector<int64_t>& prompt, const SamplingOptions& o,
                              Communicator& world, bool use_cache) {
  const TransformerOptions& mo = model->options();
  MOE_CHECK(!prompt.empty(), "generate: the prompt is empty");
  MOE_CHECK(static_cast<int64_t>(prompt.size()) < mo.max_seq_len, "generate: the prompt's ", prompt.size(),
            " tokens leave no room in model.max_seq_len (", mo.max_seq_len, ")");
  at::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const at::Device device = model->parameter_records().front().tensor.device();
  at::Generator generator = at::detail::createCPUGenerator(o.seed);
  std::vector<int64_t> sequence = prompt, out;
  std::vector<KVCache> caches;
  at::Tensor next_input = at::tensor(prompt, at::kLong).view({1, -1});
  while (static_cast<int64_t>(out.size()) < o.max_new_tokens && static_cast<int64_t>(sequence.size()) < mo.max_seq_len) {
    const at::Tensor input = use_cache ? next_input : at::tensor(sequence, at::kLong).view({1, -1});
    const at::Tensor logits = model->forward(input.to(device), use_cache ? &caches : nullptr).logits;
    at::Tensor token = at::full({1}, world.rank() == 0 ? sample_token(logits[0][-1], o, generator) : 0, at::kLong);
    world.broadcast(token, 0);
    const int64_t t = token.item<int64_t>();
    sequence.push_back(t);
    out.push_back(t);
    next_input = token.view({1, 1});
  }
  model->train(was_training);
  return out;
}

std::string generate_from_checkpoint(const std::string& dir, const std::string& prompt, const SamplingOptions& o,
                                     Communicator& world, int local_rank) {
  InferenceModel m = load_for_inference(dir, world, local_rank, [&](const Config& config) {
    MOE_INPUT_CHECK(!prompt.empty(), "generate: --prompt is empty");
    const int64_t V = config.model.vocab_size;
    MOE_INPUT_CHECK(V <= 256, "generate: ", dir, "/config.yaml has model.vocab_size ", V, ", a model of another "
                    "tokenizer than moe's byte-level one (256 tokens, `moe tokenize`)");
    for (size_t i = 0; i < prompt.size(); ++i) {
      const auto byte = static_cast<unsigned char>(prompt[i]);
      MOE_INPUT_CHECK(byte < V, "generate: the prompt's byte ", static_cast<int>(byte), " (at offset ", i,
                      ") is outside the vocabulary of ", dir, "/config.yaml (model.vocab_size ", V, ")");
    }
    MOE_INPUT_CHECK(static_cast<int64_t>(prompt.size()) < config.model.max_seq_len, "generate: the prompt's ",
                    prompt.size(), " bytes leave no room in model.max_seq_len (", config.model.max_seq_len, ") of ",
                    dir, "/config.yaml");
    MOE_INPUT_CHECK(o.max_new_tokens >= 1 && o.temperature >= 0 && o.top_p > 0 && o.top_p <= 1,
                    "generate: --max-new-tokens must be at least 1, --temperature at least 0, --top-p in (0, 1]");
  });
  std::vector<int64_t> tokens;
  for (unsigned char c : prompt) tokens.push_back(c);
  const std::vector<int64_t> generated = generate(m.model, tokens, o, world);
  if (static_cast<int64_t>(generated.size()) < o.max_new_tokens) {
    spdlog::info("generate: stopped after {} tokens at model.max_seq_len ({})", generated.size(),
                 m.config.model.max_seq_len);
  }
  std::string text;
  for (int64_t t : generated) text.push_back(static_cast<char>(t));  // byte-level: token t is byte t
  return text;
}

}  // namespace moe
