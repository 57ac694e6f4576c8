"""Figures of a results folder for ``medbench report``: PNG and PDF in ``<report>/figures/``.

- confusion matrices per arm, summed over the arm's runs, one figure per classifier;
- ROC and precision-recall curves per arm from the stored test predictions pooled over
  runs (binary: class 1; multi-class: the smallest class one-vs-rest);
- per generator and class: the GAN's losses and its last sample grid of the first (seed,
  fold) beside a grid of real training images of the class (``real.png``, written by
  ``generators.write_generator_artifacts``);
- per ``<results>/ablate-<component>/``: the ablation table and figure, written by
  ``ablation_report.write_ablation_report`` into ``<report>/ablate-<component>/``.

Everything is drawn from files of the results folder alone and saved with fixed
metadata (plotting.save_figure), so rerunning the report rewrites the same bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from .ablation_report import COMPONENTS, NUMERIC, budget_levels, write_ablation_report, write_budget_report
from .errors import ResultsError
from .metrics import predict
from .plotting import loss_series, pyplot, save_figure
from .store import ResultsStore, safe_name
from .tables import cell_predictions

FIG_DIR = "figures"
DPI = 110


@dataclass
class Figure:
    kind: str            # confusion | curves | gan | ablation
    title: str
    caption: str
    png: Path
    pdf: Path | None
    extra: list[Path] = field(default_factory=list)   # other files written with it

    @property
    def paths(self) -> list[Path]:
        return [self.png] + ([self.pdf] if self.pdf else []) + self.extra


def _titled(fig, title: str) -> None:
    """A figure title above the panels: tight_layout alone lets it overlap their titles."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))


def _short(text: str, n: int = 14) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "…"


# ------------------------------------------------------------------ predictions
def pooled_predictions(store: ResultsStore, df: pd.DataFrame) -> dict:
    """(arm, classifier) -> list of (y_true, probs, threshold) over the cells whose
    predictions are stored, in cell order."""
    out: dict = {}
    for row, p in cell_predictions(store, df):
        t = getattr(row, "threshold", np.nan)
        t = None if t is None or not np.isfinite(float(t)) else float(t)
        out.setdefault((row.arm, row.classifier), []).append((p["y_true"], p["probs"], t))
    return out


def _per_classifier(preds: dict):
    """(classifier, its arms in order, number of classes) for the pooled predictions."""
    for clf in dict.fromkeys(c for _, c in preds):
        arms = [a for a, c in preds if c == clf]
        yield clf, arms, preds[(arms[0], clf)][0][1].shape[1]


def _class_names(data: dict, k: int) -> list[str]:
    names = list(data.get("classes") or [])
    return names if len(names) == k else [str(i) for i in range(k)]


def confusion_figures(preds: dict, data: dict, out: Path) -> list[Figure]:
    plt = pyplot()
    figs = []
    for clf, arms, k in _per_classifier(preds):
        names = [_short(n) for n in _class_names(data, k)]
        ncols = min(len(arms), 3)
        nrows = -(-len(arms) // ncols)
        side = 1.1 + 0.55 * k
        fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols + 0.6, side * nrows + 0.5),
                                 squeeze=False)
        runs = 0
        for ax, arm in zip(axes.flat, arms):
            cm = np.zeros((k, k), dtype=np.int64)
            for y, p, t in preds[(arm, clf)]:
                yp = predict(p, t)
                np.add.at(cm, (y.astype(np.int64), yp.astype(np.int64)), 1)
            runs = max(runs, len(preds[(arm, clf)]))
            rows = cm.sum(1, keepdims=True)
            norm = np.divide(cm, rows, out=np.zeros((k, k)), where=rows > 0)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for i in range(k):
                for j in range(k):
                    if k > 5 and cm[i, j] == 0:
                        continue       # many classes: empty cells stay blank
                    text = f"{norm[i, j]:.2f}" + (f"\n({cm[i, j]})" if k <= 5 else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.55 else "black")
            ax.set_xticks(range(k))
            ax.set_yticks(range(k))
            ax.set_xticklabels(names, rotation=30 if k > 2 else 0, ha="right" if k > 2 else "center",
                               fontsize=7)
            ax.set_yticklabels(names, fontsize=7)
            ax.set_xlabel("predicted", fontsize=8)
            ax.set_ylabel("true", fontsize=8)
            ax.set_title(_short(arm, 28), fontsize=9)
        for ax in list(axes.flat)[len(arms):]:
            ax.axis("off")
        _titled(fig, f"{clf}: confusion matrices")
        png, pdf = save_figure(fig, out / f"confusion-{safe_name(clf)}", dpi=DPI)
        figs.append(Figure(
            "confusion", f"Confusion matrices, {clf}",
            f"Test predictions of {clf} summed over each arm's runs (up to {runs}); each row "
            "is normalized over the images of its true class (recall on the diagonal)"
            + (", counts in brackets." if k <= 5 else "; cells with no image are blank."),
            png, pdf))
    return figs


