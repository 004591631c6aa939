"""The defended-vs-undefended evaluation behind `ebmctl attack` and `ebmctl quickstart`.

Every requested attack runs on every seed. An image is robust only if it survives every attack,
every restart and every step (AutoAttack semantics, :mod:`ebmctl.evaluate.worst_case`): a
model's headline adversarial figure is the mean over images of that per-image worst case (mean
over seeds), and each attack keeps its own row. Every accuracy carries its sample size and a
95% Wilson interval; a curve still falling over its last 20% of steps is flagged "not
converged". The sanity checks that can fail (Athalye et al. 2018) are in
:mod:`ebmctl.evaluate.checks`.

:func:`run_evaluation` takes the typed :class:`~ebmctl.evaluate.plan.EvaluationSettings` the
command built once (:func:`ebmctl.context.evaluation_settings`) and reads in four steps:
:func:`~ebmctl.evaluate.plan.plan_evaluation` (what to attack, with what, on which images;
every setting checked before any work), :func:`~ebmctl.evaluate.runner.run_label` per model
(each attack on each seed, resumable per chunk), :func:`complete_report` (sanity checks, the
task's figures, the adversarial export) and :func:`write_report` (JSON, curves, grids,
galleries). The records it builds are in :mod:`ebmctl.evaluate.results`; the tables that
render them in :mod:`ebmctl.evaluate.tables`.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from ebmctl.artifacts import atomic_write_bytes, atomic_write_json
from ebmctl.config import RunRecord
from ebmctl.console import info
from ebmctl.context import environment
from ebmctl.errors import ConfigError
from ebmctl.evaluate import plan as planning
from ebmctl.evaluate.checks import sanity_checks
from ebmctl.evaluate.plan import (
    EvaluationPlan,
    EvaluationSettings,
    PlanRequest,
    build_defense,
    make_attack,
    plan_evaluation,
)
from ebmctl.evaluate.plots import curve_axis_label, save_curves, save_grid, write_gallery
from ebmctl.evaluate.results import AttackReport, ModelResult, SweepReport, SweepRow
from ebmctl.evaluate.resubmit import resubmission_report
from ebmctl.evaluate.runner import run_label
from ebmctl.evaluate.tables import format_accuracy, format_table, report_notes, result_rows
from ebmctl.evaluate.worst_case import (
    NON_WHITE_BOX,
    masking_verdict,
    summarise_attack,
    white_box_accuracy,
    worst_case,
)
from ebmctl.units import format_radius

__all__ = ["NON_WHITE_BOX", "build_defense", "complete_report", "evaluate_plan",
           "evaluation_images", "format_accuracy", "format_table", "make_attack",
           "masking_verdict", "report_notes", "result_rows", "run_evaluation", "run_label",
           "run_sweep", "summarise_attack", "white_box_accuracy", "worst_case", "write_report"]


def run_evaluation(settings: EvaluationSettings, model_path: Path, ebm_path: Path | None,
                   device: torch.device, out: Path, *, undefended: bool = True,
                   defended: bool = True, method: str | None = None, resume: bool = False,
                   save_adversarials: bool = False, sanity: bool | None = None,
                   fixer_path: Path | None = None, keep_parts: bool = False) -> AttackReport:
    """Attack the undefended and/or defended model under ``settings`` and write the
    report (JSON, curves PNG, adversarial grids and galleries). ``fixer_path`` adds a
    "defended+fixer" run (purification then the fixer, thesis Ch. 6) next to "defended", with
    the same attacks and seeds. ``sanity`` (default ``attack.sanity``) runs the sanity checks.
