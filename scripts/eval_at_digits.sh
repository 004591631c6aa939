#!/usr/bin/env bash
# Digits: the defended rows of the adversarial-training comparison over the whole eps grids.
# The natural and the PGD-AT classifier of training seed 0 behind the EBM defense (`quick`'s
# defense settings), attacked with BPDA+EOT and APGD-CE (EOT of the BPDA gradient); the report's
# headline is the per-image worst case over both. 200 test images, attack seed 0.
# Every sweep is resumable (--resume) and runs under the shared CPU lock; a finished sweep (its
# JSON written) is skipped, so run the script again to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${EBMCTL:-.venv/bin/ebmctl}
LOCK=${LOCK:-/tmp/ebmctl-cpu.lock}
IN=docs/adversarial-training/digits
OUT=docs/adversarial-training
export EBMCTL_AUTOTUNE=${EBMCTL_AUTOTUNE:-on}

run() {
    local out="${*: -1}"
    if [ -f "$out" ]; then echo "done: $out"; return 0; fi
    flock "$LOCK" "$EB" attack -p quick "$@" --resume
}

for m in nat at; do
    run -m "$IN/$m-s0.safetensors" --ebm "$IN/digits-ebm.safetensors" --defended-only \
        --method bpda-eot,apgd-ce --sweep attack.eps=0.05,0.1,0.15,0.2,0.3 \
        --out "$OUT/linf-$m-defended-grid.json"
    run -m "$IN/$m-s0.safetensors" --ebm "$IN/digits-ebm.safetensors" --defended-only \
        --method bpda-eot,apgd-ce --norm l2 --sweep attack.eps_l2=0.5,1.0,1.5,2.0,3.0 \
        --out "$OUT/l2-$m-defended-grid.json"
done
