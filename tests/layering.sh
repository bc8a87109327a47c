#!/usr/bin/env bash
# The floors point down: parallel/ (transport) <- core/ (the model) <- train/ (the job). Fails, listing
# each one, on any include of ours that points up or sideways:
#   parallel/          nothing of core/ or train/, except the leaf core/check.h
#   core/              nothing of train/
#   core/check.h       nothing of ours at all (it is the leaf)
#   train/cli/         what the light `moe` links: nothing of train/ outside train/cli/, of core/ only
#                      model_options.h and check.h, of parallel/ only parallel_options.h, no libtorch
#   train/checkpoint/  nothing of train/ outside train/checkpoint/ and train/cli/
#   the file formats   crc32, safetensors_header, manifest (moe_formats, what tests/fuzz/ builds with
#                      clang alone): of ours only each other and core/check.h, no libtorch
# Usage: tests/layering.sh [SOURCE_DIR]
set -uo pipefail
SRC=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$SRC" || exit 1
bad=0
violation() {
  echo "layering: $1 includes $2 ($3)"
  bad=$((bad + 1))
}
files=0
while IFS= read -r file; do
  files=$((files + 1))
  while IFS= read -r inc; do
    case "$file" in
      core/check.h)
        case "$inc" in \"*) violation "$file" "$inc" "the leaf includes nothing of ours" ;; esac ;;
      parallel/*)
        case "$inc" in
          \"core/check.h\") ;;
          \"core/*|\"train/*) violation "$file" "$inc" "parallel/ is the ground floor" ;;
        esac ;;
      core/*)
        case "$inc" in \"train/*) violation "$file" "$inc" "core/ may not include train/" ;; esac ;;
      train/cli/*)
        case "$inc" in
          \"train/cli/*|\"core/model_options.h\"|\"core/check.h\"|\"parallel/parallel_options.h\") ;;
          \"*) violation "$file" "$inc" "train/cli/ is what the light moe links" ;;
          \<ATen/*|\<torch/*|\<c10/*) violation "$file" "$inc" "train/cli/ stays free of libtorch" ;;
        esac ;;
      train/checkpoint/crc32.*|train/checkpoint/safetensors_header.*|train/checkpoint/manifest.*)
        case "$inc" in
          \"train/checkpoint/crc32.h\"|\"train/checkpoint/safetensors_header.h\"|\"train/checkpoint/manifest.h\"|\"core/check.h\") ;;
          \"*|\<ATen/*|\<torch/*|\<c10/*) violation "$file" "$inc" "the file formats build without libtorch (tests/fuzz/)" ;;
        esac ;;
      train/checkpoint/*)
        case "$inc" in
          \"train/checkpoint/*|\"train/cli/*) ;;
          \"train/*) violation "$file" "$inc" "train/checkpoint/ may not include the training loop" ;;
        esac ;;
    esac
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*\([<"][^>"]*[>"]\).*/\1/p' "$file")
done < <(find parallel core train -name '*.h' -o -name '*.cpp' | sort)
[ "$files" -gt 0 ] || { echo "layering: no sources found under $SRC"; exit 1; }
if [ "$bad" -gt 0 ]; then
  echo "layering: $bad include(s) point the wrong way (docs/design.md, Layout)"
  exit 1
fi
echo "layering: $files files, every include points down"
