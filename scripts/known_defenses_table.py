"""Summarise scripts/known_defenses.sh's reports: per purifier, each attack's robust accuracy
(95% Wilson interval), whether its curve converged, the masking verdict of the naive report,
and the per-image worst case over every report of that purifier (same images, same seed).
Prints a markdown table and writes summary.json beside the reports.

    python scripts/known_defenses_table.py runs/known-defenses/digits
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ebmctl.evaluate.stats import accuracy_interval

ORDER = ("naive", "bpda", "bpda-eot", "square")


def main() -> None:
    folder = Path(sys.argv[1])
    und = json.loads((folder / "undefended.json").read_text())["results"]["undefended"]
    summary = {
        "undefended": {
            "natural": und["natural"],
            "adversarial": und["adversarial"],
            "n_images": und["n_images"],
        },
        "purifiers": {},
    }
    rows = [
        f"| (none) | {und['natural']:.3f} | PGD (white box) | {und['adversarial']:.3f} | "
        f"{'yes' if und['converged'] else 'NOT'} | - |"
    ]
    names = sorted({p.name.split(".")[0] for p in folder.glob("*.naive.json")})
    for name in names:
        robust, entry = None, {"attacks": []}
        for kind in ORDER:
            path = folder / f"{name}.{kind}.json"
            if not path.exists():
                continue
            rep = json.loads(path.read_text())
            res = rep["results"]["defended"]
            entry["purifier"] = rep["defense"]["purifier"]
            entry["natural"] = res["natural"]
            flags = res["per_image_robust"]
            robust = flags if robust is None else [a and b for a, b in zip(robust, flags)]
            gm = res.get("gradient_masking") or {}
            for attack, a in res["attacks"].items():
                label = {
                    "full-eot": "PGD through the purifier (no EOT)",
                    "transfer": "transfer from the bare classifier",
                    "square": f"Square, gradient-free ({a['accuracy_curve'].__len__() - 1} "
                    "queries)",
                    "bpda-eot": "BPDA" if kind == "bpda" else "BPDA+EOT (H_adv = 8)",
                }[attack]
                entry["attacks"].append(
                    {
                        "report": path.name,
                        "attack": attack,
                        "label": label,
                        "adversarial": a["adversarial_mean"],
                        "ci": a["adversarial_ci"],
                        "converged": a["converged"],
                        "masking_warning": bool(gm.get("suspected")),
                    }
                )
        n = len(robust)
        worst = sum(robust) / n
        entry["worst_case"] = {
            "adversarial": worst,
            "ci": accuracy_interval(sum(robust) / n, n),
            "n_images": n,
        }
        summary["purifiers"][name] = entry
        p = entry["purifier"]
        opts = ", ".join(f"{k}={v}" for k, v in p["settings"].items())
        for a in entry["attacks"]:
            conv = {True: "yes", False: "NOT", None: "n/a"}[a["converged"]]
            warn = (
                "**fires**"
                if a["masking_warning"] and a["report"].endswith(".naive.json")
                else ("fires" if a["masking_warning"] else "-")
            )
            rows.append(
                f"| {name} ({opts}) | {entry['natural']:.3f} | {a['label']} | "
                f"{a['adversarial']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}] | {conv} | "
                f"{warn} |"
            )
        lo, hi = entry["worst_case"]["ci"]
        rows.append(
            f"| {name} ({opts}) | {entry['natural']:.3f} | **per-image worst case** | "
            f"**{worst:.3f}** [{lo:.3f}, {hi:.3f}] | | |"
        )
    masking = folder / "masking.json"
    mask_rows = []
    if masking.exists():  # scripts/known_defenses_masking.py
        summary["masking_demo"] = json.loads(masking.read_text())
        for label, r in summary["masking_demo"].items():
            if label == "settings":
                continue
            gm = r["gradient_masking"] or {}
            attacks = ", ".join(f"{n} {v:.3f}" for n, v in r["attacks"].items())
            mask_rows.append(
                f"| {label} | {r['natural']:.3f} | {attacks} | "
                f"{r['worst_case']:.3f} | "
                f"{'**fires**' if gm.get('suspected') else 'silent'} |"
            )
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        "| purifier | natural | attack | robust accuracy [95% CI] | converged | masking warning |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if mask_rows:
        print()
        print(
            "| bit-depth defense declared | natural | robust accuracy per attack | per-image "
            "worst case | masking warning |"
        )
        print("|---|---|---|---|---|")
        print("\n".join(mask_rows))


if __name__ == "__main__":
    main()
