"""Several attack evaluations on one page (``ebmctl compare``): robust accuracy against ε.

Inputs are the JSON reports of ``ebmctl attack --sweep attack.eps=...`` (``attack.eps_l2`` under
ℓ2; undefended sweeps with ``--undefended-only``) and of single ``ebmctl attack`` runs (one
point per evaluated model at the report's ε). Every report must share the task and the norm;
the page refuses a mix, naming the reports.

A *line* is one model × defense × attack: the model file (or the name given for the report),
the defense (``undefended``, or ``defended`` with the EBM it used) and the attack (each attack
alone, and the per-image worst case over them, which is the report's headline). Each point
carries the report's own figures: the mean over seeds, its standard deviation over seeds and the
95% Wilson interval over the n images (``ebmctl.evaluate.stats.accuracy_interval``; computed
from the mean for the per-attack figures that a sweep row keeps without an interval).

:func:`build_comparison` returns the comparison as JSON; :func:`comparison_table`,
:func:`save_comparison_plot` and :func:`render_comparison` present it as a terminal table, a
PNG (the headline lines with their 95% bands) and a self-contained HTML page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ebmctl.errors import InputError
from ebmctl.evaluate.tables import format_accuracy
from ebmctl.evaluate.stats import accuracy_interval
from ebmctl.units import format_radius

#: the attack name of a line that is the per-image worst case over a run's attacks
WORST = "worst case (per image)"
RADIUS_KEYS = {"linf": "attack.eps", "l2": "attack.eps_l2"}


def eps_text(eps: float) -> str:
    """A radius as the sweep wrote it: "0.2" for a short decimal, else "8/255" for whole
    255ths (:func:`ebmctl.units.format_radius`)."""
    short = f"{eps:g}"
    return short if len(short) <= 5 else format_radius(eps)


def _load(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a readable JSON report: {exc}") from None
    if not isinstance(report, dict) or not (
            report.get("command") == "attack --sweep"
            or isinstance(report.get("results"), dict)):
        raise InputError(f"{path} is neither an `ebmctl attack` report nor an `ebmctl attack "
                         "--sweep` report")
    return report


def _task(report: dict) -> str:
    # sweeps written before they recorded their task keep it in the resolved profile
    return str(report.get("task") or (report.get("config") or {}).get("task", {}).get("name")
               or "classification")


def _defense_name(label: str, defense: dict | None) -> str:
    """``undefended``, or the label with what defended it (the EBM file's stem or the named
    purifier) and the defense's K_def and H_def."""
    if not label.startswith("defended") or not defense:
        return label
    purifier = defense.get("purifier")
    what = (purifier.get("name") if isinstance(purifier, dict) and purifier.get("name")
            else Path(str(defense.get("ebm") or "ebm")).stem)
    return f"{label} ({what}, K_def={defense.get('steps')}, H_def={defense.get('eot_reps')})"


def _point(eps: float, natural: float, adversarial: float, std: float | None,
           ci: list[float] | None, n: int, n_seeds: int, converged: Any) -> dict:
    return {"eps": float(eps), "natural": natural, "adversarial": adversarial,
            "adversarial_std": std,
            "adversarial_ci": ci if ci is not None else accuracy_interval(adversarial, n),
            "n_images": n, "n_seeds": n_seeds, "converged": converged}


def _result_points(eps: float, r: dict, n: int, n_seeds: int, sweep_row: bool
                   ) -> dict[str, dict]:
    """attack name → its point, plus the worst case when the run had several attacks."""
    out = {}
    for name, a in r["attacks"].items():
        if sweep_row:  # a sweep row keeps each attack's mean, std and convergence
            out[name] = _point(eps, a["natural"], a["adversarial"], a.get("adversarial_std"),
                               None, n, n_seeds, a.get("converged"))
        else:
            out[name] = _point(eps, a["natural_mean"], a["adversarial_mean"],
                               a.get("adversarial_std"), a.get("adversarial_ci"), n, n_seeds,
                               a.get("converged"))
    if len(out) > 1:
        out[WORST] = _point(eps, r["natural"], r["adversarial"], r.get("adversarial_std"),
                            r.get("adversarial_ci"), n, n_seeds, r.get("converged"))
    return out


