#!/usr/bin/env bash
# The gradient-masking study of docs/results/masking.md: a LeakyReLU EBM (the quickstart's) and a
# smooth-leaky EBM trained with the same recipe and budget (profile quick-smooth), each attacked
# on the first 50 digits test images at linf eps = 0.1 (20 steps of eps/4, H_adv = 8,
# K_def = 200, H_def = 8), plus an eps sweep and worst-of-10 resubmissions.
#
#   scripts/masking_study_digits.sh            # every job, one after another
#   scripts/masking_study_digits.sh JOB ...    # only these jobs (names below), e.g. to run two
#                                              # queues side by side with run.threads=1
# Each job resumes from its per-chunk results if interrupted (run it again). Run
# `ebmctl quickstart` first (it trains the classifier and the LeakyReLU EBM).
set -euo pipefail
EB=${EBMCTL:-.venv/bin/ebmctl}
OUT=${OUT:-runs/masking}
CLF=${CLF:-$(ls -t runs/quickstart/classifier-*.safetensors | head -1)}
LEAKY=${LEAKY:-$(ls -t runs/quickstart/ebm-*.safetensors | head -1)}
SMOOTH=${SMOOTH:-$OUT/ebm-smooth.safetensors}
mkdir -p "$OUT"
# the shared protocol: 50 images, 20 steps of eps/4, H_adv = 8, one thread per job
P=(-p quick --seeds 0 --n-images 50 --set attack.eot_reps=8 --set run.threads=1 --resume)
step() { python3 -c "print($1/4)"; }  # linf step eps/4

job_train_smooth() {  # same recipe, budget and seed as the quickstart's EBM; only the activation differs
  [ -f "$SMOOTH" ] || "$EB" train ebm -p quick-smooth --seed 0 -o "$SMOOTH"
}
attack() {  # attack EBM NAME EPS [ebmctl attack options...]
  local ebm=$1 name=$2 eps=$3; shift 3
  "$EB" attack "${P[@]}" -m "$CLF" --ebm "$ebm" --eps "$eps" --set attack.steps=20 \
    --set attack.step_size="$(step "$eps")" -o "$OUT/$name.json" "$@"
}
# eps = 0.1: the thesis' attack and the exact/smoothed chain gradients, with the undefended PGD
# reference, the sanity checks (transfer, eps = 0 control) and worst-of-10 resubmissions (H = 1, 8)
RESUB=(--set evaluate.resubmissions=10 --set evaluate.eot_reps=1,8 --set attack.sanity_images=20)
job_leaky_main()  { attack "$LEAKY"  leaky-main  0.1 --method bpda-eot,smooth-eot "${RESUB[@]}"; }
job_smooth_main() { attack "$SMOOTH" smooth-main 0.1 --method bpda-eot,full-eot "${RESUB[@]}"; }
# APGD with the margin loss (Croce et al. 2022); the smooth EBM's gradient is exact through the
# chain, the LeakyReLU EBM's exact gradient is BPDA's (piecewise-linear U: zero Hessian a.e.)
job_leaky_apgd()  { attack "$LEAKY"  leaky-apgd-margin  0.1 --defended-only --method apgd-ce \
                      --set attack.loss=margin --set attack.gradient=bpda --set attack.sanity=false; }
job_smooth_apgd() { attack "$SMOOTH" smooth-apgd-margin 0.1 --defended-only --method apgd-ce \
                      --set attack.loss=margin --set attack.gradient=full --set attack.sanity=false; }
# surrogate chain (Lee & Kim 2023): differentiate through K' = 50 of the 200 steps
job_smooth_surrogate() { attack "$SMOOTH" smooth-surrogate50 0.1 --defended-only \
                           --method full-eot --set attack.gradient_steps=50 --set attack.sanity=false; }
# fixed randomness (Liu & Wei 2025): the attacker's replicates reuse one noise stream
job_leaky_common()  { attack "$LEAKY"  leaky-common-noise  0.1 --defended-only --method bpda-eot \
                        --set attack.common_noise=true --set attack.sanity=false; }
job_smooth_common() { attack "$SMOOTH" smooth-common-noise 0.1 --defended-only --method full-eot \
                        --set attack.common_noise=true --set attack.sanity=false; }
# the defense-aware loss (Tramer et al. 2020): loss - lambda * U(x_adv), lambda swept around the
# scale where lambda*|grad U| meets the mean |grad CE| (about 1e-4 for these EBMs)
LAMBDAS=${LAMBDAS:-0.00001 0.0001 0.001}
job_leaky_energy()  { for l in $LAMBDAS; do attack "$LEAKY"  "leaky-energy-$l"  0.1 \
                        --defended-only --method bpda-eot --set attack.energy_weight=$l \
                        --set attack.sanity=false; done; }
job_smooth_energy() { for l in $LAMBDAS; do attack "$SMOOTH" "smooth-energy-$l" 0.1 \
                        --defended-only --method bpda-eot --set attack.energy_weight=$l \
                        --set attack.sanity=false; done; }
# the eps sweep (0.1 is in *-main)
job_leaky_sweep()  { for e in 0.05 0.15; do attack "$LEAKY"  "leaky-eps$e"  $e \
                       --method bpda-eot --set attack.sanity=false; done; }
job_smooth_sweep() { for e in 0.05 0.15; do attack "$SMOOTH" "smooth-eps$e" $e \
                       --method bpda-eot --set attack.sanity=false; done; }
# is the exact-gradient curve flat? the same attack with twice the steps
job_smooth_full_long() { attack "$SMOOTH" smooth-full-40steps 0.1 --defended-only --method full-eot \
                           --set attack.steps=40 --set attack.sanity=false; }
# the exact chain gradient at the other radii (about 5x a BPDA run each)
job_smooth_sweep_full() { for e in 0.15 0.05; do attack "$SMOOTH" "smooth-full-eps$e" $e \
                            --defended-only --method full-eot --set attack.sanity=false; done; }

ALL=(train_smooth leaky_main smooth_main leaky_apgd smooth_apgd smooth_surrogate leaky_common
     smooth_common leaky_energy smooth_energy leaky_sweep smooth_sweep smooth_full_long smooth_sweep_full)
[ $# -gt 0 ] || set -- "${ALL[@]}"
for j in "$@"; do
  echo "== $j"; "job_$j"
done
