#!/usr/bin/env bash
# The GPU figures (needs CUDA; the same command picks the GPU path by itself):
# every variant (fp32, bf16 + channels_last, + torch.compile) at batch 100 and 1500 for the
# lightweight EBM at 32x32x3, and BPDA+EOT / full-gradient (K=1500, checkpointed) attack steps
# with the allocator's peak memory.
#   bench/gpu.sh [OUT_DIR]      (default bench/results)
set -euo pipefail
out="${1:-bench/results}"
mkdir -p "$out"
ebmctl="${EBMCTL:-.venv/bin/ebmctl}"
"$ebmctl" bench --device cuda --batch 100,1500 --langevin-steps 50 --repeats 5 --all-variants \
    --attack-langevin-steps 1500 --out "$out/gpu-cifar32.json"
