#!/usr/bin/env bash
# The longer-trained CIFAR-10 EBM (profile cifar10-ebm-long: 15,000 mid-run updates, the health
# check every 1,000). It checkpoints every 100 updates; run this again at any time and it
# continues from runs/cifar10-ebm-long/ (a resume with other settings is refused). One thread,
# at low priority, so another job can use the second core.
set -euo pipefail
cd "$(dirname "$0")/.."
EB=${EBMCTL:-.venv/bin/ebmctl}
OUT=runs/cifar10-ebm-long/cifar10-ebm.safetensors
export EBMCTL_AUTOTUNE=${EBMCTL_AUTOTUNE:-off}
if [ -f "$OUT" ]; then echo "finished: $OUT"; exit 0; fi
nice -n 10 "$EB" train ebm -p cifar10-ebm-long --out "$OUT" --resume
