#!/usr/bin/env bash
# mixq's main job: builds the examples and runs the quick start.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/packages.sh"
"$root/scripts/install-deps.sh" "${MIXQ_BUILD_PACKAGES[@]}" "${MIXQ_DATA_PACKAGES[@]}"
out=${MIXQ_BUILD_ROOT:-$root/build}/release
cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=Release -DMIXQ_NATIVE=ON -DMIXQ_BUILD_TESTS=OFF \
  -DMIXQ_BUILD_BENCH=OFF >/dev/null
cmake --build "$out" -j "$(nproc)" --target quickstart
"$out/examples/quickstart" "$@"
