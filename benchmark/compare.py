"""``medbench compare``: the arms ranked across datasets.

One results folder (or report folder) per dataset; each arm gets one number per dataset
(a metric's mean over its classifiers, seeds and folds there), the arms are ranked within
each dataset (1 = best, ties share the mean rank), and the ranks are compared as Demšar
(2006, "Statistical comparisons of classifiers over multiple data sets") does:

* the Friedman test over the datasets (``scipy.stats.friedmanchisquare``), with the
  Iman-Davenport F form beside it (less conservative than the chi-square);
* the Nemenyi post-hoc test of every pair of arms, from the studentized range
  distribution (``scipy.stats.studentized_range``), and its critical difference (CD):
  two arms whose mean ranks differ by less are not told apart at ``alpha``;
* a critical-difference diagram: the arms on the axis of mean ranks, and a bar under
  each group of arms that the Nemenyi test does not separate.

Only arms present in every folder are ranked; the others are named as left out. With
fewer than ``MIN_DATASETS`` datasets the test has little power, and the page says so.

The page is written as Markdown, LaTeX and a self-contained HTML page (plus
``compare.csv`` and the diagram as PNG and PDF); nothing in them depends on the time, so
rerunning the command rewrites the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .errors import ResultsError
from .files import atomic_text, portable_path
from .html import CSP, CSS, _code, table_html
from .plotting import pyplot, save_figure
from .store import ResultsStore
from .tables import LABELS, latex_table, md_table, with_minority_recall

FORMATS = ("md", "latex", "html")
DEFAULT_METRIC = "balanced_accuracy"
# metrics where less is better; any other is ranked with the highest value first
LOWER_IS_BETTER = {"test_loss", "loss", "log_loss", "nll", "brier", "ece", "mce"}
# Demšar: the chi-square form wants N > 10 datasets and k > 5 arms; below 5 datasets
# even large differences in rank rarely reach significance
MIN_DATASETS = 5


@dataclass
class Dataset:
    """One folder's numbers: a value per arm, where it came from, and how it was made."""

    name: str
    folder: Path
    kind: str                         # "results" (results.parquet/csv) or "report" (summary.csv)
    values: dict[str, float]          # arm -> value, arms in the folder's order
    classifiers: list[str]
    made_by: str = ""
    metrics: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    metric: str
    higher_is_better: bool
    alpha: float
    datasets: list[Dataset]
    arms: list[str]                   # ranked arms, best mean rank first
    dropped: dict[str, list[str]]     # arm -> the datasets that lack it
    values: pd.DataFrame              # datasets x arms
    ranks: pd.DataFrame               # datasets x arms, 1 = best
    mean_ranks: pd.Series             # arm -> mean rank, best first
    chi2: float
    p_friedman: float
    f_iman: float
    p_iman: float
    cd: float
    p_nemenyi: pd.DataFrame           # arms x arms
    cliques: list[list[str]]          # groups of arms the Nemenyi test does not separate

    @property
    def n(self) -> int:
        return len(self.datasets)

    @property
    def k(self) -> int:
        return len(self.arms)


# ------------------------------------------------------------------ reading


def _summary_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A report's summary.csv: its table and its ``#`` header lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    head = [line[1:].strip() for line in lines if line.startswith("#")]
    body = "\n".join(line for line in lines if not line.startswith("#"))
    try:
        table = pd.read_csv(io.StringIO(body))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(f"{path} is not a medbench summary table ({exc})") from None
    need = {"arm", "classifier", "metric", "mean"}
    if not need <= set(table.columns):
        raise ResultsError(f"{path} is not a medbench summary table: it lacks the columns "
                           f"{', '.join(sorted(need - set(table.columns)))}")
    return table, head


