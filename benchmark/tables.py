"""The tables of a report, and the formatters they share: everything that turns a
results table into rows and text, for ``report`` (Markdown, CSV, LaTeX), ``html`` and
``ablation_report`` alike.

A leaf of the report modules: it imports none of report, html, figures, ablation or
ablation_report, so each of them can import it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .files import portable_path
from .stats import compare_to_baseline, mcnemar_to_baseline, mean_ci, resampling_ratio
from .store import ResultsStore, safe_name

LABELS = {
    "accuracy": "ACC", "balanced_accuracy": "BACC", "macro_f1": "macro-F1",
    "macro_precision": "macro-P", "macro_recall": "macro-R", "roc_auc": "AUC",
    "pr_auc": "PR-AUC", "test_loss": "test loss", "minority_recall": "minority recall",
    "ece": "ECE", "brier": "Brier",
}
# the calibration table's metrics (lower is better), when the cells computed them
CALIBRATION = ["ece", "brier"]


def with_minority_recall(df: pd.DataFrame, data: dict) -> tuple[pd.DataFrame, str | None]:
    """Add ``minority_recall`` rows: the recall of the class with the fewest images (the
    class an imbalance remedy is for), one per cell, beside the overall metrics. A binary
    task's positive class (``dataset.positive_class``, recorded in the data report) is
    that class whether or not it is the smallest."""
    if not data.get("classes") or not data.get("counts"):
        return df, None
    minority = data.get("positive_class") or data["classes"][int(np.argmin(data["counts"]))]
    rows = df[(df["metric"] == "recall") & (df["class"] == minority)].copy()
    if rows.empty:
        return df, None
    rows["metric"] = "minority_recall"
    rows["class"] = ""
    return pd.concat([df, rows], ignore_index=True), minority


def synthetic_only_arms(df: pd.DataFrame) -> list[str]:
    """Arms whose every run trained on synthetic images alone (``train_on: synthetic``,
    the TSTR arms), in run order."""
    if not {"n_train_real", "n_synthetic"} <= set(df.columns) or df.empty:
        return []
    runs = df.sort_values("cell_order").drop_duplicates(["arm", "classifier", "seed", "fold"])
    only = ((runs.n_train_real == 0) & (runs.n_synthetic > 0)).groupby(runs.arm, sort=False).all()
    return [a for a, yes in only.items() if yes]


def summarize(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Long table: arm, classifier, metric, mean, std, n (cells), ci95_low, ci95_high."""
    overall = df[(df["class"] == "") & (df["metric"].isin(metrics))]
    order = {m: i for i, m in enumerate(metrics)}
    arms = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
    clfs = list(dict.fromkeys(df.sort_values("cell_order")["classifier"]))
    g = overall.groupby(["arm", "classifier", "metric"])["value"]
    out = g.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                n="count").reset_index()
    # the 95% t-interval of each mean (summary.csv; NaN with one run)
    bounds = {k: mean_ci(v.to_numpy(dtype=float))[2:4] for k, v in g}
    keys = list(zip(out["arm"], out["classifier"], out["metric"]))
    out["ci95_low"] = [bounds[k][0] for k in keys]
    out["ci95_high"] = [bounds[k][1] for k in keys]
    out["_a"] = out["arm"].map(arms.index)
    out["_c"] = out["classifier"].map(clfs.index)
    out["_m"] = out["metric"].map(order)
    return out.sort_values(["_a", "_c", "_m"]).drop(columns=["_a", "_c", "_m"]).reset_index(drop=True)


def per_class(df: pd.DataFrame, metric: str = "recall") -> pd.DataFrame:
    sub = df[df["metric"] == metric]
    if sub.empty:
        return pd.DataFrame()
    classes = list(dict.fromkeys(sub["class"]))
    arms = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
    t = sub.groupby(["arm", "classifier", "class"])["value"].mean().unstack("class")[classes]
    t = t.reset_index()
    t["_a"] = t["arm"].map(arms.index)
    return t.sort_values(["_a", "classifier"]).drop(columns="_a").reset_index(drop=True)