def _focus_class(data: dict, k: int, ys: list[np.ndarray]) -> int:
    """Binary: the positive class of the data report (``dataset.positive_class``, by
    default the minority class; class 1 for older reports without it). Multi-class: the
    class with the fewest images in the data report (the fewest test images pooled when
    the report lacks counts)."""
    if k == 2:
        classes = data.get("classes") or []
        positive = data.get("positive_class")
        return classes.index(positive) if positive in classes else 1
    counts = data.get("counts")
    if counts and len(counts) == k:
        return int(np.argmin(counts))
    return int(np.argmin(np.bincount(np.concatenate(ys).astype(np.int64), minlength=k)))


def curve_figures(preds: dict, data: dict, out: Path) -> list[Figure]:
    plt = pyplot()
    figs = []
    for clf, arms, k in _per_classifier(preds):
        focus = _focus_class(data, k, [y for a in arms for y, _, _ in preds[(a, clf)]])
        name = _class_names(data, k)[focus]
        fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9.6, 4.2))
        prevalence = None
        for arm in arms:
            y = np.concatenate([y for y, _, _ in preds[(arm, clf)]]).astype(np.int64) == focus
            s = np.concatenate([p[:, focus] for _, p, _ in preds[(arm, clf)]]).astype(np.float64)
            if y.all() or not y.any():
                continue
            fpr, tpr, _ = roc_curve(y, s)
            prec, rec, _ = precision_recall_curve(y, s)
            ax_roc.plot(fpr, tpr, lw=1.2, label=f"{_short(arm, 24)} (AUC {auc(fpr, tpr):.3f})")
            ax_pr.plot(rec, prec, lw=1.2, drawstyle="steps-post",
                       label=f"{_short(arm, 24)} (AP {average_precision_score(y, s):.3f})")
            prevalence = float(y.mean())
        ax_roc.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        if prevalence is not None:
            ax_pr.axhline(prevalence, color="0.6", lw=0.8, ls="--")
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
                   ylim=(0, 1.01), title="ROC")
        ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
                  title="precision-recall")
        for ax in (ax_roc, ax_pr):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right" if ax is ax_roc else "best")
        vs = "positive class" if k == 2 else "one-vs-rest, the smallest class"
        _titled(fig, f"{clf}: class {name!r} ({vs})")
        png, pdf = save_figure(fig, out / f"roc-pr-{safe_name(clf)}", dpi=DPI)
        figs.append(Figure(
            "curves", f"ROC and precision-recall curves, {clf}",
            f"Class {name!r} ({vs}) on the test predictions of {clf} pooled over each arm's "
            "runs; dashed: chance (the diagonal; the class's share of the test images).",
            png, pdf))
    return figs


# ------------------------------------------------------------------ generators
def _image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L" if im.mode in ("1", "L", "I", "I;16") else "RGB"))


