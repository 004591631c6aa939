"""A tiny defended attack evaluation, run by tests/test_distributed.py under torchrun (2 gloo
processes) and in-process for the single-process reference. Not collected by pytest."""

from __future__ import annotations

import json
import sys

import torch

N_IMAGES, CHUNK, SEED = 8, 3, 5  # chunks at 0, 3, 6: rank 0 runs two of them, rank 1 one


def build():
    from ebmctl.bench import lightweight_net
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.plugins import get_registries
    from ebmctl.testing import tiny_bundle

    reg = get_registries()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = reg.models.get("small-cnn").build(in_channels=1, num_classes=3, width=4,
                                                image_size=8)
    model = TaskModel(clf, "[-1,1]", 8, 1).eval()
    ebm = EnergyModel(lightweight_net(8, 1, 4, torch.device("cpu")), 0.01, 5e-5, 8, 1)
    defense = Defense(model, ebm, steps=3, reps=2)
    attack = reg.attacks.get("bpda-eot")(norm="linf", eps=0.1, step_size=0.03, steps=2,
                                         restarts=1, eot_reps=2, verify_reps=2)
    task = reg.tasks.get("classification")
    data = tiny_bundle(n=6 * N_IMAGES).test
    return attack, defense, task, data.x[:N_IMAGES], data.y[:N_IMAGES]


def comparable(res) -> dict:
    """The fields of a :class:`~ebmctl.evaluate.results.SeedResult` that must not depend on
    how chunks were spread over processes."""
    keep = ("n_images", "natural", "adversarial", "robust_by_step", "accuracy_curve",
            "natural_ok", "robust_ok", "per_image", "image_steps")
    out = {k: getattr(res, k) for k in keep}
    out["x_adv"] = res.x_adv.flatten().tolist()
    return out


def run(ctx):
    from ebmctl.evaluate.attack_eval import evaluate_attack_sharded

    torch.set_num_threads(1)
    attack, defense, task, x, y = build()
    return evaluate_attack_sharded(attack, defense, task, x, y, seed=SEED, batch_size=CHUNK,
                                   device=torch.device("cpu"), label="defended", ctx=ctx)


if __name__ == "__main__":
    from ebmctl import distributed

    ctx = distributed.init("cpu")
    try:
        res = run(ctx)
        if ctx.is_main:
            with open(sys.argv[1], "w") as fh:
                json.dump({"world_size": res.world_size, **comparable(res)}, fh)
    finally:
        distributed.shutdown()
