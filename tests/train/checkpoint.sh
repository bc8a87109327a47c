#!/usr/bin/env bash
# Checkpoints under real mpirun, on real files. One part per call:
#   resume    resume is bit-exact; a checkpoint of 4 ranks (EP 4) evaluates and resumes on 2 and 1;
#             SIGTERM saves and stops
#   kill      SIGKILL in the middle of a save leaves the previous checkpoint verifying and resuming
#   corrupt   truncated, altered, missing, mis-shaped files and a manifest path outside: exit 2 each
#   export    the Hugging Face export, read back and run by an independent numpy forward pass
#   import    Hugging Face Mixtral folders written by an independent numpy script import and evaluate as
#             that script's float64 forward; export -> import -> export is bit-identical; a run trains
#             from an import; every malformed folder is refused with nothing written
#   upcycle   a dense checkpoint upcycled to an MoE computes the dense model's function; training starts
#             from it; mismatched models are refused with nothing written
source "$(dirname "$0")/lib.sh"
part=$1
make_test_data
TINY=("$SRC/configs/tiny.yaml" "${DATA[@]}" --set checkpoint.every=10 --set checkpoint.keep_last=0)
# The base run: tiny on 4 ranks, EP 4, checkpoints at steps 10 and 20.
base() {
  moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/base" --set train.micro_batch_size=2 \
    --set parallel.expert_parallel_size=4 2>"$WORK/base.log" || { cat "$WORK/base.log"; fail "base run"; }
}
eval_loss() {  # NP CHECKPOINT [MORE EVAL ARGUMENTS]
  local np=$1 ckpt=$2
  shift 2
  mpirun --oversubscribe -np "$np" -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$MOE" eval --checkpoint "$ckpt" \
    --data "$WORK/val.bin" --seq-len 32 --windows 24 "$@" 2>"$WORK/eval.log" | grep -o '"loss":[^,}]*' | cut -d: -f2
}
# expect_refused NAME EXPECTED COMMAND...: exit code 2 and the message.
expect_refused() {
  local name=$1 expected=$2 rc=0
  shift 2
  "$@" > "$WORK/out" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat "$WORK/out"; fail "$name: exit code $rc, expected 2"; }
  grep -qF -- "$expected" "$WORK/out" || { cat "$WORK/out"; fail "$name: message lacks '$expected'"; }
  echo "$name: refused: $(grep error "$WORK/out" | head -1 | sed 's/^\[[^]]*\] //')"
}