def load_dataset_values(folder: Path, metric: str, classifier: str | None = None) -> Dataset:
    """The value of ``metric`` per arm in one folder: a results folder of ``medbench
    run`` (results.parquet or results.csv: the mean over the runs of each classifier,
    then over the classifiers) or a report folder of ``medbench report`` (its
    summary.csv, which holds those means per classifier). ``classifier``: that one only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"{folder} is not a folder; give results folders (results/<suite>) "
                           "or report folders (reports/<suite>) of medbench")
    cells = sorted((folder / "cells").glob("*.parquet")) if (folder / "cells").is_dir() else []
    tables = [folder / "results.parquet", folder / "results.csv"]
    if cells or any(t.is_file() for t in tables):
        df = _results_table(folder, cells, tables)
        if metric == "minority_recall":
            data_path = folder / "data_report.json"
            data = json.loads(data_path.read_text()) if data_path.is_file() else {}
            df, _ = with_minority_recall(df, data)
        df = df[df["class"].fillna("") == ""]
        order = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
        rows = df.rename(columns={"value": "mean"})
        made_by = (ResultsStore(folder).manifest().get("command") or ""
                   if (folder / "manifest.json").is_file() else "")
        kind = "results"
    elif (folder / "summary.csv").is_file():
        rows, head = _summary_csv(folder / "summary.csv")
        order = list(dict.fromkeys(rows["arm"]))
        made_by = next((h[len("Made by:"):].strip() for h in head if h.startswith("Made by:")), "")
        kind = "report"
    else:
        raise ResultsError(f"{folder} holds neither results (results.parquet) nor a report "
                           "(summary.csv); run `medbench run` or `medbench report` first")
    metrics = list(dict.fromkeys(rows["metric"]))
    if classifier is not None:
        clfs = list(dict.fromkeys(rows["classifier"]))
        if classifier not in clfs:
            raise ResultsError(f"{folder}: no classifier {classifier!r}; it has "
                               f"{', '.join(map(repr, clfs))}")
        rows = rows[rows["classifier"] == classifier]
    sub = rows[rows["metric"] == metric]
    if sub.empty:
        raise ResultsError(f"{folder}: no metric {metric!r}; it has {', '.join(metrics)} "
                           "(choose with --metric)")
    # each classifier weighs alike, however many runs it has
    per_clf = sub.groupby(["arm", "classifier"], sort=False)["mean"].mean()
    per_arm = per_clf.groupby(level="arm", sort=False).mean()
    values = {a: float(per_arm[a]) for a in order if a in per_arm.index}
    return Dataset(name=folder.name, folder=folder, kind=kind, values=values,
                   classifiers=list(dict.fromkeys(sub["classifier"])), made_by=made_by,
                   metrics=metrics)


def _results_table(folder: Path, cells: list[Path], tables: list[Path]) -> pd.DataFrame:
    """A results folder's rows, read and never written: from the cell files (the record,
    so a run still going or killed counts what it finished) or else its tables. Unlike
    ``ResultsStore.load`` this does not rewrite results.parquet, so compare can read
    folders it may not write."""
    if cells:
        df = pd.concat([pd.read_parquet(f) for f in cells], ignore_index=True)
    elif tables[0].is_file():
        df = pd.read_parquet(tables[0])
    else:
        df = pd.read_csv(tables[1], keep_default_na=False, na_values=[""])
        df["class"] = df["class"].fillna("")
    if df.empty:
        raise ResultsError(f"{folder} holds no finished cells")
    need = {"arm", "classifier", "metric", "class", "value", "cell_order"}
    if not need <= set(df.columns):
        raise ResultsError(f"{folder}: its results lack the columns "
                           f"{', '.join(sorted(need - set(df.columns)))}; is it a medbench "
                           "results folder?")
    return df


# ------------------------------------------------------------------ the tests


def rank_rows(values: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Ranks within each row (dataset): 1 = best, ties get the mean of their ranks."""
    signed = -values if higher_is_better else values
    return signed.apply(lambda row: pd.Series(stats.rankdata(row.to_numpy()), index=row.index),
                        axis=1)


def nemenyi(mean_ranks: pd.Series, n: int, alpha: float) -> tuple[float, pd.DataFrame]:
    """The Nemenyi test of all pairs of arms after a Friedman test over ``n`` datasets:
    the critical difference at ``alpha`` and the matrix of p-values. The statistic
    |R_i - R_j| / sqrt(k (k + 1) / (6 n)) times sqrt(2) follows the studentized range
    distribution of k means with infinite degrees of freedom (Demšar 2006, section 3.2.2;
    as scikit-posthocs' posthoc_nemenyi_friedman computes it)."""
    k = len(mean_ranks)
    se = math.sqrt(k * (k + 1) / (6.0 * n))
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    r = mean_ranks.to_numpy(dtype=float)
    q = np.abs(r[:, None] - r[None, :]) / se * math.sqrt(2)
    p = np.where(q > 0, stats.studentized_range.sf(q, k, np.inf), 1.0)
    p = np.clip(p, 0.0, 1.0)
    return q_alpha * se, pd.DataFrame(p, index=mean_ranks.index, columns=mean_ranks.index)


def cliques(mean_ranks: pd.Series, cd: float) -> list[list[str]]:
    """The maximal runs of arms (in rank order) whose mean ranks lie within ``cd`` of one
    another: the bars of the critical-difference diagram. Single arms are not bars."""
    names = list(mean_ranks.index)
    r = mean_ranks.to_numpy(dtype=float)
    spans = []
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] <= cd + 1e-12:
            j += 1
        if j > i and not (spans and spans[-1][1] >= j):
            spans.append((i, j))
    return [names[i:j + 1] for i, j in spans]


