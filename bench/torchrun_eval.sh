#!/usr/bin/env bash
# Sharded defended evaluation on one node with N processes (gloo on CPU, NCCL on GPUs); the
# merged report equals a single-process run with the same seeds.
#   bench/torchrun_eval.sh N CLASSIFIER EBM OUT.json [extra ebmctl attack options]
set -euo pipefail
n="$1"; clf="$2"; ebm="$3"; out="$4"; shift 4
torchrun="${TORCHRUN:-.venv/bin/torchrun}"
"$torchrun" --standalone --nproc_per_node "$n" -m ebmctl.torchrun \
    attack --profile quick -m "$clf" --ebm "$ebm" -o "$out" "$@"
