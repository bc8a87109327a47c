#include "core/router.h"

#include <cmath>
#include <limits>

#include "core/check.h"
#include "parallel/communicator.h"

namespace moe {

RouterImpl::RouterImpl(const TransformerOptions& options, Communicator* aux_group)
    : options_(options.moe.router), aux_group_(aux_group) {
  validate(options);
  MOE_CHECK(options.is_moe(), "router: moe.num_experts (", options_.num_experts, ") must be positive");
  weight = register_parameter("weight",
                              at::randn({options_.num_experts, options.hidden_size}, at::kFloat).mul_(options.init_std));
  expert_bias = register_buffer("expert_bias", at::zeros({options_.num_experts}, at::kFloat));
}

at::Tensor RouterImpl::gate(const at::Tensor& x_TD) {
  at::Tensor x = x_TD.to(at::kFloat);
  if (is_training() && options_.jitter_eps > 0) {
    x = x * at::empty_like(x).uniform_(1.0 - options_.jitter_eps, 1.0 + options_.jitter_eps);
  }
  return at::linear(x, weight);
}

int64_t RouterImpl::capacity(int64_t num_tokens, std::optional<double> factor) const {
  if (!factor) return -1;
  return static_cast<int64_t>(std::ceil(*factor * static_cast<double>(num_tokens * options_.top_k) /
                                        static_cast<double>(options_.num_experts)));
}

at::Tensor capacity_keep_mask(const at::Tensor& expert_ids_TK, const at::Tensor& probs_TK,
                              int64_t num_experts, int64_t capacity, DropPolicy policy) {
  at::NoGradGuard no_grad;
  const at::Tensor ids = expert_ids_TK.reshape({-1});
  // Order assignments by expert and, within an expert, by priority; stable sorts keep the flat
  // (token-major) order as the tie-break, which is the `position` priority itself.
  at::Tensor order;
  if (policy == DropPolicy::kProbability) {
    order = std::get<1>(at::sort(probs_TK.reshape({-1}).neg(), /*stable=*/true, 0, false));
    order = order.index_select(0, std::get<1>(at::sort(ids.index_select(0, order), true, 0, false)));
  } else {
    order = std::get<1>(at::sort(ids, /*stable=*/true, 0, false));
  }
  const at::Tensor sorted_ids = ids.index_select(0, order);
  const at::Tensor counts = at::bincount(ids, {}, num_experts);
  const at::Tensor starts = counts.cumsum(0) - counts;
  const at::Tensor rank_in_expert =
      at::arange(ids.numel(), ids.options()) - starts.index_select(0, sorted_ids);
  at::Tensor keep = at::empty({ids.numel()}, ids.options().dtype(at::kBool));
  keep.index_put_({order}, rank_in_expert < capacity);
  return keep.view(expert_ids_TK.sizes());
}

namespace {

// DeepSeek-V3's node-limited routing: each token's selection scores outside its group_topk best groups
// (ranked by the sum of their two best scores) become -inf, so that top-k cannot reach them.
at::Tensor limit_to_top_groups(const at::Tensor& selection_TE, int64_t groups, int64_t group_topk) {
  const int64_t T = selection_TE.size(0), per_group = selection_TE.size(1) / groups;
  const at::Tensor by_group = selection_TE.view({T, groups, per_group});
  const at::Tensor group_scores =
      std::get<0>(at::topk(by_group, std::min<int64_t>(2, per_group), -1, true, false)).sum(-1);
  const at::Tensor chosen = std::get<1>(at::topk(group_scores, group_topk, -1, true, false));
  const at::Tensor outside = at::ones({T, groups}, selection_TE.options().dtype(at::kBool)).scatter_(1, chosen, false);
  return by_group.masked_fill(outside.unsqueeze(-1), -std::numeric_limits<float>::infinity()).view({T, -1});
}

}  // namespace

Routing RouterImpl::route(const at::Tensor& logits_TE, bool training, int64_t tokens_per_sequence) const {
  const auto& o = options_;
  MOE_CHECK(logits_TE.dim() == 2 && logits_TE.size(1) == o.num_experts, "router: logits must be [T, ",
            o.num_experts, "], got ", logits_TE.sizes());
  const int64_t T = logits_TE.size(0), E = o.num_experts, K = o.top_k;
  const at::Tensor logits = logits_TE.to(at::kFloat);
  const at::Tensor scores =
      o.score_function == ScoreFunction::kSoftmax ? at::softmax(logits, -1) : at::sigmoid(logits);

  Routing r;
  {
    at::NoGradGuard no_grad;
    at::Tensor selection = o.bias_update_rate > 0 ? scores + expert_bias : scores;
    if (o.num_groups > 0) selection = limit_to_top_groups(selection, o.num_groups, o.group_topk);
    r.expert_ids_TK = std::get<1>(at::topk(selection, K, -1, /*largest=*/true, /*sorted=*/true));
    r.routed_per_expert_E = at::bincount(r.expert_ids_TK.reshape({-1}), {}, E);
  }
  // Renormalised weights s_k / sum_j s_j, computed as a softmax over the chosen log-scores: the same
  // value, but with k=1 it is exactly 1 with exactly zero gradient, where s/s leaves float32 noise.
  at::Tensor probs;
  if (o.normalize_topk) {
    const at::Tensor log_scores =
        o.score_function == ScoreFunction::kSoftmax ? at::log_softmax(logits, -1) : at::log_sigmoid(logits);
    probs = at::softmax(log_scores.gather(1, r.expert_ids_TK), -1);
  } else {
    probs = scores.gather(1, r.expert_ids_TK);
  }
  if (o.routed_scaling_factor != 1.0) probs = probs * o.routed_scaling_factor;

  // Switch/GShard balance loss: f_i is the fraction of assignments (before capacity) sent to expert i,
  // P_i the mean score of expert i (sigmoid scores normalised per token first, as DeepSeek-V3 does).
  // With perfect balance it is 1.
  const at::Tensor score_dist =
      o.score_function == ScoreFunction::kSoftmax ? scores : scores / (scores.sum(-1, true) + 1e-20);
  if (o.aux_loss_scope == AuxLossScope::kSequence) {
    const int64_t S = tokens_per_sequence > 0 ? tokens_per_sequence : std::max<int64_t>(T, 1);
    MOE_CHECK(T % S == 0, "router: ", T, " tokens are not sequences of ", S);
    const int64_t B = T / S;
    at::Tensor routed_BE;
    {
      at::NoGradGuard no_grad;
      routed_BE = at::zeros({B, E}, logits.options()).scatter_add_(
          1, r.expert_ids_TK.view({B, S * K}), at::ones({B, S * K}, logits.options()));
    }
    const at::Tensor f = routed_BE / static_cast<double>(S * K);
    const at::Tensor P = score_dist.view({B, S, E}).mean(1);
    r.aux_loss = B > 0 ? (f * P).sum(-1).mean() * static_cast<double>(E) : logits.sum();
  } else {
    at::Tensor routed = r.routed_per_expert_E;
    if (o.aux_loss_scope == AuxLossScope::kGlobal && aux_group_ && aux_group_->size() > 1) {
      routed = routed.clone();
      aux_group_->all_reduce(routed, ReduceOp::kSum);
    }
    const at::Tensor f = routed.to(at::kFloat) / routed.sum().clamp_min(1).to(at::kFloat);
    const at::Tensor P = score_dist.sum(0) / static_cast<double>(std::max<int64_t>(T, 1));
    r.aux_loss = (f * P).sum() * static_cast<double>(E);
  }
  r.z_loss = T > 0 ? at::logsumexp(logits, -1).square().mean() : logits.sum();
  {
    at::NoGradGuard no_grad;
    const at::Tensor q = score_dist.detach();
    r.entropy = T > 0 ? q.mul(q.clamp_min(1e-30).log()).sum(-1).mean().neg() : at::zeros({}, q.options());
  }

  r.capacity = capacity(T, training ? o.capacity_factor : o.eval_capacity_factor);
  if (r.capacity >= 0) {
    r.keep_TK = capacity_keep_mask(r.expert_ids_TK, probs.detach(), E, r.capacity, o.drop_policy);
    probs = probs * r.keep_TK.to(probs.scalar_type());
  } else {
    r.keep_TK = at::ones({T, K}, r.expert_ids_TK.options().dtype(at::kBool));
  }
  r.probs_TK = probs;
  {
    at::NoGradGuard no_grad;
    r.tokens_per_expert_E = at::bincount(r.expert_ids_TK.masked_select(r.keep_TK), {}, E);
    // The routing's one host sync: the kept assignments per expert size the permutation and the expert
    // GEMMs; the count of tokens with non-finite logits rides on the same copy.
    const at::Tensor nonfinite = at::isfinite(logits_TE).logical_not().any(1).sum().view({1});
    const at::Tensor host = at::cat({nonfinite, r.tokens_per_expert_E}).to(at::kCPU, at::kLong).contiguous();
    const int64_t* h = host.data_ptr<int64_t>();
    MOE_CHECK(h[0] == 0, "router: ", h[0], " of ", T,
              " tokens have NaN or Inf router logits (check the input activations)");
    r.tokens_per_expert.assign(h + 1, h + 1 + E);
    r.num_dropped = T * K;
    for (int64_t n : r.tokens_per_expert) r.num_dropped -= n;
  }
  r.loss = r.aux_loss * o.aux_loss_coeff + r.z_loss * o.z_loss_coeff;
  return r;
}

void RouterImpl::update_expert_bias(const at::Tensor& load_E) {
  if (options_.bias_update_rate <= 0) return;
  at::NoGradGuard no_grad;
  const at::Tensor load = load_E.to(at::kDouble);
  expert_bias.add_((load.mean() - load).sign().to(at::kFloat), options_.bias_update_rate);
}

}  // namespace moe
