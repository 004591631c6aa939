#!/usr/bin/env bash
# The digits attack suite of docs/attacks.md, on the quickstart's models (run `ebmctl quickstart`
# first). Each command resumes from its per-chunk results if interrupted: run the script again.
# Run one at a time on a small machine: every command is CPU-bound.
set -euo pipefail
EB=${EBMCTL:-.venv/bin/ebmctl}
OUT=${OUT:-runs/attack-suite}
CLF=$(ls runs/quickstart/classifier-*.safetensors | head -1)
EBM=$(ls runs/quickstart/ebm-*.safetensors | head -1)
M=(-m "$CLF" --ebm "$EBM")
mkdir -p "$OUT"
# l-inf eps = 0.1 (the quick profile): every attack on the defended model, PGD + APGD-CE on the
# undefended one; the headline is the per-image worst case over them; 3 attack seeds
"$EB" attack -p quick "${M[@]}" --seeds 0,1,2 \
    --method bpda-eot,full-eot,smooth-eot,apgd-ce,apgd-dlr,transfer,square \
    --set attack.undefended_method=pgd,apgd-ce --out "$OUT/linf.json" --resume
# l2 eps = 0.5 (step eps/4 by default)
"$EB" attack -p quick "${M[@]}" --seeds 0,1,2 --norm l2 --eps 0.5 --method bpda-eot,full-eot \
    --set attack.undefended_method=pgd,apgd-ce --out "$OUT/l2.json" --resume