def compare(folders: list[Path], metric: str = DEFAULT_METRIC, *, alpha: float = 0.05,
            classifier: str | None = None, higher_is_better: bool | None = None) -> Comparison:
    """Read the folders, rank the arms they share and test the ranks (module docstring)."""
    if len(folders) < 2:
        raise ResultsError("compare needs at least 2 folders (one per dataset) to rank arms "
                           "across datasets")
    if not 0 < alpha < 1:
        raise ResultsError(f"alpha must lie between 0 and 1, got {alpha}")
    if higher_is_better is None:
        higher_is_better = metric not in LOWER_IS_BETTER
    datasets = [load_dataset_values(Path(f), metric, classifier) for f in folders]
    names = [d.name for d in datasets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ResultsError(f"two folders are called {twice[0]!r}; each dataset's folder needs "
                           "its own name (the name labels its column)")
    first = list(datasets[0].values)
    every = list(dict.fromkeys(a for d in datasets for a in d.values))
    common = [a for a in every if all(a in d.values for d in datasets)]
    dropped = {a: [d.name for d in datasets if a not in d.values]
               for a in every if a not in common}
    if len(common) < 3:
        shown = "; ".join(f"{d.name}: {', '.join(d.values)}" for d in datasets)
        raise ResultsError(f"the Friedman test needs at least 3 arms common to every folder; "
                           f"these have {len(common)} in common ({', '.join(common) or 'none'}). "
                           f"Arms per folder: {shown}")
    order = [a for a in first if a in common] + [a for a in common if a not in first]
    values = pd.DataFrame([[d.values[a] for a in order] for d in datasets],
                          index=names, columns=order)
    bad = values.isna().stack()
    if bad.any():
        (ds, arm) = bad[bad].index[0]
        raise ResultsError(f"{ds}: arm {arm!r} has no finite {metric} (NaN); choose another "
                           "metric or rerun its cells")
    ranks = rank_rows(values, higher_is_better)
    mean = ranks.mean(axis=0)
    # stable: arms of equal mean rank keep the first folder's order
    mean = mean.iloc[np.argsort(mean.to_numpy(), kind="stable")]
    n, k = values.shape
    if (values.nunique(axis=1) == 1).all():
        chi2, p = 0.0, 1.0                # every arm ties everywhere: nothing to test
    else:
        chi2, p = (float(x) for x in stats.friedmanchisquare(*[values[a].to_numpy()
                                                                 for a in order]))
    denom = n * (k - 1) - chi2
    f_iman = (n - 1) * chi2 / denom if denom > 0 else math.inf
    p_iman = float(stats.f.sf(f_iman, k - 1, (k - 1) * (n - 1))) if np.isfinite(f_iman) else 0.0
    cd, p_nem = nemenyi(mean, n, alpha)
    return Comparison(metric=metric, higher_is_better=higher_is_better, alpha=alpha,
                      datasets=datasets, arms=list(mean.index), dropped=dropped,
                      values=values, ranks=ranks, mean_ranks=mean, chi2=chi2, p_friedman=p,
                      f_iman=f_iman, p_iman=p_iman, cd=cd, p_nemenyi=p_nem.loc[mean.index, mean.index],
                      cliques=cliques(mean, cd))


# ------------------------------------------------------------------ the diagram


def cd_diagram(c: Comparison, stem: Path) -> list[Path]:
    """The critical-difference diagram (Demšar 2006, figure 1): the axis of mean ranks
    with rank 1 (best) on the left, each arm's name on a line down to its mean rank (the
    better half on the left, the rest on the right), the CD as a bar above the axis, and
    a thick bar under each group of arms the Nemenyi test does not separate. PNG and PDF."""
    plt = pyplot()
    k = c.k
    names = c.arms
    r = c.mean_ranks.to_numpy(dtype=float)
    half = (k + 1) // 2
    rows = max(half, k - half)
    n_bars = len(c.cliques)
    height = 1.2 + 0.28 * (rows + n_bars)
    fig, ax = plt.subplots(figsize=(7.0, height), dpi=120)
    lo, hi = 1, k
    ax.set_xlim(lo - 0.6 * max(1, k / 4), hi + 0.6 * max(1, k / 4))
    top = 0.0
    ax.axis("off")
    ax.plot([lo, hi], [top, top], color="black", lw=1)
    for t in range(lo, hi + 1):
        ax.plot([t, t], [top, top + 0.08], color="black", lw=1)
        ax.text(t, top + 0.12, str(t), ha="center", va="bottom", fontsize=8)
    # the critical difference, above the axis on the left
    ax.plot([lo, lo + c.cd], [top + 0.55, top + 0.55], color="black", lw=1.5)
    for x in (lo, lo + c.cd):
        ax.plot([x, x], [top + 0.5, top + 0.6], color="black", lw=1)
    ax.text(lo + c.cd / 2, top + 0.62, f"CD = {c.cd:.2f}", ha="center", va="bottom", fontsize=8)
    step = 0.28
    bars_y = [-(i + 1) * step * 0.6 for i in range(n_bars)]
    base = (min(bars_y) if bars_y else 0.0) - step
    left_x, right_x = ax.get_xlim()
    for i, (name, rank) in enumerate(zip(names, r)):
        on_left = i < half
        row = i if on_left else k - 1 - i
        y = base - row * step
        x_end = left_x + 0.1 if on_left else right_x - 0.1
        ax.plot([rank, rank, x_end], [top, y, y], color="0.25", lw=0.8)
        ax.text(x_end, y + 0.03, f"{name} ({rank:.2f})", ha="left" if on_left else "right",
                va="bottom", fontsize=8)
    ax.set_ylim(base - rows * step, 0.9)
    for (members, y) in zip(c.cliques, bars_y):
        xs = [float(c.mean_ranks[m]) for m in members]
        ax.plot([min(xs) - 0.03, max(xs) + 0.03], [y, y], color="black", lw=3,
                solid_capstyle="round")
    label = LABELS.get(c.metric, c.metric)
    ax.set_title(f"Mean rank of each arm by {label} over {c.n} datasets (Nemenyi, "
                 f"alpha = {c.alpha:g})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, stem)


# ------------------------------------------------------------------ the page


def _num(v: float, digits: int = 4) -> str:
    if not np.isfinite(v):
        return "inf" if v > 0 else "n/a"
    return f"{v:.{digits}f}"


def _p(v: float) -> str:
    return "n/a" if not np.isfinite(v) else ("<0.0001" if v < 1e-4 else f"{v:.4f}")


def ranking_table(c: Comparison) -> pd.DataFrame:
    """Arms in rank order: mean rank, then each dataset's value and rank there."""
    rows = []
    for a in c.arms:
        row = {"arm": a, "mean rank": f"{c.mean_ranks[a]:.2f}"}
        for d in c.datasets:
            row[d.name] = f"{c.values.loc[d.name, a]:.4f} ({c.ranks.loc[d.name, a]:g})"
        rows.append(row)
    return pd.DataFrame(rows)


def nemenyi_table(c: Comparison) -> pd.DataFrame:
    """Nemenyi p-values of every pair, marked * where p < alpha."""
    rows = []
    for a in c.arms:
        row = {"arm": a}
        for b in c.arms:
            p = float(c.p_nemenyi.loc[a, b])
            row[b] = "" if a == b else _p(p) + (" *" if p < c.alpha else "")
        rows.append(row)
    return pd.DataFrame(rows)


def dataset_table(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": d.name, "folder": portable_path(d.folder.resolve()),
                          "from": "results" if d.kind == "results" else "summary.csv",
                          "classifiers": ", ".join(d.classifiers),
                          "made by": d.made_by or "n/a"} for d in c.datasets])


