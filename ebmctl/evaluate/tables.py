"""The tables the commands print, one function per report kind: the attack results (also the
quickstart's and the HTML page's), the task plugin's extra table, the ``--sweep`` table, OOD
detection and the sampler's dynamics (Lyapunov exponents, forgetting curves).

Pure presentation. The attack results have one source of rows, :func:`result_rows`, which
reads the typed :class:`~ebmctl.evaluate.results.AttackReport` (a report file's dict is read
back with :meth:`AttackReport.from_json`); the terminal table (:func:`results_table`), the
quickstart's and the HTML page all render those rows. The other tables read the report's
JSON keys. Fractions are printed with three decimals and 95% Wilson intervals (``*_ci``) as
the reports store them.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from rich.table import Table

from ebmctl.evaluate.results import AttackReport, Estimate, SweepReport
from ebmctl.evaluate.resubmit import resubmission_rows
from ebmctl.units import format_radius

#: the attack column of a model's per-image worst case over its attacks (its headline)
WORST_CASE = "worst case per image (all attacks)"
_CONVERGED = {True: "yes", False: "NOT converged", None: "n/a"}


class ResultRow(tuple):
    """One row of the results table: ``(model, attack, natural, adversarial, converged)``,
    all strings (a plain 5-tuple, as the tables and reports have always held it).
    ``headline``: the row is its model's headline figure (the per-image worst case over the
    attacks, or the only attack)."""

    headline: bool

    def __new__(cls, cells: Iterable[str], headline: bool = False) -> "ResultRow":
        row = super().__new__(cls, tuple(cells))
        row.headline = headline
        return row


def format_accuracy(mean: float | None, std: float | None = None,
                    ci: list[float] | None = None) -> str:
    """"0.740 [0.675, 0.796]" (one seed) or "0.647 ± 0.015 [0.58, 0.71]" (several); "n/a"
    for a figure a report lacks."""
    if mean is None:
        return "n/a"
    text = f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _estimate(e: Estimate) -> str:
    return format_accuracy(e.mean, e.std, e.ci)


def as_report(report: Mapping[str, Any] | AttackReport) -> AttackReport:
    """``report`` as a record: an :class:`AttackReport` as it is, a report file's dict read
    back with :meth:`AttackReport.from_json`."""
    return report if isinstance(report, AttackReport) else AttackReport.from_json(dict(report))


def result_rows(report: AttackReport | Mapping[str, Any]) -> list[ResultRow]:
    """Rows (model, attack, natural, adversarial, converged) of every table of an attack
    report: per model each attack (a diagnostic one says so), then the per-image worst case
    over them (two or more attacks), the ε = 0 control where measured and the worst-of-N
    resubmission rows. A report file's dict is read with :func:`as_report`."""
    report = as_report(report)
    rows = []
    for label, r in report.results.items():
        for name, a in r.attacks.items():
            if a.diagnostic:
                name = f"{name} (DIAGNOSTIC: defender noise fixed)"
            rows.append(ResultRow((label, name, _estimate(a.natural), _estimate(a.adversarial),
                                   _CONVERGED[a.converged]), headline=len(r.attacks) == 1))
        if len(r.attacks) > 1:
            rows.append(ResultRow((label, WORST_CASE, _estimate(r.natural),
                                   _estimate(r.adversarial),
                                   "yes" if r.converged else "NOT converged"), headline=True))
        c = r.eps0_control
        if c is not None:
            # n_images is absent from reports written before it was kept
            subset = (f", first {c.n_images} images"
                      if c.n_images and c.n_images < (report.n_images or c.n_images) else "")
            rows.append(ResultRow((label, f"eps = 0 control ({c.attack}, seed {c.seed}{subset})",
                                   f"{c.natural:.3f}",
                                   format_accuracy(c.adversarial, None, c.adversarial_ci),
                                   f"inflation {c.inflation:+.3f}")))
        if r.resubmission:
            rows += [ResultRow(row) for row in resubmission_rows(label, r.resubmission)]
    return rows


#: the name the rows had before :func:`result_rows` fed every renderer
format_table = result_rows


def report_notes(report: AttackReport | Mapping[str, Any]) -> list[str]:
    """Warnings a reader must see beside the table: attacks not converged, gradient masking
    suspected, diagnostic runs, a single seed."""
    report = as_report(report)
    notes = []
    for label, r in report.results.items():
        if not r.converged:
            bad = [n for n, a in r.attacks.items() if a.converged is False]
            notes.append(f"{label}: not converged ({', '.join(bad)}): the accuracy curve still "
                         "fell over the last 20% of steps; raise attack.steps")
        for name, a in r.attacks.items():
            checks = [s.tail_check for s in a.per_seed if s.tail_check is not None]
            lost = sum(c.lost for c in checks)
            if a.converged and lost:
                notes.append(
                    f"{label}: {name} converged: the {lost} image(s) lost over the last 20% of "
                    f"steps were each misread in fewer than {checks[0].reverifications // 2 + 1}"
                    f" of {checks[0].reverifications} fresh H_def verifications of the point "
                    "that broke them (chance losses of the stochastic defense's repeated "
                    "verification, not attack progress; they stay broken in the figure)")
        gm = r.gradient_masking
        if gm is not None and gm.suspected:
            notes.append(f"{label}: gradient masking suspected: {gm.attack} "
                         f"({gm.non_white_box:.3f}) beats the white-box attacks "
                         f"({gm.white_box:.3f})")
        diag = [n for n, a in r.attacks.items() if a.diagnostic]
        if diag:
            notes.append(f"{label}: {', '.join(diag)} fixed the defender's own noise "
                         "(attack.common_noise_defender): a diagnostic, not a robustness figure"
                         + ("; every attack run was one, so this row's headline is too"
                            if r.diagnostic else "; left out of the headline"))
        if r.n_seeds == 1:
            notes.append(f"{label}: one attack seed (n = 1): no spread over seeds; intervals "
                         f"are 95% Wilson over {r.n_images} images")
    return notes


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def threat_text(report: Mapping[str, Any] | AttackReport) -> str:
    """``"linf eps=8/255"``: the report's norm and radius (whole 255ths written k/255)."""
    threat = report.threat.to_json() if isinstance(report, AttackReport) else report["threat"]
    return f"{threat['norm']} eps={format_radius(threat['eps'])}"