case $part in
resume)
  base
  "$MOE" checkpoint verify "$WORK/base/checkpoints/step_00000020" || fail "verify"
  # Bit-exact resume: the same run, cut back to its step-10 checkpoint, then resumed.
  cp -r "$WORK/base" "$WORK/cut"
  rm -rf "$WORK/cut/checkpoints/step_00000020"
  echo step_00000010 > "$WORK/cut/checkpoints/latest"
  moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/cut" --set train.micro_batch_size=2 \
    --set parallel.expert_parallel_size=4 --resume latest 2>"$WORK/cut.log" || { cat "$WORK/cut.log"; fail "resume"; }
  cmp <(strip_timing "$WORK/base/metrics.jsonl") <(strip_timing "$WORK/cut/metrics.jsonl") ||
    fail "resumed metrics differ from the uninterrupted run"
  cmp "$WORK/base/checkpoints/step_00000020/model.safetensors" "$WORK/cut/checkpoints/step_00000020/model.safetensors" ||
    fail "resumed weights differ"
  echo "resume: steps 11-20 after resuming at 10 are bit-identical to the uninterrupted run (metrics and weights)"
  # Another run's checkpoint, continued in a directory of its own: the same steps 11-20.
  moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/fork" --set train.micro_batch_size=2 \
    --set parallel.expert_parallel_size=4 --resume "$WORK/cut/checkpoints/step_00000010" 2>"$WORK/fork.log" ||
    { cat "$WORK/fork.log"; fail "resume from another run's checkpoint into a new train.out_dir"; }
  cmp <(strip_timing "$WORK/base/metrics.jsonl" | grep -v '"step":[0-9][,}]' | grep -v '"step":10[,}]') \
    <(strip_timing "$WORK/fork/metrics.jsonl") || fail "the forked run's steps 11-20 differ"
  [ -f "$WORK/fork/config.yaml" ] || fail "the forked run has no config.yaml"
  echo "resume: another run's step-10 checkpoint continues in a new train.out_dir, steps 11-20 bit-identical"
  # Another world size: evaluate the 4-rank checkpoint on 4, 2 and 1 ranks; resume it on 2 and on 1.
  l4=$(eval_loss 4 "$WORK/base/checkpoints/step_00000020") || { cat "$WORK/eval.log"; fail "eval on 4"; }
  for np in 2 1; do
    l=$(eval_loss $np "$WORK/base/checkpoints/step_00000020") || { cat "$WORK/eval.log"; fail "eval on $np"; }
    awk -v a="$l4" -v b="$l" -v np=$np 'BEGIN { d = (a - b) / a; if (d < 0) d = -d;
      printf "eval: 4 ranks %.8f, %d ranks %.8f (relative difference %.1e)\n", a, np, b, d; exit !(d <= 1e-5) }' ||
      fail "eval on $np ranks differs"
    cp -r "$WORK/cut" "$WORK/on$np"
    rm -rf "$WORK/on$np/checkpoints/step_00000020" "$WORK/on$np/metrics.jsonl"
    echo step_00000010 > "$WORK/on$np/checkpoints/latest"
    moe_train $np "${TINY[@]}" --set train.out_dir="$WORK/on$np" --set train.micro_batch_size=$((8 / np)) \
      --set parallel.expert_parallel_size=$np --resume latest 2>"$WORK/on$np.log" || { cat "$WORK/on$np.log"; fail "resume on $np"; }
    paste <(field "$WORK/base/metrics.jsonl" train loss | tail -10) <(field "$WORK/on$np/metrics.jsonl" train loss) |
      awk -v np=$np '{ d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > w) w = d }
        END { printf "resume on %d ranks: steps 11-20 within %.1e of the 4-rank run\n", np, w; exit !(NR == 10 && w <= 1e-4) }' ||
      fail "resume on $np ranks"
  done
  # SIGTERM: every rank saves the step it finished and stops; the run then resumes to the end.
  moe_train 2 "${TINY[@]}" --set train.out_dir="$WORK/term" --set train.steps=100000 --set checkpoint.every=0 \
    --set parallel.expert_parallel_size=2 --set train.micro_batch_size=4 2>"$WORK/term.log" &
  for _ in $(seq 100); do grep -q "step 5/" "$WORK/term.log" 2>/dev/null && break; sleep 0.2; done
  for pid in $(pgrep -f -- "out_dir=$WORK/term"); do  # the ranks only (moe execs moe-engine), as a batch scheduler signals them
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = moe-engine ] && kill -TERM "$pid"
  done
  rc=0; wait $! || rc=$?
  [ -f "$WORK/term/checkpoints/latest" ] || { cat "$WORK/term.log"; fail "no checkpoint after SIGTERM (rc $rc)"; }
  "$MOE" checkpoint verify "$WORK/term/checkpoints/$(cat "$WORK/term/checkpoints/latest")" >/dev/null || fail "verify after SIGTERM"
  echo "SIGTERM: exit code $rc, saved $(cat "$WORK/term/checkpoints/latest")"
  ;;
kill)
  base
  # Resume towards step 30, holding the step-30 save open; SIGKILL the job while it holds it.
  mpirun --oversubscribe -np 4 -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 -x MOE_CHECKPOINT_PAUSE_SECONDS=60 \
    "$MOE" train "${TINY[@]}" --set train.out_dir="$WORK/base" --set train.micro_batch_size=2 --set train.steps=30 \
    --set parallel.expert_parallel_size=4 --resume latest 2>"$WORK/kill.log" &
  job=$!
  for _ in $(seq 300); do [ -f "$WORK/base/checkpoints/.tmp-step_00000030/manifest.json" ] && break; sleep 0.1; done
  [ -f "$WORK/base/checkpoints/.tmp-step_00000030/manifest.json" ] || { cat "$WORK/kill.log"; fail "the save never started"; }
  pkill -KILL -f -- "$WORK/base" || true
  kill -KILL $job 2>/dev/null || true
  wait $job 2>/dev/null || true
  [ "$(cat "$WORK/base/checkpoints/latest")" = step_00000020 ] || fail "latest moved during a killed save"
  "$MOE" checkpoint verify "$WORK/base/checkpoints/step_00000020" || fail "the previous checkpoint no longer verifies"
  moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/base" --set train.micro_batch_size=2 --set train.steps=30 \
    --set parallel.expert_parallel_size=4 --resume latest 2>"$WORK/again.log" || { cat "$WORK/again.log"; fail "resume after kill"; }
  [ "$(cat "$WORK/base/checkpoints/latest")" = step_00000030 ] || fail "the resumed run did not save step 30"
  [ ! -e "$WORK/base/checkpoints/.tmp-step_00000030" ] || fail "the killed save's directory was left behind"
  echo "kill: SIGKILL during the step-30 save left step_00000020 whole; resumed from it to step 30"
  ;;
