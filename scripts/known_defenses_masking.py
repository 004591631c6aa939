"""The masking warning on a naive evaluation (docs/results/known-defenses.md): bit-depth reduction
wrapped as a plain function that *claims* a backward pass (``differentiable = True``), as a
naive user would declare it, so PGD differentiates through ``torch.round`` (gradient zero almost
everywhere: shattered gradients, Athalye, Carlini & Wagner 2018). ``ebmctl.evaluate`` runs that
PGD (``full-eot``, no EOT) beside the transfer attack; the report's verdict must say "gradient
masking suspected". Then the same defense declared honestly (the built-in ``bit-depth``,
attacked with BPDA) for comparison. Prints one JSON object.

    EBMCTL_AUTOTUNE=off python scripts/known_defenses_masking.py \\
        runs/known-defenses/digits/classifier.safetensors --bits 1 --eps 0.1 --steps 40 \\
        --step-size 0.02 --out runs/known-defenses/digits/masking.json
"""

from __future__ import annotations

import argparse
import json

import torch

import ebmctl
from ebmctl.context import load_dataset
from ebmctl.data_utils import pick_subset
from ebmctl.models import TaskModel
from ebmctl.profiles import resolve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classifier")
    ap.add_argument("-p", "--profile", default="quick")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--bits", type=int, default=1)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--step-size", type=float, default=0.02)
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = resolve(args.profile, args.set)
    held = pick_subset(load_dataset(cfg).split("test"), args.n_images)
    model = TaskModel.load(args.classifier, torch.device("cpu")).eval()
    levels = 2**args.bits - 1

    def squeeze(x):  # Xu et al.'s bit-depth reduction, with autograd's zero gradient
        return torch.round(x * levels) / levels

    squeeze.differentiable = True  # the naive claim under test
    common = dict(
        eps=args.eps,
        steps=args.steps,
        step_size=args.step_size,
        batch_size=args.n_images,
        sanity=False,
        seeds=(0,),
    )
    out = {}
    for label, defended, attacks in (
        (
            "naive: PGD through torch.round (claimed differentiable)",
            ebmctl.defend(model, purifier=squeeze, gradient="full"),
            ["full-eot", "transfer"],
        ),
        (
            "honest: bit-depth without a backward pass, BPDA",
            ebmctl.defend(model, purifier=f"bit-depth:bits={args.bits}"),
            ["bpda-eot", "transfer"],
        ),
    ):
        rep = ebmctl.evaluate(defended, held.x, held.y, attacks, **common).to_json()
        row = rep["results"]["defended"]
        out[label] = {
            "natural": row["natural"],
            "attacks": {n: a["adversarial_mean"] for n, a in row["attacks"].items()},
            "worst_case": row["adversarial"],
            "gradient_masking": row.get("gradient_masking"),
        }
    out["settings"] = {
        "profile": args.profile,
        "bits": args.bits,
        "eps": args.eps,
        "steps": args.steps,
        "step_size": args.step_size,
        "n_images": len(held.x),
        "precision": "fp32",
    }
    text = json.dumps(out, indent=2)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
