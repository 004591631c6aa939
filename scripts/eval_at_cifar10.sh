#!/usr/bin/env bash
# CIFAR-10: the naturally trained classifier against the FGSM-RS adversarially trained ones
# (l-inf 8/255 "at" and l2 0.5 "at2"; same ResNet-9 width 16), undefended and with the shipped EBM, on the 200 held-out test images
# of `cifar10-attack`, over l-inf eps in {2,4,8}/255 and l2 eps in {0.25,0.5,1.0}.
# Undefended rows: the per-image worst case over PGD, APGD-CE and APGD-DLR (50 steps, 2 restarts).
# Defended rows: BPDA+EOT with the profile's defense (K_def = 100, H_def = 8, H_adv = 2).
# Every evaluation is resumable (--resume) and runs under the shared CPU lock; run the script
# again to continue. STAGE=undefended runs only the undefended rows (minutes, not hours).
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${EBMCTL:-.venv/bin/ebmctl}
LOCK=${LOCK:-/tmp/ebmctl-cpu.lock}
STAGE=${STAGE:-all}
OUT=docs/adversarial-training/cifar10
EBM=ebmctl/weights/cifar10-ebm.safetensors
declare -A MODEL=([nat]=ebmctl/weights/cifar10-classifier.safetensors
                  [at]=$OUT/fgsm-rs-linf-8.safetensors
                  [at2]=$OUT/fgsm-rs-l2-0.5.safetensors)
export EBMCTL_AUTOTUNE=${EBMCTL_AUTOTUNE:-on}

# a finished sweep (its JSON written) is skipped: --resume continues an interrupted sweep from
# its values' parts, which are removed once the sweep is written
run() {
    local out="${*: -1}"
    if [ -f "$out" ]; then echo "done: $out"; return 0; fi
    flock "$LOCK" "$EB" attack -p cifar10-attack "$@" --resume
}

for m in nat at at2; do
    [ -f "${MODEL[$m]}" ] || { echo "missing ${MODEL[$m]}" >&2; exit 1; }
done
for m in nat at at2; do
    run -m "${MODEL[$m]}" --undefended-only \
        --set attack.undefended_method=pgd,apgd-ce,apgd-dlr --set attack.steps=50 \
        --set attack.restarts=2 --sweep attack.eps=0,2/255,4/255,8/255 \
        --out "$OUT/linf-$m-undefended.json"
done
for m in nat at at2; do
    run -m "${MODEL[$m]}" --undefended-only --norm l2 \
        --set attack.undefended_method=pgd,apgd-ce,apgd-dlr --set attack.steps=50 \
        --set attack.restarts=2 --sweep attack.eps_l2=0,0.25,0.5,1.0 \
        --out "$OUT/l2-$m-undefended.json"
done
[ "$STAGE" = undefended ] && exit 0
for m in nat at; do  # the four rows of the comparison: natural and l-inf AT, each behind the EBM
    run -m "${MODEL[$m]}" --ebm "$EBM" --sweep attack.eps=2/255,4/255,8/255 \
        --out "$OUT/linf-$m-defended.json"
    run -m "${MODEL[$m]}" --ebm "$EBM" --norm l2 --sweep attack.eps_l2=0.25,0.5,1.0 \
        --out "$OUT/l2-$m-defended.json"
done
