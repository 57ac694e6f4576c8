"""Tables from a results folder: mean +- std over folds and seeds per arm and classifier.

Output is deterministic (no timestamps), so rerunning ``medbench report`` on the same
results gives the same files byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_text
from .store import ResultsStore, safe_name

LABELS = {
    "accuracy": "ACC", "balanced_accuracy": "BACC", "macro_f1": "macro-F1",
    "macro_precision": "macro-P", "macro_recall": "macro-R", "roc_auc": "AUC",
    "pr_auc": "PR-AUC", "test_loss": "test loss", "minority_recall": "minority recall",
}


def with_minority_recall(df: pd.DataFrame, data: dict) -> tuple[pd.DataFrame, str | None]:
    """Add ``minority_recall`` rows: the recall of the class with the fewest images (the
    class an imbalance remedy is for), one per cell, beside the overall metrics."""
    if not data.get("classes") or not data.get("counts"):
        return df, None
    minority = data["classes"][int(np.argmin(data["counts"]))]
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
    from .stats import mean_ci
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


def significance(df: pd.DataFrame, metrics: list[str], method: str = "wilcoxon") -> pd.DataFrame:
    """Every arm against the `none` arm on each metric: paired test over the matched
    (classifier, seed, fold) cells, Holm-corrected over the arms (see medbench.stats).
    Empty when the suite has no `none` arm."""
    from .stats import compare_to_baseline
    if BASELINE not in set(df["arm"]):
        return pd.DataFrame()
    present = set(df.loc[df["class"] == "", "metric"])
    parts = [compare_to_baseline(df, m, BASELINE, method=method) for m in metrics if m in present]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


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
    from .stats import mcnemar_to_baseline
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


def significance_tables(sig: pd.DataFrame, mcn: pd.DataFrame, metrics: list[str]):
    """What the report shows of the tests, for Markdown and HTML alike: the note on the
    marks, the table of differences from `none` and McNemar's table (None without one)."""
    n = int(sig["n_pairs"].max()) if len(sig) else 0
    arms = sig.groupby("classifier")["arm"].nunique().max()
    note = (f"Marks: paired Wilcoxon signed-rank test of each arm against `none` over the "
            f"matched (seed, fold) runs ({n} pairs), Holm-corrected over the {arms} arm(s) "
            "compared: * p < 0.05, ** p < 0.01, *** p < 0.001."
            + (" With fewer than 6 pairs this test cannot reach p < 0.05 whatever the "
               "data; read the differences and McNemar's test below." if n < 6 else ""))
    cols = [m for m in metrics if m in set(sig["metric"])]
    rows = []
    for (arm, clf), g in sig.groupby(["arm", "classifier"], sort=False):
        g = g.set_index("metric")
        rows.append([arm, clf, int(g["n_pairs"].max())]
                    + [f"{g.at[m, 'mean_diff']:+.4f} (p {_p(g.at[m, 'p_adjusted'])})" for m in cols])
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


DIFF_CAPTION = "Difference from `none` (mean over pairs; Holm-adjusted Wilcoxon p):"
MCNEMAR_CAPTION = ("McNemar's test against `none` on the test predictions pooled over runs "
                   "(exact binomial below 25 discordant images, else chi-square with continuity "
                   "correction; pooling seeds repeats each test image, so read these p-values "
                   "as screening numbers):")


def _significance_md(sig: pd.DataFrame, mcn: pd.DataFrame, metrics: list[str]) -> list[str]:
    note, diff, mc = significance_tables(sig, mcn, metrics)
    out = [note, "", DIFF_CAPTION, "", md_table(diff), ""]
    if mc is not None:
        out += [MCNEMAR_CAPTION, "", md_table(mc), ""]
    return out


def _fidelity_md(results_dir: Path, df: pd.DataFrame, data: dict) -> list[str]:
    """The image-quality table when `medbench fidelity` has written fidelity.csv."""
    path = results_dir / "fidelity.csv"
    if not path.is_file():
        return []
    from .html import fidelity_table
    arms = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
    table, extractors = fidelity_table(path, arms, list(data.get("classes") or []))
    if table.empty:
        return []
    made_by = ""
    meta = results_dir / "fidelity.json"
    if meta.is_file():
        command = json.loads(meta.read_text()).get("command")
        made_by = f" Made by: `{command}`." if command else ""
    return ["Image quality of the synthetic images (`medbench fidelity`; mean over runs): each "
            "arm's images against the real training images of the class, and the real "
            "training images against the real test images of the class (real vs real) for "
            "scale. Extractor: " + "; ".join(extractors) + "." + made_by, "", md_table(table), ""]


