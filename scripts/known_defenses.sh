#!/usr/bin/env bash
# The measurements of docs/results/known-defenses.md: each built-in input-transformation purifier
# attacked naively (PGD through the purifier where it has a backward pass, with no EOT; transfer
# from the bare classifier always), with BPDA (H_adv = 1) and, for the stochastic one, with
# BPDA+EOT; then the per-image worst case over all of them (scripts/known_defenses_table.py).
#
#   scripts/known_defenses.sh digits     # quickstart profile: eps 0.1, 40 steps of 0.02, 200 images
#   scripts/known_defenses.sh cifar10    # shipped CIFAR-10 classifier: eps 8/255, 20 steps of
#                                        # 2/255, 200 held-out images (profile cifar10-attack)
# Every run is fp32 with the autotuner off; the reports land in runs/known-defenses/<set>/.
set -euo pipefail
EB=${EBMCTL:-.venv/bin/ebmctl}
SET=${1:?digits or cifar10}
OUT=runs/known-defenses/$SET
mkdir -p "$OUT"
export EBMCTL_AUTOTUNE=off
if [ "$SET" = digits ]; then
  CLF=$OUT/classifier.safetensors
  [ -f "$CLF" ] || "$EB" train classifier -p quick --seed 0 -o "$CLF"
  P=(-p quick -m "$CLF" --set langevin.precision=fp32 --set attack.sanity=false)
  SPECS=("jpeg:quality=75" "bit-depth:bits=1" "median:size=2" "gaussian-noise:sigma=0.1")
  BITS=1 EPS=0.1 STEPS=40 ALPHA=0.02
else
  CLF=ebmctl/weights/cifar10-classifier.safetensors
  P=(-p cifar10-attack -m "$CLF" --set langevin.precision=fp32 --set attack.sanity=false
     --set data.root=../shared/data/cifar10 --set run.threads=2)
  SPECS=("jpeg:quality=75" "bit-depth:bits=5" "median:size=2" "gaussian-noise:sigma=0.03")
  BITS=5 EPS=$(python3 -c "print(8/255)") STEPS=20 ALPHA=$(python3 -c "print(2/255)")
fi
"$EB" attack "${P[@]}" --undefended-only -o "$OUT/undefended.json" --force
for spec in "${SPECS[@]}"; do
  name=${spec%%:*}
  case $name in
    median|gaussian-noise) naive=full-eot,transfer ;;  # a backward pass: PGD through it, no EOT
    *) naive=transfer ;;                               # none: what a naive evaluation can run
  esac
  "$EB" attack "${P[@]}" --defended-only --purifier "$spec" --method "$naive" \
    --set attack.eot_reps=1 -o "$OUT/$name.naive.json" --force
  "$EB" attack "${P[@]}" --defended-only --purifier "$spec" --method bpda-eot \
    --set attack.eot_reps=1 -o "$OUT/$name.bpda.json" --force
  if [ "$name" = gaussian-noise ]; then
    "$EB" attack "${P[@]}" --defended-only --purifier "$spec" --method bpda-eot \
      --set attack.eot_reps=8 -o "$OUT/$name.bpda-eot.json" --force
  fi
done
"$EB" attack "${P[@]}" --defended-only --purifier "${SPECS[1]}" --method square \
  --set attack.steps=1000 --set attack.eot_reps=1 -o "$OUT/bit-depth.square.json" --force
.venv/bin/python scripts/known_defenses_masking.py "$CLF" -p "${P[1]}" --bits "${BITS}" \
  --eps "$EPS" --steps "$STEPS" --step-size "$ALPHA" --out "$OUT/masking.json" \
  --set data.root=../shared/data/cifar10
.venv/bin/python scripts/known_defenses_table.py "$OUT" > "$OUT/table.md"