def results_table(report: AttackReport | Mapping[str, Any],
                  title: str | None = None) -> Table:
    """The headline table of an attack report (:func:`result_rows`), with the natural and
    adversarial metric and whether each attack converged. ``title`` defaults to dataset,
    images and threat."""
    report = as_report(report)
    if title is None:
        title = f"{report.dataset} ({report.n_images} test images), {threat_text(report)}"
    return _table(title, result_columns(report.metric), result_rows(report))


def result_columns(metric: str) -> tuple[str, ...]:
    """The headers of :func:`result_rows`' five columns."""
    return ("model", "attack", f"natural {metric} [95% CI]", f"adversarial {metric} [95% CI]",
            "converged")


def quickstart_table(report: AttackReport | Mapping[str, Any], defense_steps: int,
                     eot_reps: int) -> Table:
    """:func:`results_table` titled as ``ebmctl quickstart`` prints it, with the defense's
    Langevin steps K_def and EOT replicates H_def."""
    report = as_report(report)
    return results_table(report, f"{report.dataset}: {report.n_images} test images, "
                                 f"{threat_text(report)}, K_def={defense_steps}, "
                                 f"H_def={eot_reps}")


def task_table(report: Mapping[str, Any] | AttackReport) -> Table | None:
    """The task plugin's own table (``task_report.table``: title, columns, rows), or None."""
    task_report = (report.task_report if isinstance(report, AttackReport)
                   else report.get("task_report"))
    extra = (task_report or {}).get("table")
    return _table(extra["title"], extra["columns"], extra["rows"]) if extra else None


def sweep_table(report: SweepReport) -> Table:
    """``attack --sweep``: per value of the swept key, the strongest attack and the evaluated
    model's natural and per-image worst-case adversarial metric."""
    metric = report.metric
    return _table(
        f"sweep over {report.key}: {report.n_images} test images, seeds {list(report.seeds)}",
        (report.key, "strongest attack", f"natural {metric}",
         f"adversarial {metric} (worst case per image)", "converged"),
        [(str(row.value), row.result.attack,
          format_accuracy(row.result.natural.mean, row.result.natural.std,
                          row.result.natural.ci),
          format_accuracy(row.result.adversarial.mean, row.result.adversarial.std,
                          row.result.adversarial.ci),
          "yes" if row.result.converged else "NOT converged") for row in report.rows])


def ood_table(report: Mapping[str, Any]) -> Table:
    """``ebmctl ood``: per OOD set, its size, mean energy, AUROC and FPR at 95% TPR against the
    held-out in-distribution images (docs/algorithms.md#ood-scores)."""
    ind = report["in_distribution"]
    return _table(f"in-distribution: {ind['dataset']} ({ind['n']} held-out images), "
                  f"mean energy {ind['energy_mean']:.4g}",
                  ("OOD set", "n", "mean energy", "AUROC", "FPR@95%TPR"),
                  [(name, str(row["n"]), f"{row['energy_mean']:.4g}", f"{row['auroc']:.4f}",
                    f"{row['fpr_at_95_tpr']:.4f}")
                   for name, row in report["out_of_distribution"].items()])


def exponent_table(report: Mapping[str, Any]) -> Table:
    """``ebmctl lyapunov``: the maximal Lyapunov exponent per step of the Langevin map for each
    eta (mean, std and standard error over images x seeds; docs/algorithms.md#sampler-dynamics)."""
    return _table(f"max Lyapunov exponent per step (d0={report['separation']:g}, "
                  f"{report['n_images']} images x {len(report['seeds'])} seeds)",
                  ("eta", "mean", "std", "se", "> 0"),
                  [(f"{r['eta']:.4g}", f"{r['mean']:.3e}", f"{r['std']:.2e}", f"{r['se']:.2e}",
                    "yes" if r["positive"] else "") for r in report["per_eta"]])


def exponent_summary(report: Mapping[str, Any]) -> str:
    """The line under :func:`exponent_table`: where the exponent crosses zero, and eta*."""
    zc = report["zero_crossing"]
    return (f"zero crossing: {'none on the grid' if zc is None else f'eta = {zc:.3g}'}; "
            f"eta* (first > {report['zero_tol_se']:g} SE): {report['eta_star']}")


def memory_table(mem: Mapping[str, Any]) -> Table:
    """``ebmctl lyapunov --checks``: forgetting curves per Langevin step k (distances between
    chains from clean and adversarial starts with common or independent noise, agreement and
    task scores)."""
    return _table(f"forgetting curves ({mem['n_images']} images, attack "
                  f"{mem['attack']['attack']} on the {mem['attack']['target']})",
                  ("k", "dist common", "dist indep", "dist clean copies", "memory",
                   "agree common", "agree indep", "score clean", "score adv"),
                  [(str(r["k"]), f"{r['dist_common']:.3f}", f"{r['dist_independent']:.3f}",
                    f"{r['dist_clean_copies']:.3f}", f"{r['memory']:.3f}",
                    f"{r['agree_common']:.3f}", f"{r['agree_independent']:.3f}",
                    f"{r['score_clean']:.3f}", f"{r['score_adv']:.3f}") for r in mem["curves"]])
