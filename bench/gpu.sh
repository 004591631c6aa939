#!/usr/bin/env bash
# The GPU figures (needs CUDA; the same commands pick the GPU path by themselves), for
# docs/results/performance.md:
# 1. the Langevin autotuner on CUDA (--tune: fp32/bf16/fp16 autocast, NCHW/channels_last,
#    autograd or the explicit gradient, torch.compile, CUDA graphs; the table and the cached
#    choice), then every variant and `auto` at batch 100 and 1500 for the shipped CIFAR-10 EBM
#    (32x32x3), with GFLOP/s and peak_fraction against a same-precision 2048² GEMM, a BPDA+EOT
#    and a full-gradient (K=1500, checkpointed) attack step, and a mid-run training update;
# 2. the quickstart's geometry (8x8 digits, n_f=32) at the training batch and a purification
#    batch.
#   bench/gpu.sh [OUT_DIR]      (default bench/results)
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
ebmctl="${EBMCTL:-.venv/bin/ebmctl}"
"$ebmctl" bench --device cuda --ebm ebmctl/weights/cifar10-ebm.safetensors --batch 100,1500 \
    --langevin-steps 50 --repeats 5 --tune --all-variants --attack-langevin-steps 1500 \
    --train --out "$out/gpu-cifar32.json"
"$ebmctl" bench --device cuda --batch 64,1600 --image-size 8 --channels 1 --langevin-steps 100 \
    --repeats 5 --tune --all-variants --no-attack --train --train-langevin-steps 100 \
    --out "$out/gpu-digits8.json"