``keep_parts`` keeps the per-attack parts folder after the report is written (a sweep keeps
each value's until the whole sweep is written, so ``resume`` rebuilds a finished value from
its parts instead of attacking again).

    Raises:
        ConfigError: a model for another task, no EBM for a defended run, settings that would
            be ignored, or parts of another evaluation under ``resume``.
    """
    plan = plan_evaluation(settings,
                           environment(device, seed=settings.seed, attack_seeds=settings.seeds),
                           PlanRequest(Path(model_path), ebm_path, fixer_path, undefended,
                                       defended, method, resume), device, Path(out))
    return evaluate_plan(settings, plan, device, Path(out), save_adversarials=save_adversarials,
                         sanity=settings.attack.sanity if sanity is None else sanity,
                         keep_parts=keep_parts)


def evaluate_plan(settings: EvaluationSettings, plan: EvaluationPlan, device: torch.device,
                  out: Path, *, save_adversarials: bool = False,
                  sanity: bool = True, keep_parts: bool = False) -> AttackReport:
    """Run a planned evaluation: every attack on every seed per model (with the worst-of-N
    resubmissions of ``[evaluate]`` on stochastic defenses), then :func:`complete_report` and
    :func:`write_report` to ``out``."""
    attack = settings.attack
    results = {}
    for label, defense, attacks in plan.runs:
        row = run_label(label, defense, attacks, plan.task, plan.x, plan.y, device, plan.seeds,
                        plan.parts, batch_size=attack.batch_size,
                        tolerance=attack.sanity_tolerance)
        if settings.evaluate.resubmissions > 0 and defense.stochastic:
            row = replace(row, resubmission=resubmission_report(
                settings.evaluate, label, defense, plan.task, plan.x, plan.y, device, row,
                batch_size=attack.batch_size))
        results[label] = row
    report = complete_report(settings, plan, results, device, out, sanity=sanity,
                             save_adversarials=save_adversarials)
    write_report(plan, report, out, keep_parts=keep_parts)
    return report


def _hook_runs(plan: EvaluationPlan, results: dict[str, ModelResult]) -> dict[str, dict]:
    """What ``Task.evaluation_extras`` receives per label (docs/hook-reference.md)."""
    runs = {}
    for label, defense, attacks in plan.runs:
        r = results[label]
        runs[label] = {"defense": defense, "x_adv": r.x_adv,
                       "x_advs": {n: [s.x_adv for s in a.per_seed] for n, a in r.attacks.items()},
                       "threat": {"norm": attacks[0].norm, "eps": attacks[0].eps},
                       "result": {"natural_ok": r.worst[-1].natural_ok,
                                  "robust_ok": r.worst[-1].robust_ok}}
    return runs


def complete_report(settings: EvaluationSettings, plan: EvaluationPlan,
                    results: dict[str, ModelResult], device, out: Path, *, sanity: bool,
                    save_adversarials: bool) -> AttackReport:
    """The report of a finished run: sanity checks (which add each model's ε = 0 control and
    the transfer verdict), the task's extra figures and the adversarial export."""
    checks = None
    if sanity and plan.runs:
        checks, results = sanity_checks(settings, plan.task, plan.model, plan.x, plan.y, device,
                                        results, plan.runs)
        if checks.failed:
            info("sanity check failed: " + "; ".join(checks.failed))
    extras_fn = getattr(plan.task, "evaluation_extras", None)
    extras = extras_fn(plan.x, plan.y, _hook_runs(plan, results), out,
                       (plan.seeds[-1], "report")) if extras_fn else None
    for label, values in ((extras or {}).pop("results", None) or {}).items():
        results[label] = replace(results[label], extras={**results[label].extras, **values})
    from ebmctl.sampling.autotune import ran

    # how the Langevin steps ran in this process (``auto`` sampler settings are measured)
    plan.header["environment"]["langevin_variants"] = ran()
    report = AttackReport(**plan.header, seeds=plan.seeds, results=results, sanity=checks,
                          task_report=extras or None)
    if save_adversarials:
        report = replace(report, adversarials_file=_save_adversarials(
            settings.record, out, report, plan.x, plan.y))
    return report


def write_report(plan: EvaluationPlan, report: AttackReport, out: Path, *,
                 keep_parts: bool = False) -> None:
    """The JSON, the accuracy-vs-step curves, each model's adversarial grid and gallery; then
    the parts folder goes (the JSON holds every per-image result) unless ``keep_parts``."""
    atomic_write_json(out, report.to_json())
    curves = {f"{label} ({name})": (list(range(len(a.accuracy_curve))), a.accuracy_curve)
              for label, r in report.results.items() for name, a in r.attacks.items()}
    save_curves(out.with_suffix(".png"), curves, "attack step",
                curve_axis_label(plan.task.metric_name) + "\n(worst restart, mean over seeds)",
                f"{plan.dataset}: {report.threat.norm} eps={format_radius(report.threat.eps)}",
                integer_x=True)
    for label, defense, attacks in plan.runs:
        x_adv = report.results[label].x_adv
        save_grid(x_adv[:64], out.with_name(out.stem + f".{label}-adv.png"))
        write_gallery(out.with_name(out.stem + f".{label}-gallery.png"), label, plan.x, x_adv,
                      defense, {"norm": attacks[0].norm, "eps": attacks[0].eps},
                      (plan.seeds[-1], "gallery", label), labels=plan.y)
    if not keep_parts:
        shutil.rmtree(plan.parts["parts_dir"], ignore_errors=True)


