"""The optimizers head to head: every study in a results folder's ``tune/`` (one per
optimizer and optimizer seed, ``medbench tune --optimizer sma,random,optuna --seeds
0,1,2``), compared at equal budgets.

What is compared is what a user of a tuner pays for: the best objective found after t
trials (best so far), per optimizer as the mean over its seeds with the spread of the
seeds (min to max), and the final best with its standard deviation. With a handful of
seeds per optimizer no test separates small differences; the table gives the spread so
that a reader sees whether the gaps exceed it. When the folder has runs that trained the
final protocol with a study's parameters (``medbench run --use-tuned STUDY``, results in
``<folder>-tuned-<study>``), their test results stand beside the untuned run's.

A leaf: it reads journals and results, and writes tables and a figure.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_text
from .plotting import pyplot, save_figure
from .store import MANIFEST


@dataclass
class Study:
    name: str                 # the folder under tune/ (sma, sma-seed1, ...)
    optimizer: str
    seed: int
    objective: str
    direction: str
    values: list[float]       # each trial's objective in the order the optimizer asked (NaN: failed)
    seconds: float
    best: dict

    def best_so_far(self) -> np.ndarray:
        """After each trial, the best objective found so far (NaN before the first success)."""
        return best_so_far(self.values, self.direction)


def best_so_far(values: list[float], direction: str) -> np.ndarray:
    """After each value, the best so far (NaN: a failed trial's value, and the running
    best before the first success)."""
    sign = 1.0 if direction == "minimize" else -1.0
    out, run = [], math.inf
    for v in values:
        if v == v:                                      # not NaN
            run = min(run, sign * v)
        out.append(sign * run if math.isfinite(run) else math.nan)
    return np.asarray(out, dtype=float)


def ok_values(records: list[dict]) -> list[float]:
    """A study's trial values in order, NaN for a failed trial."""
    return [float(r["value"]) if r.get("status") == "ok" else math.nan for r in records]


def read_journal(path: Path) -> list[dict]:
    """A study's journal (trials.jsonl), one record per finished trial; a line cut by a
    kill (that trial did not finish) is skipped."""
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def visited(folder: Path) -> list[dict]:
    """A study's trials in the order its last run's optimizer visited them (the journal,
    trials.jsonl, may hold more)."""
    by_key = {json.dumps(r["params"], sort_keys=True, default=str): r
              for r in read_journal(folder / "trials.jsonl")}
    order_path = folder / "order.json"
    order = json.loads(order_path.read_text()) if order_path.exists() else []
    return [by_key[k] for k in order if k in by_key]


def mean_curve(studies: list[list[dict]], direction: str) -> list[float]:
    """The curve of a nested study (one study per outer split): the i-th value is the
    mean over its split studies of the best value each had found by its i-th trial (by
    its last, once it has ended), NaN while a split has no success yet; it ends at the
    mean of the splits' best values."""
    runs = [best_so_far(ok_values(recs), direction) for recs in studies]
    out = []
    for i in range(max((len(run) for run in runs), default=0)):
        at = [run[min(i, len(run) - 1)] if len(run) else math.nan for run in runs]
        out.append(float(np.mean(at)) if not np.isnan(at).any() else math.nan)
    return out


def load_studies(tune_dir: Path) -> list[Study]:
    """Every finished study under ``tune_dir``: a folder with best.json and, for a shared
    study, its order.json; a nested study (best.json with ``per_split``) enters with the
    mean over its outer splits (``mean_curve``; its best the mean of the splits' best)."""
    studies = []
    for best_path in sorted(Path(tune_dir).glob("*/best.json")):
        folder = best_path.parent
        best = json.loads(best_path.read_text())
        if best.get("scheme") == "nested":
            values = mean_curve([visited(folder / tag) for tag in best.get("per_split") or {}],
                                best["direction"])
        else:
            values = ok_values(visited(folder))
        if not values:
            continue
        studies.append(Study(name=folder.name, optimizer=best["optimizer"],
                             seed=int(best.get("seed") or 0), objective=best["objective"],
                             direction=best["direction"], values=values,
                             seconds=float(best.get("seconds") or 0.0), best=best))
    return studies


def best_so_far_table(studies: list[Study]) -> pd.DataFrame:
    """Long table: optimizer, seed, study, trial (1-based), value, best_so_far."""
    rows = []
    for st in studies:
        for i, (v, b) in enumerate(zip(st.values, st.best_so_far()), 1):
            rows.append({"optimizer": st.optimizer, "seed": st.seed, "study": st.name,
                         "trial": i, "value": v, "best_so_far": b})
    return pd.DataFrame(rows)


