#!/usr/bin/env bash
# The CPU figures of docs/results/performance.md: run from the repository root.
#   bench/cpu.sh [OUT_DIR]      (default bench/results)
# 1. the quickstart's geometry (8x8 digits, n_f=32) at the training batch (64) and the defense's
#    purification batch (200 images x 8 EOT copies = 1600): the autotuner's table (--tune),
#    every variant, the naive loop also in a default-OpenMP process, a mid-run training update
#    (K=100, as the quickstart trains) and BPDA+EOT / full-gradient attack steps;
# 2. the shipped CIFAR-10 EBM (32x32x3) at batch 100 and 1500: the tuner's table, every
#    variant with GFLOP/s and peak_fraction against a 2048² fp32 GEMM (few steps: ~minutes).
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
ebmctl="${EBMCTL:-.venv/bin/ebmctl}"
"$ebmctl" bench --batch 64,1600 --image-size 8 --channels 1 --langevin-steps 20 --repeats 3 \
    --tune --all-variants --attack-langevin-steps 20 --train --train-langevin-steps 100 \
    --out "$out/cpu-digits8.json"
"$ebmctl" bench --ebm ebmctl/weights/cifar10-ebm.safetensors --batch 100,1500 \
    --langevin-steps 2 --repeats 3 --tune --all-variants --no-attack --no-child-naive \
    --out "$out/cpu-cifar32.json"
