"""`ebmctl bench`: image-steps/s of the tuned Langevin sampler vs the naive reference loop (same
run, interleaved), attack-step throughput and peak memory on the current device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (command, ebm_option, langevin_steps_option, make_config,
                                   out_option)

app = typer.Typer()


def _int_list(text: str, name: str) -> tuple[int, ...]:
    from ebmctl.errors import ConfigError

    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{name} must list positive integers, got {text!r}")
    return values


@app.command("bench", cls=command(aliases={"--steps": "--langevin-steps",
                                           "--attack-steps": "--attack-langevin-steps"}))
def bench_cmd(
    ctx: typer.Context,
    batch: str = typer.Option("100,1500", "--batch", "-b", help="sampler batch sizes"),
    steps: int = langevin_steps_option(0, "per timing (0: 50 on CUDA, 3 on CPU)"),
    repeats: int = typer.Option(3, "--repeats", help="interleaved rounds per measurement"),
    image_size: int = typer.Option(32, "--image-size", help="EBM input size (32: CIFAR-10)"),
    channels: int = typer.Option(3, "--channels", help="EBM input channels"),
    width: int = typer.Option(32, "--width", help="lightweight EBM base width n_f"),
    all_variants: bool = typer.Option(False, "--all-variants",
                                      help="also time each precision/layout/compile variant"),
    attack: bool = typer.Option(True, "--attack/--no-attack",
                                help="time BPDA+EOT and full-gradient attack steps"),
    attack_steps: int = typer.Option(0, "--attack-langevin-steps", help="the defense's Langevin "
                                     "steps K in the attack benches (0: 1500 on CUDA, 20 on "
                                     "CPU)"),
    child_naive: bool = typer.Option(True, "--child-naive/--no-child-naive",
                                     help="CPU: also time the naive loop in a fresh process "
                                     "with OpenMP's default settings"),
    tune: bool = typer.Option(False, "--tune", help="re-measure the Langevin autotuner's "
                              "choice at each batch, print every candidate and write the cache"),
    train: bool = typer.Option(False, "--train/--no-train",
                               help="also time one mid-run training update"),
    train_batch: int = typer.Option(64, "--train-batch", help="rows per training update"),
    train_steps: int = typer.Option(0, "--train-langevin-steps", help="chain length K of the "
                                    "timed training update, in Langevin steps (0: 100 on CUDA, "
                                    "5 on CPU)"),
    ebm: Optional[Path] = ebm_option(None, "to time instead of a seeded lightweight EBM (its "
                                     "image size and channels replace --image-size/--channels)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    out: Optional[Path] = out_option(None, "for the JSON report (.json; a PNG of image-steps/s "
                                     "vs batch beside it)"),
):
    """Measure the sampler (auto vs naive image-steps/s, GFLOP/s and the fraction of a
    same-precision GEMM's), attack steps/s, peak memory and optionally a training update.

    Writes the JSON report (and a PNG of image-steps/s vs batch) to --out when given."""
    from ebmctl.artifacts import atomic_write_json
    from ebmctl.bench import BenchPlan, format_table, run_bench
    from ebmctl.console import info, progress_bar
    from ebmctl.context import setup_device
    from ebmctl.errors import ConfigError

    _check_counts(nonnegative={"--langevin-steps": steps, "--attack-langevin-steps": attack_steps,
                               "--train-langevin-steps": train_steps},
                  positive={"--repeats": repeats, "--image-size": image_size,
                            "--channels": channels, "--width": width,
                            "--train-batch": train_batch})
    if image_size < 4:
        raise ConfigError("--image-size must be >= 4 for the lightweight EBM")
    if out is not None and out.suffix.lower() != ".json":
        raise ConfigError(f"--out must be a .json file, got {out}")
    if ebm is not None:
        from ebmctl.artifacts import load_artifact

        data = load_artifact(ebm, "ebm").data
        image_size, channels = int(data["image_size"]), int(data["channels"])
    plan = BenchPlan(batches=_int_list(batch, "--batch"), image_size=image_size,
                     channels=channels, width=width, steps=steps, repeats=repeats,
                     all_variants=all_variants, attack=attack, attack_steps=attack_steps,
                     child_naive=child_naive, tune=tune, train=train, train_batch=train_batch,
                     train_steps=train_steps, ebm=str(ebm) if ebm else "")
    cfg = make_config(ctx)
    dev = setup_device(cfg)
    with progress_bar(len(plan.batches) + int(attack) + int(train), f"bench on {dev}",
                      quiet=as_json) as bar:
        report = run_bench(plan, dev, progress=lambda: bar.advance(1))
    if out is not None:
        atomic_write_json(out, report)
        _save_throughput_plot(Path(out).with_suffix(".png"), report["sampler"],
                              f"Langevin throughput on {dev} ({image_size}x{image_size}x{channels})")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    if out is not None:
        info(f"wrote {out} and {Path(out).with_suffix('.png')}")


def _check_counts(nonnegative: dict[str, int], positive: dict[str, int]) -> None:
    """Refuse a negative step count or a non-positive size, naming the option.

    Raises:
        ConfigError: the first option out of range.
    """
    from ebmctl.errors import ConfigError

    for name, value in nonnegative.items():
        if value < 0:
            raise ConfigError(f"{name} must be >= 0")
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1")


def _save_throughput_plot(path: Path, rows: list[dict], title: str) -> None:
    """Image-steps/s against batch for the naive loop and every timed variant (log x)."""
    from ebmctl.evaluate.plots import save_curves

    batches = [r["batch"] for r in rows]
    curves = {"naive": (batches, [r["naive_image_steps_per_s"] for r in rows])}
    for name in rows[0]["variants"]:
        curves[name] = (batches, [r["variants"][name]["image_steps_per_s"] for r in rows])
    if any("naive_default_openmp_image_steps_per_s" in r for r in rows):
        curves["naive, default OpenMP process"] = (
            batches, [r.get("naive_default_openmp_image_steps_per_s", 0) for r in rows])
    save_curves(path, curves, "batch", "image-steps/s", title, logx=True)