def _gan_runs(results_dir: Path) -> dict:
    """(generator, class label) -> the artifact folders of its fitted models, ordered by
    (seed, fold); only models that left losses or sample grids."""
    groups: dict = {}
    root = results_dir / "generators"
    if not root.is_dir():
        return groups
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        if not (folder / "losses.csv").is_file() and not any(folder.glob("samples_*.png")):
            continue
        m = re.fullmatch(r"s(\d+)-f(\d+)-(.*)", folder.name)
        try:
            info = json.loads((folder / "info.json").read_text())
        except (OSError, ValueError):
            info = {}
        seed = int(info.get("seed", m.group(1) if m else 0))
        fold = int(info.get("fold", m.group(2) if m else 0))
        cls = info.get("class") or (m.group(3) if m else folder.name)
        gen = info.get("generator") or folder.parent.name
        groups.setdefault((gen, cls), []).append((seed, fold, folder))
    return {k: [f for _, _, f in sorted(v, key=lambda t: (t[0], t[1]))] for k, v in groups.items()}


def _grid_label(folder: Path, grids: list[Path]) -> str:
    """The last sample grid's label as the generator named it (info.json), else from
    its file name."""
    try:
        labels = json.loads((folder / "info.json").read_text()).get("grids") or []
        if len(labels) == len(grids):
            return str(labels[-1])
    except (OSError, ValueError):
        pass
    return grids[-1].stem.split("_", 2)[-1].replace("_", " ")


def _crop_grid(img: np.ndarray, tile: int | None, k: int = 4) -> np.ndarray:
    """The top-left k x k tiles of a grid written by generators._grid_png (tiles of
    ``tile`` px between 1 px lines), so a page of many grids stays light."""
    if not tile:
        return img
    n = 1 + k * (tile + 1)
    return img[:n, :n] if img.shape[0] > n and img.shape[1] > n else img


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _loss_panel(ax, losses: Path, title: str) -> None:
    """Every loss series of a losses.csv (plotting.loss_series of its numeric columns)
    against the step, stage boundaries dashed."""
    hist = pd.read_csv(losses)
    steps = np.arange(1, len(hist) + 1)
    numeric = [c for c in hist.columns if pd.api.types.is_numeric_dtype(hist[c])
               and not pd.api.types.is_bool_dtype(hist[c])]
    for key, label in loss_series(numeric):
        v = pd.to_numeric(hist[key], errors="coerce").to_numpy(dtype=float)
        w = max(1, len(v) // 100)      # moving mean over w steps
        ax.plot(steps[w - 1:], np.convolve(v, np.ones(w) / w, mode="valid"),
                lw=1, label=label, marker="o" if len(v) < 30 else None, ms=3)
    if "stage" in hist:
        st = hist["stage"].to_numpy()
        for s in np.flatnonzero(st[1:] != st[:-1]) + 1:
            ax.axvline(s, color="0.7", lw=0.6, ls="--")
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)


def _seed_fold(folder: Path) -> str:
    return folder.name.rsplit("-", 1)[0] if folder.name.count("-") >= 2 else folder.name


