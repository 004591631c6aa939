"""The smallest attack run the purifier tests share: 6 images, 2 steps, 2 replicates, no
sanity checks, fp32 on the CPU, as `--set` arguments for `ebmctl attack`."""

SETS = [
    "attack.n_images=6",
    "attack.batch_size=6",
    "attack.steps=2",
    "attack.eot_reps=2",
    "attack.restarts=1",
    "defense.eot_reps=2",
    "attack.seeds=0",
    "attack.sanity=false",
    "run.device=cpu",
    "langevin.precision=fp32",
]


def set_args() -> list[str]:
    """``SETS`` as ``--set KEY=VALUE`` command-line arguments."""
    return sum((["--set", s] for s in SETS), [])
