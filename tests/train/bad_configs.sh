#!/usr/bin/env bash
# The bad-input suite: bad configs and overrides, token files, output directories and command lines. Each
# must stop moe before any work with exit code 2 and one message naming the file (or the --set, the
# option), the key and its line; nothing written. Bad checkpoints: tests/train/checkpoint.sh corrupt.
source "$(dirname "$0")/lib.sh"
make_test_data
n=0
# check NAME EXPECTED [--set ...] < YAML: the YAML is written to NAME.yaml; the message must contain
# EXPECTED (with FILE standing for the config's path).
check() {
  local name=$1 expected=$2
  shift 2
  local file="$WORK/$name.yaml"
  cat > "$file"
  local rc=0 existed=0
  [ ! -e "$WORK/out-$name" ] || existed=1
  "$MOE" train "$file" "${DATA[@]}" --set train.out_dir="$WORK/out-$name" "$@" > "$WORK/out" 2>&1 || rc=$?
  expected=${expected//FILE/$file}
  [ "$rc" -eq 2 ] || { cat "$WORK/out"; fail "$name: exit code $rc, expected 2"; }
  grep -qF -- "$expected" "$WORK/out" || { cat "$WORK/out"; fail "$name: message lacks '$expected'"; }
  [ "$(grep -c error "$WORK/out")" -eq 1 ] || { cat "$WORK/out"; fail "$name: expected exactly one error line"; }
  [ "$existed" = 1 ] || [ ! -e "$WORK/out-$name" ] || fail "$name: wrote a run directory"
  n=$((n + 1))
}
MODEL='model:
  hidden_size: 32
  num_layers: 1
  num_attention_heads: 2
  ffn_hidden_size: 32
  max_seq_len: 16
data:
  seq_len: 16
train:
  micro_batch_size: 1
  global_batch_size: 2'

check unknown_key "FILE:2: model.hiden_size is not a config key (did you mean model.hidden_size?)" <<'Y'
model:
  hiden_size: 64
Y
check unknown_section "FILE:1: optimiser is not a config section" <<'Y'
optimiser:
  lr: 1
Y
check wrong_type_int "FILE:3: model.num_layers expected an integer, got 'four'" <<'Y'
model:
  hidden_size: 64
  num_layers: four
Y
check float_for_int "FILE:2: moe.top_k expected an integer, got '1.5'" <<'Y'
moe:
  top_k: 1.5
Y
check wrong_type_bool "FILE:2: moe.normalize_topk expected true or false, got 'maybe'" <<'Y'
moe:
  normalize_topk: maybe
Y
check list_for_number "FILE:2: train.lr expected a number, got a list" <<'Y'
train:
  lr: [1, 2]
Y
check bad_choice "FILE:2: moe.score_function must be one of softmax | sigmoid, got 'relu'" <<'Y'
moe:
  score_function: relu
Y
check negative_lr "FILE:3: train.lr must be > 0, got -0.001" <<'Y'
train:
  steps: 5
  lr: -0.001
Y
check zero_layers "FILE:2: model.num_layers must be at least 1, got 0" <<'Y'
model:
  num_layers: 0
Y
check capacity_negative "FILE:2: moe.capacity_factor must be >= 0 or null, got -0.5" <<'Y'
moe:
  capacity_factor: -0.5
Y
check beta_one "FILE:2: train.beta2 must be >= 0 and < 1, got 1" <<'Y'
train:
  beta2: 1
Y
check heads_not_dividing "FILE:3: model.num_attention_heads (6) must divide model.hidden_size (64)" <<'Y'
model:
  hidden_size: 64
  num_attention_heads: 6
Y
check kv_not_dividing "FILE:3: model.num_kv_heads (3) must divide model.num_attention_heads (4)" <<'Y'
model:
  num_attention_heads: 4
  num_kv_heads: 3
  hidden_size: 64
Y
check topk_over_experts "FILE:3: moe.top_k (5) must not exceed moe.num_experts (4)" <<'Y'
moe:
  num_experts: 4
  top_k: 5
Y
check ep_not_dividing_experts "FILE:4: parallel.expert_parallel_size (3) must divide moe.num_experts (4)" <<'Y'
moe:
  num_experts: 4
parallel:
  expert_parallel_size: 3
Y
check groups_straddle_ranks "FILE:4: moe.num_groups (3) groups straddle the edges of 4 expert-parallel ranks" <<'Y'
moe:
  num_experts: 12
  top_k: 2
  num_groups: 3
  group_topk: 1
parallel:
  expert_parallel_size: 4
Y
check group_topk_without_groups "FILE:3: moe.group_topk (2) limits the groups of a token, but moe.num_groups is 0" <<'Y'
moe:
  num_experts: 4
  group_topk: 2
Y
check ep_not_dividing_world "FILE:4: parallel.expert_parallel_size (2) must divide the world size (1)" <<'Y'
moe:
  num_experts: 4
parallel:
  expert_parallel_size: 2
Y
check batch_not_divisible "FILE:3: train.global_batch_size (7) must be a multiple of train.micro_batch_size (2) x world size (1)" <<'Y'
train:
  micro_batch_size: 2
  global_batch_size: 7
Y
check seq_over_max "FILE:4: data.seq_len (512) must not exceed model.max_seq_len (256)" <<'Y'
model:
  max_seq_len: 256
data:
  seq_len: 512
Y
check no_moe_layer "FILE:5: moe.layer_freq (8) leaves no MoE layer in a model of 4 layers" <<'Y'
model:
  num_layers: 4
moe:
  num_experts: 4
  layer_freq: 8
Y
check dense_with_ep "FILE:2: parallel.expert_parallel_size (2) must be 1 for a dense model" <<'Y'
parallel:
  expert_parallel_size: 2
Y
if [[ "$("$MOE" --version)" != *nccl* ]]; then
  check nccl_not_built "FILE:2: parallel.backend nccl: this moe was built without NCCL" <<'Y'
parallel:
  backend: nccl
Y
fi
check min_lr_over_lr "FILE:3: train.min_lr (0.01) must not exceed train.lr (0.001)" <<'Y'
train:
  lr: 0.001
  min_lr: 0.01
Y
check yaml_syntax "FILE:3: not valid YAML" <<'Y'
model:
  hidden_size: 64
 num_layers: [
Y
check not_a_mapping "FILE:1: expected a mapping of sections" <<'Y'
- model
Y
mkdir -p "$WORK/out-nonempty_out_dir" && echo "mine" > "$WORK/out-nonempty_out_dir/config.yaml"
check nonempty_out_dir "train.out_dir $WORK/out-nonempty_out_dir is not empty (it holds config.yaml)" <<<"$MODEL"
[ "$(cat "$WORK/out-nonempty_out_dir/config.yaml")" = mine ] || fail "nonempty_out_dir: config.yaml was overwritten"
rm -r "$WORK/out-nonempty_out_dir"
check huge_hidden_size "FILE: the model's sizes give " --set model.hidden_size=1099511627776 <<<"$MODEL"
check huge_layers "FILE: model.num_layers (1099511627776) is beyond any machine" --set model.num_layers=1099511627776 <<<"$MODEL"
check over_memory "FILE: one rank needs " --set model.hidden_size=65536 --set model.num_attention_heads=512 <<<"$MODEL"
check unterminated_quote "FILE:3: train.out_dir: the quote opened on this line is not closed on it" <<'Y'
train:
  steps: 5
  out_dir: "runs/x
  lr: 0.1"
Y
check nan_lr "FILE:2: train.lr must be > 0, got nan" <<'Y'
train:
  lr: .nan
Y
check inf_init_std "FILE:2: model.init_std must be > 0, got inf" <<'Y'
model:
  init_std: .inf
Y
check map_for_path "FILE:2: data.train_path expected a string, got a mapping" <<'Y'
data:
  train_path: {a: 1}
Y
check null_for_int "FILE:2: model.num_layers expected an integer, got null" <<'Y'
model:
  num_layers:
Y
check int_overflow "FILE:2: model.hidden_size expected an integer, got '99999999999999999999'" <<'Y'
model:
  hidden_size: 99999999999999999999
Y
check negative_seed "FILE:2: train.seed expected a non-negative integer, got '-1'" <<'Y'
train:
  seed: -1
Y
check bad_token_dtype "FILE:2: data.dtype must be one of uint16 | uint32, got 'uint8'" <<'Y'
data:
  dtype: uint8
Y
check section_not_a_mapping "FILE:1: model must be a mapping of keys, got '5'" <<'Y'
model: 5
Y
check zero_micro_batch "train.micro_batch_size must be at least 1, got 0" --set train.micro_batch_size=0 <<<"$MODEL"
check eval_capacity_negative "moe.eval_capacity_factor must be >= 0 or null, got -1" --set moe.eval_capacity_factor=-1 <<<"$MODEL"
check huge_vocab "FILE: the model's sizes give " --set model.vocab_size=1099511627776 --set model.hidden_size=4194304 <<<"$MODEL"
check set_unknown_section "--set optimizer.lr=1: optimizer.lr is not a config key" --set optimizer.lr=1 <<<"$MODEL"
check set_list_value "--set train.lr=[1]: train.lr expected a number, got a list" --set "train.lr=[1]" <<<"$MODEL"
check set_nan "train.grad_clip must be >= 0, got nan" --set train.grad_clip=.nan <<<"$MODEL"
echo "not a directory" > "$WORK/out-out_dir_is_a_file"
check out_dir_is_a_file "train.out_dir $WORK/out-out_dir_is_a_file is not a directory" <<<"$MODEL"
rm "$WORK/out-out_dir_is_a_file"
check duplicate_key "FILE:3: model.hidden_size is given twice (first at FILE:2)" <<'Y'
model:
  hidden_size: 64
  hidden_size: 32
Y
check duplicate_section "FILE:3: train is given twice (first at FILE:1)" <<'Y'
train:
  steps: 5
train:
  lr: 0.1
Y
check second_document "FILE:3: a second YAML document, or text outside the first: a config is one document (no ---)" <<'Y'
model:
  hidden_size: 64
---
model:
  hidden_size: 32
Y
check set_unknown_key "--set moe.experts=4: moe.experts is not a config key (did you mean moe.num_experts?)" --set moe.experts=4 <<<"$MODEL"
check set_bad_value "--set train.lr=fast: train.lr expected a number, got 'fast'" --set train.lr=fast <<<"$MODEL"
check set_bad_shard_optimizer "--set train.shard_optimizer=maybe: train.shard_optimizer expected true or false, got 'maybe'" \
  --set train.shard_optimizer=maybe <<<"$MODEL"
check set_bad_overlap "--set train.overlap_grad_reduce=sometimes: train.overlap_grad_reduce expected true or false, got 'sometimes'" \
  --set train.overlap_grad_reduce=sometimes <<<"$MODEL"
check set_zero_bucket "--set train.grad_bucket_mb=0: train.grad_bucket_mb must be > 0 and < 1048576, got 0" \
  --set train.grad_bucket_mb=0 <<<"$MODEL"
check set_zero_overlap "--set moe.a2a_overlap_degree=0: moe.a2a_overlap_degree must be at least 1, got 0" \
  --set moe.a2a_overlap_degree=0 <<<"$MODEL"
MOE_HOST_MEMORY=lots check host_memory_policy "MOE_HOST_MEMORY=lots: expected retain (the default) or release" <<<"$MODEL"
check set_no_equals "--set train.lr: expected key.path=value" --set train.lr <<<"$MODEL"
check vocab_too_small "token file $WORK/train.bin: token " --set model.vocab_size=100 <<<"$MODEL"
check data_missing "cannot open token file $WORK/missing.bin" --set data.train_path="$WORK/missing.bin" <<<"$MODEL"
printf 'abc' > "$WORK/odd.bin"
check data_odd_size "token file $WORK/odd.bin: its size (3 bytes) is not a multiple of the element size (2 bytes for uint16)" \
  --set data.train_path="$WORK/odd.bin" <<<"$MODEL"
printf 'abcd' > "$WORK/short.bin"
check data_too_short "token file $WORK/short.bin holds 2 tokens, fewer than one window (17 tokens)" \
  --set data.train_path="$WORK/short.bin" <<<"$MODEL"
mkdir -p "$WORK/a_dir"
check data_is_a_directory "token file $WORK/a_dir is not a regular file (a directory)" \
  --set data.train_path="$WORK/a_dir" <<<"$MODEL"
# refused EXPECTED COMMAND...: exit code 2 and the message, for inputs other than a config's keys.
refused() {
  local expected=$1 rc=0
  shift
  "$@" > "$WORK/out" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] && grep -qF -- "$expected" "$WORK/out" || { cat "$WORK/out"; fail "$*: rc $rc, expected 2 and '$expected'"; }
  n=$((n + 1))
}
refused "cannot read config file $WORK/none.yaml" "$MOE" train "$WORK/none.yaml"
refused "cannot read config file $WORK/a_dir: it is a directory" "$MOE" train "$WORK/a_dir"
refused "cannot read $WORK/a_dir: it is a directory" "$MOE" tokenize "$WORK/a_dir" --out "$WORK/t.bin"
[ ! -e "$WORK/t.bin" ] && [ ! -e "$WORK/t.bin.tmp" ] || fail "tokenize of a directory wrote a file"
refused "--world: Value 1e400 not in range 1 to 1048576" "$MOE" plan "$WORK/none.yaml" --world 1e400
[ "$(wc -c < "$WORK/out")" -lt 200 ] || fail "the range error is $(wc -c < "$WORK/out") bytes long"
refused "--seq-len: Value 0 not in range 1 to" "$MOE" eval --checkpoint "$WORK" --data "$WORK/train.bin" --seq-len 0 --windows 1
: > "$WORK/empty.bin"
printf '%s\n' "$MODEL" > "$WORK/ok.yaml"
refused "token file $WORK/empty.bin holds 0 tokens" "$MOE" train "$WORK/ok.yaml" "${DATA[@]}" --set data.train_path="$WORK/empty.bin" \
  --set train.out_dir="$WORK/out-empty"
refused "config is required" "$MOE" train
refused "--dtype: float16 not in {float32,bfloat16}" "$MOE" export "$WORK" "$WORK/x" --dtype float16
refused "--dtype: int8 not in {uint16,uint32}" "$MOE" tokenize "$WORK/odd.bin" --out "$WORK/x.bin" --dtype int8
refused "dir is required" "$MOE" checkpoint verify
refused "The following argument was not expected: frobnicate" "$MOE" frobnicate
# Found by the fuzz target (tests/fuzz/fuzz_config.cpp): yaml-cpp's LoadAll looped for ever on a lone
# comma, and a complex key escaped as yaml-cpp's "bad conversion".
check lone_comma "FILE:1: a second YAML document, or text outside the first" <<<","
check complex_key "FILE:2: a key must be a plain name, got a list" <<'Y'
model:
  ? [hidden_size, num_layers]
  : 64
Y
"$PYTHON" -c "print('model: ' + '[' * 100000)" > "$WORK/deep.txt"
check deep_nesting "FILE:2: not valid YAML: nested too deeply" < "$WORK/deep.txt"
printf '\x00\xff\xfe garbage' > "$WORK/garbage.txt"
check binary_garbage "FILE:1: not valid YAML: unknown escape character" < "$WORK/garbage.txt"
# Aliases nine deep, each nine wide (a "billion laughs"): refused at its first key, nothing expanded.
"$PYTHON" -c "print('a: &a [x]'); [print(f'{chr(98 + i)}: &{chr(98 + i)} [' + ','.join(['*' + chr(97 + i)] * 9) + ']') for i in range(9)]" > "$WORK/laughs.txt"
check alias_bomb "FILE:1: a is not a config section" < "$WORK/laughs.txt"
check negative_steps "FILE:2: train.steps must be at least 1, got -1" <<'Y'
train:
  steps: -1
Y
printf 'abcdef' > "$WORK/six.bin"
check data_uint32_odd "token file $WORK/six.bin: its size (6 bytes) is not a multiple of the element size (4 bytes for uint32)" \
  --set data.dtype=uint32 --set data.train_path="$WORK/six.bin" --set data.val_path="$WORK/six.bin" <<<"$MODEL"
printf '%.0s0123456789' $(seq 30) > "$WORK/digits.txt"  # byte ids 48-57: all below a vocabulary of 100
"$MOE" tokenize "$WORK/digits.txt" --out "$WORK/digits.bin" 2>/dev/null
check val_vocab_too_small "token file $WORK/val.bin: token " --set model.vocab_size=100 \
  --set data.train_path="$WORK/digits.bin" <<<"$MODEL"
# A read-only output directory: a read-only mount (root ignores file modes), or mode 555 otherwise.
mkdir -p "$WORK/ro"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o ro moe-ro "$WORK/ro" 2>/dev/null; then
  trap 'umount "$WORK/ro" 2>/dev/null || true; rm -rf "$WORK"' EXIT
else
  chmod 555 "$WORK/ro"
fi
check out_dir_read_only "train.out_dir $WORK/ro/run: cannot create it: Read-only file system" \
  --set train.out_dir="$WORK/ro/run" <<<"$MODEL"
refused "--resume: 1 required TEXT missing" "$MOE" train "$WORK/ok.yaml" --resume
refused "--set: 1 required TEXT missing" "$MOE" train "$WORK/ok.yaml" --set
refused "--checkpoint is required" "$MOE" eval --data "$WORK/val.bin"
refused "--world: Value 0 not in range 1 to 1048576" "$MOE" plan "$WORK/ok.yaml" --world 0
refused "--hardware b200: not a known system (h100-sxm, h200, a100-sxm)" "$MOE" plan "$WORK/ok.yaml" --world 2 --hardware b200
refused "--gemm-efficiency: Value 2 not in range" "$MOE" plan "$WORK/ok.yaml" --world 2 --hardware h100-sxm --gemm-efficiency 2
refused "The following argument was not expected: --frobnicate" "$MOE" --frobnicate
refused "checkpoint $WORK/nowhere is not a directory" "$MOE" checkpoint verify "$WORK/nowhere"
mkdir -p "$WORK/exported"
refused "export: $WORK/exported already exists; nothing was overwritten" "$MOE" export "$WORK/nowhere" "$WORK/exported"
refused "no checkpoint to resume: $WORK/out-resume/checkpoints/latest does not exist" \
  "$MOE" train "$WORK/ok.yaml" "${DATA[@]}" --set train.out_dir="$WORK/out-resume" --resume latest
refused "cannot write $WORK/nowhere/x.bin.tmp" "$MOE" tokenize "$SRC/README.md" --out "$WORK/nowhere/x.bin"
refused "cannot read $WORK/nowhere.txt: no such file" "$MOE" tokenize "$WORK/nowhere.txt" --out "$WORK/y.bin"
[ ! -e "$WORK/y.bin" ] || fail "tokenize of a missing file wrote its output"
echo "$n bad inputs, each refused with exit code 2 and its message"