def _save_adversarials(record: RunRecord, out: Path, report: AttackReport, x, y) -> str:
    adv_path = out.with_suffix(".adv.safetensors")
    tensors = {}
    for label, r in report.results.items():
        for name, a in r.attacks.items():
            for s in a.per_seed:
                tensors[f"{label}.{name}.seed{s.seed}"] = s.x_adv.contiguous()
        tensors[f"{label}.worst-case"] = r.x_adv.contiguous()
    # in run.dtype (float32, or float64 for a reference run), as evaluated
    tensors["x_natural"], tensors["y"] = x.contiguous(), y.contiguous()
    atomic_write_bytes(adv_path, st_save(tensors, metadata={
        "ebmctl.kind": "adversarials", "ebmctl.config": record.to_json()}))
    return str(adv_path)


def run_sweep(settings: EvaluationSettings, model_path: Path, ebm_path: Path | None,
              device: torch.device, out: Path, key: str, values: list, *,
              method: str | None = None, resume: bool = False,
              undefended: bool = False) -> SweepReport:
    """Defended (``undefended``: undefended) evaluation for each value of one setting ``key``
    of ``settings`` (e.g. defense.steps for the thesis' K study, attack.eot_reps for H_adv,
    attack.eps for a robust-accuracy-against-ε curve that ``ebmctl compare`` overlays), each
    value's settings :meth:`~ebmctl.evaluate.plan.EvaluationSettings.with_value`; writes
    per-value reports, a sweep JSON and a plot of natural and adversarial figures against the
    value.

    Raises:
        ConfigError: no values, a key outside [attack], [defense], [langevin] or [evaluate], a
            bad value, or a radius/step key of the other norm (it would be ignored).
    """
    if not values:
        raise ConfigError("--sweep needs KEY=V1,V2,...")
    norm = settings.attack.norm
    instead = {"linf": {"attack.eps_l2": "attack.eps", "attack.step_size_l2": "attack.step_size"},
               "l2": {"attack.eps": "attack.eps_l2", "attack.step_size": "attack.step_size_l2"}}
    if key in instead[norm]:
        raise ConfigError(f"--sweep {key} does not apply under attack.norm = {norm!r} and "
                          f"would be ignored; sweep {instead[norm][key]}")
    section, _, name = key.partition(".")
    varied = [settings.with_value(key, v) for v in values]  # every value checked before work
    label = "undefended" if undefended else "defended"
    rows, out, value_outs = [], Path(out), []
    for v, sub in zip(values, varied):
        value_outs.append(out.with_name(f"{out.stem}.{key}={v}.json"))
        # each value's parts stay until the sweep is written: a resumed sweep rebuilds the
        # values it finished from them (fingerprint-checked) instead of attacking again
        rep = run_evaluation(sub, model_path, ebm_path, device, value_outs[-1],
                             undefended=undefended, defended=not undefended, method=method,
                             resume=resume, sanity=False, keep_parts=True)
        value = getattr(getattr(sub, section), name)
        rows.append(SweepRow(list(value) if isinstance(value, tuple) else value,
                             rep.results[label]))
    report = SweepReport(key=key, metric=rep.metric, n_images=rep.n_images, seeds=rep.seeds,
                         threat=rep.threat, rows=rows, config=settings.record.to_dict(),
                         environment=rep.environment, label=label, task=rep.task,
                         model=rep.model, defense=rep.defense if not undefended else None)
    atomic_write_json(out, report.to_json())
    for value_out in value_outs:
        shutil.rmtree(planning.parts_dir_of(value_out), ignore_errors=True)
    _plot_sweep(out, key, rep.metric, rows)
    return report


def _plot_sweep(out: Path, key: str, metric: str, rows: list[SweepRow]) -> None:
    """Natural and adversarial figures against the swept value (log axis over a wide range)."""
    xs = [float(r.value) for r in rows]
    positive = all(v > 0 for v in xs)
    save_curves(out.with_suffix(".png"),
                {"natural": (xs, [r.result.natural.mean for r in rows]),
                 "adversarial (per-image worst case)": (
                     xs, [r.result.adversarial.mean for r in rows])},
                key, metric, f"sweep over {key}",
                logx=positive and max(xs) / min(xs) >= 20)


def evaluation_images(settings: EvaluationSettings, split: str = "test"):
    """``(bundle, x [M,C,H,W], y)``: the dataset of ``settings.load_data()`` and
    ``attack.n_images`` of its ``split`` (:func:`ebmctl.evaluate.plan.pick_images`) in the
    settings' float type.

    Raises:
        ConfigError: the split is empty.
    """
    bundle = settings.load_data()
    x, y = planning.pick_images(bundle, settings.attack.n_images, settings.dtype, split)
    return bundle, x, y