corrupt)
  base
  ckpt="$WORK/base/checkpoints/step_00000020"
  fresh() { rm -rf "$WORK/c"; cp -r "$ckpt" "$WORK/c"; }
  fresh; truncate -s -100 "$WORK/c/experts-00001.safetensors"
  expect_refused truncated "experts-00001.safetensors has" "$MOE" checkpoint verify "$WORK/c"
  fresh; byte=$(od -An -tu1 -j4000 -N1 "$WORK/c/model.safetensors" | tr -d ' ')
  printf "\\$(printf %o $((byte ^ 1)))" | dd of="$WORK/c/model.safetensors" bs=1 seek=4000 conv=notrunc status=none
  expect_refused flipped_byte "model.safetensors: CRC-32 mismatch" "$MOE" checkpoint verify "$WORK/c"
  fresh; rm "$WORK/c/rng.safetensors"
  expect_refused missing_file "rng.safetensors is missing" "$MOE" checkpoint verify "$WORK/c"
  fresh; sed -i 's/"path": "config.yaml"/"path": "..\/..\/config.yaml"/' "$WORK/c/manifest.json"
  expect_refused manifest_unsealed "manifest.json: manifest_crc32 is missing or does not match" "$MOE" checkpoint verify "$WORK/c"
  "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" seal "$WORK/c"
  expect_refused path_outside "names a path outside the checkpoint: ../../config.yaml" "$MOE" checkpoint verify "$WORK/c"
  # A consistent file (manifest updated) whose header gives a tensor another shape of the same size.
  fresh; "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" transpose "$WORK/c" model.safetensors lm_head
  "$MOE" checkpoint verify "$WORK/c" >/dev/null || fail "a consistent re-shaped file should verify"
  expect_refused wrong_shape "tensor lm_head is [64, 256]" \
    mpirun -np 1 "$MOE" eval --checkpoint "$WORK/c" --data "$WORK/val.bin" --seq-len 32 --windows 2
  fresh; sed -i 's/"expert_parallel_size": [0-9]*/"expert_parallel_size": 0/' "$WORK/c/manifest.json"
  "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" seal "$WORK/c"
  expect_refused manifest_ep_zero "expert_parallel_size 0 and world_size 4 are not a layout" \
    mpirun -np 2 "$MOE" eval --checkpoint "$WORK/c" --data "$WORK/val.bin" --seq-len 32 --windows 2
  fresh; sed -i 's/"step": [0-9]*/"step": -5/' "$WORK/c/trainer.json"
  "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" reseal "$WORK/c" trainer.json
  rm -rf "$WORK/neg" && cp -r "$WORK/base" "$WORK/neg" && rm -rf "$WORK/neg/checkpoints/"step_* && cp -r "$WORK/c" "$WORK/neg/checkpoints/step_00000020"
  expect_refused trainer_step_negative "trainer.json: step must be a non-negative integer" \
    moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/neg" --set train.micro_batch_size=2 \
    --set parallel.expert_parallel_size=4 --set train.steps=30 --resume latest
  [ -z "$(ls "$WORK/neg/checkpoints" | grep -v -e step_00000020 -e latest)" ] || fail "trainer_step_negative wrote a checkpoint"
  expect_refused eval_seq_len_too_long "eval: --seq-len 4096 exceeds model.max_seq_len" \
    mpirun -np 1 "$MOE" eval --checkpoint "$ckpt" --data "$WORK/val.bin" --seq-len 4096 --windows 1
  fresh; sed -i 's/"path": "config.yaml"/"path": "\/etc\/passwd"/' "$WORK/c/manifest.json"
  "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" seal "$WORK/c"
  expect_refused absolute_path "names a path outside the checkpoint: /etc/passwd" "$MOE" checkpoint verify "$WORK/c"
  fresh; echo '{"format": "moe-checkpoint", "files": [' > "$WORK/c/manifest.json"
  expect_refused manifest_not_json "manifest.json: not valid JSON (at byte " "$MOE" checkpoint verify "$WORK/c"
  ! grep -q "json.exception" "$WORK/out" || fail "manifest_not_json: nlohmann's text reached the user"
  fresh; echo 'step: 5' > "$WORK/c/trainer.json"
  "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" reseal "$WORK/c" trainer.json
  expect_refused trainer_not_json "trainer.json: not a JSON object" \
    mpirun -np 1 "$MOE" eval --checkpoint "$WORK/c" --data "$WORK/val.bin" --seq-len 32 --windows 2
  for bad in step_00000099 ../base; do
    rm -rf "$WORK/late" && cp -r "$WORK/base" "$WORK/late" && echo "$bad" > "$WORK/late/checkpoints/latest"
    expect_refused "latest_$(echo "$bad" | tr -c 'a-z0-9\n' _)" "$([ "$bad" = ../base ] && echo 'does not name a checkpoint directory' || echo 'is not a directory')" \
      moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/late" --set train.micro_batch_size=2 \
      --set parallel.expert_parallel_size=4 --set train.steps=30 --resume latest
  done
  fresh; sed -i 's/"step": [0-9]*/"step": 1e999/' "$WORK/c/manifest.json"  # found by tests/fuzz/fuzz_manifest.cpp
  expect_refused manifest_number_overflow "manifest.json: holds a number out of range" "$MOE" checkpoint verify "$WORK/c"
  fresh; echo '{"format": "moe-checkpoint", "version": 99}' > "$WORK/c/manifest.json"
  expect_refused bad_version "format version 99" "$MOE" checkpoint verify "$WORK/c"
  # A resume from step 10 that only the last rank refuses (its generator state is missing from a
  # consistent file) leaves metrics.jsonl as it was, records of steps 11-20 included.
  cp -r "$WORK/base" "$WORK/norng"
  echo step_00000010 > "$WORK/norng/checkpoints/latest"
  "$PYTHON" "$SRC/tests/train/edit_checkpoint.py" drop "$WORK/norng/checkpoints/step_00000010" rng.safetensors rank.3
  cp "$WORK/norng/metrics.jsonl" "$WORK/metrics.before"
  expect_refused rng_missing_on_one_rank "no state for rank 3" \
    moe_train 4 "${TINY[@]}" --set train.out_dir="$WORK/norng" --set train.micro_batch_size=2 \
    --set parallel.expert_parallel_size=4 --set train.steps=30 --resume latest
  cmp "$WORK/metrics.before" "$WORK/norng/metrics.jsonl" || fail "a refused resume changed metrics.jsonl"
  echo "rng_missing_on_one_rank: metrics.jsonl unchanged ($(wc -l < "$WORK/metrics.before") records)"
  ;;
