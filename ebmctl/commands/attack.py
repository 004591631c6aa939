"""`ebmctl attack`: natural and adversarial figures of the undefended and defended model."""

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


@app.command("attack", cls=command())
def attack_cmd(
    ctx: typer.Context,
    model: Path = model_option(..., "(or SOURCE[@WEIGHTS] as `ebmctl import-model` takes, e.g. "
                               "torchvision:resnet18@rn.pt)"),
    ebm: Optional[Path] = ebm_option(None, "for the defense, the short form of --purifier ebm "
                                     "(or a shipped name: cifar10; or ebm-defense:ebm@FILE)"),
    purifier: Optional[str] = typer.Option(None, "--purifier", help="purifier of the defense: "
                                           "NAME[:key=value,...], e.g. jpeg:quality=75, "
                                           "bit-depth:bits=3, median:size=2, "
                                           "gaussian-noise:sigma=0.1, ebm:steps=100 (see "
                                           "`ebmctl plugins`; defense.purifier)"),
    fixer: Optional[Path] = typer.Option(None, "--fixer", help="fixer artifact: also evaluate "
                                         "purification + fixer (`ebmctl fix train`)"),
    method: Optional[str] = typer.Option(None, "--method", help="attack(s) on the defended model, "
                                         "comma-separated (see `ebmctl plugins`)"),
    task: Optional[str] = typer.Option(None, "--task", help="task plugin (task.name), e.g. "
                                       "segmentation"),
    norm: Optional[str] = typer.Option(None, "--norm", help="linf | l2"),
    eps: Optional[str] = typer.Option(None, "--eps", help="radius in [0,1] units, e.g. 8/255"),
    n_images: Optional[int] = n_images_option(None, "to attack, from the test split "
                                              "(attack.n_images)"),
    undefended_only: bool = typer.Option(False, "--undefended-only"),
    defended_only: bool = typer.Option(False, "--defended-only"),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="attack seeds, e.g. 0,1,2 "
                                        "(mean ± std over them)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted evaluation "
                                "from its per-image results"),
    save_adversarials: bool = typer.Option(False, "--save-adversarials",
                                           help="write the adversarial images (.adv.safetensors)"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="KEY=V1,V2,...: one defended "
                                        "evaluation per value, e.g. defense.steps=0,10,100,300 "
                                        "(with --undefended-only: of the undefended model, "
                                        "e.g. attack.eps=0.05,0.1,0.2)"),
    out: Optional[Path] = out_option(None, "for the report JSON (default: "
                                     "run.out_dir/attack-report.json; PNG and HTML beside it)"),
    force: ForceOpt = False,
):
    """Attack the undefended model (PGD) and the defended one (BPDA+EOT, or the attacks in
    --method / attack.methods) with sanity checks; report JSON + PNG. The defense is the EBM's
    Langevin purification (--ebm) or any registered purifier (--purifier NAME[:key=value,...]):
    a purifier without a backward pass is attacked with BPDA, a stochastic one with EOT."""
    from ebmctl.artifacts import claim_output
    from ebmctl.console import info
    from ebmctl.context import RunConfig, evaluation_settings, setup_device
    from ebmctl.evaluate.html import write_html
    from ebmctl.evaluate.report import run_evaluation

    cfg = _attack_config(ctx, norm, eps, n_images, seeds, task, purifier)
    out_dir = Path(cfg.section(RunConfig).out_dir)
    ebm = _defense_inputs(cfg, ebm, purifier, fixer, undefended_only, defended_only)
    defended = not undefended_only
    dev = setup_device(cfg, honours_dtype=True)  # run.dtype: models, images, chains
    settings = evaluation_settings(cfg)  # the typed sections, built once
    from ebmctl.commands.model_argument import resolve_model_argument
    from ebmctl.shipped import ebm_path

    # SOURCE[@WEIGHTS] (torchvision:NAME@FILE, ebm-defense:wrn@FILE, ...) is imported once
    model = resolve_model_argument(model, str(out_dir))
    if ebm is not None:
        ebm = resolve_model_argument(ebm_path(ebm), str(out_dir))
    if sweep:
        _sweep(cfg, settings, model, ebm, dev, sweep, out or out_dir / "attack-sweep.json", method,
               undefended_only, resume, force)
        return
    out = out or out_dir / "attack-report.json"
    for path in (out, out.with_suffix(".png"), out.with_suffix(".html")):  # --resume: its own
        claim_output(path, force=force, resume=resume)
    report = run_evaluation(settings, model, ebm, dev, out, undefended=not defended_only,
                            defended=defended, method=method, resume=resume,
                            save_adversarials=save_adversarials, fixer_path=fixer)
    _print_report(report)
    html_page = write_html(out)  # the same report as one self-contained page
    info(f"wrote {out}, {out.with_suffix('.png')} and {html_page}")


