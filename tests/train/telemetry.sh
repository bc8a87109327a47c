#!/usr/bin/env bash
# The MoE telemetry in metrics.jsonl ("moe" records, docs/cli.md), checked against the run's own per-step
# records and against what must hold by construction: tiny on 2 ranks (EP 2) with a capacity that drops
# and the aux-loss-free bias on, flushed every 2 steps (and after step 1), and on 1 rank, where nothing is
# exchanged.
source "$(dirname "$0")/lib.sh"
make_test_data
args=("$SRC/configs/tiny.yaml" "${DATA[@]}" --set train.steps=6 --set train.log_every=2 --set train.eval_every=0
      --set moe.capacity_factor=1.0 --set moe.bias_update_rate=0.01)
moe_train 2 "${args[@]}" --set parallel.expert_parallel_size=2 --set train.out_dir="$WORK/ep2" 2>"$WORK/ep2.log" ||
  { cat "$WORK/ep2.log"; fail "run on 2 ranks"; }
moe_train 1 "${args[@]}" --set train.micro_batch_size=4 --set train.out_dir="$WORK/ep1" 2>"$WORK/ep1.log" ||
  { cat "$WORK/ep1.log"; fail "run on 1 rank"; }
"$PYTHON" - "$WORK/ep2/metrics.jsonl" "$WORK/ep1/metrics.jsonl" <<'PY' || fail "telemetry"
import json, math, sys

E, K, TOKENS, RATE = 4, 2, 8 * 32, 0.01  # tiny: 4 experts top-2, 8 sequences of 32 a step
for path, world in ((sys.argv[1], 2), (sys.argv[2], 1)):
    records = [json.loads(line) for line in open(path)]
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    moe = [r for r in records if r["kind"] == "moe"]
    covered, bias_before = [], [[0.0] * E, [0.0] * E]
    for m in moe:
        steps = range(m["first_step"], m["step"] + 1)
        covered += steps
        assert len(m["layers"]) == 2 and [l["layer"] for l in m["layers"]] == [0, 1], m["layers"]
        for i, layer in enumerate(m["layers"]):
            kept = [sum(train[s]["tokens_per_expert"][i][e] for s in steps) for e in range(E)]
            assert layer["kept"] == kept, (layer["kept"], kept)
            routed = layer["routed"]
            assert sum(routed) == len(steps) * TOKENS * K, (sum(routed), len(steps))
            assert all(k <= r for k, r in zip(kept, routed)), (kept, routed)
            assert math.isclose(layer["dropped_fraction"], 1 - sum(kept) / sum(routed), abs_tol=1e-12)
            assert math.isclose(layer["overload"], max(routed) / (sum(routed) / E), rel_tol=1e-12)
            assert 0 < layer["router_entropy"] <= math.log(E) + 1e-6, layer["router_entropy"]
            # A one-step interval's bias is the one before it moved by RATE * sign(mean load - load).
            bias = layer["expert_bias"]
            if len(steps) == 1:
                mean = sum(routed) / E
                want = [b + RATE * ((r < mean) - (r > mean)) for b, r in zip(bias_before[i], routed)]
                assert all(math.isclose(b, w, abs_tol=1e-6) for b, w in zip(bias, want)), (bias, want)
            assert all(abs(b) <= RATE * m["step"] + 1e-6 for b in bias), bias
            bias_before[i] = bias
        # The layers' losses average to the train records' (means over layers, micro-batches, ranks).
        for key in ("aux_loss", "z_loss"):
            per_layer = sum(l[key] for l in m["layers"]) / len(m["layers"])
            per_step = sum(train[s][key] for s in steps) / len(steps)
            assert math.isclose(per_layer, per_step, rel_tol=1e-9), (key, per_layer, per_step)
        # And the drops to theirs (every step routes the same number of assignments).
        dropped = sum(sum(l["routed"]) * l["dropped_fraction"] for l in m["layers"])
        assignments = sum(sum(l["routed"]) for l in m["layers"])
        per_step = sum(train[s]["dropped_fraction"] for s in steps) / len(steps)
        assert math.isclose(dropped / assignments, per_step, rel_tol=1e-9), (dropped / assignments, per_step)
        ranks = m["ranks"]
        assert [r["rank"] for r in ranks] == list(range(world)), ranks
        sent = sum(r["a2a_bytes_sent"] for r in ranks)
        assert sent == sum(r["a2a_bytes_received"] for r in ranks), ranks
        if world == 1:
            assert sent == 0 and all(r["a2a_seconds"] == 0 for r in ranks), ranks
        else:
            assert all(r["a2a_bytes_sent"] > 0 and 0 < r["a2a_share"] < 1 for r in ranks), ranks
    assert covered == sorted(train), (covered, sorted(train))  # every step in exactly one interval
    for r in train.values():
        assert math.isclose(r["grad_norm_dense"] ** 2 + r["grad_norm_expert"] ** 2, r["grad_norm"] ** 2,
                            rel_tol=1e-12), r
print("telemetry: per-layer counts, drops, overload, losses, bias and the exchanges' bytes consistent, "
      "on 2 ranks and on 1")
PY
echo "telemetry: checked"