def _fmt(x: float, digits: int = 4) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def summary_table(studies: list[Study]) -> pd.DataFrame:
    """Per optimizer: seeds, trials per study, final best (mean, sd, min, max), the mean
    best so far over all trials (the area under the curve: lower is better when
    minimising, it rewards finding good values early), trials to come within 1% of the
    study's own final best, and seconds per study."""
    rows = []
    for opt in dict.fromkeys(s.optimizer for s in studies):
        group = [s for s in studies if s.optimizer == opt]
        finals = np.array([s.best_so_far()[-1] for s in group], dtype=float)
        curves = [s.best_so_far() for s in group]
        area = np.array([np.nanmean(c) for c in curves], dtype=float)
        reach = []
        for s, c in zip(group, curves):
            final = c[-1]
            tol = 0.01 * abs(final) if final == final else math.nan
            hit = [i for i, b in enumerate(c, 1) if b == b and abs(b - final) <= tol]
            reach.append(hit[0] if hit else math.nan)
        rows.append({
            "optimizer": opt, "seeds": ",".join(str(s.seed) for s in group),
            "trials": ",".join(sorted({str(len(s.values)) for s in group})),
            "final_mean": float(np.nanmean(finals)),
            "final_sd": float(np.nanstd(finals, ddof=1)) if len(finals) > 1 else math.nan,
            "final_min": float(np.nanmin(finals)), "final_max": float(np.nanmax(finals)),
            "mean_best_so_far": float(np.nanmean(area)),
            "trials_to_1pct": float(np.nanmean(reach)),
            "seconds_per_study": float(np.mean([s.seconds for s in group])),
        })
    return pd.DataFrame(rows)


def plot_head_to_head(path: Path, studies: list[Study]) -> None:
    """Best so far against trials: per optimizer the mean over its seeds (line) and the
    seeds' range (band), each seed's own curve thin behind it."""
    objective, direction = studies[0].objective, studies[0].direction
    plt = pyplot()                       # matplotlib is imported here, not with the module
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for opt in dict.fromkeys(s.optimizer for s in studies):
        group = [s for s in studies if s.optimizer == opt]
        n = max(len(s.values) for s in group)
        curves = np.full((len(group), n), np.nan)
        for i, s in enumerate(group):
            c = s.best_so_far()
            curves[i, :len(c)] = c
        x = np.arange(1, n + 1)
        with warnings.catch_warnings():       # a trial where every seed had failed so far
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(curves, axis=0)
            lo, hi = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        line, = ax.step(x, mean, where="post", lw=2,
                        label=f"{opt} ({len(group)} seed{'s' if len(group) > 1 else ''}; "
                              f"final {mean[-1]:.4f})")
        if len(group) > 1:
            ax.fill_between(x, lo, hi, step="post", alpha=0.18, color=line.get_color(), lw=0)
            for c in curves:
                ax.step(x, c, where="post", lw=0.6, alpha=0.5, color=line.get_color())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (objective evaluations)")
    ax.set_ylabel(f"best {objective} so far (validation)")
    ax.set_title(f"optimizers at equal budget ({direction} {objective}): mean and range over seeds",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, Path(path).with_suffix(""), formats=("png",))