def header_lines(manifest: dict, results_dir: Path, df: pd.DataFrame | None = None) -> list[str]:
    """The command that made the results, and what they were made with (on a CPU the
    numbers depend on torch's thread count: that of the cells in ``df``)."""
    run_cmd = manifest.get("command") or f"medbench run {manifest.get('suite_path')}"
    return [
        f"Made by: `{run_cmd}` then `medbench report {results_dir}`",
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


def write_report(results_dir: Path, out_dir: Path, formats: list[str] | None = None,
                 metrics: list[str] | None = None) -> list[Path]:
    """Tables in the given formats (md, csv, latex, html). Without ``formats``: the
    suite's report.formats plus html. With md or html, the figures too (figures/, and
    ablate-<component>/ for each ablation of the results folder)."""
    store = ResultsStore(results_dir)
    manifest = store.manifest()
    df = store.load()
    cfg = manifest.get("report") or {}
    if not formats:
        formats = list(dict.fromkeys([*(cfg.get("formats") or ["md", "csv", "latex"]), "html"]))
    metrics = metrics or cfg.get("metrics") or ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"]
    data = {}
    if (results_dir / "data_report.json").exists():
        data = json.loads((results_dir / "data_report.json").read_text())
    minority = None
    if "minority_recall" in metrics:
        df, minority = with_minority_recall(df, data)
    summary = summarize(df, metrics)
    sig = significance(df, metrics)
    mcn = mcnemar_table(store, df)
    table = marked(wide(summary), sig)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    head = header_lines(manifest, results_dir, df)
    figures = []
    if "md" in formats or "html" in formats:
        from .figures import write_figures
        figures = write_figures(results_dir, out_dir, store, df, data)
        written += [p for f in figures for p in f.paths]
    data_line = None
    if data:
        counts = ", ".join(f"{c} {n}" for c, n in zip(data["classes"], data["counts"]))
        data_line = (f"Data: {data['loader']} ({data['images']} images: {counts}; "
                     f"{data['image_size']} px, {data['channels']} channel(s)); duplicates: "
                     f"{data['duplicates_summary']}.")
        if data.get("dropped_classes"):
            data_line = data_line[:-1] + "; classes left out (`dataset.drop_classes`): " + ", ".join(
                f"{c} ({n} image(s) after duplicates)" for c, n in data["dropped_classes"].items()) + "."
    splits = df.groupby(["seed", "fold"]).ngroups
    note = (f"Mean ± standard deviation over {splits} (seed, fold) run(s) on the real "
            "test fold(s); 95% confidence intervals of the means are in summary.csv." + (f" Minority recall: recall of `{minority}`, the "
                               "smallest class." if minority else ""))
    tstr = synthetic_only_arms(df)
    if tstr:
        note += (" Trained on synthetic images only, as many per class as the real training "
                 f"part has, and tested on real ones (TSTR): {', '.join(f'`{a}`' for a in tstr)}; "
                 "beside `none` (trained on real, TRTR), their difference is TSTR minus TRTR.")
    if "md" in formats:
        parts = [f"# {manifest.get('suite')}: results", "", *head, ""]
        if data_line:
            parts += [data_line, ""]
        parts += [note, "", md_table(table), ""]
        if not sig.empty:
            parts += _significance_md(sig, mcn, metrics)
        pc = per_class(df, "recall")
        if not pc.empty:
            parts += ["Per-class recall (mean):", "", md_table(pc), ""]
        parts += _fidelity_md(results_dir, df, data)
        failed = store.failures()
        if failed:
            parts += ["Failed cells:", ""] + [f"- {f['cell']}: {f['reason']}" for f in failed] + [""]
        if figures:
            parts += ["Figures (PNG and PDF; all of them in report.html):", ""]
            parts += [f"- [{f.title}]({f.png.relative_to(out_dir).as_posix()})"
                      + (f" ([PDF]({f.pdf.relative_to(out_dir).as_posix()}))" if f.pdf else "")
                      for f in figures] + [""]
        p = out_dir / "summary.md"
        atomic_text(p, "\n".join(parts))
        written.append(p)
    if "csv" in formats:
        p = out_dir / "summary.csv"
        csv = "# " + "\n# ".join(head) + "\n" + summary.to_csv(index=False, float_format="%.6f")
        atomic_text(p, csv)
        written.append(p)
        if not sig.empty:
            p = out_dir / "significance.csv"
            text = "# " + "\n# ".join(head) + "\n" + sig.to_csv(index=False, float_format="%.6g")
            if not mcn.empty:
                text += "\n# McNemar against none on pooled test predictions\n" + \
                    mcn.to_csv(index=False, float_format="%.6g")
            atomic_text(p, text)
            written.append(p)
    if "latex" in formats:
        p = out_dir / "summary.tex"
        cap = f"{manifest.get('suite')}: mean ± std over folds and seeds"
        tex = "% " + "\n% ".join(head) + "\n" + latex_table(table, cap)
        atomic_text(p, tex)
        written.append(p)
    if "html" in formats:
        from .html import write_html
        fidelity = results_dir / "fidelity.csv"
        arms = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
        written.append(write_html(
            out_dir / "report.html", title=f"{manifest.get('suite')}: results", head=head,
            data_line=data_line, note=note, table=table, sig=sig, mcn=mcn, metrics=metrics,
            per_class=per_class(df, "recall"), failed=store.failures(),
            fidelity=fidelity if fidelity.is_file() else None, arms=arms,
            classes=list(data.get("classes") or []), figures=figures, report_dir=out_dir))
    return written
