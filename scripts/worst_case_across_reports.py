"""Per-image worst case over attacks that ran in separate `ebmctl attack` reports.

Reports of the same model and profile that differ only in ``--n-images`` evaluate nested
subsets of the test split (one seeded permutation, see ``ebmctl.data_utils.pick_subset``), so
their per-image outcomes line up on the smallest subset. For each label this prints every
attack's accuracy on that common subset and the per-image worst case over all of them (seed 0),
with 95% Wilson intervals.

    python scripts/worst_case_across_reports.py -p quick runs/attack-suite/linf.json \
        runs/attack-suite/fixer50.json runs/attack-suite/smooth50.json
"""

from __future__ import annotations

import argparse
import json

import torch

from ebmctl.context import load_dataset
from ebmctl.data_utils import SUBSET_SEED
from ebmctl.evaluate.stats import accuracy_interval
from ebmctl.profiles import resolve


def split_indices_of(n: int, split_len: int) -> list[int]:
    if n >= split_len:
        return list(range(split_len))
    perm = torch.randperm(split_len, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return perm[:n].sort().values.tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("-p", "--profile", default="quick")
    args = ap.parse_args()
    split_len = len(load_dataset(resolve(args.profile)).split("test"))
    outcomes: dict[str, dict[str, dict[int, bool]]] = {}
    for path in args.reports:
        rep = json.load(open(path))
        where = split_indices_of(rep["n_images"], split_len)
        for label, res in rep["results"].items():
            for name, a in res["attacks"].items():
                seed0 = a["per_seed"][0]
                outcomes.setdefault(label, {})[f"{name} ({path})"] = {
                    where[i]: bool(r) for i, r in enumerate(seed0["robust_ok"])}
    for label, attacks in outcomes.items():
        common = set.intersection(*(set(v) for v in attacks.values()))
        n = len(common)
        print(f"{label}: {n} images common to every report")
        for name, v in attacks.items():
            acc = sum(v[i] for i in common) / n
            print(f"  {name}: {acc:.3f} {accuracy_interval(acc, n)}")
        worst = sum(all(v[i] for v in attacks.values()) for i in common) / n
        print(f"  worst case per image: {worst:.3f} {accuracy_interval(worst, n)}")


if __name__ == "__main__":
    main()
