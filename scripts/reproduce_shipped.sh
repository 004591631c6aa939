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
    --classifier "$OUT/cifar10-classifier.safetensors" --n 64 --steps 15,150,300,1500 \
    --out docs/shipped
# Copy into the package once the numbers in docs/shipped/shipped-eval.json look right:
#   cp "$OUT"/cifar10-{ebm,classifier}.safetensors ebmctl/weights/