def notes(c: Comparison) -> list[str]:
    """The sentences under the ranking: the tests, the power, what was left out."""
    label = LABELS.get(c.metric, c.metric)
    better = "higher" if c.higher_is_better else "lower"
    out = [f"Each arm's {label} (`{c.metric}`, {better} is better) per dataset: the mean over "
           "its classifiers of the mean over their (seed, fold) runs; rank 1 is the best arm "
           "of a dataset, ties share the mean rank."]
    verdict = "differ" if c.p_friedman < c.alpha else "are not shown to differ"
    out.append(f"Friedman test over {c.n} datasets and {c.k} arms: chi-square({c.k - 1}) = "
               f"{c.chi2:.3f}, p = {_p(c.p_friedman)}; Iman-Davenport F({c.k - 1}, "
               f"{(c.k - 1) * (c.n - 1)}) = {_num(c.f_iman, 3)}, p = {_p(c.p_iman)}. At alpha = "
               f"{c.alpha:g} the arms' ranks {verdict}.")
    out.append(f"Nemenyi post-hoc test: critical difference CD = {c.cd:.3f} at alpha = "
               f"{c.alpha:g} (arms whose mean ranks differ by less are not told apart; the "
               "bars of the diagram join them). The Nemenyi test is conservative, and it is "
               "read after a significant Friedman test.")
    if c.n < MIN_DATASETS:
        out.append(f"Only {c.n} datasets: with fewer than {MIN_DATASETS} the Friedman test has "
                   "little power (and its chi-square form wants more than 10 datasets and 5 "
                   "arms, Demšar 2006), so a large p-value here says little; read the ranks "
                   "as a description of these datasets, not as evidence of a general order.")
    if c.dropped:
        out.append("Arms not in every folder, left out of the ranking: " + "; ".join(
            f"`{a}` (not in {', '.join(missing)})" for a, missing in c.dropped.items()) + ".")
    return out


