"""`ebmctl quickstart`: the main job on the embedded default data, end to end.

Trains an EBM and a classifier (cached by the hash of their settings), then attacks the
undefended model (PGD) and the EBM-defended one (BPDA+EOT) and prints the table.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import typer

from ebmctl.commands.common import command, make_config

app = typer.Typer()


def _settings_hash(cfg, sections: tuple[str, ...]) -> str:
    """The cache key of a model trained with these profile sections and the run's seed."""
    from ebmctl.context import RunConfig

    d = {s: cfg.section(s) for s in sections}
    d["seed"] = cfg.section(RunConfig).seed
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


@app.command("quickstart", cls=command())
def quickstart_cmd(
    ctx: typer.Context,
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="cache + outputs "
                                            "(default: run.out_dir/quickstart)"),
    retrain: bool = typer.Option(False, "--retrain", help="ignore cached models"),
):
    """Train (if not cached) an EBM and a classifier on the embedded digits, attack, print table."""
    import time

    from ebmctl.console import info, out_console
    from ebmctl.context import (
        RunConfig,
        evaluation_settings,
        get_task,
        load_dataset,
        setup_device,
    )
    from ebmctl.defense import DefenseConfig
    from ebmctl.evaluate.report import run_evaluation
    from ebmctl.evaluate.tables import quickstart_table, report_notes
    from ebmctl.commands.train import train_energy, train_task
    from ebmctl.training.convergent import Convergent
    from ebmctl.training.trainer import TrainConfig

    cfg = make_config(ctx, default_profile="quick")
    dev = setup_device(cfg)
    work = work_dir or Path(cfg.section(RunConfig).out_dir) / "quickstart"
    t0 = time.time()
    bundle = load_dataset(cfg)
    task = get_task(cfg)
    ebm_path = work / f"ebm-{_settings_hash(cfg, ('data', 'ebm', 'langevin', 'train'))}.safetensors"
    clf_path = work / f"{task.model_kind}-{_settings_hash(cfg, ('data', 'model', 'task'))}.safetensors"
    if retrain or not clf_path.exists():
        info(f"training the {task.model_kind} -> {clf_path}")
        train_task(cfg, bundle, task, clf_path, dev, resume=True)
    else:
        info(f"using cached {clf_path}")
    if retrain or not ebm_path.exists():
        info(f"training the EBM -> {ebm_path}")
        # the health check also reports label survival, with the classifier just trained (a
        # reading, not a setting of the EBM: the cache key above is computed without it)
        health_cfg = cfg if cfg.section(TrainConfig).health_classifier else cfg.with_overrides(
            {"train.health_classifier": str(clf_path)}, "quickstart: the trained classifier")
        train_energy(Convergent, health_cfg, bundle, ebm_path, dev, resume=True)
    else:
        info(f"using cached {ebm_path}")
    out = work / "report.json"
    report = run_evaluation(evaluation_settings(cfg, task), clf_path, ebm_path, dev, out)
    total_seconds = round(time.time() - t0, 1)
    defense = cfg.section(DefenseConfig)
    out_console().print(quickstart_table(report, defense.steps, defense.eot_reps))
    for note in report_notes(report):
        info(note)
    res = report.results
    gap = res["defended"].adversarial.mean - res["undefended"].adversarial.mean
    out_console().print(f"defended minus undefended adversarial {task.metric_name}: "
                        f"{gap * 100:+.1f} points; total {total_seconds:.0f}s")
    info(f"report: {out}")
