"""The tables and figure of an ablation (``medbench ablate``, and ``medbench report``
for each ``<results>/ablate-<component>/``): ablation.md, .csv, .tex, .png and .pdf.

Read from the levels' results folders alone; running the levels is ``ablation``'s.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ResultsError
from .files import atomic_text
from .plotting import pyplot, save_figure
from .store import ResultsStore, safe_name
from .tables import LABELS, latex_table, md_table, threads_words, with_minority_recall

COMPONENTS = ("siir", "generator", "injection", "optimizer", "classifier", "pretrained",
              "synthetic", "diffaug", "budget")
NUMERIC = ("siir",)


def collect(root: Path, labels: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    frames, manifests = [], []
    for label in labels:
        folder = root / safe_name(label)
        store = ResultsStore(folder)
        try:
            df = store.load()
        except ResultsError:
            continue
        manifests.append(store.manifest())
        data = json.loads((folder / "data_report.json").read_text())
        df, _ = with_minority_recall(df, data)
        df = df.copy()
        df["level"] = label
        frames.append(df)
    if not frames:
        raise ResultsError(f"no level of {root} has finished cells")
    return pd.concat(frames, ignore_index=True), manifests


# `medbench fidelity` columns an ablation table shows when its levels were measured
FIDELITY = {"fid": "FID vs training", "fid_heldout": "FID held out",
            "kid_heldout": "KID held out", "kid_train_heldout": "KID real train vs held out",
            "copy_rate": "copy rate"}


def fidelity_of(folder: Path) -> dict[str, float] | None:
    """Means over a level's fidelity rows (classes, seeds, folds), or None unmeasured."""
    csv, meta = folder / "fidelity.csv", folder / "fidelity.json"
    if not (csv.is_file() and meta.is_file()) or not json.loads(meta.read_text()).get("complete"):
        return None
    rows = pd.read_csv(csv)
    if rows.empty:
        return None
    out = {k: float(rows[k].mean()) for k in FIDELITY}
    out["fidelity_rows"], out["fidelity_n"] = int(len(rows)), int(rows["n_synthetic"].min())
    out["n_heldout"] = int(rows["n_heldout"].min())
    return out


