"""The tables the commands print, one function per report kind: the attack results (also the
quickstart's), the task plugin's extra table, the ``--sweep`` table, OOD detection and the
sampler's dynamics (Lyapunov exponents, forgetting curves).

Pure presentation: each function reads a report (a record of :mod:`ebmctl.evaluate.results`
or the JSON a report file holds; both answer ``report[key]``) and returns a
:class:`rich.table.Table` for the command to print. Fractions are printed with three decimals
and 95% Wilson intervals (``*_ci``) as the reports store them.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from rich.table import Table

from ebmctl.evaluate.report import format_accuracy, format_table
from ebmctl.units import format_radius


def _table(title: str, columns: Iterable[str], rows: Iterable[Iterable[str]]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def threat_text(report: Mapping[str, Any]) -> str:
    """``"linf eps=8/255"``: the report's norm and radius (whole 255ths written k/255)."""
    return f"{report['threat']['norm']} eps={format_radius(report['threat']['eps'])}"


def results_table(report: Mapping[str, Any], title: str | None = None) -> Table:
    """The headline table of an attack report: per model, each attack, then the per-image worst
    case over them and the eps = 0 control where measured (rows of
    :func:`ebmctl.evaluate.report.format_table`), with the natural and adversarial metric and
    whether each attack converged. ``title`` defaults to dataset, images and threat."""
    metric = report["metric"]
    if title is None:
        title = f"{report['dataset']} ({report['n_images']} test images), {threat_text(report)}"
    return _table(title, ("model", "attack", f"natural {metric} [95% CI]",
                          f"adversarial {metric} [95% CI]", "converged"), format_table(report))


def quickstart_table(report: Mapping[str, Any], defense_steps: int, eot_reps: int) -> Table:
    """:func:`results_table` titled as ``ebmctl quickstart`` prints it, with the defense's
    Langevin steps K_def and EOT replicates H_def."""
    return results_table(report, f"{report['dataset']}: {report['n_images']} test images, "
                                 f"{threat_text(report)}, K_def={defense_steps}, "
                                 f"H_def={eot_reps}")


def task_table(report: Mapping[str, Any]) -> Table | None:
    """The task plugin's own table (``task_report.table``: title, columns, rows), or None."""
    extra = (report.get("task_report") or {}).get("table")
    return _table(extra["title"], extra["columns"], extra["rows"]) if extra else None


def sweep_table(report: Mapping[str, Any]) -> Table:
    """``attack --sweep``: per value of the swept key, the strongest attack and the defended
    model's natural and per-image worst-case adversarial metric."""
    metric = report["metric"]
    return _table(
        f"sweep over {report['key']}: {report['n_images']} test images, seeds {report['seeds']}",
        (report["key"], "strongest attack", f"natural {metric}",
         f"adversarial {metric} (worst case per image)", "converged"),
        [(str(r["value"]), r["attack"],
          format_accuracy(r["natural"], r["natural_std"], r["natural_ci"]),
          format_accuracy(r["adversarial"], r["adversarial_std"], r["adversarial_ci"]),
          "yes" if r["converged"] else "NOT converged") for r in report["rows"]])


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
