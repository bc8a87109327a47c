#!/usr/bin/env bash
# Golden losses: the first 30 training steps of configs/tiny.yaml on 2 ranks (EP 2) must print exactly the
# losses and gradient norms in tests/golden/tiny_np2.txt, to the last digit (metrics.jsonl writes the
# shortest decimal that reads back as the same double). The data is fixed text every Debian system ships
# (base-files' licence texts), not this repository's sources, so the curve does not move when code moves.
# A refactor must leave it unchanged; a change meant to alter the numbers regenerates it with
# MOE_UPDATE_GOLDEN=1 and says why in its commit. Bitwise equality holds for one machine kind, BLAS and
# libtorch build: on another, read the reported largest difference.
source "$(dirname "$0")/lib.sh"
GOLDEN="$SRC/tests/golden/tiny_np2.txt"
"$MOE" tokenize /usr/share/common-licenses/GPL-3 --out "$WORK/train.bin" 2>/dev/null
"$MOE" tokenize /usr/share/common-licenses/Apache-2.0 --out "$WORK/val.bin" 2>/dev/null
moe_train 2 "$SRC/configs/tiny.yaml" --set "data.train_path=$WORK/train.bin" --set "data.val_path=$WORK/val.bin" \
  --set train.out_dir="$WORK/run" --set train.steps=30 --set train.micro_batch_size=4 \
  --set parallel.expert_parallel_size=2 2>"$WORK/log" || { cat "$WORK/log"; fail "training tiny on 2 ranks"; }
paste -d' ' <(field "$WORK/run/metrics.jsonl" train step) <(field "$WORK/run/metrics.jsonl" train loss) \
  <(field "$WORK/run/metrics.jsonl" train grad_norm) > "$WORK/got.txt"
[ "$(wc -l < "$WORK/got.txt")" -eq 30 ] || fail "expected 30 train records, got $(wc -l < "$WORK/got.txt")"
if [ "${MOE_UPDATE_GOLDEN:-0}" = 1 ]; then
  { echo "# step loss grad_norm: configs/tiny.yaml, 2 ranks, EP 2, tests/train/golden.sh"; cat "$WORK/got.txt"; } > "$GOLDEN"
  echo "wrote $GOLDEN"
  exit 0
fi
grep -v '^#' "$GOLDEN" > "$WORK/want.txt"
if ! cmp -s "$WORK/want.txt" "$WORK/got.txt"; then
  paste -d' ' "$WORK/want.txt" "$WORK/got.txt" | awk '
    { for (i = 2; i <= 3; ++i) { d = ($i - $(i + 3)) / $i; if (d < 0) d = -d; if (d > worst) worst = d } }
    END { printf "largest relative difference from the golden file: %.3e\n", worst }'
  diff "$WORK/want.txt" "$WORK/got.txt" | head -20
  fail "the first 30 losses of tiny on 2 ranks differ from $GOLDEN"
fi
echo "golden: 30 losses and gradient norms of tiny on 2 ranks identical to the last digit"