def wide(summary: pd.DataFrame, digits: int = 4, sep: str = " ± ") -> pd.DataFrame:
    s = summary.copy()
    s["cell"] = [f"{m:.{digits}f}{sep}{sd:.{digits}f}" if np.isfinite(m) else "n/a"
                 for m, sd in zip(s["mean"], s["std"])]
    metrics = list(dict.fromkeys(s["metric"]))
    t = s.pivot_table(index=["arm", "classifier"], columns="metric", values="cell",
                      aggfunc="first", sort=False)[metrics]
    n = s.groupby(["arm", "classifier"], sort=False)["n"].max()
    t.insert(0, "runs", n)
    t.columns = ["runs"] + [LABELS.get(m, m) for m in metrics]
    return t.reset_index()


BASELINE = "none"


# the test that marks the tables (see significance_tables' note for why)
LEAD_METHOD = "corrected_t"


def significance(df: pd.DataFrame, metrics: list[str], method: str | None = None, *,
                 fixed_test: bool = False) -> pd.DataFrame:
    """Every arm against the `none` arm on each metric: paired test over the matched
    (classifier, seed, fold) cells, Holm-corrected over the arms (see medbench.stats),
    with the effect sizes. ``method`` (default ``LEAD_METHOD``, the corrected resampled
    t-test; Wilcoxon for older results without the split sizes it needs) gives the
    p-values and marks; the Wilcoxon test's stand beside them (``p_wilcoxon``,
    ``p_wilcoxon_adjusted``). ``fixed_test``: every run tests on the same images (see
    ``fixed_test_set``). Empty when the suite has no `none` arm."""
    if BASELINE not in set(df["arm"]):
        return pd.DataFrame()
    if method is None:
        sized = fixed_test or resampling_ratio(df[df["arm"] == BASELINE]) is not None
        method = LEAD_METHOD if sized else "wilcoxon"
    present = set(df.loc[df["class"] == "", "metric"])
    parts = []
    for m in (m for m in metrics if m in present):
        lead = compare_to_baseline(df, m, BASELINE, method=method, fixed_test=fixed_test)
        wil = (lead if method == "wilcoxon"
               else compare_to_baseline(df, m, BASELINE, method="wilcoxon", fixed_test=fixed_test))
        parts.append(lead.assign(p_wilcoxon=wil["p_value"].to_numpy(),
                                 p_wilcoxon_adjusted=wil["p_adjusted"].to_numpy()))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def fixed_test_set(store: ResultsStore, df: pd.DataFrame) -> bool:
    """Whether every run of the `none` arm tested on the same images (one train/test
    split repeated over seeds, e.g. a dataset's own holdout split), from the test indices
    stored with the predictions; False with fewer than two runs or without them."""
    seen = []
    for row, p in cell_predictions(store, df[df["arm"] == BASELINE]):
        if "test_index" not in p:
            return False
        seen.append(np.asarray(p["test_index"]))
    return len(seen) > 1 and all(np.array_equal(seen[0], t) for t in seen[1:])


