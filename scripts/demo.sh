#!/usr/bin/env bash
# mixq's main job, the whole pipeline on Fashion-MNIST: FP32 training of the demo CNN, a
# bit-width search (default: the uniform baseline at a W3A3 BitOps budget; --policy
# dnas|ebs|fracbits|ompq|bmpq|hawq), QAT finetuning, the per-layer table, JSON result and SVG
# chart, then deployment: the finetuned model compiled to an integer model, checked against
# the fake-quant model on the test set, saved (<stem>.mixq), reloaded, and timed against FP32
# (accuracy / model bytes / images/s table, <stem>-deploy.json). Everything goes to build/demo.
# The FP32 network is kept in build/demo/fp32-s<seed>.bin and reused by later runs (delete it
# to retrain). Arguments pass through and override the defaults below (about 10 minutes on 2
# cores: 2 FP32 epochs, 1 finetune epoch over the 60000 training images, lr 0.05).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/packages.sh"
"$root/scripts/install-deps.sh" "${MIXQ_BUILD_PACKAGES[@]}" "${MIXQ_DATA_PACKAGES[@]}"
build=${MIXQ_BUILD_ROOT:-$root/build}
out=$build/release
cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=Release -DMIXQ_NATIVE=ON -DMIXQ_BUILD_TESTS=OFF \
  -DMIXQ_BUILD_BENCH=OFF >/dev/null
cmake --build "$out" -j "$(nproc)" --target search_fashion_mnist
seed=1
for ((i = 1; i <= $#; ++i)); do
  if [ "${!i}" = --seed ] && [ $i -lt $# ]; then j=$((i + 1)); seed=${!j}; fi
done
mkdir -p "$build/demo"
"$out/examples/search_fashion_mnist" --out "$build/demo" --lr 0.05 \
  --checkpoint "$build/demo/fp32-s$seed.bin" "$@"
