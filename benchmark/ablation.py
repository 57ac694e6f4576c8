"""`medbench ablate`: one run per level of one component, everything else fixed.

The suite's subject (one arm, one classifier; see ``tuning.subject_of``) is varied
along one component, and each level is an ordinary run of a one-arm, one-classifier
suite with the protocol, seeds, folds and training budget of the original, in its own
results folder (so each level resumes on its own). Fitted generators come from the
shared cache: sweeping SIIR or the classifier never retrains a GAN.

Components and their default levels:
    siir        0, 0.1, ..., 0.5 under the complementary policy (seed 000, Table 9)
    generator   none and every generator the suite's arms use
    injection   balance, complementary
    optimizer   the untuned suite and the best parameters of every finished study
    classifier  the suite's classifiers
    pretrained  false, true
    synthetic   off (real images only), on
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import PluginError, ResultsError, SuiteError
from .files import atomic_text, atomic_write
from .store import ResultsStore, safe_name
from .suite import LoadedSuite
from .tuning import _entry, apply_params, derived, subject_of, tuned_params

COMPONENTS = ("siir", "generator", "injection", "optimizer", "classifier", "pretrained",
              "synthetic")
NUMERIC = ("siir",)


@dataclass
class Level:
    label: str          # e.g. "siir=0.2": the arm name in the level's results
    value: object
    loaded: LoadedSuite


def _parse(component: str, text: list[str]) -> list:
    if component in NUMERIC:
        try:
            return [float(t) for t in text]
        except ValueError:
            raise SuiteError(f"--levels for {component} must be numbers, got {','.join(text)}") from None
    if component == "pretrained":
        out = []
        for t in text:
            if t.lower() not in ("true", "false"):
                raise SuiteError(f"--levels for pretrained are true and false, got {t!r}")
            out.append(t.lower() == "true")
        return out
    return list(text)


def levels(loaded: LoadedSuite, component: str, given: list[str] | None,
           results_root: Path) -> list[Level]:
    if component not in COMPONENTS:
        raise SuiteError(f"unknown component {component!r}; use one of {', '.join(COMPONENTS)}")
    s = loaded.suite
    arm_name, clf_key = subject_of(s)
    arm0 = copy.deepcopy(_entry(loaded.raw, "arm", arm_name))
    clf0 = copy.deepcopy(_entry(loaded.raw, "classifier", clf_key))
    suite_levels = getattr(s.ablation, component, None) if component not in ("pretrained", "synthetic") else None
    values = _parse(component, given) if given else suite_levels
    needs_generator = component in ("siir", "injection", "synthetic")
    if needs_generator and not arm0.get("generator"):
        raise SuiteError(f"ablating {component} needs a subject arm with a generator; arm "
                         f"{arm_name!r} has none (set subject.arm)")
    if values is None:
        values = {
            "siir": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
            "generator": ["none"] + list(dict.fromkeys(a.generator for a in s.arms if a.generator)),
            "injection": ["balance", "complementary"],
            "optimizer": ["default"] + sorted(p.parent.name for p in
                                              (results_root / "tune").glob("*/best.json")),
            "classifier": [c.key for c in s.classifiers],
            "pretrained": [False, True],
            "synthetic": ["off", "on"],
        }[component]
    if component == "optimizer" and values == ["default"]:
        raise SuiteError(f"no finished study under {results_root / 'tune'}; run `medbench tune "
                         f"{loaded.path.name}` first (or name optimizers with --levels)")
    if len(values) < 2:
        raise SuiteError(f"an ablation of {component} needs at least two levels, got {values}")
    out = []
    for v in values:
        arm, clf, base = copy.deepcopy(arm0), copy.deepcopy(clf0), loaded
        if component == "siir":
            if not 0.0 <= v <= 5.0:
                raise SuiteError(f"SIIR levels must be in [0, 5], got {v}")
            arm["injection"] = {**arm.get("injection", {}), "policy": "complementary", "siir": v}
            label = f"siir={v:g}"
        elif component == "generator":
            if v == "none":
                for k in ("generator", "params", "injection"):
                    arm.pop(k, None)
            else:
                if v != arm.get("generator"):
                    arm.pop("params", None)
                arm["generator"] = v
            label = f"generator={v}"
        elif component == "injection":
            inj = {**arm.get("injection", {}), "policy": v}
            if v == "fixed" and inj.get("per_class") is None:
                raise SuiteError(f"injection level `fixed` needs injection.per_class on arm {arm_name!r}")
            arm["injection"] = inj
            label = f"injection={v}"
        elif component == "optimizer":
            if v != "default":
                params, _ = tuned_params(loaded, v, results_root)
                base = apply_params(loaded, params)
                arm = copy.deepcopy(_entry(base.raw, "arm", arm_name))
                clf = copy.deepcopy(_entry(base.raw, "classifier", clf_key))
            label = f"optimizer={v}"
        elif component == "classifier":
            known = {c.get("label") or c["name"]: c for c in loaded.raw["classifiers"]}
            clf = copy.deepcopy(known.get(v, {"name": v}))
            label = f"classifier={v}"
        elif component == "pretrained":
            clf["pretrained"] = bool(v)
            label = f"pretrained={str(v).lower()}"
        else:  # synthetic
            if v not in ("off", "on"):
                raise SuiteError(f"levels of synthetic are off and on, got {v!r}")
            if v == "off":
                for k in ("generator", "params", "injection"):
                    arm.pop(k, None)
            label = f"synthetic={v}"
        arm["name"] = label
        raw = copy.deepcopy(base.raw)
        raw["arms"], raw["classifiers"] = [arm], [clf]
        raw["subject"] = {"arm": label, "classifier": clf.get("label") or clf["name"]}
        out.append(Level(label, v, derived(loaded, raw, what=f"ablation level {label}")))
    labels = [lv.label for lv in out]
    if len(set(labels)) != len(labels):
        raise SuiteError(f"ablation levels must be distinct, got {', '.join(labels)}")
    return out


def ablate(loaded: LoadedSuite, component: str, given: list[str] | None, results_root: Path,
           report_dir: Path, *, quiet: bool = False, device: str | None = None,
           executor: str = "local", command: str | None = None,
           echo=print, jobs: int = 1, threads: int | None = None) -> list[Path]:
    from .runner import check_plugins, run_suite
    lv = levels(loaded, component, given, results_root)
    for level in lv:                       # every level's plugins before any work
        check_plugins(level.loaded)
        clf = level.loaded.suite.classifiers[0]
        if component == "pretrained" and level.value:
            from .registry import registry
            if not getattr(registry().get("classifiers", clf.name).obj, "supports_pretrained", False):
                raise PluginError(f"classifier {clf.name!r} has no pretrained weights to ablate")
    root = results_root / f"ablate-{component}"
    for i, level in enumerate(lv, 1):
        echo(f"[level {i}/{len(lv)}] {level.label}")
        run_suite(level.loaded, root / safe_name(level.label), quiet=quiet, executor=executor,
                  device=device, command=command, jobs=jobs, threads=threads)
    return write_ablation_report(root, component, [x.label for x in lv],
                                 [x.value for x in lv], report_dir, command)


def collect(root: Path, labels: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    from .report import with_minority_recall
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


def write_ablation_report(root: Path, component: str, labels: list[str], values: list,
                          report_dir: Path, command: str | None) -> list[Path]:
    from .report import LABELS, latex_table, md_table, threads_words
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
    numeric levels (SIIR), grouped bars otherwise."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .report import LABELS
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
    out = []
    for fmt in ("png", "pdf"):
        p = stem.with_suffix(f".{fmt}")
        # fixed metadata so a rerun writes the same bytes
        meta = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None}
        atomic_write(p, lambda f, fmt=fmt, meta=meta: fig.savefig(f, format=fmt, metadata=meta))
        out.append(p)
    plt.close(fig)
    return out
