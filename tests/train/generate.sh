#!/usr/bin/env bash
# `moe generate` from a checkpoint: the same seed gives the same text, another seed other text; sampling
# and greedy decoding give the same text on 1 rank and on the 2 EP ranks the model was trained with; a bad
# checkpoint, a prompt byte outside the vocabulary or a prompt too long for the context are each refused
# with one message, exit 2. (The cache against recomputing the prefix: tests/test_generation.cpp.)
source "$(dirname "$0")/lib.sh"
make_fixed_test_data  # ASCII text: a model of 128 tokens trains on it
moe_train 2 "$SRC/configs/tiny.yaml" "${DATA[@]}" --set model.vocab_size=128 --set parallel.expert_parallel_size=2 \
  --set train.steps=20 --set train.out_dir="$WORK/run" 2>"$WORK/train.log" || { cat "$WORK/train.log"; fail "training"; }
ckpt="$WORK/run/checkpoints/step_00000020"
gen() {  # gen NP ARGS...: the text on stdout
  local np=$1
  shift
  mpirun --oversubscribe -np "$np" -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$MOE" generate --checkpoint "$ckpt" \
    "$@" 2>>"$WORK/gen.log"
}
a=$(gen 2 --prompt "The " --max-new-tokens 24 --seed 5) || { cat "$WORK/gen.log"; fail "generate"; }
b=$(gen 2 --prompt "The " --max-new-tokens 24 --seed 5) || fail "generate again"
c=$(gen 2 --prompt "The " --max-new-tokens 24 --seed 6) || fail "generate with another seed"
[ "$a" = "$b" ] || fail "the same seed gave '$a' and '$b'"
[ "$a" != "$c" ] || fail "seeds 5 and 6 gave the same text '$a'"
[ "${a:0:4}" = "The " ] && [ "${#a}" -eq 28 ] || fail "expected the prompt and 24 bytes, got '$a'"
one=$(gen 1 --prompt "The " --max-new-tokens 24 --seed 5) || fail "generate on 1 rank"
[ "$one" = "$a" ] || fail "seed 5 gave '$one' on 1 rank, '$a' on the 2 EP ranks"
g1=$(gen 1 --prompt "The " --max-new-tokens 24 --temperature 0) || fail "greedy on 1 rank"
g2=$(gen 2 --prompt "The " --max-new-tokens 24 --temperature 0) || fail "greedy on 2 ranks"
[ "$g1" = "$g2" ] || fail "greedy text differs between 1 rank ('$g1') and 2 ('$g2')"
echo "generate: seed 5 '$a' on 2 ranks and on 1, seed 6 '$c', greedy '$g1' on 1 and 2 ranks"

refused() {  # refused EXPECTED ARGS...
  local expected=$1 rc=0
  shift
  "$MOE" generate "$@" > "$WORK/out" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat "$WORK/out"; fail "exit code $rc, expected 2: $*"; }
  grep -qF -- "$expected" "$WORK/out" || { cat "$WORK/out"; fail "message lacks '$expected'"; }
  [ "$(grep -c error "$WORK/out")" -eq 1 ] || { cat "$WORK/out"; fail "expected one error line: $*"; }
  echo "refused: $(grep error "$WORK/out" | sed 's/^\[[^]]*\] //')"
}
refused "the prompt's byte 195 (at offset 3) is outside the vocabulary of $ckpt/config.yaml (model.vocab_size 128)" \
  --checkpoint "$ckpt" --prompt "caf$(printf '\303\251')"
refused "leave no room in model.max_seq_len (32)" --checkpoint "$ckpt" --prompt "$(printf 'x%.0s' {1..40})"
refused "$WORK/nowhere" --checkpoint "$WORK/nowhere" --prompt "The "
cp -r "$ckpt" "$WORK/spoilt"
printf 'x' >> "$WORK/spoilt/model.safetensors"
refused "model.safetensors" --checkpoint "$WORK/spoilt" --prompt "The "
echo "generate: checked"