def tuned_test_results(sources: list[tuple[str, Path]], metrics: list[str]) -> pd.DataFrame:
    """Test metrics (mean and sd over cells) of each (label, results folder) that exists:
    the untuned run and the ``<results>-tuned-<study>`` runs beside it."""
    rows = []
    for label, folder in sources:
        pq = folder / "results.parquet"
        if not pq.exists():
            continue
        df = pd.read_parquet(pq)
        df = df[(df["class"] == "") & df["metric"].isin(metrics)]
        for (arm, clf), g in df.groupby(["arm", "classifier"], sort=False):
            row = {"parameters": label, "arm": arm, "classifier": clf,
                   "cells": int(g[["seed", "fold"]].drop_duplicates().shape[0])}
            for m in metrics:
                v = g.loc[g["metric"] == m, "value"].to_numpy(dtype=float)
                row[m] = float(v.mean()) if len(v) else math.nan
                row[f"{m}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def _commands(studies: list[Study], tuned: list[Path], report_command: str | None) -> list[str]:
    """The header: the commands that made the studies, the tuned runs and this page."""
    cmds = [s.best.get("command") for s in studies]
    for folder in tuned:
        manifest = folder / MANIFEST
        if manifest.exists():
            cmds.append(json.loads(manifest.read_text()).get("command"))
    cmds.append(report_command)
    return ["Made by:", "", *(f"- `{c}`" for c in dict.fromkeys(c for c in cmds if c))]


def write_comparison(tune_dir: Path, out_dir: Path | None = None, *, results: Path | None = None,
                     metrics: list[str] | None = None,
                     report_command: str | None = None) -> Path | None:
    """comparison.md, comparison.csv, best_so_far.csv and convergence.png in ``out_dir``
    (default ``tune_dir``) when ``tune_dir`` holds studies of one objective from two or
    more optimizers or seeds; None otherwise. With ``results`` (the folder whose tune/ it
    is), the test results of the untuned and the tuned runs beside it are added."""
    studies = load_studies(tune_dir)
    if not studies:
        return None
    objective, direction = studies[-1].objective, studies[-1].direction
    studies = [s for s in studies if (s.objective, s.direction) == (objective, direction)]
    if len(studies) < 2:
        return None
    out = Path(out_dir or tune_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(studies)
    atomic_text(out / "comparison.csv", table.to_csv(index=False))
    atomic_text(out / "best_so_far.csv", best_so_far_table(studies).to_csv(index=False))
    plot_head_to_head(out / "convergence.png", studies)
    better = "lower" if direction == "minimize" else "higher"
    tuned = [] if results is None else [
        Path(results).with_name(f"{Path(results).name}-tuned-{s.name}") for s in studies]
    lines = [f"# Tuning: the optimizers at equal budget ({direction} {objective} on the "
             "validation split)", "", *_commands(studies, tuned, report_command), "",
             f"Best {objective} found after all trials ({better} is better), over each optimizer's "
             "seeds; `mean best so far` averages the best-so-far curve over the trials (it "
             "rewards finding good values early); `trials to 1%`: the first trial within 1% of "
             "the study's own final best. The figure `convergence.png` draws the best so far "
             "against trials, the mean over seeds and their range.", "",
             "| optimizer | seeds | trials | final best (mean ± sd) | range | mean best so far "
             "| trials to 1% | seconds per study |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.optimizer} | {r.seeds} | {r.trials} | {_fmt(r.final_mean)} ± "
                     f"{_fmt(r.final_sd)} | {_fmt(r.final_min)} to {_fmt(r.final_max)} | "
                     f"{_fmt(r.mean_best_so_far)} | {_fmt(r.trials_to_1pct, 1)} | "
                     f"{r.seconds_per_study:.0f} |")
    lines += ["", "Each study's best parameters (a nested study: one set per outer split, "
              "each for that split's cells; its best is the mean of the splits' best):", "",
              "| study | scheme | seed | best | parameters |", "|---|---|---|---|---|"]
    for s in studies:
        per_split = s.best.get("per_split")
        params = (f"one set per split ({len(per_split)}), in best.json" if per_split else
                  " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (s.best.get("params") or {}).items()))
        lines.append(f"| {s.name} | {s.best.get('scheme', 'shared')} | {s.seed} | "
                     f"{_fmt(float(s.best.get('value', math.nan)))} | {params} |")
    whys = list(dict.fromkeys(s.best["why"] for s in studies if s.best.get("why")))
    if whys:
        lines += ["", "Where the studies scored: " + "; ".join(whys) + "."]
    if results is not None:
        metrics = metrics or ["accuracy", "balanced_accuracy", "roc_auc"]
        test = tuned_test_results([("untuned", Path(results)),
                                   *((s.name, f) for s, f in zip(studies, tuned))], metrics)
        if not test.empty:
            atomic_text(out / "tuned_test.csv", test.to_csv(index=False))
            lines += ["", "Test results of the final protocol (the real test split, mean ± sd "
                      "over its cells) with the untuned parameters and with each study's "
                      "(`medbench run SUITE --use-tuned STUDY`):", "",
                      "| parameters | arm | classifier | cells | "
                      + " | ".join(metrics) + " |",
                      "|---|---|---|---|" + "---|" * len(metrics)]
            for r in test.to_dict("records"):
                cols = " | ".join(f"{_fmt(r[m])} ± {_fmt(r[m + '_sd'])}" for m in metrics)
                lines.append(f"| {r['parameters']} | {r['arm']} | {r['classifier']} | "
                             f"{r['cells']} | {cols} |")
    atomic_text(out / "comparison.md", "\n".join(lines) + "\n")
    return out / "comparison.md"
