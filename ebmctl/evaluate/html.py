"""Self-contained HTML pages for ebmctl's reports: ``attack`` (and ``ebmctl.evaluate``), ``ood``
and ``lyapunov``, rendered by ``ebmctl report RUN.json`` and written beside each JSON.

One file, no network: styles inline, plots and images embedded as base64 PNG ``data:`` URIs.

* attack: the headline table (natural and adversarial accuracy with 95% intervals, per attack,
  the per-image worst case and the ε = 0 control), the notes a reader must see, the
  accuracy-vs-step curves, the gallery (clean / adversarial / magnified perturbation / purified)
  and the task's figures written beside the JSON, the sanity checks, and the threat model,
  defense, config and environment;
* ood: energy histograms in-distribution vs each OOD set, the ROC curves, the AUROC and
  FPR@95%TPR table (docs/algorithms.md#ood-scores);
* lyapunov: the maximal exponent vs η with its table (docs/algorithms.md#sampler-dynamics), or,
  for the ``--checks`` report, the forgetting curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ebmctl.errors import InputError
from ebmctl.evaluate.results import SEMANTICS, AttackReport
from ebmctl.evaluate.tables import as_report, report_notes, result_columns, result_rows

_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
          "tr.headline{font-weight:bold;background:#eef}li.fail{color:#a00}"
          "pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:.85em}"
          "img{max-width:100%}")


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes | None, alt: str, caption: str = "") -> str:
    if not data:
        return ""
    tag = f"<img alt=\"{_esc(alt)}\" src=\"{_png_data_uri(data)}\">"
    return (f"<figure>{tag}<figcaption>{_esc(caption)}</figcaption></figure>" if caption
            else tag)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fig_png(fig) -> bytes:
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _rows_table(columns: list[str], rows: list[list]) -> str:
    head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
    body = "\n".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table>\n{head}\n{body}\n</table>"


def _pre(obj) -> str:
    return f"<pre>{_esc(json.dumps(obj or {}, indent=2, default=str))}</pre>"


def _page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"<h1>{_esc(title)}</h1>\n" + "\n".join(p for p in parts if p)
            + "\n</body></html>\n")


def _read_png(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


# --- attack ---------------------------------------------------------------------------------

def _curves_png(report: AttackReport) -> bytes | None:
    from ebmctl.evaluate.plots import curve_axis_label, integer_ticks

    series = [(f"{label} ({name})", a.accuracy_curve)
              for label, r in report.results.items()
              for name, a in r.attacks.items() if a.accuracy_curve]
    if not series:
        return None
    fig, ax = _pyplot().subplots(figsize=(6.4, 3.6), dpi=100)
    for name, curve in series:
        ax.plot(range(len(curve)), curve, marker="o" if len(curve) < 30 else None, label=name)
    ax.set_xlabel("attack step")
    integer_ticks(ax)  # steps are whole: no tick at step 0.5
    ax.set_ylabel(curve_axis_label(report.metric) + "\n(worst restart)", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _fig_png(fig)


def _table(report: AttackReport) -> str:
    """The headline table: the rows every results table shows (:func:`~ebmctl.evaluate.
    tables.result_rows`), each model's headline row emphasised."""
    head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in result_columns(report.metric))
    body = "\n".join(
        f"<tr class=\"{'headline' if row.headline else ''}\">"
        + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
        for row in result_rows(report))
    return f"<div class=\"results\"><table>\n{head}</tr>\n{body}\n</table></div>"


def _sanity(report: AttackReport) -> str:
    checks = report.sanity.checks if report.sanity is not None else []
    if not checks:
        return "<p>No sanity checks in this report.</p>"
    items = []
    for c in checks:
        detail = {k: v for k, v in c.figures.items() if k != "per_image_robust"}
        items.append(f"<li class=\"{'pass' if c.passed else 'fail'}\">"
                     f"<b>{'ok' if c.passed else 'FAILED'}</b>: {_esc(c.check)}"
                     f" <code>{_esc(json.dumps(detail, default=str))}</code></li>")
    return "<ul>" + "\n".join(items) + "</ul>"


def _eps(threat: dict, key: str = "eps") -> str:
    from ebmctl.units import format_radius

    v = threat.get(key)
    if not isinstance(v, (int, float)):
        return str(v)
    return format_radius(v) if threat.get("norm") == "linf" else f"{v:.4g}"


