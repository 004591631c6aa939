#!/usr/bin/env bash
# CIFAR-10 adversarial training (profiles cifar10-classifier-at, then cifar10-classifier-at-l2)
# in resumable slices of one epoch each (--stop-after 1; the run checkpoints after every epoch),
# each under the shared CPU lock so other jobs run between slices. Run it again at any time: it
# continues from the checkpoints in each profile's out_dir and skips a finished profile.
set -uo pipefail
cd "$(dirname "$0")/.."
export EBMCTL_AUTOTUNE=off
EB=${EBMCTL:-.venv/bin/ebmctl}
LOCK=${LOCK:-/tmp/ebmctl-cpu.lock}
mkdir -p runs/at
L=runs/at/cifar.log
for p in cifar10-classifier-at cifar10-classifier-at-l2; do
  dir=$("$EB" profiles show "$p" | sed -n 's/^out_dir = "\(.*\)"/\1/p' | head -1)
  art=$dir/cifar10-classifier.safetensors
  while [ ! -f "$art" ]; do
    s=$(date +%s)
    # 900 s guards against a hung slice (one epoch takes 4-12 min on 2 cores)
    flock "$LOCK" timeout 900 "$EB" train classifier -p "$p" --resume --stop-after 1 \
        >> "runs/at/cifar-$p.out" 2>&1
    rc=$?
    echo "$(date -u +%FT%TZ) $p slice rc=$rc seconds=$(( $(date +%s) - s ))" >> "$L"
    if [ $rc -ne 0 ]; then echo "$p failed rc=$rc (124: a slice took over 900 s)" >> "$L"; exit $rc; fi
  done
  echo "$(date -u +%FT%TZ) $p done: $art" >> "$L"
done
