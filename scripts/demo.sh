#!/usr/bin/env bash
# mixq's main job: FP32 training of the demo CNN on Fashion-MNIST, a bit-width search
# (default: the uniform baseline; --policy dnas|ebs|fracbits|ompq|bmpq|hawq), QAT finetuning,
# the per-layer table, JSON result and SVG chart (in build/demo). Arguments pass through.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/packages.sh"
"$root/scripts/install-deps.sh" "${MIXQ_BUILD_PACKAGES[@]}" "${MIXQ_DATA_PACKAGES[@]}"
out=${MIXQ_BUILD_ROOT:-$root/build}/release
cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=Release -DMIXQ_NATIVE=ON -DMIXQ_BUILD_TESTS=OFF \
  -DMIXQ_BUILD_BENCH=OFF >/dev/null
cmake --build "$out" -j "$(nproc)" --target search_fashion_mnist
"$out/examples/search_fashion_mnist" --out "${MIXQ_BUILD_ROOT:-$root/build}/demo" "$@"
