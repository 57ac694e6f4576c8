"""The tables and figure of an ablation (``medbench ablate``, and ``medbench report``
for each ``<results>/ablate-<component>/``): ablation.md, .csv, .tex, .png and .pdf.

Read from the levels' results folders alone; running the levels is ``ablation``'s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ResultsError
from .files import atomic_text
from .plotting import pyplot, save_figure
from .store import ResultsStore, safe_name
from .tables import LABELS, latex_table, md_table, threads_words, with_minority_recall

COMPONENTS = ("siir", "generator", "injection", "optimizer", "classifier", "pretrained",
              "synthetic", "diffaug")
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
    p = report_dir / "ablation.md"
    atomic_text(p, "\n".join([f"# {m0.get('suite')}: ablation of {component}", "", *head, "",
                              "Mean ± standard deviation over (seed, fold) runs on the real test "
                              "fold(s); synthetic images: mean number added to a training part.",
                              "", md_table(shown), "", "![ablation](ablation.png)", ""]))
    written.append(p)
    p = report_dir / "ablation.csv"
    atomic_text(p, "# " + "\n# ".join(head) + "\n" + table.to_csv(index=False, float_format="%.6f"))
    written.append(p)
    p = report_dir / "ablation.tex"
    atomic_text(p, "% " + "\n% ".join(head) + "\n"
                + latex_table(shown, f"{m0.get('suite')}: ablation of {component}"))
    written.append(p)
    written += plot_ablation(report_dir / "ablation", component, table, metrics)
    return written


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