def gallery_figure(runs: dict, out: Path, tile: int | None = None) -> list[Figure]:
    """One page to compare the generators: a row per class, real training images first,
    then the last sample grid of each per-class generator (its first model by seed and
    fold), each cropped to 4 x 4 images. A conditional generator's mixed grid stays in
    its own figure."""
    runs = {k: v for k, v in runs.items() if k[1] != "all" and any(v[0].glob("samples_*.png"))}
    if not runs:
        return []
    plt = pyplot()
    classes = sorted({c for _, c in runs})
    gens = sorted({g for g, _ in runs})
    cols = ["real"] + gens
    fig, axes = plt.subplots(len(classes), len(cols), squeeze=False,
                             figsize=(1.3 * len(cols) + 0.6, 1.3 * len(classes) + 0.4))
    for r, cls in enumerate(classes):
        for c, col in enumerate(cols):
            ax = axes[r, c]
            if col == "real":
                first = next((runs[(g, cls)][0] for g in gens if (g, cls) in runs
                              and (runs[(g, cls)][0] / "real.png").is_file()), None)
                path = first / "real.png" if first else None
            else:
                grids = sorted(runs[(col, cls)][0].glob("samples_*.png")) if (col, cls) in runs else []
                path = grids[-1] if grids else None
            if path is not None:
                _show(ax, _crop_grid(_image(path), tile))
            else:
                ax.axis("off")
            if r == 0:
                ax.set_title(col, fontsize=9)
            if c == 0:
                ax.set_ylabel(_short(cls, 18), fontsize=8)
    fig.tight_layout()
    png, pdf = save_figure(fig, out / "gan-gallery", dpi=DPI)
    return [Figure("gan", "Synthetic images beside real ones, per class",
                   "Each row is a class the generators filled: 16 real training images of "
                   "the first (seed, fold), then 16 images of the last sample grid (fixed "
                   "noise) of each per-class generator fitted on that fold's training part.",
                   png, pdf)]


def gan_figures(runs: dict, out: Path) -> list[Figure]:
    """Per generator and class: losses, its last sample grid and real images. A
    generator fitted per class for more than 2 classes gets one figure of loss curves,
    a panel per class, instead (its samples are in the gallery)."""
    plt = pyplot()
    figs = []
    many = {g for g in {g for g, _ in runs}
            if sum(1 for g2, c in runs if g2 == g and c != "all") > 2}
    for gen in sorted(many):
        items = [(c, f) for (g, c), f in sorted(runs.items()) if g == gen and c != "all"
                 and (f[0] / "losses.csv").is_file()]
        if not items:
            continue
        ncol = min(4, len(items))
        nrow = -(-len(items) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
        for ax, (cls, folders) in zip(axes.flat, items):
            _loss_panel(ax, folders[0] / "losses.csv", f"{_short(cls, 24)} ({_seed_fold(folders[0])})")
        for ax in list(axes.flat)[len(items):]:
            ax.axis("off")
        _titled(fig, f"{gen}: losses per class")
        png, pdf = save_figure(fig, out / f"gan-{safe_name(gen)}-losses", dpi=DPI)
        figs.append(Figure("gan", f"{gen}, losses per class",
                           f"{gen}, one model per class: discriminator and generator losses "
                           "per step (moving mean) of each class's model of the first (seed, "
                           "fold); its samples are in the gallery.", png, pdf))
    for (gen, cls), folders in sorted(runs.items()):
        if gen in many and cls != "all":
            continue
        first = folders[0]
        seed_fold = _seed_fold(first)
        panels = []
        losses = first / "losses.csv"
        if losses.is_file():
            panels.append("loss")
        grids = sorted(first.glob("samples_*.png"))
        if grids:
            panels.append("samples")
        if (first / "real.png").is_file():
            panels.append("real")
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.6),
                                 squeeze=False, gridspec_kw={"width_ratios": [
                                     1.5 if p == "loss" else 1 for p in panels]})
        for ax, panel in zip(axes.flat, panels):
            if panel == "loss":
                _loss_panel(ax, losses, f"losses ({len(folders)} model(s); {seed_fold} shown)")
            else:
                path = grids[-1] if panel == "samples" else first / "real.png"
                _show(ax, _image(path))
                ax.set_title(f"synthetic ({_grid_label(first, grids)})" if panel == "samples"
                             else "real training images", fontsize=8)
        what = "all classes" if cls == "all" else f"class {cls}"
        _titled(fig, f"{gen}, {what}")
        png, pdf = save_figure(fig, out / f"gan-{safe_name(gen)}-{safe_name(cls)}", dpi=DPI)
        figs.append(Figure(
            "gan", f"{gen}, {what}",
            f"{gen} for {what}, model of {seed_fold}: discriminator and generator "
            "losses per step (moving mean), its last grid of samples from fixed noise"
            + (", and real training images of the same fold."
               if "real" in panels else "."), png, pdf))
    return figs