def calibration_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std of the calibration metrics (ECE, Brier) per arm and classifier; empty
    when the cells did not compute them."""
    present = [m for m in CALIBRATION if m in set(df.loc[df["class"] == "", "metric"])]
    return wide(summarize(df, present)) if present else pd.DataFrame()


def cell_predictions(store: ResultsStore, df: pd.DataFrame):
    """(row, predictions) for every cell of ``df`` whose test predictions are stored, in
    cell order; ``row`` carries arm, classifier, seed, fold and threshold."""
    cells = df.drop_duplicates(["arm", "classifier", "seed", "fold"]).sort_values("cell_order")
    for row in cells.itertuples(index=False):
        key = safe_name(f"{row.arm}__{row.classifier}__s{row.seed}__f{row.fold}")
        try:
            yield row, store.load_preds(key)
        except FileNotFoundError:
            continue


def mcnemar_table(store: ResultsStore, df: pd.DataFrame) -> pd.DataFrame:
    """McNemar against `none` on the stored test predictions, pooled per arm."""
    if BASELINE not in set(df["arm"]):
        return pd.DataFrame()
    preds: dict = {}
    for row, p in cell_predictions(store, df):
        preds.setdefault((row.arm, row.classifier), []).append(
            (int(row.seed), int(row.fold), p["y_true"], p["probs"]))
    return mcnemar_to_baseline(preds, BASELINE) if preds else pd.DataFrame()


def _p(v: float) -> str:
    return "n/a" if not np.isfinite(v) else ("<0.0001" if v < 1e-4 else f"{v:.4f}")


def marked(table: pd.DataFrame, sig: pd.DataFrame) -> pd.DataFrame:
    """The wide table with each metric's significance mark appended (* ** ***)."""
    if sig.empty:
        return table
    t = table.copy()
    for row in sig.itertuples(index=False):
        col = LABELS.get(row.metric, row.metric)
        if not row.mark or col not in t.columns:
            continue
        hit = (t["arm"] == row.arm) & (t["classifier"] == row.classifier)
        t.loc[hit, col] = t.loc[hit, col] + " " + row.mark
    return t


