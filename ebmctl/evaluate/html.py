"""A self-contained HTML page for an ``ebmctl attack`` / ``ebmctl.evaluate`` report.

One file, no network: styles inline, plots and images embedded as base64 PNG ``data:`` URIs.
It shows the headline table (natural and adversarial accuracy with 95% intervals, per attack,
the per-image worst case and the ε = 0 control), the notes a reader must see, the
accuracy-vs-step curves, the adversarial-image grids written beside the JSON, the sanity
checks, and the threat model, defense, config and environment.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from ebmctl.errors import InputError


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _curves_png(report: dict) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(f"{label} ({name})", a["accuracy_curve"])
              for label, r in report.get("results", {}).items()
              for name, a in r.get("attacks", {}).items() if a.get("accuracy_curve")]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for name, curve in series:
        ax.plot(range(len(curve)), curve, marker="o" if len(curve) < 30 else None, label=name)
    ax.set_xlabel("attack step")
    ax.set_ylabel(f"robust {report.get('metric', 'accuracy')} (worst restart)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt(mean, std=None, ci=None) -> str:
    from ebmctl.evaluate.report import format_accuracy

    if mean is None:
        return "n/a"
    return format_accuracy(float(mean), std, ci)


def _table(report: dict) -> str:
    metric = _esc(report.get("metric", "accuracy"))
    rows = []
    for label, r in report.get("results", {}).items():
        for name, a in r.get("attacks", {}).items():
            conv = {True: "yes", False: "NOT converged", None: "n/a"}[a.get("converged")]
            rows.append((label, name, _fmt(a.get("natural_mean"), a.get("natural_std"),
                                           a.get("natural_ci")),
                         _fmt(a.get("adversarial_mean"), a.get("adversarial_std"),
                              a.get("adversarial_ci")), conv, ""))
        rows.append((label, "worst case per image (all attacks)",
                     _fmt(r.get("natural"), r.get("natural_std"), r.get("natural_ci")),
                     _fmt(r.get("adversarial"), r.get("adversarial_std"),
                          r.get("adversarial_ci")),
                     "yes" if r.get("converged", True) else "NOT converged", "headline"))
        c = r.get("eps0_control")
        if c:
            rows.append((label, f"eps = 0 control ({c.get('attack')}, seed {c.get('seed')})",
                         _fmt(c.get("natural")), _fmt(c.get("adversarial"), None,
                                                      c.get("adversarial_ci")),
                         f"inflation {c.get('inflation', 0):+.3f}", ""))
    head = ("<tr><th>model</th><th>attack</th><th>natural {m} [95% CI]</th>"
            "<th>adversarial {m} [95% CI]</th><th>converged</th></tr>").format(m=metric)
    body = "\n".join(
        f"<tr class=\"{cls}\"><td>{_esc(a)}</td><td>{_esc(b)}</td><td>{_esc(c)}</td>"
        f"<td>{_esc(d)}</td><td>{_esc(e)}</td></tr>" for a, b, c, d, e, cls in rows)
    return f"<table>\n{head}\n{body}\n</table>"


def _sanity(report: dict) -> str:
    checks = (report.get("sanity") or {}).get("checks") or []
    if not checks:
        return "<p>No sanity checks in this report.</p>"
    items = []
    for c in checks:
        detail = {k: v for k, v in c.items() if k not in ("check", "pass", "per_image_robust")}
        items.append(f"<li class=\"{'pass' if c.get('pass') else 'fail'}\">"
                     f"<b>{'ok' if c.get('pass') else 'FAILED'}</b>: {_esc(c.get('check'))}"
                     f" <code>{_esc(json.dumps(detail, default=str))}</code></li>")
    return "<ul>" + "\n".join(items) + "</ul>"


def render_html(report: dict, json_path: str | Path | None = None) -> str:
    """The page for ``report`` (the dict of an attack JSON). Images written beside
    ``json_path`` (``<stem>.<label>-adv.png``) are embedded; nothing is linked."""
    from ebmctl.evaluate.report import report_notes

    title = (f"ebmctl {report.get('command', 'attack')}: {report.get('dataset', '')} "
             f"({report.get('n_images', '?')} images)")
    threat = report.get("threat", {})
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p>Threat model: {_esc(threat.get('norm'))} eps = {_esc(_eps(threat))}, "
             f"{_esc(threat.get('steps'))} steps of {_esc(_eps(threat, 'step_size'))}, "
             f"{_esc(threat.get('restarts'))} restart(s); seeds {_esc(report.get('seeds'))}. "
             f"{_esc(report.get('semantics', ''))}</p>",
             "<h2>Headline</h2>", _table(report)]
    try:
        notes = report_notes(report)
    except (KeyError, TypeError):
        notes = []
    if notes:
        parts.append("<ul class=\"notes\">" + "".join(f"<li>{_esc(n)}</li>" for n in notes)
                     + "</ul>")
    png = _curves_png(report)
    if png:
        parts += ["<h2>Accuracy vs attack step</h2>",
                  f"<img alt=\"accuracy vs attack step\" src=\"{_png_data_uri(png)}\">"]
    if json_path is not None:
        p = Path(json_path)
        grids = [(label, p.with_name(f"{p.stem}.{label}-adv.png"))
                 for label in report.get("results", {})]
        grids = [(label, g) for label, g in grids if g.is_file()]
        if grids:
            parts.append("<h2>Adversarial images (per-image worst case)</h2>")
            for label, g in grids:
                parts.append(f"<figure><img alt=\"{_esc(label)} adversarial images\" "
                             f"src=\"{_png_data_uri(g.read_bytes())}\"><figcaption>"
                             f"{_esc(label)}</figcaption></figure>")
    parts += ["<h2>Sanity checks</h2>", _sanity(report),
              "<h2>Defense</h2>", f"<pre>{_esc(json.dumps(report.get('defense', {}), indent=2))}</pre>",
              "<h2>Environment</h2>",
              f"<pre>{_esc(json.dumps(report.get('environment', {}), indent=2, default=str))}</pre>",
              "<h2>Config</h2>",
              f"<pre>{_esc(json.dumps(report.get('config', {}), indent=2, default=str))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}"
             "tr.headline{font-weight:bold;background:#eef}li.fail{color:#a00}"
             "pre{background:#f6f6f6;padding:.5em;overflow-x:auto;font-size:.85em}"
             "img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def _eps(threat: dict, key: str = "eps") -> str:
    v = threat.get(key)
    if not isinstance(v, (int, float)):
        return str(v)
    k = v * 255
    return f"{round(k)}/255" if v > 0 and abs(k - round(k)) < 1e-6 and threat.get(
        "norm") == "linf" else f"{v:.4g}"


def write_html(json_path: str | Path, out: str | Path | None = None) -> Path:
    """Render the report JSON at ``json_path`` to ``out`` (default: beside it, ``.html``).

    Raises:
        InputError: the file is missing, not JSON, or not an attack report.
    """
    from ebmctl.artifacts import atomic_write_text

    p = Path(json_path)
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"report not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p} is not a readable JSON report: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict):
        raise InputError(f"{p} is not an attack report (no 'results'); `ebmctl report` renders "
                         "the JSON of `ebmctl attack` or ebmctl.evaluate")
    target = Path(out) if out is not None else p.with_suffix(".html")
    atomic_write_text(target, render_html(report, p))
    return target