def _attack_images(report: AttackReport, json_path: Path | None) -> list[str]:
    """The gallery of each model label (else its adversarial grid) and the task's figures
    (e.g. segmentation panels), read from beside the JSON."""
    if json_path is None:
        return []
    p, parts, figures = Path(json_path), [], []
    for label in report.results:
        gallery = _read_png(p.with_name(f"{p.stem}.{label}-gallery.png"))
        if gallery:
            figures.append(_img(gallery, f"{label} clean, adversarial, perturbation, purified",
                                f"{label}: clean / adversarial / perturbation magnified"
                                + (" / purified" if label != "undefended" else "")))
        else:
            figures.append(_img(_read_png(p.with_name(f"{p.stem}.{label}-adv.png")),
                                f"{label} adversarial images", f"{label}: adversarial images"))
    if any(figures):
        parts += ["<h2>Images (adversarial = per-image worst case)</h2>", *figures]
    task = report.task_report or {}
    table = task.get("table")
    if table:
        parts += [f"<h2>{_esc(table.get('title', report.task or 'task'))}</h2>",
                  _rows_table(table.get("columns", []), table.get("rows", []))]
    panels = [_read_png(p.with_name(Path(f).name)) for f in (task.get("files") or [])[:8]]
    if any(panels):
        parts.append(f"<h2>{_esc(report.task or 'task')} panels</h2>")
        parts += [_img(png, Path(f).name) for png, f in zip(panels, task["files"])]
    return parts


def render_attack(report: dict | AttackReport, json_path: str | Path | None = None) -> str:
    """The page of an attack report (the JSON of ``ebmctl attack`` or ``ebmctl.evaluate``,
    read back with :meth:`AttackReport.from_json`, or the record itself). The gallery, grids
    and task figures written beside ``json_path`` are embedded."""
    rep = as_report(report)
    # a report states what its figures mean; one written by this version states SEMANTICS
    semantics = report.get("semantics", "") if isinstance(report, dict) else SEMANTICS
    title = f"ebmctl {rep.command}: {rep.dataset} ({rep.n_images} images)"
    threat = rep.threat.to_json()
    parts = [f"<p>Threat model: {_esc(threat.get('norm'))} eps = {_esc(_eps(threat))}, "
             f"{_esc(threat.get('steps'))} steps of {_esc(_eps(threat, 'step_size'))}, "
             f"{_esc(threat.get('restarts'))} restart(s); seeds {_esc(rep.seeds)}. "
             f"{_esc(semantics)}</p>",
             "<h2>Headline</h2>", _table(rep)]
    notes = report_notes(rep)
    if notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in notes)
                     + "</ul>")
    png = _curves_png(rep)
    if png:
        parts += ["<h2>Accuracy vs attack step</h2>", _img(png, "accuracy vs attack step")]
    parts += _attack_images(rep, Path(json_path) if json_path is not None else None)
    parts += ["<h2>Sanity checks</h2>", _sanity(rep),
              "<h2>Defense</h2>", _pre(rep.defense),
              "<h2>Environment</h2>", _pre(rep.environment),
              "<h2>Config</h2>", _pre(rep.config)]
    return _page(title, parts)


#: kept for callers of the first version
render_html = render_attack


# --- ood ------------------------------------------------------------------------------------