export)
  base
  ckpt="$WORK/base/checkpoints/step_00000020"
  "$MOE" export "$ckpt" "$WORK/hf" 2>/dev/null || fail "export"
  ours=$(eval_loss 1 "$ckpt")
  theirs=$("$PYTHON" "$SRC/tests/train/hf_forward.py" "$WORK/hf" "$WORK/val.bin" 32 24 | grep -o '"loss":[^,}]*' | cut -d: -f2)
  awk -v a="$ours" -v b="$theirs" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d;
    printf "export: moe eval %.8f, numpy forward of the export %.8f (relative difference %.1e)\n", a, b, d; exit !(d <= 1e-5) }' ||
    fail "the exported model's loss differs"
  "$MOE" export "$ckpt" "$WORK/hf16" --dtype bfloat16 --max-shard-bytes 100000 2>/dev/null || fail "bf16 export"
  [ -f "$WORK/hf16/model.safetensors.index.json" ] || fail "no shard index"
  bf16=$("$PYTHON" "$SRC/tests/train/hf_forward.py" "$WORK/hf16" "$WORK/val.bin" 32 24 | grep -o '"loss":[^,}]*' | cut -d: -f2)
  shards=$(ls "$WORK"/hf16/model-*-of-*.safetensors | wc -l)
  awk -v a="$ours" -v b="$bf16" -v n="$shards" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d;
    printf "export: bfloat16 in %d shards, loss %.6f (relative difference %.1e)\n", n, b, d; exit !(d <= 2e-2) }' ||
    fail "the bfloat16 export is off"
  expect_refused exists "already exists" "$MOE" export "$ckpt" "$WORK/hf"
  # A directory named like a temporary one is someone's: an export beside it leaves it alone.
  mkdir -p "$WORK/hf2.tmp" && echo mine > "$WORK/hf2.tmp/keep"
  "$MOE" export "$ckpt" "$WORK/hf2" 2>/dev/null || fail "export beside hf2.tmp"
  [ "$(cat "$WORK/hf2.tmp/keep")" = mine ] || fail "export removed $WORK/hf2.tmp"
  [ -z "$(ls -d "$WORK"/hf2.tmp-* 2>/dev/null)" ] || fail "export left its temporary directory"
  moe_train 2 "$SRC/configs/deepseek-v3.yaml" "${DATA[@]}" --set train.out_dir="$WORK/ds" --set train.steps=2 2>/dev/null ||
    fail "deepseek-v3 run"
  expect_refused not_mixtral "cannot be exported as Mixtral: it has dense FFN layers" \
    "$MOE" export "$WORK/ds/checkpoints/step_00000002" "$WORK/ds-hf"
  ;;