def write_ablation_report(root: Path, component: str, labels: list[str], values: list,
                          report_dir: Path, command: str | None) -> list[Path]:
    df, manifests = collect(root, labels)
    metrics = list((manifests[0].get("report") or {}).get("metrics")
                   or ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"])
    overall = df[(df["class"] == "") & df["metric"].isin(metrics)]
    rows = []
    for label, value in zip(labels, values):
        sub = overall[overall["level"] == label]
        cells = df[df["level"] == label].drop_duplicates(["seed", "fold"])
        row = {"level": label, "value": value, "runs": int(len(cells)),
               "synthetic": float(cells["n_synthetic"].mean()) if len(cells) else math.nan}
        for m in metrics:
            v = sub.loc[sub["metric"] == m, "value"].to_numpy(dtype=float)
            row[f"{m}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0 if len(v) else math.nan
        quality = fidelity_of(root / safe_name(label))
        if quality is not None:
            row.update(quality)
        rows.append(row)
    table = pd.DataFrame(rows)
    report_dir.mkdir(parents=True, exist_ok=True)
    m0 = manifests[0]
    commits = ", ".join(sorted({m.get("git_commit", "?") for m in manifests}))
    head = [f"Made by: `{command or 'medbench ablate'}`",
            f"Suite `{m0.get('suite')}`, profile `{m0.get('profile') or 'none'}`; medbench "
            f"{m0.get('medbench')}, commit {commits}, torch {m0.get('torch')}, device "
            f"{m0.get('device')}{threads_words(df)}. Levels' results: "
            f"`{root}/<level>`."]
    shown = pd.DataFrame({"level": table["level"], "runs": table["runs"],
                          "synthetic images": [f"{x:.0f}" if np.isfinite(x) else "n/a"
                                               for x in table["synthetic"]]})
    for m in metrics:
        shown[LABELS.get(m, m)] = [f"{a:.4f} ± {b:.4f}" if np.isfinite(a) else "n/a"
                                   for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"])]
    measured = "fid" in table.columns
    if measured:
        for k, name in FIDELITY.items():
            digits = 1 if k.startswith("fid") else 3 if k == "copy_rate" else 4
            shown[name] = [f"{v:.{digits}f}" if np.isfinite(v) else "n/a" for v in table[k]]
        extractor = next((json.loads((root / safe_name(lb) / "fidelity.json").read_text()).get("extractor")
                        for lb in labels if (root / safe_name(lb) / "fidelity.json").is_file()), "?")
        head.append(f"Image quality (`medbench fidelity`, extractor {extractor}): mean over the "
                    "level's classes, seeds and folds; FID vs training is the synthetic images "
                    "against the real training images the generator was fitted on (as many as "
                    "the class has, capped); held out: against the fold's real test images of "
                    "the class at matched n, with real training images against them at the "
                    "same n for the floor; copy rate: share of synthetic images nearer a "
                    "training image than the 5th percentile of real held-out images (about "
                    "0.05 for new images, 1 for copies). Below 2,000 images FID is biased "
                    "upwards: read KID.")
    written = []
    written = _write_tables(report_dir, f"{m0.get('suite')}: ablation of {component}", head,
                            ["Mean ± standard deviation over (seed, fold) runs on the real test "
                             "fold(s); synthetic images: mean number added to a training part.",
                             ""], shown, table, "![ablation](ablation.png)")
    written += plot_ablation(report_dir / "ablation", component, table, metrics)
    return written


def _write_tables(report_dir: Path, title: str, head: list[str], intro: list[str],
                  shown: pd.DataFrame, table: pd.DataFrame, figure: str) -> list[Path]:
    """ablation.md (head, intro, the shown table, the figure), .csv (the full table) and
    .tex, each headed by ``head``."""
    md, csv, tex = (report_dir / f"ablation.{x}" for x in ("md", "csv", "tex"))
    atomic_text(md, "\n".join([f"# {title}", "", *head, "", *intro, md_table(shown), "",
                               figure, ""]))
    atomic_text(csv, "# " + "\n# ".join(head) + "\n" + table.to_csv(index=False, float_format="%.6f"))
    atomic_text(tex, "% " + "\n% ".join(head) + "\n" + latex_table(shown, title))
    return [md, csv, tex]


def plot_ablation(stem: Path, component: str, table: pd.DataFrame, metrics: list[str]) -> list[Path]:
    """Each metric against the level with standard-deviation error bars: a line over
    numeric levels (SIIR), grouped bars otherwise; PNG and PDF at the figure's 120 dpi
    (plotting.save_figure)."""
    plt = pyplot()
    shown = [m for m in ("accuracy", "macro_f1", "minority_recall", "balanced_accuracy")
             if m in metrics][:3] or metrics[:2]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if component in NUMERIC:
        x = table["value"].astype(float).to_numpy()
        for m in shown:
            ax.errorbar(x, table[f"{m}_mean"], yerr=table[f"{m}_std"], marker="o", capsize=3,
                        label=LABELS.get(m, m))
        ax.set_xlabel(component.upper() if component == "siir" else component)
        ax.set_xticks(x)
    else:
        x = np.arange(len(table))
        w = 0.8 / len(shown)
        for i, m in enumerate(shown):
            ax.bar(x + (i - (len(shown) - 1) / 2) * w, table[f"{m}_mean"], w,
                   yerr=table[f"{m}_std"], capsize=3, label=LABELS.get(m, m))
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in table["value"]], rotation=20)
        ax.set_xlabel(component)
    ax.set_ylabel("test fold, mean ± std")
    ax.set_title(f"ablation of {component}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, stem)


# ------------------------------------------------------------------ the budget curve
BUDGET_LEVEL = re.compile(r"^(?P<arm>.+)-(?P<kimg>[0-9]+(?:\.[0-9]+)?)kimg$")
BUDGET_METRICS = ("accuracy", "balanced_accuracy", "minority_recall", "roc_auc")


def budget_levels(root: Path) -> list[str]:
    """Every finished level of ``<results>/ablate-budget/``: the snapshots of each arm by
    kimg, then the reference levels."""
    found = []
    for p in root.iterdir():
        if p.is_dir() and (p / "results.parquet").is_file():
            try:
                if len(ResultsStore(p).load()):
                    found.append(p.name)
            except ResultsError:
                pass

    def order(label: str) -> tuple:
        m = BUDGET_LEVEL.match(label)
        return (1, label, 0.0) if m is None else (0, m["arm"], float(m["kimg"]))
    return sorted(found, key=order)


def _interval(v: np.ndarray) -> tuple[float, float, float]:
    """Mean and the 95% confidence interval of the mean (Student's t over the runs,
    clipped to [0, 1], where every metric of the curve lives; the mean alone for one run)."""
    from scipy import stats
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, max(0.0, m - half), min(1.0, m + half)


def budget_table(root: Path, labels: list[str]) -> tuple[pd.DataFrame, list[dict], pd.DataFrame]:
    """One row per level: arm, generator, kimg (None for a reference), runs, the image
    quality of its synthetic images and each downstream metric's mean and 95% CI."""
    df, manifests = collect(root, labels)
    overall = df[df["class"] == ""]
    rows = []
    for label in labels:
        m = BUDGET_LEVEL.match(label)
        sub = overall[overall["level"] == label]
        arms = sub["arm"].unique()
        row = {"level": label, "arm": m["arm"] if m else label.split("=", 1)[-1],
               "kimg": float(m["kimg"]) if m else math.nan, "reference": m is None,
               "runs": int(len(sub.drop_duplicates(["seed", "fold"]))),
               "level_arm": arms[0] if len(arms) else label}
        for metric in BUDGET_METRICS:
            v = sub.loc[sub["metric"] == metric, "value"].to_numpy(dtype=float)
            row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"] = _interval(v)
        quality = fidelity_of(root / safe_name(label))
        for k in FIDELITY:
            row[k] = quality[k] if quality else math.nan
        row["fidelity_n"] = quality["fidelity_n"] if quality else math.nan
        rows.append(row)
    return pd.DataFrame(rows), manifests, df


def write_budget_report(root: Path, report_dir: Path, command: str | None) -> list[Path]:
    """The quality-utility curve of ``<results>/ablate-budget/``: table (md, csv, tex)
    and figure (downstream metric against held-out FID and KID, one line per generator
    through its snapshots, the reference arms as horizontal lines)."""
    labels = budget_levels(root) if root.is_dir() else []
    if not labels:
        raise ResultsError(f"no level of {root} has finished cells")
    table, manifests, df = budget_table(root, labels)
    report_dir.mkdir(parents=True, exist_ok=True)
    m0 = manifests[0]
    commits = ", ".join(sorted({m.get("git_commit", "?") for m in manifests}))
    extractor = next((json.loads((root / safe_name(lb) / "fidelity.json").read_text()).get("extractor")
                      for lb in labels if (root / safe_name(lb) / "fidelity.json").is_file()), "?")
    head = [f"Made by: `{command or 'medbench ablate --component budget'}`",
            f"Suite `{m0.get('suite')}`, profile `{m0.get('profile') or 'none'}`; medbench "
            f"{m0.get('medbench')}, commit {commits}, torch {m0.get('torch')}, device "
            f"{m0.get('device')}{threads_words(df)}. Levels' results: `{root}/<level>`.",
            "Each generator is fitted once per seed with snapshots at fractions of its kimg "
            "budget; the classifier is trained on the real training part plus each snapshot's "
            "images (nothing refitted). Metrics: mean over (seed, fold) runs on the real test "
            "fold(s) with the 95% confidence interval of the mean (Student's t over runs, "
            "clipped to [0, 1]) in brackets; with 3 seeds the interval is 2.5 standard "
            "deviations each way, so read overlap, not point order. Image quality (`medbench fidelity`, extractor {extractor}): FID and KID "
            "of the synthetic images against the fold's real test images of the class at "
            "matched n (the floor: real training images against them at the same n), mean "
            "over classes and seeds; copy rate: share of synthetic images nearer a training "
            "image than the 5th percentile of held-out real images (about 0.05 for new "
            "images, 1 for copies). Below 2,000 images FID is biased upwards: read KID."]
    shown = pd.DataFrame({
        "arm": table["arm"],
        "kimg": [("reference" if r else f"{k:g}") for k, r in zip(table["kimg"], table["reference"])],
        "runs": table["runs"],
        "FID held out": [f"{v:.1f}" if np.isfinite(v) else "n/a" for v in table["fid_heldout"]],
        "KID held out": [f"{v:.4f}" if np.isfinite(v) else "n/a" for v in table["kid_heldout"]],
        "KID floor": [f"{v:.4f}" if np.isfinite(v) else "n/a" for v in table["kid_train_heldout"]],
        "copy rate": [f"{v:.3f}" if np.isfinite(v) else "n/a" for v in table["copy_rate"]],
    })
    for metric in BUDGET_METRICS:
        shown[LABELS.get(metric, metric)] = [
            "n/a" if not np.isfinite(a) else f"{a:.4f}" if not np.isfinite(lo)
            else f"{a:.4f} [{lo:.3f}, {hi:.3f}]"
            for a, lo, hi in zip(table[f"{metric}_mean"], table[f"{metric}_lo"], table[f"{metric}_hi"])]
    written = _write_tables(report_dir, f"{m0.get('suite')}: quality-utility curve", head, [],
                            shown, table, "![quality-utility curve](ablation.png)")
    written += plot_budget(report_dir / "ablation", table)
    return written


def plot_budget(stem: Path, table: pd.DataFrame) -> list[Path]:
    """Minority recall and balanced accuracy against held-out FID (top) and KID (bottom):
    each generator a line through its snapshots (labelled with kimg, 95% CI bars), each
    reference arm a horizontal line with its CI as a band."""
    plt = pyplot()
    metrics = [m for m in ("minority_recall", "balanced_accuracy")
               if np.isfinite(table[f"{m}_mean"]).any()] or ["accuracy"]
    fig, axes = plt.subplots(2, len(metrics), figsize=(5.6 * len(metrics), 8.0), dpi=120,
                             squeeze=False)
    curves = table[~table["reference"]]
    refs = table[table["reference"]]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, (xkey, xname) in enumerate((("fid_heldout", "FID against held-out real images"),
                                         ("kid_heldout", "KID against held-out real images"))):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for i, (arm, sub) in enumerate(curves.groupby("arm", sort=False)):
                sub = sub.sort_values("kimg")
                x, y = sub[xkey].to_numpy(float), sub[f"{metric}_mean"].to_numpy(float)
                err = np.vstack([y - sub[f"{metric}_lo"].to_numpy(float),
                                 sub[f"{metric}_hi"].to_numpy(float) - y])
                c = colours[i % len(colours)]
                ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, color=c,
                            label=arm)
                for xi, yi, k in zip(x, y, sub["kimg"]):
                    if np.isfinite(xi) and np.isfinite(yi):
                        ax.annotate(f"{k:g}", (xi, yi), textcoords="offset points",
                                    xytext=(4, 4), fontsize=7, color=c)
            for j, (_, r) in enumerate(refs.iterrows()):
                c = ["black", "grey"][j % 2]
                ax.axhline(r[f"{metric}_mean"], color=c, ls="--", lw=1, label=r["arm"])
                if np.isfinite(r[f"{metric}_lo"]):
                    ax.axhspan(r[f"{metric}_lo"], r[f"{metric}_hi"], color=c, alpha=0.08)
            ax.set_xlabel(xname + " (lower is better)")
            ax.set_ylabel(LABELS.get(metric, metric) + " (test, mean, 95% CI)")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Quality-utility curve: numbers at points are kimg shown")
    fig.tight_layout()
    return save_figure(fig, stem)