def _defense_inputs(cfg, ebm: Optional[Path], purifier: Optional[str], fixer: Optional[Path],
                    undefended_only: bool, defended_only: bool) -> Optional[Path]:
    """The EBM file of the defense (``--ebm``, else ``defense.ebm`` when the purifier is the
    EBM's), after refusing flags that exclude each other.

    Raises:
        ConfigError: conflicting flags, or a defended run without an EBM or purifier.
    """
    from ebmctl.defense import DefenseConfig
    from ebmctl.errors import ConfigError

    defense = cfg.section(DefenseConfig)
    if undefended_only and defended_only:
        raise ConfigError("--undefended-only and --defended-only exclude each other")
    if fixer is not None and undefended_only:
        raise ConfigError("--fixer is part of the defense; drop --undefended-only")
    spec = defense.purifier.strip()
    uses_ebm = not spec or spec.split(":", 1)[0].strip() == "ebm"
    if ebm is None and defense.ebm and uses_ebm:
        ebm = Path(defense.ebm)
    if not undefended_only and ebm is None and not spec:
        raise ConfigError("give --ebm FILE or --purifier NAME for the defended evaluation (or "
                          "--undefended-only)")
    if undefended_only and purifier:
        raise ConfigError("--purifier is the defense; drop --undefended-only")
    return ebm


def _attack_config(ctx: typer.Context, norm: Optional[str], eps: Optional[str],
                   n_images: Optional[int], seeds: Optional[str], task: Optional[str],
                   purifier: Optional[str] = None):
    """The profile with the command's flags over it; --eps is the radius of the norm in force,
    wherever that norm was chosen (``attack.eps_l2`` for l2, else ``attack.eps``)."""
    cfg = make_config(ctx, {"attack.norm": norm or None, "attack.n_images": n_images,
                            "attack.seeds": seeds or None, "task.name": task or None})
    if purifier:  # a value may hold commas (key=value,...), which --set would split
        cfg = cfg.with_overrides({"defense.purifier": purifier}, "--purifier", chosen=True)
    if eps:
        from ebmctl.attacks.base import AttackConfig

        key = "attack.eps_l2" if cfg.section(AttackConfig).norm == "l2" else "attack.eps"
        cfg = cfg.with_overrides({key: eps}, "--eps", chosen=True)
    return cfg


def _sweep(cfg, settings, model: Path, ebm: Optional[Path], dev, sweep: str, out: Path,
           method: Optional[str], undefended_only: bool, resume: bool, force: bool) -> None:
    """--sweep KEY=V1,V2,...: one defended (with --undefended-only: undefended) evaluation per
    value, a sweep report and table."""
    from ebmctl.artifacts import claim_output
    from ebmctl.config import parse_set_options
    from ebmctl.console import info, out_console
    from ebmctl.errors import ConfigError
    from ebmctl.evaluate.report import run_sweep
    from ebmctl.evaluate.tables import sweep_table

    (key, raw), = parse_set_options([sweep]).items()
    values = [cfg.schema.coerce(key, v) if cfg.schema else v
              for v in raw.split(",") if v.strip()]
    if undefended_only and key.split(".", 1)[0] in ("defense", "langevin"):
        raise ConfigError(f"--sweep {key} changes the defense, which --undefended-only does not "
                          "evaluate")
    for path in (out, out.with_suffix(".png")):  # --resume continues its own report
        claim_output(path, force=force, resume=resume)
    rep = run_sweep(settings, model, ebm, dev, out, key, values, method=method, resume=resume,
                    undefended=undefended_only)
    out_console().print(sweep_table(rep))
    info(f"wrote {out} and {out.with_suffix('.png')}")


def _print_report(report) -> None:
    """The results table of an :class:`~ebmctl.evaluate.results.AttackReport`, its notes, the
    task's own table and the sanity checks."""
    from ebmctl.console import info, out_console
    from ebmctl.evaluate.tables import report_notes, results_table, task_table

    named = (report.defense or {}).get("purifier")
    if named:
        opts = ", ".join(f"{k}={v}" for k, v in named["settings"].items())
        info(f"purifier: {named['name']}" + (f" ({opts})" if opts else "")
             + (" stochastic (EOT)" if named["stochastic"] else "")
             + ("" if named["differentiable"] else "; no backward pass (BPDA)"))
    out_console().print(results_table(report))
    for note in report_notes(report):
        info(note)
    extra = task_table(report)
    if extra is not None:
        out_console().print(extra)
    if report.sanity is not None:
        for c in report.sanity.checks:
            info(f"sanity {'ok' if c.passed else 'FAILED'}: {c.check}")
