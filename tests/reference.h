#pragma once
// Naive float64 references: a loop over tokens and their chosen experts, with top-k, capacity and the
// losses written as plain loops. Built from autograd-tracked double scalars and vectors so the tests can
// compare gradients too. Deliberately shares no code with core/.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <vector>

#include "core/router.h"

namespace moe::ref {

struct Weights {  // float64 copies of a layer's parameters, [E, D] and [E, D, F], [E, F, D]
  at::Tensor gate, w1, w3, w2, bias;
};

struct Result {
  at::Tensor y;                                  // [T, D] float64
  at::Tensor aux_loss, z_loss;                   // float64 scalars, unscaled
  std::vector<std::vector<int64_t>> expert_ids;  // [T][K]
  std::vector<std::vector<bool>> keep;           // [T][K]
  std::vector<int64_t> tokens_per_expert;        // after capacity
  int64_t num_dropped = 0;
};

inline at::Tensor expert_ffn(const at::Tensor& x_D, const Weights& w, int64_t e, bool swiglu) {
  const at::Tensor h1 = at::matmul(x_D, w.w1[e]);
  const at::Tensor h = swiglu ? (h1 * at::sigmoid(h1)) * at::matmul(x_D, w.w3[e])
                              : 0.5 * h1 * (1.0 + at::erf(h1 / std::sqrt(2.0)));
  return at::matmul(h, w.w2[e]);
}

// capacity_factor: the factor in force (nullopt dropless).
// tokens_per_sequence: the length of the sequences x_TD holds (0: one), for the sequence-scope loss.
inline Result moe_layer(const at::Tensor& x_TD, const Weights& w, const RouterOptions& o,
                        std::optional<double> capacity_factor, bool swiglu = true, int64_t tokens_per_sequence = 0) {
  const int64_t T = x_TD.size(0), E = o.num_experts, K = o.top_k;
  Result r;
  std::vector<at::Tensor> scores(T), logits(T);
  std::vector<std::vector<at::Tensor>> probs(T);
  for (int64_t t = 0; t < T; ++t) {
    logits[t] = at::matmul(w.gate, x_TD[t]);
    if (o.score_function == ScoreFunction::kSoftmax) {
      const at::Tensor ex = at::exp(logits[t] - logits[t].max().detach());
      scores[t] = ex / ex.sum();
    } else {
      scores[t] = 1.0 / (1.0 + at::exp(-logits[t]));
    }
    std::vector<double> sel(E);
    for (int64_t e = 0; e < E; ++e) {
      sel[e] = scores[t][e].item<double>() + (o.bias_update_rate > 0 ? w.bias[e].item<double>() : 0.0);
    }
    if (o.num_groups > 0) {  // outside the token's group_topk best groups (by their two best), unreachable
      const int64_t per = E / o.num_groups;
      std::vector<double> group_score(o.num_groups);
      for (int64_t g = 0; g < o.num_groups; ++g) {
        std::vector<double> members(sel.begin() + g * per, sel.begin() + (g + 1) * per);
        std::sort(members.rbegin(), members.rend());
        group_score[g] = members[0] + (per > 1 ? members[1] : 0.0);
      }
      std::vector<bool> chosen(o.num_groups, false);
      for (int64_t n = 0; n < o.group_topk; ++n) {
        int64_t best = -1;
        for (int64_t g = 0; g < o.num_groups; ++g) {
          if (!chosen[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
        }
        chosen[best] = true;
      }
      for (int64_t e = 0; e < E; ++e) {
        if (!chosen[e / per]) sel[e] = -INFINITY;
      }
    }
    std::vector<int64_t> ids;
    std::vector<bool> used(E, false);
    for (int64_t k = 0; k < K; ++k) {  // repeated arg-max; ties to the lower expert id
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        if (!used[e] && (best < 0 || sel[e] > sel[best])) best = e;
      }
      used[best] = true;
      ids.push_back(best);
    }
    at::Tensor sum = at::zeros({}, x_TD.options());
    for (int64_t k = 0; k < K; ++k) sum = sum + scores[t][ids[k]];
    for (int64_t k = 0; k < K; ++k) {
      probs[t].push_back((o.normalize_topk ? scores[t][ids[k]] / sum : scores[t][ids[k]]) * o.routed_scaling_factor);
    }
    r.expert_ids.push_back(ids);
    r.keep.emplace_back(K, true);
  }

  if (capacity_factor) {
    const auto cap = static_cast<int64_t>(std::ceil(*capacity_factor * double(T * K) / double(E)));
    for (int64_t e = 0; e < E; ++e) {
      std::vector<std::pair<int64_t, int64_t>> slots;  // (t, k) routed to e, in token order
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t k = 0; k < K; ++k) {
          if (r.expert_ids[t][k] == e) slots.emplace_back(t, k);
        }
      }
      if (o.drop_policy == DropPolicy::kProbability) {
        std::stable_sort(slots.begin(), slots.end(), [&](const std::pair<int64_t, int64_t>& a, const std::pair<int64_t, int64_t>& b) {
          return probs[a.first][a.second].item<double>() > probs[b.first][b.second].item<double>();
        });
      }
      for (size_t i = static_cast<size_t>(std::max<int64_t>(cap, 0)); i < slots.size(); ++i) {
        r.keep[slots[i].first][slots[i].second] = false;
      }
    }
  }

  r.tokens_per_expert.assign(E, 0);
  std::vector<at::Tensor> rows;
  for (int64_t t = 0; t < T; ++t) {
    at::Tensor y = at::zeros({x_TD.size(1)}, x_TD.options());
    for (int64_t k = 0; k < K; ++k) {
      if (!r.keep[t][k]) {
        r.num_dropped++;
        continue;
      }
      r.tokens_per_expert[r.expert_ids[t][k]]++;
      y = y + probs[t][k] * expert_ffn(x_TD[t], w, r.expert_ids[t][k], swiglu);
    }
    rows.push_back(y);
  }
  r.y = at::stack(rows);

  // The balance loss over each span of tokens (the whole batch, or each sequence), then their mean.
  const int64_t S = o.aux_loss_scope == AuxLossScope::kSequence && tokens_per_sequence > 0 ? tokens_per_sequence : T;
  at::Tensor aux = at::zeros({}, x_TD.options()), z = at::zeros({}, x_TD.options());
  for (int64_t t0 = 0; t0 < T; t0 += S) {
    for (int64_t e = 0; e < E; ++e) {
      at::Tensor P = at::zeros({}, x_TD.options());
      int64_t count = 0;
      for (int64_t t = t0; t < t0 + S; ++t) {
        P = P + scores[t][e] / scores[t].sum();
        for (int64_t k = 0; k < K; ++k) count += r.expert_ids[t][k] == e;
      }
      aux = aux + (double(count) / double(S * K)) * (P / double(S));
    }
  }
  r.aux_loss = aux * double(E) / double(T / S);
  for (int64_t t = 0; t < T; ++t) z = z + at::log(at::exp(logits[t]).sum()).square();
  r.z_loss = z / double(T);
  return r;
}

}  // namespace moe::ref
