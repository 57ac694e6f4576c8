"""Are two results folders the same numbers to the last digit? For refactors: run a suite
before and after (same threads), then

    python tests/perf/compare_results.py results/before results/after

prints the rows of each, the unmatched cells, and every value that differs; exits 1 if
anything does. Not collected by pytest."""

from __future__ import annotations

import sys

import pandas as pd

KEYS = ["arm", "classifier", "seed", "fold", "metric", "class"]
VALUES = ["value", "n_train_real", "n_synthetic", "n_val", "n_test", "epochs_run", "best_epoch",
          "metric_order"]


def compare(a_dir: str, b_dir: str) -> bool:
    a = pd.read_parquet(f"{a_dir}/results.parquet")
    b = pd.read_parquet(f"{b_dir}/results.parquet")
    m = a[KEYS + VALUES].merge(b[KEYS + VALUES], on=KEYS, suffixes=("_a", "_b"), how="outer",
                               indicator=True)
    unmatched = int((m._merge != "both").sum())
    print(f"rows: {len(a)} and {len(b)}; unmatched: {unmatched}")
    same = unmatched == 0
    for c in VALUES:
        x, y = m[f"{c}_a"], m[f"{c}_b"]
        diff = ~((x == y) | (x.isna() & y.isna()))
        if diff.any():
            same = False
            print(f"{c}: {int(diff.sum())} differ")
            print(m.loc[diff, KEYS + [f"{c}_a", f"{c}_b"]].head(10).to_string())
    print("identical to the last digit" if same else "NOT identical")
    return same


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/perf/compare_results.py RESULTS_A RESULTS_B")
    sys.exit(0 if compare(sys.argv[1], sys.argv[2]) else 1)
