"""Tables and the accuracy-vs-ε plot of docs/results/masking.md, from the reports that
scripts/masking_study_digits.sh writes.

Every report attacks the same first-50 test images (one seeded subset), so per-image outcomes
line up across reports: for each EBM the per-image worst case over every attack at ε = 0.1 is an
image that survived all of them (seed 0). Accuracies carry 95% Wilson intervals over the images.

    python scripts/masking_table.py runs/masking --plot docs/masking/accuracy-vs-eps.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ebmctl.evaluate.tables import format_accuracy
from ebmctl.evaluate.stats import accuracy_interval

EBMS = {"leaky": "LeakyReLU EBM", "smooth": "smooth-leaky EBM"}
#: attack steps of the study's protocol (scripts/masking_study_digits.sh); other counts are noted
PROTOCOL_STEPS = 20


def variant(stem: str, cfg: dict) -> str:
    """A short description of what the report changed from the plain protocol."""
    a = cfg["attack"]
    bits = []
    if a["steps"] != PROTOCOL_STEPS:
        bits.append(f"{a['steps']} steps")
    if a.get("loss", "ce") != "ce":
        bits.append(f"loss {a['loss']}, gradient {a['gradient']}")
    if a.get("gradient_steps"):
        bits.append(f"surrogate chain K' = {a['gradient_steps']}")
    if a.get("common_noise"):
        bits.append("fixed attacker noise")
    if a.get("energy_weight"):
        bits.append(f"energy-aware loss λ = {a['energy_weight']:g}")
    return ", ".join(bits)


def rows_of(path: Path) -> list[dict]:
    rep = json.loads(path.read_text())
    ebm = path.stem.split("-")[0]
    eps = rep["threat"]["eps"]
    out = []
    for label, res in rep["results"].items():
        for name, a in res["attacks"].items():
            seed0 = a["per_seed"][0]
            out.append({"ebm": ebm if label != "undefended" else "none", "label": label,
                        "attack": name, "variant": variant(path.stem, rep["config"]),
                        "eps": eps, "acc": a["adversarial_mean"],
                        "natural": a["natural_mean"], "n": a["n_images"],
                        "converged": a["converged"], "report": path.name,
                        "robust": [bool(r) for r in seed0["robust_ok"]],
                        "seconds": a.get("seconds")})
        sub = res.get("resubmission")
        if sub:
            for h, r in sub["worst_case"]["by_eot_reps"].items():
                for kind in ("mean", "worst_of_n"):
                    out.append({"ebm": ebm, "label": label, "attack": "resubmission",
                                "variant": f"{'worst of' if kind == 'worst_of_n' else 'mean over'}"
                                           f" N = {sub['resubmissions']} resubmissions of the "
                                           f"final images, H = {h}",
                                "eps": eps, "acc": r[kind], "natural": None,
                                "n": sub["worst_case"]["n_images"], "converged": None,
                                "report": path.name, "robust": None, "seconds": None})
    return out


def fmt(acc: float, n: int) -> str:
    return format_accuracy(acc, None, accuracy_interval(acc, n))


def table(rows: list[dict]) -> str:
    lines = ["| EBM | ε | attack | variant | robust accuracy [95% CI] | n | converged | report |",
             "|---|---|---|---|---|---|---|---|"]
    def key(r: dict) -> tuple:
        return (list(EBMS).index(r["ebm"]) if r["ebm"] in EBMS else -1, r["eps"],
                r["attack"] == "resubmission", r["report"], r["attack"])

    seen = set()
    for r in sorted(rows, key=key):
        if r["ebm"] == "none":  # the undefended PGD row appears once per ε
            if r["eps"] in seen:
                continue
            seen.add(r["eps"])
        conv = {True: "yes", False: "**NOT converged**", None: ""}[r["converged"]]
        lines.append(f"| {EBMS.get(r['ebm'], 'undefended')} | {r['eps']:g} | {r['attack']} | "
                     f"{r['variant']} | {fmt(r['acc'], r['n'])} | {r['n']} | {conv} | "
                     f"{r['report']} |")
    for ebm, name in EBMS.items():
        attacked = [r for r in rows if r["ebm"] == ebm and r["eps"] == 0.1 and r["robust"]]
        if not attacked:
            continue
        sizes = {len(r["robust"]) for r in attacked}
        if len(sizes) != 1:  # different --n-images draw different subsets: no per-image match
            raise SystemExit(f"{name}: reports at eps = 0.1 attack {sorted(sizes)} images; "
                             "the per-image worst case needs one image set")
        n = sizes.pop()
        worst = sum(all(r["robust"][i] for r in attacked) for i in range(n)) / n
        lines.append(f"| {name} | 0.1 | **worst case per image** | all {len(attacked)} attack "
                     f"rows at ε = 0.1 | **{fmt(worst, n)}** | {n} | | |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float, int]]] = {}
    for r in rows:
        if r["attack"] == "resubmission" or r["variant"]:
            continue
        name = (f"{EBMS.get(r['ebm'], 'undefended')}: {r['attack']}")
        series.setdefault(name, []).append((r["eps"], r["acc"], r["n"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, pts in sorted(series.items()):
        pts = sorted(set(pts))
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        ci = [accuracy_interval(p[1], p[2]) for p in pts]
        line, = ax.plot(xs, ys, marker="o" if "bpda" in name or "pgd" in name else "s",
                        linestyle="-" if len(pts) > 1 else "none", label=name)
        ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], alpha=0.12,
                        color=line.get_color())
    ax.set_xlabel("ε (ℓ∞, [0,1] pixels)")
    ax.set_ylabel("robust accuracy (seed 0, 95% Wilson band)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("digits: LeakyReLU vs smooth-leaky EBM defense (50 test images)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    rows = [r for p in sorted(args.dir.glob("*.json"))
            if p.stem.split("-")[0] in EBMS and "results" in json.loads(p.read_text())
            for r in rows_of(p)]
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
