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
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info, out_console, progress_bar
    from ebmctl.context import RunConfig, evaluation_settings, load_dataset, setup_device
    from ebmctl.dynamics import report as ly
    from ebmctl.sampling.langevin import LangevinConfig
    from ebmctl.evaluate.tables import exponent_summary, exponent_table, memory_table

    cfg = make_config(ctx, {"lyapunov.etas": etas or None, "lyapunov.n_images": n_images})
    _check_request(exponent, checks, model, out)
    out_dir = cfg.section(RunConfig).out_dir
    out = out or Path(out_dir) / "lyapunov.json"
    for path in ly.planned_outputs(out, exponent, checks):
        claim_output(path, force=force)
    ly.exponent_settings(cfg.section(ly.LyapunovConfig), cfg.section(LangevinConfig)).validate()
    dev = setup_device(cfg)
    energy, task, task_model, model = _load_models(cfg, ebm, model, checks, dev)
    run = ly.LyapunovSettings(cfg.section(ly.LyapunovConfig), cfg.section(LangevinConfig),
                              cfg.section(RunConfig).seed, cfg.record(),
                              evaluation_settings(cfg, task) if checks else None)
    bundle = load_dataset(cfg)
    data = ly.start_split(run.lyapunov, bundle)
    title = f"{Path(energy.path).name} on {bundle.name}"
    header = ly.report_header(run, energy, bundle, dev)
    written = []
    if exponent:
        report, files = ly.write_exponent_report(run, energy, data, out, header, title, dev,
                                                 progress_factory=progress_bar)
        written += files
        out_console().print(exponent_table(report))
        out_console().print(exponent_summary(report))
    if checks:
        mem, files = ly.write_memory_report(run, energy, task, task_model, data,
                                            ly.memory_path(out), {**header, "model": str(model)},
                                            title, dev, progress_factory=progress_bar)
        written += files
        out_console().print(memory_table(mem))
    info("wrote " + ", ".join(str(p) for p in written))


def _check_request(exponent: bool, checks: bool, model: Optional[Path],
                   out: Optional[Path]) -> None:
    """Reject a run with nothing to do, --checks without a task model, or a non-JSON --out."""
    from ebmctl.errors import ConfigError

    if not exponent and not checks:
        raise ConfigError("nothing to do: --no-exponent without --checks")
    if checks and model is None:
        raise ConfigError("--checks needs a task model (--model FILE) for the attack and the "
                          "agreement curves")
    if out is not None and out.suffix.lower() != ".json":
        raise ConfigError(f"--out must be a .json file, got {out}")


def _load_models(cfg, ebm: Optional[Path], model: Optional[Path], checks: bool, dev):
    """(EBM, task, task model, model path): the EBM (default: shipped) and, for --checks, the
    task and its checked model. SOURCE[@WEIGHTS] arguments, as `ebmctl import-model` takes, are
    imported once."""
    from ebmctl.context import RunConfig, get_task
    from ebmctl.commands.model_argument import resolve_model_argument
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.shipped import default_ebm

    out_dir = cfg.section(RunConfig).out_dir
    ebm = resolve_model_argument(ebm, out_dir) if ebm is not None else None
    model = resolve_model_argument(model, out_dir) if model is not None else None
    energy = EnergyModel.load(ebm or default_ebm(), dev)
    task = get_task(cfg) if checks else None
    task_model = TaskModel.load(model, dev) if checks else None
    if task_model is not None:
        task_model.check_task(task.name)
    return energy, task, task_model, model