def roc_curve(pos_scores, neg_scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); positives score higher.
    Its trapezoid area equals :func:`ebmctl.ood.auroc` (ties count one half)."""
    pos, neg = np.asarray(pos_scores, float), np.asarray(neg_scores, float)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = [0.0] + [float((pos >= t).mean()) for t in thresholds]
    fpr = [0.0] + [float((neg >= t).mean()) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def _ood_figures(report: dict) -> list[str]:
    ind = report.get("in_distribution", {})
    e_in = ind.get("energies")
    sets = {k: v.get("energies") for k, v in report.get("out_of_distribution", {}).items()}
    if not e_in or not all(sets.values()):
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    groups = {f"{ind.get('dataset', 'in')} (in-distribution)": e_in,
              **{f"{k} (OOD)": v for k, v in sets.items()}}
    allv = np.concatenate([np.asarray(v, float) for v in groups.values()])
    lo, hi = np.percentile(allv, 0.5), np.percentile(allv, 99.5)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    for label, v in groups.items():
        ax.hist(np.clip(np.asarray(v, float), edges[0], edges[-1]), bins=edges, density=True,
                alpha=0.45, label=label)
    ax.set_xlabel(f"energy U(x) (T = {report.get('temperature', '?')}; lower = more typical)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    hist = _fig_png(fig)
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=100)
    for name, e_out in sets.items():
        fpr, tpr = roc_curve(-np.asarray(e_in, float), -np.asarray(e_out, float))
        auc = report["out_of_distribution"][name].get("auroc")
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("false-positive rate (OOD accepted)")
    ax.set_ylabel("true-positive rate (in-distribution accepted)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    roc = _fig_png(fig)
    return ["<h2>Energy histograms</h2>", _img(hist, "energy histograms"),
            "<h2>ROC curves (score = -energy, in-distribution positive)</h2>",
            _img(roc, "ROC curves")]


def render_ood(report: dict, json_path: str | Path | None = None) -> str:
    """The page of an ``ebmctl ood`` report: AUROC / FPR@95%TPR table, energy histograms and
    ROC curves (drawn from the per-image energies the report holds; a report without them gets
    the histogram PNG written beside it)."""
    ind = report.get("in_distribution", {})
    title = f"ebmctl ood: {Path(str(report.get('model', ''))).name} vs {ind.get('dataset', '?')}"
    rows = [[ind.get("dataset", "?") + " (in-distribution)", ind.get("n"),
             f"{ind.get('energy_mean', float('nan')):.4g}", "", ""]]
    for name, r in report.get("out_of_distribution", {}).items():
        rows.append([name, r.get("n"), f"{r.get('energy_mean', float('nan')):.4g}",
                     f"{r.get('auroc', float('nan')):.4f}",
                     f"{r.get('fpr_at_95_tpr', float('nan')):.4f}"])
    parts = [f"<p>Score: {_esc(report.get('score', ''))}. AUROC is the probability that a random "
             "in-distribution image scores above a random OOD image; FPR@95%TPR the share of "
             "OOD images accepted at the threshold that accepts 95% of in-distribution "
             "images.</p>",
             "<h2>AUROC</h2>",
             _rows_table(["set", "n", "mean energy", "AUROC", "FPR@95%TPR"], rows)]
    figures = _ood_figures(report)
    if not figures and json_path is not None:
        png = _read_png(Path(json_path).with_suffix(".png"))
        figures = ["<h2>Energy histograms</h2>", _img(png, "energy histograms")] if png else []
    parts += figures
    parts += ["<h2>Environment</h2>", _pre(report.get("environment")),
              "<h2>Config</h2>", _pre(report.get("config"))]
    return _page(title, parts)


# --- lyapunov -------------------------------------------------------------------------------

def _exponent_png(report: dict) -> bytes | None:
    runs = report.get("runs") or [{"separation": report.get("separation"),
                                   "per_eta": report.get("per_eta", [])}]
    if not any(r.get("per_eta") for r in runs):
        return None
    fig, ax = _pyplot().subplots(figsize=(6.4, 4), dpi=100)
    for run in runs:
        etas = np.asarray([r["eta"] for r in run["per_eta"]], float)
        mean = np.asarray([r["mean"] for r in run["per_eta"]], float)
        std = np.asarray([r["std"] for r in run["per_eta"]], float)
        line, = ax.plot(etas, mean, marker="o", markersize=3,
                        label=f"d0 = {run.get('separation', 0):.0e}")
        ax.fill_between(etas, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    if all(r["eta"] > 0 for run in runs for r in run["per_eta"]):
        ax.set_xscale("log")
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    if report.get("zero_crossing") is not None:
        ax.axvline(report["zero_crossing"], color="black", lw=1.0, ls=":",
                   label=f"zero crossing eta = {report['zero_crossing']:.3g}")
    ax.set_xlabel("noise scale eta")
    ax.set_ylabel("max Lyapunov exponent per step (mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _fig_png(fig)


def _memory_png(report: dict) -> bytes | None:
    rows = report.get("curves") or []
    if not rows:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    ks = [r["k"] for r in rows]
    for key, label in (("dist_common", "clean vs adv, common noise"),
                       ("dist_independent", "clean vs adv, independent noise"),
                       ("dist_clean_copies", "two clean copies (independent)")):
        a.plot(ks, [r[key] for r in rows], marker="o", markersize=3, label=label)
    for key, label in (("memory", "remembered share of the adversarial offset"),
                       ("agree_common", "label agreement (common noise)"),
                       ("agree_independent", "label agreement (independent)")):
        b.plot(ks, [r[key] for r in rows], marker="o", markersize=3, label=label)
    for ax, ylabel in ((a, "l2 distance ([0,1] units)"), (b, "fraction")):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("Langevin steps k")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _fig_png(fig)


def render_lyapunov(report: dict, json_path: str | Path | None = None) -> str:
    """The page of an ``ebmctl lyapunov`` report: the maximal exponent vs η (plot and table,
    zero crossing and η*), or for the ``--checks`` report the forgetting curves."""
    what = "forgetting curves" if "curves" in report else "Lyapunov exponent vs eta"
    title = (f"ebmctl lyapunov: {what}, {Path(str(report.get('ebm', ''))).name} on "
             f"{report.get('dataset', '?')}")
    parts = []
    if "curves" in report:
        att = report.get("attack") or {}
        parts.append(f"<p>{_esc(report.get('claim', ''))}. {report.get('n_images')} images; "
                     f"attack {_esc(att.get('attack'))} on the {_esc(att.get('target'))}.</p>")
        parts += ["<h2>Forgetting curves</h2>", _img(_memory_png(report), "forgetting curves")]
        cols = ["k", "dist_common", "dist_independent", "dist_clean_copies", "memory",
                "agree_common", "agree_independent", "score_clean", "score_adv"]
        parts.append(_rows_table(cols, [[r.get(c) if c == "k" else f"{r.get(c, float('nan')):.3f}"
                                         for c in cols] for r in report["curves"]]))
        parts += ["<h2>Energy gap</h2>", _pre(report.get("energy_gap"))]
    else:
        zc = report.get("zero_crossing")
        parts.append(f"<p>Map: <code>{_esc(report.get('map', ''))}</code>. "
                     f"{_esc(report.get('method', ''))}. {report.get('n_images')} images x "
                     f"{len(report.get('seeds') or [])} seeds, {report.get('steps')} steps after "
                     f"{report.get('burn_in')} burn-in. Zero crossing: "
                     f"{'none on the grid' if zc is None else f'eta = {zc:.3g}'}; eta* (first "
                     f"mean &gt; {_esc(report.get('zero_tol_se'))} SE above 0): "
                     f"{_esc(report.get('eta_star'))}.</p>")
        parts += ["<h2>Maximal exponent vs eta</h2>",
                  _img(_exponent_png(report), "Lyapunov exponent vs eta"),
                  _rows_table(["eta", "mean", "std", "se", "> 0"],
                              [[f"{r['eta']:.4g}", f"{r['mean']:.3e}", f"{r['std']:.2e}",
                                f"{r['se']:.2e}", "yes" if r.get("positive") else ""]
                               for r in report.get("per_eta", [])])]
    parts += ["<h2>Environment</h2>", _pre(report.get("environment")),
              "<h2>Config</h2>", _pre(report.get("config"))]
    return _page(title, parts)


# --- dispatch -------------------------------------------------------------------------------

RENDERERS = {"attack": render_attack, "ood": render_ood, "lyapunov": render_lyapunov}


def report_kind(report) -> str | None:
    """"attack" / "ood" / "lyapunov" from a report's ``command`` field (``ebmctl.evaluate``'s
    reports count as attack reports), else None."""
    if not isinstance(report, dict):
        return None
    command = str(report.get("command", ""))
    if command == "ood" and isinstance(report.get("out_of_distribution"), dict):
        return "ood"
    if command == "lyapunov" and ("per_eta" in report or "curves" in report):
        return "lyapunov"
    if command in ("attack", "evaluate", "") and isinstance(report.get("results"), dict):
        return "attack"
    return None


def render_report(report: dict, json_path: str | Path | None = None) -> str:
    """The page for any report :func:`report_kind` recognises.

    Raises:
        InputError: not an attack, ood or lyapunov report.
    """
    kind = report_kind(report)
    if kind is None:
        raise InputError("not an ebmctl report `ebmctl report` renders (the JSON of `ebmctl "
                         "attack`, `ebmctl ood`, `ebmctl lyapunov` or ebmctl.evaluate)")
    return RENDERERS[kind](report, json_path)


def write_html(json_path: str | Path, out: str | Path | None = None) -> Path:
    """Render the report JSON at ``json_path`` (attack, ood or lyapunov, told apart by its
    ``command`` field) to ``out`` (default: beside it, ``.html``).

    Raises:
        InputError: the file is missing, not JSON, or not a report of those commands.
    """
    from ebmctl.artifacts import atomic_write_text

    p = Path(json_path)
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p} is not a readable JSON report: {exc}") from None
    if report_kind(report) is None:
        raise InputError(f"{p} is not an ebmctl report that `ebmctl report` renders (the JSON "
                         "of `ebmctl attack`, `ebmctl ood`, `ebmctl lyapunov` or "
                         "ebmctl.evaluate)")
    target = Path(out) if out is not None else p.with_suffix(".html")
    atomic_write_text(target, render_report(report, p))
    return target
