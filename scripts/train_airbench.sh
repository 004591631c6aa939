#!/usr/bin/env bash
# Train the cifar10-airbench classifier in resumable one-epoch chunks, each under the shared
# CPU lock (other jobs run between chunks). Run it again at any time: it continues from the
# checkpoint (runs/airbench/cifar10-classifier.ckpt.safetensors) and stops when the artifact
# exists. DEADLINE (a `date -d` string, optional): no chunk starts that would end after it.
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/airbench/cifar10-classifier.safetensors}
EB=${EBMCTL:-.venv/bin/ebmctl}
LOCK=${LOCK:-/tmp/ebmctl-cpu.lock}
CHUNK_S=${CHUNK_S:-480}  # one epoch (~350 s), its validation and loading the JPEGs, with margin
END=$([ -n "${DEADLINE:-}" ] && date -d "$DEADLINE" +%s || echo 0)
export EBMCTL_AUTOTUNE=off DATA OUT EB CHUNK_S END
while [ ! -f "$OUT" ]; do
    # the deadline is checked once the lock is held, so waiting for it cannot overrun
    flock "$LOCK" bash -c '
        if [ "$END" -gt 0 ] && [ $(( $(date +%s) + CHUNK_S )) -gt "$END" ]; then exit 3; fi
        "$EB" train classifier --profile cifar10-airbench --set data.root="$DATA" \
            --out "$OUT" --resume --stop-after 1' || {
        rc=$?
        if [ "$rc" -eq 3 ]; then echo "deadline: no chunk started; run again to continue"; exit 0; fi
        exit "$rc"
    }
done
echo "finished: $OUT"
