#!/usr/bin/env bash
# The CPU figures in the README (bench/README.md): run from the repository root.
#   bench/cpu.sh [OUT_DIR]      (default bench/results)
# 1. the quickstart's geometry (8x8 digits, n_f=32) at the training batch and a purification
#    batch, with the naive loop also timed in a default-OpenMP process, plus attack steps;
# 2. the lightweight EBM at 32x32x3 (CIFAR-10) at batch 100 and 1500 (few steps: ~minutes).
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
ebmctl="${EBMCTL:-.venv/bin/ebmctl}"
"$ebmctl" bench --batch 128,800 --image-size 8 --channels 1 --langevin-steps 10 --repeats 3 \
    --attack-langevin-steps 20 --out "$out/cpu-digits8.json"
"$ebmctl" bench --batch 100,1500 --langevin-steps 2 --repeats 2 --no-attack --no-child-naive \
    --out "$out/cpu-cifar32.json"
