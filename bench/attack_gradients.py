"""Benchmark (not a test): wall time and peak memory of one attack step (one EOT gradient
estimate, whose replicates also screen), BPDA versus the full gradient through the Langevin
chain, at K = 100 and K = 1500, on 32×32×3 images with H_adv = 8 by default.

Each configuration runs in its own subprocess so that peak memory (CUDA: max allocated;
CPU: peak RSS growth over the process's baseline) is its own. Prints a table, the full/BPDA
ratios at each K against the targets (memory ≤ 2×, time per step ≤ 3× the BPDA step) and writes JSON.

    .venv/bin/python bench/attack_gradients.py --out runs/bench-attack.json        # CPU
    .venv/bin/python bench/attack_gradients.py --device cuda --images 8 --out runs/b.json
    .venv/bin/python bench/attack_gradients.py --segments 12 --out runs/b.json  # + segment 12
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def one(args) -> dict:
    import torch

    from ebmctl.attacks.gradients import eot_gradient
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.nn.ebm import LightweightEBM
    from ebmctl_classification.models import SmallCNN
    from ebmctl_classification.task import ClassificationTask

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)  # benchmark weights: random, only the cost matters
    ebm = EnergyModel(LightweightEBM(args.channels, args.size, 32).to(dev).eval(), 0.01, 5e-5,
                      args.size, args.channels)
    clf = TaskModel(SmallCNN(args.channels, 10, 32, args.size), image_size=args.size,
                    channels=args.channels).to(dev).eval()
    defense = Defense(clf, ebm, steps=args.k, reps=args.reps)
    g = torch.Generator(device=dev).manual_seed(0)
    images = args.images or max(1, args.rows // args.reps)
    x = torch.rand(images, args.channels, args.size, args.size, generator=g, device=dev)
    y = torch.zeros(images, dtype=torch.long, device=dev)
    task = ClassificationTask()
    # one short estimate first, so one-time costs (kernel loading, the first double backward,
    # allocator pools) are not charged to the step measured
    warm = Defense(clf, ebm, steps=min(2, args.k), reps=args.reps)
    eot_gradient(warm, x, y, args.reps, (1,), task.attack_loss, args.mode)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    eot_gradient(defense, x, y, args.reps, (0,), task.attack_loss, args.mode,
                 segment=args.segment)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    dt = time.time() - t0
    chains = images * args.reps * args.k
    return {"mode": args.mode, "K": args.k, "segment": args.segment or "sqrt(K)",
            "rows": images * args.reps, "size": args.size, "seconds": round(dt, 3),
            "chain_image_steps_per_s": round(chains / dt, 1),
            "computed_image_steps": defense.image_steps,
            "peak_memory_MiB": round(peak / 2 ** 20, 1), "device": str(dev)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--rows", type=int, default=8, help="images x replicates per estimate")
    p.add_argument("--images", type=int, default=0,
                   help="images per estimate (overrides --rows: rows = images x reps)")
    p.add_argument("--reps", type=int, default=8, help="H_adv replicates per image")
    p.add_argument("--ks", default="100,1500")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--no-checkpoint-k", type=int, default=100,
                   help="also run the full gradient without checkpointing at this K (0: skip)")
    p.add_argument("--segments", default="",
                   help="also run the full gradient at the largest K with these checkpoint "
                        "segment lengths (attack.checkpoint_segment), e.g. 12,39")
    p.add_argument("--_one", default="", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="bpda", help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--segment", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        print(json.dumps(one(args)))
        return
    configs = [(m, int(k), 0) for k in args.ks.split(",") for m in ("bpda", "full")]
    if args.no_checkpoint_k:
        configs.append(("full", args.no_checkpoint_k, args.no_checkpoint_k))
    k_max = max(int(k) for k in args.ks.split(","))
    configs += [("full", k_max, int(s)) for s in args.segments.split(",") if s]
    rows = []
    for mode, k, seg in configs:
        cmd = [sys.executable, __file__, "--_one", "1", "--mode", mode, "--k", str(k),
               "--segment", str(seg), "--size", str(args.size), "--channels", str(args.channels),
               "--rows", str(args.rows), "--images", str(args.images),
               "--reps", str(args.reps), "--device", args.device,
               "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['mode']:>5} K={row['K']:>5} segment={str(row['segment']):>8} "
              f"rows={row['rows']} {row['size']}px: {row['seconds']:8.2f}s "
              f"{row['chain_image_steps_per_s']:9.1f} chain image-steps/s "
              f"peak {row['peak_memory_MiB']:8.1f} MiB", flush=True)
    summary = ratios(rows)
    for r in summary:
        print(f"K={r['K']:>5}: full/BPDA peak memory {r['memory_ratio']}x (target <= 2), "
              f"time per step {r['time_ratio']}x (target <= 3)", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"rows": rows, "ratios": summary}, indent=2)
                                  + "\n")


def ratios(rows: list[dict]) -> list[dict]:
    """Full (checkpointed, segment √K) over BPDA at each K: peak memory and seconds per step;
    None where BPDA's figure is 0 (a peak below the process's earlier high-water mark)."""
    out = []
    for bpda in (r for r in rows if r["mode"] == "bpda"):
        full = next((r for r in rows if r["mode"] == "full" and r["K"] == bpda["K"]
                     and r["segment"] == "sqrt(K)"), None)
        if full is None:
            continue
        mem = (round(full["peak_memory_MiB"] / bpda["peak_memory_MiB"], 2)
               if bpda["peak_memory_MiB"] > 0 else None)
        out.append({"K": bpda["K"], "memory_ratio": mem,
                    "time_ratio": round(full["seconds"] / bpda["seconds"], 2),
                    "memory_ok": None if mem is None else mem <= 2.0,
                    "time_ok": full["seconds"] <= 3.0 * bpda["seconds"]})
    return out


if __name__ == "__main__":
    main()
