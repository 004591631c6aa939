"""Benchmark (not a test): training throughput of a task classifier on this CPU, in images/s
and GFLOP/s, for the architecture and optimizer a profile names (default: cifar10-airbench).

FLOPs are counted, not estimated from a paper: forward hooks add 2·MACs of every Conv2d and
Linear for one image; a training iteration is counted as 3× that (forward, input gradient,
weight gradient), the usual convention (airbench's 0.36 PFLOP uses it too). BatchNorm, GELU and
pooling are left out of the count but not out of the time. The timed loop is
``train_task_model``'s own iteration (augmentation, forward, smoothed loss, backward, SGD step,
lookahead) on random [0,1] images, after ``--warmup`` untimed iterations.

    flock /tmp/ebmctl-cpu.lock .venv/bin/python bench/classifier_throughput.py \
        --profile cifar10-airbench --threads 2 --iters 6 --out runs/airbench/throughput.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def forward_flops(net, x) -> int:
    """2·MACs of every Conv2d and Linear for input ``x`` [B, C, H, W], per image."""
    import torch

    total = [0]

    def conv_hook(m, inp, out):
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]  # cin/groups · kh · kw
        total[0] += 2 * out.numel() * k

    def linear_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = [
        m.register_forward_hook(conv_hook if isinstance(m, torch.nn.Conv2d) else linear_hook)
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        net.train()
        net(x)
    for h in hooks:
        h.remove()
    return total[0] // len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cifar10-airbench")
    ap.add_argument("--set", action="append", default=[], help="profile override key=value")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from ebmctl.architectures import build_model
    from ebmctl.context import environment, get_task
    from ebmctl.contracts import DatasetBundle, Split
    from ebmctl.models import TaskModel
    from ebmctl.profiles import resolve
    from ebmctl.seeds import make_generator
    from ebmctl.training.task_model import Lookahead, _optimizer, task_lr

    torch.set_num_threads(args.threads)
    cfg = resolve(args.profile, args.set)
    task = get_task(cfg)
    b, s = cfg["model.batch_size"], args.size
    g = torch.Generator().manual_seed(0)  # random images: only the cost matters
    x = torch.rand(b, 3, s, s, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    split = Split(x, y)
    bundle = DatasetBundle("random", split, split, split, 10, [str(i) for i in range(10)], {})
    net, arch, arch_args = build_model("task", cfg, bundle, (0, "bench"), task)
    flops = forward_flops(net, x[:8] * 2 - 1)
    model = TaskModel(net, "[-1,1]", s, 3, task.model_kind, task.name)
    fmt = torch.channels_last if cfg["model.channels_last"] else torch.contiguous_format
    net.to(memory_format=fmt)
    opt = _optimizer(net, cfg)
    every = cfg["model.lookahead_every"]
    la = Lookahead(net, every, cfg["model.lookahead_decay"]) if every else None
    gen = make_generator("cpu", 0, "bench")
    model.train()
    times = []
    for it in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = task_lr(cfg, it, 100, []) * group.get("lr_scale", 1.0)
        xb, yb = task.augment(x, y, gen, cfg)
        loss = task.train_loss(model(xb.contiguous(memory_format=fmt)), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if la is not None:
            la.step(it + 1, 100)
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
    per_iter = sorted(times)[len(times) // 2]  # the median iteration
    ips = b / per_iter
    row = {
        "profile": args.profile,
        "arch": arch,
        "arch_args": arch_args,
        "batch_size": b,
        "threads": args.threads,
        "channels_last": cfg["model.channels_last"],
        "forward_mflop_per_image": round(flops / 1e6, 1),
        "train_mflop_per_image": round(3 * flops / 1e6, 1),
        "median_iteration_s": round(per_iter, 3),
        "images_per_s": round(ips, 1),
        "gflop_per_s": round(3 * flops * ips / 1e9, 1),
        "epoch_s_44000_images": round(44000 / ips, 1),
        "iterations": [round(t, 3) for t in times],
        "precision": "fp32",
        "environment": environment(cfg, torch.device("cpu")),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "environment"}, indent=1))
    if args.out:
        from ebmctl.artifacts import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, row)


if __name__ == "__main__":
    main()
