#!/usr/bin/env bash
# Builds the libFuzzer target for integer-model files with clang (ASan + UBSan) and runs it.
# Usage: scripts/fuzz.sh [seconds]   (default 300; CI runs it briefly)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/packages.sh"
"$root/scripts/install-deps.sh" "${MIXQ_FUZZ_PACKAGES[@]}"
seconds=${1:-300}
out=${MIXQ_BUILD_ROOT:-$root/build}/fuzz
CXX=clang++ cmake -S "$root/fuzz" -B "$out" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$out" -j "$(nproc)"
corpus="$out/corpus"
mkdir -p "$corpus"
"$out/make_fuzz_seeds" "$corpus"
# -rss_limit_mb guards against a parser that allocates from a lying size field.
"$out/fuzz_model_file" "$corpus" -max_total_time="$seconds" -rss_limit_mb=1024 \
  -max_len=4096 -print_final_stats=1 2>&1 | tail -n 15
