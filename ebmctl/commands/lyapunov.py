"""`ebmctl lyapunov`: the sampler's dynamics (docs/algorithms.md#sampler-dynamics): Lyapunov
exponent vs η, and with ``--checks`` the forgetting curves of clean vs adversarial starts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import (
    ForceOpt,
    command,
    ebm_option,
    make_config,
    model_option,
    n_images_option,
    out_option,
)

app = typer.Typer()


@app.command("lyapunov", cls=command())
def lyapunov_cmd(
    ctx: typer.Context,
    ebm: Optional[Path] = ebm_option(None, "(default: shipped)"),
    model: Optional[Path] = model_option(None, "for --checks (agreement, attacks)"),
    checks: bool = typer.Option(False, "--checks",
                                help="also run the memorylessness checks (needs --model)"),
    exponent: bool = typer.Option(True, "--exponent/--no-exponent",
                                  help="run Benettin's method over lyapunov.etas"),
    etas: Optional[str] = typer.Option(None, "--etas", help="η grid, e.g. 0.01,0.1,1,10"),
    n_images: Optional[int] = n_images_option(None, "to start from (lyapunov.n_images)"),
    out: Optional[Path] = out_option(None, "for the exponent report (.json; default: "
                                     "run.out_dir/lyapunov.json; PNG, HTML and "
                                     "<name>.memory.json beside it)"),
    force: ForceOpt = False,
):
    """Maximal Lyapunov exponent of the Langevin map T_η (Benettin, common noise) vs η, and
    (--checks) how purification forgets an adversarial start. Writes JSON + PNG + HTML."""
    from ebmctl.artifacts import atomic_write_json, claim_output
    from ebmctl.console import info, out_console, progress_bar
    from ebmctl.context import environment, get_task, load_dataset, setup_device
    from ebmctl.data_utils import pick_subset
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.errors import ConfigError
    from ebmctl.evaluate.plots import save_grid
    from ebmctl.evaluate.tables import exponent_summary, exponent_table, memory_table
    from ebmctl.dynamics import report as ly
    from ebmctl.shipped import default_ebm

    cfg = make_config(ctx, {"lyapunov.etas": etas or None, "lyapunov.n_images": n_images})
    if not exponent and not checks:
        raise ConfigError("nothing to do: --no-exponent without --checks")
    if checks and model is None:
        raise ConfigError("--checks needs a task model (--model FILE) for the attack and the "
                          "agreement curves")
    if out is not None and out.suffix.lower() != ".json":
        raise ConfigError(f"--out must be a .json file, got {out}")
    out = out or Path(cfg["run.out_dir"]) / "lyapunov.json"
    memory_out = out.with_name(out.stem + ".memory.json")
    planned = ([out, out.with_suffix(".png"), out.with_name(out.stem + ".samples.png"),
                out.with_suffix(".html")] if exponent else []) + (
        [memory_out, memory_out.with_suffix(".png"), memory_out.with_suffix(".html")]
        if checks else [])
    for path in planned:
        claim_output(path, force=force)
    ly.exponent_settings(cfg).validate()
    dev = setup_device(cfg)
    from ebmctl.evaluate.html import write_html
    from ebmctl.importers import resolve_model_argument

    # SOURCE[@WEIGHTS] as `ebmctl import-model` takes, imported once
    ebm = resolve_model_argument(ebm, cfg["run.out_dir"]) if ebm is not None else None
    model = resolve_model_argument(model, cfg["run.out_dir"]) if model is not None else None
    energy = EnergyModel.load(ebm or default_ebm(), dev)
    task = get_task(cfg) if checks else None
    task_model = TaskModel.load(model, dev) if checks else None
    if task_model is not None:
        task_model.check_task(task.name)
    bundle = load_dataset(cfg)
    data = bundle.split(cfg["lyapunov.split"])
    if len(data) == 0:
        raise ConfigError(f"the {cfg['lyapunov.split']} split of {bundle.name!r} is empty")
    title = f"{Path(energy.path).name} on {bundle.name}"
    common = {"command": "lyapunov", "ebm": energy.path, "dataset": bundle.name,
              "split": cfg["lyapunov.split"], "environment": environment(cfg, dev),
              "config": cfg.to_dict()}
    written = []
    if exponent:
        x01 = pick_subset(data, cfg["lyapunov.n_images"]).x.to(dev)
        report, samples = ly.exponent_report(cfg, energy, x01, progress_factory=progress_bar)
        report = {**common, **report}
        atomic_write_json(out, report)
        ly.plot_exponents(out.with_suffix(".png"), report, title)
        grid = samples[:, :min(8, samples.shape[1])]
        save_grid(grid.reshape(-1, *grid.shape[2:]), out.with_name(out.stem + ".samples.png"),
                  nrow=grid.shape[1])
        written += [out, out.with_suffix(".png"), out.with_name(out.stem + ".samples.png"),
                    write_html(out)]
        out_console().print(exponent_table(report))
        out_console().print(exponent_summary(report))
    if checks:
        held = pick_subset(data, cfg["lyapunov.memory_images"])
        mem = ly.memory_report(cfg, energy, task, task_model, held.x.to(dev), held.y.to(dev), dev,
                               progress_factory=progress_bar)
        mem = {**common, "model": str(model), **mem}
        mem_out = memory_out
        atomic_write_json(mem_out, mem)
        ly.plot_memory(mem_out.with_suffix(".png"), mem, title)
        written += [mem_out, mem_out.with_suffix(".png"), write_html(mem_out)]
        out_console().print(memory_table(mem))
    info("wrote " + ", ".join(str(p) for p in written))

