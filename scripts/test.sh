#!/usr/bin/env bash
# mixq's whole test run: release build + all tests, an ASan+UBSan build + all tests, and the
# libFuzzer run on the model-file parser, and the consumer checks (find_package against an
# installed tree; FetchContent and add_subdirectory on the source tree).
# Usage: scripts/test.sh [--quick]   (--quick: release build and tests only)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/packages.sh"
"$root/scripts/install-deps.sh" "${MIXQ_BUILD_PACKAGES[@]}" "${MIXQ_BENCH_PACKAGES[@]}" \
  "${MIXQ_DATA_PACKAGES[@]}" "${MIXQ_FUZZ_PACKAGES[@]}"

jobs=$(nproc)
out=${MIXQ_BUILD_ROOT:-$root/build}
step() { printf '\n=== mixq: %s ===\n' "$*"; }
t0=$SECONDS

step "release build"
cmake -S "$root" -B "$out/release" -DCMAKE_BUILD_TYPE=Release -DMIXQ_NATIVE=ON >/dev/null
cmake --build "$out/release" -j "$jobs"
step "release tests"
ctest --test-dir "$out/release" -j "$jobs" --output-on-failure
[ "${1:-}" = "--quick" ] && exit 0

step "sanitizer build (AddressSanitizer + UndefinedBehaviorSanitizer)"
cmake -S "$root" -B "$out/asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXQ_SANITIZE=ON \
  -DMIXQ_NATIVE=ON -DMIXQ_BUILD_BENCH=OFF >/dev/null
cmake --build "$out/asan" -j "$jobs"
step "sanitizer tests"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$out/asan" -j "$jobs" --output-on-failure

step "fuzz: integer-model file parser (libFuzzer, 20 s)"
MIXQ_BUILD_ROOT="$out" "$root/scripts/fuzz.sh" 20

step "consumer: find_package(mixq) against an installed tree"
rm -rf "$out/stage" "$out/consumer-installed"
cmake --install "$out/release" --prefix "$out/stage" >/dev/null
cmake -S "$root/tests/consumer/find_package" -B "$out/consumer-installed" \
  -DCMAKE_PREFIX_PATH="$out/stage" >/dev/null
cmake --build "$out/consumer-installed" -j "$jobs"
"$out/consumer-installed/consumer"

for how in fetchcontent add_subdirectory; do
  step "consumer: $how on the source tree"
  rm -rf "$out/consumer-$how"
  cmake -S "$root/tests/consumer/$how" -B "$out/consumer-$how" -DMIXQ_SOURCE_DIR="$root" >/dev/null
  cmake --build "$out/consumer-$how" -j "$jobs"
  "$out/consumer-$how/consumer"
done

step "all passed in $((SECONDS - t0)) s"