def write_compare(c: Comparison, out_dir: Path, command: str,
                  formats: tuple[str, ...] | list[str] = FORMATS) -> list[Path]:
    """compare.md / compare.tex / compare.html (as ``formats`` asks), compare.csv and the
    diagram (cd_diagram.png, .pdf) in ``out_dir``."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ResultsError(f"unknown compare format {bad[0]!r}; use {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Arms ranked across {c.n} datasets by {LABELS.get(c.metric, c.metric)}"
    head = [f"Made by: `{command}`"]
    written: list[Path] = []
    fig_paths = cd_diagram(c, out_dir / "cd_diagram")
    written += fig_paths
    rank_t, nem_t, data_t = ranking_table(c), nemenyi_table(c), dataset_table(c)
    text = notes(c)
    long = pd.concat([c.values.stack().rename("value"), c.ranks.stack().rename("rank")], axis=1)
    long.index.names = ["dataset", "arm"]
    csv = "# " + "\n# ".join(head) + "\n" + long.reset_index().to_csv(index=False,
                                                                      float_format="%.6f")
    csv += "\n# mean rank\n" + c.mean_ranks.rename("mean_rank").rename_axis("arm").reset_index() \
        .to_csv(index=False, float_format="%.6f")
    p = out_dir / "compare.csv"
    atomic_text(p, csv)
    written.append(p)
    diagram = "Critical-difference diagram (Nemenyi)"
    if "md" in formats:
        parts = [f"# {title}", "", *head, "", *(s + "\n" for s in text[:1]),
                 md_table(rank_t), "", *(s + "\n" for s in text[1:]),
                 f"![{diagram}](cd_diagram.png) ([PDF](cd_diagram.pdf))", "",
                 f"Nemenyi p-values of each pair (* p < {c.alpha:g}):", "", md_table(nem_t), "",
                 "Datasets:", "", md_table(data_t), ""]
        p = out_dir / "compare.md"
        atomic_text(p, "\n".join(parts))
        written.append(p)
    if "latex" in formats:
        tex = "% " + "\n% ".join(head) + "\n"
        tex += latex_table(rank_t, f"{title}: value (rank) per dataset and mean rank; "
                                   f"Friedman p = {_p(c.p_friedman)}, Nemenyi CD = {c.cd:.3f} "
                                   f"at alpha = {c.alpha:g}")
        tex += latex_table(nem_t, f"Nemenyi p-values of each pair of arms (* p < {c.alpha:g})")
        tex += "\n".join([r"\begin{figure}[t]", r"\centering",
                          r"\includegraphics[width=\linewidth]{cd_diagram.pdf}",
                          f"\\caption{{{diagram}: mean ranks over {c.n} datasets; bars join arms "
                          f"within CD = {c.cd:.3f}}}", r"\end{figure}", ""])
        p = out_dir / "compare.tex"
        atomic_text(p, tex)
        written.append(p)
    if "html" in formats:
        png = next(x for x in fig_paths if x.suffix == ".png")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                 f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>",
                 "<body>", f"<h1>{html.escape(title)}</h1>", '<div class="head">',
                 *(f"<p>{_code(h)}</p>" for h in head), "</div>", "<h2>Ranking</h2>",
                 f"<p>{_code(text[0])}</p>", table_html(rank_t),
                 *(f'<p class="note">{_code(s)}</p>' for s in text[1:]),
                 f'<figure><img src="data:image/png;base64,{data}" alt="{diagram}">'
                 f"<figcaption><b>{diagram}.</b> Mean ranks, rank 1 on the left; bars join "
                 f"arms within CD = {c.cd:.3f}. <span class=\"note\">(cd_diagram.png, "
                 "cd_diagram.pdf)</span></figcaption></figure>",
                 "<h2>Nemenyi p-values</h2>", table_html(nem_t),
                 "<h2>Datasets</h2>", table_html(data_t), "</body>", "</html>", ""]
        p = out_dir / "compare.html"
        atomic_text(p, "\n".join(parts))
        written.append(p)
    return written
