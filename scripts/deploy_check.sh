#!/usr/bin/env bash
# Deploys every search policy's configuration and checks the integer model against the
# fake-quant model on the whole Fashion-MNIST test set (issue 10). Short searches and one
# finetune epoch (accuracy is not the point here, agreement is); the example exits non-zero
# if any prediction differs or a reloaded model is not bit-identical.
# Usage: scripts/deploy_check.sh [budget, default w2a2] [extra example arguments]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MIXQ_BUILD_ROOT:-$root/build}
budget=${1:-w2a2}
shift || true
cmake -S "$root" -B "$build/release" -DCMAKE_BUILD_TYPE=Release -DMIXQ_NATIVE=ON >/dev/null
cmake --build "$build/release" -j "$(nproc)" --target search_fashion_mnist
out=$build/deploy-check
mkdir -p "$out"
for p in uniform dnas ebs fracbits ompq bmpq hawq; do
  echo "== $p $budget"
  "$build/release/examples/search_fashion_mnist" --policy "$p" --budget "$budget" --seed 1 \
    --checkpoint "$out/fp32-s1.bin" --out "$out" --limit-train 3000 --epochs 1 \
    --finetune-epochs 1 --lr 0.05 --finetune-lr 0.01 --bits 1,2,3,4,8 "$@" 2>&1 | tr '\r' '\n' |
    grep -a "^config:\|predictions differ\|reloaded\|not deployable\|error"
done