def _points(path: Path, report: dict) -> list[tuple[str, str, dict]]:
    """(defense label, attack, point) for every figure of one report.

    Raises:
        InputError: a sweep over another key than the radius of the report's norm.
    """
    norm = report["threat"]["norm"]
    n, n_seeds = int(report["n_images"]), len(report.get("seeds") or [0])
    out = []
    if report.get("command") == "attack --sweep":
        if report["key"] != RADIUS_KEYS[norm]:
            raise InputError(f"{path} sweeps {report['key']}, not the {norm} radius "
                             f"({RADIUS_KEYS[norm]}): compare plots robust accuracy against ε")
        label = _defense_name(report.get("label", "defended"), report.get("defense"))
        for row in report["rows"]:
            for attack, p in _result_points(row["value"], row, n, n_seeds, True).items():
                out.append((label, attack, p))
        return out
    for label, r in report["results"].items():
        for attack, p in _result_points(report["threat"]["eps"], r, n, n_seeds,
                                        False).items():
            out.append((_defense_name(label, report.get("defense")), attack, p))
    return out


def _check_same(reports: list[tuple[Path, dict]], what: str, get) -> Any:
    values = {}
    for path, rep in reports:
        values.setdefault(get(rep), []).append(path.name)
    if len(values) > 1:
        parts = "; ".join(f"{v}: {', '.join(names)}" for v, names in values.items())
        raise InputError(f"reports of different {what}s cannot share a page ({parts})")
    return next(iter(values))


def build_comparison(paths: list[Path], names: list[str] | None = None) -> dict:
    """The comparison of the reports at ``paths`` (see the module docstring); ``names``, one
    per report, replace the model files' stems as the models' names.

    Raises:
        InputError: fewer than one report, a missing or foreign file, reports of different
            tasks or norms (naming them), a sweep over another key, names not one per report,
            or two reports giving the same line the same ε.
    """
    if not paths:
        raise InputError("give at least one report JSON")
    if names is not None and len(names) != len(paths):
        raise InputError(f"--names gives {len(names)} name(s) for {len(paths)} report(s)")
    reports = [(Path(p), _load(Path(p))) for p in paths]
    task = _check_same(reports, "task", _task)
    norm = _check_same(reports, "norm", lambda r: r["threat"]["norm"])
    metric = reports[0][1].get("metric", "accuracy")
    lines: dict[tuple[str, str, str], dict] = {}
    for i, (path, rep) in enumerate(reports):
        model = names[i] if names else Path(str(rep.get("model") or path.stem)).stem
        for defense, attack, point in _points(path, rep):
            line = lines.setdefault((model, defense, attack), {
                "model": model, "defense": defense, "attack": attack,
                "headline": attack == WORST, "reports": [], "points": []})
            if any(abs(q["eps"] - point["eps"]) < 1e-12 for q in line["points"]):
                raise InputError(f"{path.name} gives {model} / {defense} / {attack} at "
                                 f"eps={eps_text(point['eps'])} a second time")
            line["points"].append(point)
            if str(path) not in line["reports"]:
                line["reports"].append(str(path))
    for line in lines.values():
        line["points"].sort(key=lambda q: q["eps"])
    # a (model, defense) without a worst case (one attack per run): its attacks are plotted
    groups: dict[tuple[str, str], list[dict]] = {}
    for line in lines.values():
        groups.setdefault((line["model"], line["defense"]), []).append(line)
    for group in groups.values():
        if not any(ln["headline"] for ln in group):
            for ln in group:
                ln["headline"] = True
    eps = sorted({q["eps"] for ln in lines.values() for q in ln["points"]})
    return {"command": "compare", "task": task, "metric": metric, "norm": norm,
            "reports": [str(p) for p, _ in reports], "eps": eps,
            "units": "[0,1] pixels", "semantics": "adversarial = mean over seeds; "
            "adversarial_ci = 95% Wilson interval over n_images; worst case (per image) = "
            "an image counts as robust only if no attack broke it",
            "lines": list(lines.values())}


def table_rows(comparison: dict) -> tuple[list[str], list[list[str]]]:
    """Columns (model, defense, attack, natural, one per ε) and one row per line: the
    adversarial figure with its spread over seeds and 95% interval, ``*`` where that attack's
    curve had not converged."""
    eps = comparison["eps"]
    cols = ["model", "defense", "attack", "natural"] + [
        f"eps={eps_text(e)}" for e in eps]
    rows = []
    for ln in comparison["lines"]:
        by_eps = {round(q["eps"], 12): q for q in ln["points"]}
        cells = []
        for e in eps:
            q = by_eps.get(round(e, 12))
            cells.append("" if q is None else format_accuracy(
                q["adversarial"], q["adversarial_std"], q["adversarial_ci"])
                + ("" if q["converged"] is not False else " *"))
        natural = ln["points"][0]["natural"]
        rows.append([ln["model"], ln["defense"],
                     ln["attack"] + (" (headline)" if ln["headline"] else ""),
                     f"{natural:.3f}"] + cells)
    return cols, rows