import)
  # Folders written by numpy alone, in each dtype, one file or shards: moe's logits and loss of the import
  # against the float64 forward of the same files.
  for case in "F32 1 1" "BF16 3 2" "F16 2 4"; do
    read -r dtype shards ep <<<"$case"
    "$PYTHON" "$SRC/tests/train/hf_write.py" "$WORK/w-$dtype" --dtype "$dtype" --shards "$shards" --seed 3
    "$MOE" import "$WORK/w-$dtype" "$WORK/i-$dtype" --ep "$ep" 2>"$WORK/import.log" || { cat "$WORK/import.log"; fail "import $dtype"; }
    "$MOE" checkpoint verify "$WORK/i-$dtype" >/dev/null || fail "the $dtype import does not verify"
    [ "$(ls "$WORK/i-$dtype"/experts-*.safetensors | wc -l)" -eq "$ep" ] || fail "--ep $ep: not $ep expert files"
    ours=$(eval_loss 2 "$WORK/i-$dtype" --logits "$WORK/logits-$dtype.safetensors") ||
      { cat "$WORK/eval.log"; fail "eval of the $dtype import"; }
    reference=$("$PYTHON" "$SRC/tests/train/hf_forward.py" "$WORK/w-$dtype" "$WORK/val.bin" 32 24 \
      --compare-logits "$WORK/logits-$dtype.safetensors")
    theirs=$(grep -o '"loss":[^,}]*' <<<"$reference" | cut -d: -f2)
    logits=$(grep -o '"logits_max_relative_difference":[^,}]*' <<<"$reference" | cut -d: -f2)
    awk -v a="$ours" -v b="$theirs" -v c="$case" -v l="$logits" 'BEGIN { d = (a - b) / a; if (d < 0) d = -d;
      printf "import %s (dtype, shards, --ep): logits within %.1e of the float64 numpy forward; loss %.8f against %.8f (%.1e)\n", c, l, a, b, d
      exit !(d <= 1e-5 && l <= 1e-5) }' || fail "the $dtype import computes another function"
  done
  expect_refused logits_exist "eval: --logits $WORK/logits-F32.safetensors already exists; nothing was overwritten" \
    "$MOE" eval --checkpoint "$WORK/i-F32" --data "$WORK/val.bin" --seq-len 32 --windows 2 --logits "$WORK/logits-F32.safetensors"
  # A trained checkpoint: export -> import -> export gives the same files; the import evaluates the same.
  base
  ckpt="$WORK/base/checkpoints/step_00000020"
  "$MOE" export "$ckpt" "$WORK/hf" 2>/dev/null || fail "export"
  "$MOE" import "$WORK/hf" "$WORK/imp" --ep 2 2>/dev/null || fail "import of the export"
  "$MOE" export "$WORK/imp" "$WORK/hf-again" 2>/dev/null || fail "export of the import"
  for f in "$WORK"/hf/*; do cmp "$f" "$WORK/hf-again/$(basename "$f")" || fail "round trip: $(basename "$f") differs"; done
  [ "$(ls "$WORK/hf" | wc -l)" -eq "$(ls "$WORK/hf-again" | wc -l)" ] || fail "round trip: another set of files"
  echo "import: export -> import -> export: $(ls "$WORK/hf" | tr '\n' ' ')bit-identical"
  before=$(eval_loss 1 "$ckpt"); after=$(eval_loss 1 "$WORK/imp")
  [ "$before" = "$after" ] || fail "eval: $before before, $after after export and import"
  echo "import: moe eval $before on the checkpoint and on its import"
  # Training from the import (fresh AdamW moments, step 0): its first loss is the trained model's.
  moe_train 2 "$WORK/imp/config.yaml" "${DATA[@]}" --set train.out_dir="$WORK/from-import" --set train.steps=2 \
    --set train.log_every=1 --set data.seq_len=32 --resume "$WORK/imp" 2>"$WORK/train.log" ||
    { cat "$WORK/train.log"; fail "training from the import"; }
  first() { grep '"kind":"train"' "$1" | head -1 | grep -o '"loss":[^,}]*' | cut -d: -f2; }
  last_base=$(grep '"kind":"train"' "$WORK/base/metrics.jsonl" | tail -1 | grep -o '"loss":[^,}]*' | cut -d: -f2)
  awk -v a="$(first "$WORK/from-import/metrics.jsonl")" -v fresh="$(first "$WORK/base/metrics.jsonl")" -v b="$last_base" \
    'BEGIN { printf "import: trained from it, step-1 loss %.4f (the base run: %.4f at step 1, %.4f at step 20)\n", a, fresh, b
      exit !(a < fresh - 0.3 && (a - b) / b < 0.1 && (b - a) / b < 0.1) }' || fail "training did not start from the imported weights"
  # Refusals: exit 2, one message, nothing written.
  refused_import() {  # NAME EXPECTED HF_WRITE_OPTIONS... (then, after --, import options)
    local name=$1 expected=$2 opts=() extra=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    [ $# -gt 0 ] && { shift; extra=("$@"); }
    rm -rf "$WORK/spoilt-hf" "$WORK/bad"*
    "$PYTHON" "$SRC/tests/train/hf_write.py" "$WORK/spoilt-hf" "${opts[@]}"
    expect_refused "import_$name" "$expected" "$MOE" import "$WORK/spoilt-hf" "$WORK/bad" "${extra[@]}"
    [ -z "$(ls -d "$WORK/bad"* 2>/dev/null)" ] || fail "import_$name: left $(ls -d "$WORK/bad"*)"
  }
  refused_import llama "model_type is llama; moe imports Mixtral" --set 'model_type="llama"'
  refused_import window "sliding_window is 16, which moe cannot express" --set sliding_window=16
  refused_import rope_scaling "rope_scaling is {\"factor\":2.0,\"type\":\"linear\"}, which moe cannot express" \
    --set 'rope_scaling={"type": "linear", "factor": 2.0}'
  refused_import tied "tie_word_embeddings is true, which moe cannot express" --set tie_word_embeddings=true
  refused_import gelu "hidden_act is \"gelu\", which moe cannot express" --set 'hidden_act="gelu"'
  refused_import no_layers "num_hidden_layers is missing" --set num_hidden_layers=null
  refused_import missing "lacks tensor model.layers.1.block_sparse_moe.experts.3.w2.weight" \
    --drop model.layers.1.block_sparse_moe.experts.3.w2.weight
  refused_import extra "does not have: model.layers.0.self_attn.q_proj.bias" --extra model.layers.0.self_attn.q_proj.bias
  refused_import shape "tensor model.layers.0.self_attn.k_proj.weight is [17, 32]; config.json makes it [16, 32]" \
    --reshape model.layers.0.self_attn.k_proj.weight --shards 2
  refused_import dtype "tensor model.norm.weight is Int; expected float32, bfloat16 or float16" --int model.norm.weight
  refused_import ep "--ep 3 must divide the 4 experts" -- --ep 3
  mkdir -p "$WORK/taken" && "$PYTHON" "$SRC/tests/train/hf_write.py" "$WORK/ok-hf"
  expect_refused import_exists "already exists; nothing was overwritten" "$MOE" import "$WORK/ok-hf" "$WORK/taken"
  rm -rf "$WORK/spoilt-hf" && "$PYTHON" "$SRC/tests/train/hf_write.py" "$WORK/spoilt-hf" && echo '{"model_type": ' > "$WORK/spoilt-hf/config.json"
  expect_refused import_not_json "config.json: not valid JSON" "$MOE" import "$WORK/spoilt-hf" "$WORK/bad"
  ;;
upcycle)
  moe_train 2 "${TINY[@]}" --set moe.num_experts=0 --set train.out_dir="$WORK/dense" 2>"$WORK/dense.log" ||
    { cat "$WORK/dense.log"; fail "dense run"; }
  dense="$WORK/dense/checkpoints/step_00000020"
  MOE_CFG=("$SRC/configs/tiny.yaml" --set moe.ffn_hidden_size=128 --set parallel.expert_parallel_size=2)
  "$MOE" upcycle "$dense" "${MOE_CFG[@]}" "$WORK/up" 2>"$WORK/up.log" || { cat "$WORK/up.log"; fail "upcycle"; }
  "$MOE" checkpoint verify "$WORK/up" >/dev/null || fail "the upcycled checkpoint does not verify"
  for np in 1 2; do
    a=$(eval_loss $np "$dense"); b=$(eval_loss $np "$WORK/up") || { cat "$WORK/eval.log"; fail "eval of the upcycled"; }
    awk -v a="$a" -v b="$b" -v np=$np 'BEGIN { d = (a - b) / a; if (d < 0) d = -d;
      printf "upcycle: on %d rank(s) moe eval %.10f dense, %.10f upcycled to 4 experts top-2 (relative difference %.1e)\n", np, a, b, d
      exit !(d <= 1e-6) }' || fail "the upcycled model computes another function"
  done
  moe_train 2 "${TINY[@]}" --set moe.ffn_hidden_size=128 --set parallel.expert_parallel_size=2 \
    --set train.out_dir="$WORK/moe" --set train.log_every=1 --set train.steps=22 --resume "$WORK/up" 2>"$WORK/moe.log" ||
    { cat "$WORK/moe.log"; fail "training from the upcycled checkpoint"; }
  loss() { grep '"kind":"train"' "$1" | sed -n "$2" | grep -o '"loss":[^,}]*' | cut -d: -f2; }
  awk -v a="$(loss "$WORK/moe/metrics.jsonl" 1p)" -v fresh="$(loss "$WORK/dense/metrics.jsonl" 1p)" \
    -v b="$(loss "$WORK/dense/metrics.jsonl" '$p')" 'BEGIN {
      printf "upcycle: the MoE resumed from it at step 21 has loss %.4f (the dense run: %.4f at step 1, %.4f at step 20)\n", a, fresh, b
      exit !(a < fresh - 0.3) }' || fail "training did not start from the dense weights"
  refused_upcycle() {  # NAME EXPECTED DENSE_CKPT CONFIG_ARGS...
    local name=$1 expected=$2 from=$3
    shift 3
    expect_refused "upcycle_$name" "$expected" "$MOE" upcycle "$from" "$@" "$WORK/bad"
    [ ! -e "$WORK/bad" ] && [ -z "$(ls -d "$WORK"/bad.tmp-* 2>/dev/null)" ] || fail "upcycle_$name: left $WORK/bad"
  }
  refused_upcycle not_dense "is not a dense checkpoint (moe.num_experts 4)" "$WORK/up" "${MOE_CFG[@]}"
  refused_upcycle to_dense "describes a dense model" "$dense" "$SRC/configs/tiny.yaml" --set moe.num_experts=0
  refused_upcycle hidden "model.hidden_size is 32 in $SRC/configs/tiny.yaml but 64 in $dense/config.yaml" \
    "$dense" "${MOE_CFG[@]}" --set model.hidden_size=32
  refused_upcycle width "moe.ffn_hidden_size is 64 in $SRC/configs/tiny.yaml; each expert starts as a copy of the dense FFN" \
    "$dense" "$SRC/configs/tiny.yaml"
  refused_upcycle shared "has shared experts" "$dense" "${MOE_CFG[@]}" --set moe.num_shared_experts=1
  expect_refused upcycle_exists "already exists; nothing was overwritten" "$MOE" upcycle "$dense" "${MOE_CFG[@]}" "$WORK/up"
  "$MOE" checkpoint verify "$WORK/up" >/dev/null || fail "a refused upcycle touched the existing $WORK/up"
  ;;
*) fail "unknown part $part" ;;
esac
