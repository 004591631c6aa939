#!/usr/bin/env bash
# The digits attack suite of docs/results/attacks.md, on the quickstart's models (run `ebmctl quickstart`
# first). Each command resumes from its per-chunk results if interrupted: run the script again.
# Every command is CPU-bound; on a small machine run one (or two with run.threads=1) at a time.
set -euo pipefail
EB=${EBMCTL:-.venv/bin/ebmctl}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/attack-suite}
CLF=$(ls runs/quickstart/classifier-*.safetensors | head -1)
EBM=$(ls runs/quickstart/ebm-*.safetensors | head -1)
M=(-m "$CLF" --ebm "$EBM")
T=(--set run.threads=1)
mkdir -p "$OUT"
# fixer for the purification + fixer rows (README "The fixer")
[ -f runs/fixer.safetensors ] || "$EB" fix train --profile quick "${M[@]}" --stage1-epochs 10 \
    --stage2-epochs 10 --set fix.repurify_every=0 --set fix.max_images=600 "${T[@]}" \
    --out runs/fixer.safetensors
# l-inf eps = 0.1 (the quick profile, 40 steps): the cheaper attacks on all 200 images, with the
# sanity checks and the eps = 0 control; the headline is the per-image worst case over them
"$EB" attack -p quick "${M[@]}" --seeds 0 --method bpda-eot,apgd-ce,transfer,square \
    --set attack.undefended_method=pgd,apgd-ce "${T[@]}" --out "$OUT/linf.json" --resume
# the chain-gradient attacks (about 2.5x a BPDA step) on the first 50 of the same images, with
# and without the fixer
"$EB" attack -p quick "${M[@]}" --fixer runs/fixer.safetensors --defended-only --seeds 0 \
    --n-images 50 --method bpda-eot,full-eot --set attack.sanity=false "${T[@]}" \
    --out "$OUT/fixer50.json" --resume
"$EB" attack -p quick "${M[@]}" --defended-only --seeds 0 --n-images 50 --method smooth-eot \
    --set attack.sanity=false "${T[@]}" --out "$OUT/smooth50.json" --resume
# l2 eps = 0.5 (step eps/4)
"$EB" attack -p quick "${M[@]}" --seeds 0 --norm l2 --eps 0.5 --method bpda-eot \
    --set attack.undefended_method=pgd,apgd-ce --set attack.sanity=false "${T[@]}" \
    --out "$OUT/l2.json" --resume
# the per-image worst case over every attack, on the 50 images common to all reports
"$PY" scripts/worst_case_across_reports.py -p quick "$OUT/linf.json" "$OUT/fixer50.json" \
    "$OUT/smooth50.json"