def comparison_title(comparison: dict) -> str:
    return (f"{comparison['task']}: adversarial {comparison['metric']} against "
            f"{comparison['norm']} eps ({len(comparison['reports'])} reports)")


def comparison_table(comparison: dict):
    """The :func:`table_rows` as a :class:`rich.table.Table`."""
    from rich.table import Table

    cols, rows = table_rows(comparison)
    table = Table(title=comparison_title(comparison))
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    return table


def comparison_png(comparison: dict) -> bytes:
    """The headline line of every model × defense: mean over seeds against ε with its 95%
    Wilson band; one colour per model, solid undefended, dashed defended."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    models = list(dict.fromkeys(ln["model"] for ln in comparison["lines"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ln in comparison["lines"]:
        if not ln["headline"]:
            continue
        xs = [q["eps"] for q in ln["points"]]
        ys = [q["adversarial"] for q in ln["points"]]
        colour = colours[models.index(ln["model"]) % len(colours)]
        style = "-" if ln["defense"] == "undefended" else "--"
        label = f"{ln['model']}, {ln['defense'].split(' (')[0]}, {ln['attack']}"
        ax.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=label)
        lo = [q["adversarial_ci"][0] for q in ln["points"]]
        hi = [q["adversarial_ci"][1] for q in ln["points"]]
        if len(xs) == 1:  # a band needs two points: a single one gets an error bar
            ax.errorbar(xs, ys, yerr=[[ys[0] - lo[0]], [hi[0] - ys[0]]], color=colour,
                        capsize=3, lw=1)
        else:
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)
    ax.set_xlabel(f"{comparison['norm']} eps ([0,1] pixels)")
    ax.set_ylabel(f"adversarial {comparison['metric']}\n(mean over seeds, 95% band)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(comparison_title(comparison), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def render_comparison(comparison: dict, png: bytes) -> str:
    """One self-contained HTML page: the plot, the table, the notes and the inputs."""
    from ebmctl.evaluate.html import _img, _page, _pre, _rows_table

    cols, rows = table_rows(comparison)
    notes = [n for n in comparison_notes(comparison)]
    parts = [_img(png, "robust accuracy against eps", "headline lines (per-image worst case "
                  "where a run had several attacks) with 95% Wilson bands over the images"),
             "<h2>Table</h2>", _rows_table(cols, rows),
             "<p>Cells: mean over seeds (± std over seeds) [95% Wilson interval over the "
             "images]; * = that attack's accuracy curve was still falling (not converged)."
             "</p>",
             "<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>" if notes else "",
             "<h2>Reports</h2>", _pre(comparison["reports"])]
    return _page(comparison_title(comparison), parts)


def comparison_notes(comparison: dict) -> list[str]:
    """What a reader must see beside the table: lines with unconverged points, reports with
    one seed, and differing image counts."""
    notes = []
    for ln in comparison["lines"]:
        bad = [eps_text(q["eps"]) for q in ln["points"] if q["converged"] is False]
        if bad:
            notes.append(f"{ln['model']} / {ln['defense']} / {ln['attack']}: not converged at "
                         f"eps = {', '.join(bad)}")
    counts = {q["n_images"] for ln in comparison["lines"] for q in ln["points"]}
    if len(counts) > 1:
        notes.append(f"the reports attack different numbers of images ({sorted(counts)}); "
                     "their intervals differ accordingly")
    return notes


def write_comparison(paths: list[Path], out: Path, names: list[str] | None = None) -> dict:
    """Build the comparison and write ``out`` (.html), and beside it the JSON and the PNG.

    Raises:
        InputError: see :func:`build_comparison`.
    """
    from ebmctl.artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text

    comparison = build_comparison(paths, names)
    png = comparison_png(comparison)
    atomic_write_json(out.with_suffix(".json"), comparison)
    atomic_write_bytes(out.with_suffix(".png"), png)
    atomic_write_text(out, render_comparison(comparison, png))
    return comparison
