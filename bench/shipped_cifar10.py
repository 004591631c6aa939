"""Measure the shipped CIFAR-10 EBM + classifier (or any pair): what `docs/results/shipped-cifar10.md` reports.

    .venv/bin/python bench/shipped_cifar10.py --n 64 --steps 15,150,300,1500 --out docs/shipped

Reports, on held-out images of the profiles' split (never trained on by either model):
classifier accuracy; the fraction of images whose classifier label survives L Langevin steps
started from them (a convergent EBM keeps it); defended (purified, EOT-averaged) natural accuracy;
sample grids after each L. Attacks are run with `ebmctl attack` (see docs/results/shipped-cifar10.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ebmctl.artifacts import atomic_write_json, load_artifact
from ebmctl.context import load_dataset
from ebmctl.defense import Defense
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.profiles import resolve
from ebmctl.shipped import DEFAULT_CLASSIFIER, DEFAULT_EBM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ebm", default=str(DEFAULT_EBM))
    ap.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER))
    ap.add_argument("--n", type=int, default=64, help="held-out images")
    ap.add_argument("--steps", default="15,150,300,1500", help="Langevin lengths L")
    ap.add_argument("--defense-steps", type=int, default=0, help="K_def (0 = the EBM profile's)")
    ap.add_argument("--eot", type=int, default=8, help="H_def replicates for defended accuracy")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="docs/shipped")
    ap.add_argument("--save-heldout", default="", help="also save the first 32 held-out images "
                    "(uint8) and labels here, for tests/test_shipped.py")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    out = Path(args.out)
    ebm_art = load_artifact(args.ebm, "ebm")
    cfg = resolve(None).with_overrides({k: v for k, v in _flat(ebm_art.config).items()
                                        if k.startswith("data.")}, "ebm artifact")
    bundle = load_dataset(cfg)
    split = bundle.split(args.split)
    # A seeded random subset: the split is sorted by class, so a prefix would be all airplanes.
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:args.n]
    x, y = split.x[pick].to(dev), split.y[pick].to(dev)
    if args.save_heldout:
        from safetensors.torch import save_file

        save_file({"x": (x[:32] * 255).round().to(torch.uint8).contiguous(),
                   "y": y[:32].contiguous()}, args.save_heldout,
                  metadata={"source": f"cifar10 {args.split} split, profile {ebm_art.config.get('data')}"})
    energy = EnergyModel.load(args.ebm, dev)
    clf = TaskModel.load(args.classifier, dev).eval()
    t0 = time.time()
    with torch.no_grad():
        clean_pred = clf(x).argmax(1)
    report = {"ebm": str(args.ebm), "classifier": str(args.classifier), "split": args.split,
              "n_images": len(x), "clean_accuracy": (clean_pred == y).float().mean().item(),
              "label_survival": {}, "accuracy_after": {}}
    lengths = sorted(int(s) for s in args.steps.split(","))
    cur, done = x, 0
    for L in lengths:  # one chain, extended: the L-step states are prefixes of one trajectory
        cur = energy.purify01(cur, L - done, (0, "shipped-longrun", L))
        done = L
        with torch.no_grad():
            pred = clf(cur.clamp(0, 1)).argmax(1)
        report["label_survival"][L] = (pred == clean_pred).float().mean().item()
        report["accuracy_after"][L] = (pred == y).float().mean().item()
        save_grid(cur[:64].clamp(0, 1), out / f"samples-L{L}.png")
        print(f"L={L}: label kept {report['label_survival'][L]:.3f}, "
              f"accuracy {report['accuracy_after'][L]:.3f} ({time.time() - t0:.0f}s)", flush=True)
    k_def = args.defense_steps or int(ebm_art.config.get("defense", {}).get("steps", 300))
    defense = Defense(clf, energy, steps=k_def, reps=args.eot)
    pred = defense.predict(x, args.eot, (0, "shipped-defended")).argmax(1)
    report["defended_natural_accuracy"] = {"steps": k_def, "eot_reps": args.eot,
                                           "accuracy": (pred == y).float().mean().item()}
    report["seconds"] = round(time.time() - t0, 1)
    save_grid(x[:64], out / "held-out-start.png")
    save_curves(out / "label-survival.png",
                {"label kept": (lengths, [report["label_survival"][L] for L in lengths]),
                 "accuracy": (lengths, [report["accuracy_after"][L] for L in lengths])},
                "Langevin steps L", "fraction", "shipped EBM: long-run label survival", logx=True)
    atomic_write_json(out / "shipped-eval.json", report)
    print(json.dumps(report, indent=2))


def _flat(d: dict, prefix: str = "") -> dict:
    outd = {}
    for k, v in d.items():
        if isinstance(v, dict):
            outd.update(_flat(v, f"{prefix}{k}."))
        else:
            outd[f"{prefix}{k}"] = v
    return outd


if __name__ == "__main__":
    main()