# ------------------------------------------------------------------ ablations
def _level_value(component: str, label: str):
    text = label.split("=", 1)[1] if "=" in label else label
    if component == "siir":
        try:
            return float(text)
        except ValueError:
            return text
    if component == "pretrained" and text in ("true", "false"):
        return text == "true"
    return text


def _ablation_roots(results_dir: Path) -> list[tuple[Path, str, str]]:
    """(levels folder, component, name in the report) of every ablation: levels sit in
    ``ablate-<component>/``, or in ``ablate-<component>/<arm>/`` when one was run with
    ``--arm``."""
    found = []
    for root in sorted(results_dir.glob("ablate-*")):
        component = root.name[len("ablate-"):]
        if not root.is_dir() or component not in COMPONENTS:
            continue
        found.append((root, component, root.name))
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if not (sub / "results.parquet").is_file() and any(
                    (q / "results.parquet").is_file() for q in sub.iterdir() if q.is_dir()):
                found.append((sub, component, f"{root.name}/{sub.name}"))
    return found


def ablation_figures(results_dir: Path, report_dir: Path) -> list[Figure]:
    """Tables and figure of every ``<results>/ablate-<component>[/<arm>]/`` into
    ``<report>/ablate-<component>[/<arm>]/`` (ablation_report.write_ablation_report)."""
    figs = []
    for root, component, name in _ablation_roots(results_dir):
        labels = [p.name for p in sorted(root.iterdir())
                  if p.is_dir() and (p / "results.parquet").is_file()]
        if component == "budget":
            labels = budget_levels(root)
        if component in NUMERIC:         # SIIR 0, 0.1, ..., 0.5, not 0, 0.1, 0.25, ...
            def order(lb: str) -> tuple:
                v = _level_value(component, lb)
                return (0, v, lb) if isinstance(v, float) else (1, 0.0, lb)
            labels.sort(key=order)
        if not labels:
            continue
        command = None
        try:
            command = ResultsStore(root / labels[0]).manifest().get("command")
        except ResultsError:
            pass
        try:
            written = (write_budget_report(root, report_dir / name, command)
                       if component == "budget" else
                       write_ablation_report(root, component, labels,
                                             [_level_value(component, lb) for lb in labels],
                                             report_dir / name, command))
        except ResultsError:
            continue
        png = next(p for p in written if p.suffix == ".png")
        pdf = next((p for p in written if p.suffix == ".pdf"), None)
        figs.append(Figure(
            "ablation", f"Ablation of {component}" + (f" ({root.name})" if "/" in name else ""),
            f"Each level of {component} run on its own ({len(labels)} level(s) in "
            f"{name}/); mean ± std over (seed, fold) runs on the test fold(s). Tables: "
            f"{name}/ablation.md, .csv, .tex.", png, pdf,
            [p for p in written if p not in (png, pdf)]))
    return figs


# ------------------------------------------------------------------ all
def write_figures(results_dir: Path, report_dir: Path, store: ResultsStore, df: pd.DataFrame,
                  data: dict) -> list[Figure]:
    """Every figure of the report; PNG and PDF files in ``report_dir/figures`` that no
    longer belong to the report (an arm removed since) are deleted."""
    out = report_dir / FIG_DIR
    out.mkdir(parents=True, exist_ok=True)
    preds = pooled_predictions(store, df)
    figs = confusion_figures(preds, data, out) + curve_figures(preds, data, out)
    tile = data.get("image_size") if data else None
    runs = _gan_runs(results_dir)       # (generator, class) -> artifact folders
    figs += gallery_figure(runs, out, tile) + gan_figures(runs, out)
    keep = {p.resolve() for f in figs for p in f.paths}
    for p in list(out.glob("*.png")) + list(out.glob("*.pdf")):
        if p.resolve() not in keep:
            p.unlink()
    figs += ablation_figures(results_dir, report_dir)
    return figs
