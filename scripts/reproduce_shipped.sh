#!/usr/bin/env bash
# Reproduce the shipped CIFAR-10 defaults (ebmctl/weights/) with `ebmctl train` itself.
# Needs the CIFAR-10 training JPEGs in ImageFolder layout at DATA (default /work/shared/data/cifar10,
# i.e. DATA/train/<class>/*.jpg). Both profiles use the same seeded split (10% validation,
# 2% test held out), so the evaluation images are never trained on.
# Every step resumes from its checkpoint if interrupted: just run the script again.
set -euo pipefail
DATA=${DATA:-/work/shared/data/cifar10}
OUT=${OUT:-runs/shipped}
EB=${EBMCTL:-.venv/bin/ebmctl}
PY=${PYTHON:-.venv/bin/python}
"$EB" train classifier --profile cifar10-classifier --set data.root="$DATA" \
    --out "$OUT/cifar10-classifier.safetensors" --resume
"$EB" train ebm --profile cifar10-ebm --set data.root="$DATA" \
    --out "$OUT/cifar10-ebm.safetensors" --resume
"$PY" bench/shipped_cifar10.py --ebm "$OUT/cifar10-ebm.safetensors" \
    --classifier "$OUT/cifar10-classifier.safetensors" --n 200 --steps 20,200,1500 \
    --defense-steps 100 --eot 8 --out docs/shipped
# Natural and adversarial accuracy on 200 held-out test images (profile cifar10-attack):
# undefended PGD + APGD-CE (20 steps), defended BPDA+EOT (20 steps of eps/4, H_adv 2, K_def 100,
# H_def 8; the headline is the per-image worst case, with the eps = 0 control beside it).
for E in 2 4 8; do
    "$EB" attack --profile cifar10-attack --set data.root="$DATA" --undefended-only \
        -m "$OUT/cifar10-classifier.safetensors" --eps "$E/255" \
        --set attack.steps=20 --set attack.step_size="$E/1020" \
        --out "$OUT/attack-undefended-eps$E.json" --resume
    "$EB" attack --profile cifar10-attack --set data.root="$DATA" --defended-only \
        -m "$OUT/cifar10-classifier.safetensors" --ebm "$OUT/cifar10-ebm.safetensors" \
        --eps "$E/255" --set attack.step_size="$E/1020" \
        --out "$OUT/attack-defended-eps$E.json" --resume
done
# Copy into the package once the numbers in docs/shipped/shipped-eval.json look right:
#   cp "$OUT"/cifar10-{ebm,classifier}.safetensors ebmctl/weights/
