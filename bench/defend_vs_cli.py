"""Benchmark (not a test): wall time of ``ebmctl.defend`` (the library wrapper) against the
``Defense`` the CLI builds, on the same batch, for one EOT forward pass and one BPDA
forward + backward pass.

Both run K Langevin steps on every one of the H replicates of each image and then the
classifier, so they should cost the same; this measures the wrapper's overhead (input range
mapping, the straight-through autograd function, re-seeding).

    .venv/bin/python bench/defend_vs_cli.py -m CLASSIFIER.safetensors --ebm EBM.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls, after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="classifier artifact")
    p.add_argument("--ebm", required=True, help="EBM artifact")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=200, help="K Langevin steps")
    p.add_argument("--reps", type=int, default=8, help="H replicates")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()

    import torch

    import ebmctl
    from ebmctl.attacks.gradients import eot_gradient
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    clf = TaskModel.load(args.model, dev)
    ebm = EnergyModel.load(args.ebm, dev)
    shape = (args.images, clf.channels, clf.image_size, clf.image_size)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(args.images, dtype=torch.long)
    ce = torch.nn.CrossEntropyLoss(reduction="none")

    cli = Defense(clf, ebm, steps=args.steps, reps=args.reps)
    lib = ebmctl.defend(clf, ebm, steps=args.steps, reps=args.reps, gradient="bpda")

    def cli_forward():
        with torch.no_grad():
            cli.predict(x, args.reps, (0,))

    def lib_forward():
        with torch.no_grad():
            lib(x)

    def cli_backward():
        eot_gradient(cli, x, y, args.reps, (0,), ce, "bpda")

    def lib_backward():
        xg = x.clone().requires_grad_(True)
        ce(lib(xg), y).sum().backward()

    rows = {name: round(timed(fn, args.repeats), 3) for name, fn in
            [("cli_forward_s", cli_forward), ("defend_forward_s", lib_forward),
             ("cli_forward_backward_s", cli_backward),
             ("defend_forward_backward_s", lib_backward)]}
    rows.update(images=args.images, steps=args.steps, reps=args.reps,
                threads=torch.get_num_threads(),
                forward_ratio=round(rows["defend_forward_s"] / rows["cli_forward_s"], 3),
                backward_ratio=round(rows["defend_forward_backward_s"]
                                     / rows["cli_forward_backward_s"], 3))
    print(json.dumps(rows, indent=2))
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