def md_table(t: pd.DataFrame) -> str:
    cols = list(t.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in t.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def latex_table(t: pd.DataFrame, caption: str) -> str:
    def esc(x: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                     ("#", r"\#")):
            x = x.replace(a, b)
        return x.replace("±", r"$\pm$")
    cols = list(t.columns)
    body = [" & ".join(esc(_fmt(v)) for v in row) + r" \\" for row in t.itertuples(index=False)]
    return "\n".join([
        r"\begin{table}[t]", r"\centering", f"\\caption{{{esc(caption)}}}",
        r"\begin{tabular}{" + "l" * 2 + "r" * (len(cols) - 2) + "}", r"\toprule",
        " & ".join(esc(c) for c in cols) + r" \\", r"\midrule", *body, r"\bottomrule",
        r"\end{tabular}", r"\end{table}", ""])


def _lead_note(sig: pd.DataFrame, n: int, arms: int) -> str:
    """Which test marks the tables, and why."""
    marks = (f"Holm-corrected over the {arms} arm(s) compared: * p < 0.05, ** p < 0.01, "
             "*** p < 0.001.")
    method = str(sig["method"].iloc[0]) if len(sig) else "wilcoxon"
    if method != "corrected_t":
        return (f"Marks: paired Wilcoxon signed-rank test of each arm against `none` over the "
                f"matched (seed, fold) runs ({n} pairs), {marks}"
                + (" With fewer than 6 pairs this test cannot reach p < 0.05 whatever the "
                   "data; read the differences and McNemar's test below." if n < 6 else ""))
    ratio = float(np.nanmax(sig["test_train_ratio"])) if sig["test_train_ratio"].notna().any() else 0.0
    if ratio == 0.0:
        return (f"Marks: paired t-test of each arm against `none` over the {n} matched runs, "
                f"{marks} Every run tests on the same images (one train/test split, the runs "
                "differ only by seed), so there is no resampling to correct for: the test "
                "assumes independent seeds and asks whether the arm beats `none` on these test "
                "images beyond seed-to-seed training noise; it says nothing about other test "
                "images (McNemar's test below uses every test image). The Wilcoxon test and "
                "the rank-biserial correlation stand beside it.")
    return (f"Marks: corrected resampled t-test (Nadeau & Bengio 2003) of each arm against "
            f"`none` over the {n} matched (seed, fold) runs, {marks} It leads because the runs "
            "share most of their training images (and, over seeds, their test images), so "
            "their differences are not independent: it widens the variance of the mean "
            f"difference by n_test/n_train = {ratio:.3g}, where the Wilcoxon and plain t-tests "
            "take the runs as independent and are too confident; and unlike the Wilcoxon test "
            "it can reach p < 0.05 with few runs. The Wilcoxon test and the rank-biserial "
            "correlation stand beside it.")


def significance_tables(sig: pd.DataFrame, mcn: pd.DataFrame, metrics: list[str]):
    """What the report shows of the tests, for Markdown and HTML alike: the note on the
    marks (which test leads, and why), the table of differences from `none` (with the
    interval of each mean difference) and McNemar's table (None without one)."""
    n = int(sig["n_pairs"].max()) if len(sig) else 0
    arms = sig.groupby("classifier")["arm"].nunique().max()
    note = _lead_note(sig, n, arms)
    cols = [m for m in metrics if m in set(sig["metric"])]
    rows = []

    def cell(g: pd.DataFrame, m: str) -> str:
        ci = ""
        if "diff_ci_low" in g.columns and np.isfinite(g.at[m, "diff_ci_low"]):
            ci = f" [{g.at[m, 'diff_ci_low']:+.4f}, {g.at[m, 'diff_ci_high']:+.4f}]"
        return f"{g.at[m, 'mean_diff']:+.4f}{ci} (p {_p(g.at[m, 'p_adjusted'])})"
    for (arm, clf), g in sig.groupby(["arm", "classifier"], sort=False):
        g = g.set_index("metric")
        rows.append([arm, clf, int(g["n_pairs"].max())] + [cell(g, m) for m in cols])
    diff = pd.DataFrame(rows, columns=["arm", "classifier", "pairs"] + [LABELS.get(m, m) for m in cols])
    mc = None
    if not mcn.empty:
        mc = pd.DataFrame({"arm": mcn["arm"], "classifier": mcn["classifier"],
                           "runs pooled": mcn["n_cells"], "test images": mcn["n"],
                           "only arm right": mcn["b"], "only none right": mcn["c"],
                           "p": [_p(v) for v in mcn["p_value"]],
                           "p (Holm)": [_p(v) + (" " + k if k else "")
                                        for v, k in zip(mcn["p_adjusted"], mcn["mark"])]})
    return note, diff, mc


def effect_table(sig: pd.DataFrame, metrics: list[str]) -> pd.DataFrame | None:
    """The rank view beside the leading test: per arm and metric the matched-pairs
    rank-biserial correlation and the Holm-adjusted Wilcoxon p; None when the table has
    neither (older results) or the Wilcoxon test leads anyway."""
    if sig.empty or "rank_biserial" not in sig.columns or "p_wilcoxon_adjusted" not in sig.columns \
            or set(sig["method"]) == {"wilcoxon"}:
        return None
    cols = [m for m in metrics if m in set(sig["metric"])]
    rows = []
    for (arm, clf), g in sig.groupby(["arm", "classifier"], sort=False):
        g = g.set_index("metric")
        rows.append([arm, clf, int(g["n_pairs"].max())]
                    + [(f"{g.at[m, 'rank_biserial']:+.2f}" if np.isfinite(g.at[m, "rank_biserial"])
                        else "n/a") + f" (p {_p(g.at[m, 'p_wilcoxon_adjusted'])})" for m in cols])
    return pd.DataFrame(rows, columns=["arm", "classifier", "pairs"] + [LABELS.get(m, m) for m in cols])


DIFF_CAPTION = ("Difference from `none` (mean over pairs [95% interval of the mean difference, "
                "corrected for overlapping runs as the marks' test is]; Holm-adjusted p of "
                "the test that marks the table):")
EFFECT_CAPTION = ("Rank effect size: matched-pairs rank-biserial correlation of the pairs "
                  "(+1: the arm beats `none` in every run, -1: in none), with the Holm-adjusted "
                  "Wilcoxon signed-rank p (which takes the runs as independent):")
CALIBRATION_CAPTION = ("Calibration on the real test fold(s), mean ± std over runs (lower is "
                       "better): ECE, the expected calibration error of the top-label "
                       "probability in 15 equal-width bins; Brier, the multi-class Brier score "
                       "(0 to 2).")
MCNEMAR_CAPTION = ("McNemar's test against `none` on the test predictions pooled over runs "
                   "(exact binomial below 25 discordant images, else chi-square with continuity "
                   "correction; pooling seeds repeats each test image, so read these p-values "
                   "as screening numbers):")


def header_lines(manifest: dict, results_dir: Path, df: pd.DataFrame | None = None) -> list[str]:
    """The command that made the results, and what they were made with (on a CPU the
    numbers depend on torch's thread count: that of the cells in ``df``)."""
    run_cmd = manifest.get("command") or \
        f"medbench run {portable_path(manifest.get('suite_path'))}"
    return [
        f"Made by: `{run_cmd}` then `medbench report {portable_path(results_dir)}`",
        f"Suite `{manifest.get('suite')}` (hash {manifest.get('suite_hash')}), profile "
        f"`{manifest.get('profile') or 'none'}`; medbench {manifest.get('medbench')}, "
        f"commit {manifest.get('git_commit')}, torch {manifest.get('torch')}, "
        f"device {manifest.get('device')}{threads_words(df)}.",
    ]


def threads_words(df: pd.DataFrame | None) -> str:
    """The header's thread phrase for the cells of a results table ("" for older tables,
    which have no threads column)."""
    if df is None or "threads" not in df:
        return ""
    threads = sorted({int(t) for t in df["threads"].dropna()})
    return f", {'/'.join(map(str, threads))} torch thread(s) per cell" if threads else ""


# ------------------------------------------------------------------ fidelity
# held-out, matched-n numbers lead (KID first: unbiased at the small n of medical
# classes), then the copy check, then the protocol against the training images
FIDELITY_SHOWN = [("n_heldout", "held-out images"), ("kid_heldout", "KID held-out"),
                  ("kid_train_heldout", "KID real train vs held-out"),
                  ("fid_heldout", "FID held-out"), ("fid_train_heldout", "FID real train vs held-out"),
                  ("copy_rate", "copy rate"), ("n_real", "real images"), ("n_synthetic", "synthetic images"),
                  ("n_test_real", "real test images"), ("fid", "FID"),
                  ("kid_mean", "KID"), ("kid_std", "KID std"), ("isc_mean", "IS"),
                  ("precision", "precision"), ("recall", "recall"),
                  ("fid_real_vs_real", "FID real vs real"), ("kid_real_vs_real", "KID real vs real")]


def _num(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"


def fidelity_table(path: Path, arms: list[str], classes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Mean over (seed, fold) per arm, generator and class of ``fidelity.csv``, and the
    feature extractors named in it. Lines starting with # are comments; missing columns
    are left out."""
    text = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                     if not line.startswith("#"))
    keys = ["arm", "generator", "class"]
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    if raw.empty or "arm" not in raw:
        return pd.DataFrame(), []
    keys = [k for k in keys if k in raw]
    extractors = sorted(set(raw["extractor"]) - {""}) if "extractor" in raw else []
    shown = [(c, label) for c, label in FIDELITY_SHOWN if c in raw]
    for c, _ in shown:
        raw[c] = pd.to_numeric(raw[c], errors="coerce")
    runs = (raw.groupby(keys, sort=False)[["seed", "fold"]].apply(lambda g: len(g.drop_duplicates()))
            if {"seed", "fold"} <= set(raw) else raw.groupby(keys, sort=False).size())
    means = raw.groupby(keys, sort=False)[[c for c, _ in shown]].mean()
    means.insert(0, "runs", runs)
    means = means.reset_index()
    a = {x: i for i, x in enumerate(arms)}
    k = {x: i for i, x in enumerate(classes)}
    means["_a"] = means["arm"].map(lambda x: a.get(x, len(a)))
    if "class" in means:
        means["_k"] = means["class"].map(lambda x: k.get(x, len(k)))
    means = means.sort_values([c for c in ("_a", "generator", "_k") if c in means], kind="stable")
    out = pd.DataFrame({key: means[key] for key in keys})
    out["runs"] = means["runs"].astype(int)
    for c, label in shown:
        if c.startswith("n_"):
            out[label] = [f"{v:.0f}" if np.isfinite(v) else "n/a" for v in means[c]]
        else:
            out[label] = [_num(v) for v in means[c]]
    return out.reset_index(drop=True), extractors
