"""Tables from a results folder: mean +- std over folds and seeds per arm and classifier.

This module writes the report's files (summary.md, .csv, .tex, significance.csv, and
through ``figures`` and ``html`` the figures and report.html); the tables themselves are
built in ``tables``.

Output is deterministic (no timestamps), so rerunning ``medbench report`` on the same
results gives the same files byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .figures import write_figures
from .files import atomic_text, portable_path
from .html import write_html
from .store import ResultsStore
from .tables import (CALIBRATION, CALIBRATION_CAPTION, DIFF_CAPTION, EFFECT_CAPTION,
                     MCNEMAR_CAPTION, calibration_table, effect_table, fidelity_table,
                     fixed_test_set, header_lines, latex_table, marked, mcnemar_table, md_table,
                     per_class, significance, significance_tables, summarize,
                     synthetic_only_arms, wide, with_minority_recall)
from .tune_report import write_comparison


def _significance_md(sig: pd.DataFrame, mcn: pd.DataFrame, metrics: list[str]) -> list[str]:
    note, diff, mc = significance_tables(sig, mcn, metrics)
    out = [note, "", DIFF_CAPTION, "", md_table(diff), ""]
    effects = effect_table(sig, metrics)
    if effects is not None:
        out += [EFFECT_CAPTION, "", md_table(effects), ""]
    if mc is not None:
        out += [MCNEMAR_CAPTION, "", md_table(mc), ""]
    return out


def _fidelity_md(results_dir: Path, df: pd.DataFrame, data: dict) -> list[str]:
    """The image-quality table when `medbench fidelity` has written fidelity.csv."""
    path = results_dir / "fidelity.csv"
    if not path.is_file():
        return []
    arms = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
    table, extractors = fidelity_table(path, arms, list(data.get("classes") or []))
    if table.empty:
        return []
    made_by = ""
    meta = results_dir / "fidelity.json"
    if meta.is_file():
        command = json.loads(meta.read_text()).get("command")
        made_by = f" Made by: `{command}`." if command else ""
    return ["Image quality of the synthetic images (`medbench fidelity`; mean over runs). "
            "Held out: each arm's images against real test images of the class that the "
            "generator never saw, at matched n, beside as many real training images against "
            "the same held-out images (the floor at that n); KID leads, since FID is biased "
            "upwards below about 2,000 images. Copy rate: the share of synthetic images "
            "nearer a training image than 95% of unseen real images are (about 0.05 for new "
            "images, 1 for copies). Then the older protocol: against the real training "
            "images of the class, and real training vs real test images (real vs real) for "
            "scale. Extractor: " + "; ".join(extractors) + "." + made_by, "", md_table(table), ""]


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
    sig = significance(df, metrics, fixed_test=fixed_test_set(store, df))
    mcn = mcnemar_table(store, df)
    calibration = calibration_table(df)
    table = marked(wide(summary), sig)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    head = header_lines(manifest, results_dir, df)
    figures = []
    if "md" in formats or "html" in formats:
        figures = write_figures(results_dir, out_dir, store, df, data)
        written += [p for f in figures for p in f.paths]
    data_line = None
    if data:
        counts = ", ".join(f"{c} {n}" for c, n in zip(data["classes"], data["counts"]))
        data_line = (f"Data: {data['loader']} ({data['images']} images: {counts}; "
                     f"{data['image_size']} px, {data['channels']} channel(s)); duplicates: "
                     f"{data['duplicates_summary']}.")
        data_line = data_line[:-1] + data_extras(data) + "."
        if data.get("dropped_classes"):
            data_line = data_line[:-1] + "; classes left out (`dataset.drop_classes`): " + ", ".join(
                f"{c} ({n} image(s) after duplicates)" for c, n in data["dropped_classes"].items()) + "."
    splits = df.groupby(["seed", "fold"]).ngroups
    note = (f"Mean ± standard deviation over {splits} (seed, fold) run(s) on the real "
            "test fold(s); 95% confidence intervals of the means are in summary.csv." + (f" Minority recall: recall of `{minority}`, the "
                               "smallest class." if minority else ""))
    if data.get("positive_class"):
        # binary tasks: PR-AUC, the tuned threshold and the minority column are about it
        note = note.replace(", the smallest class.", ", the positive class.") + (
            f" Positive class (PR-AUC, F1-tuned threshold): `{data['positive_class']}`.")
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
        if not calibration.empty:
            parts += [CALIBRATION_CAPTION, "", md_table(calibration), ""]
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
        # the calibration metrics too, whether or not report.metrics names them
        rows = summarize(df, metrics + [m for m in CALIBRATION if m not in metrics])
        csv = "# " + "\n# ".join(head) + "\n" + rows.to_csv(index=False, float_format="%.6f")
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
        if not calibration.empty:
            tex += "\n" + latex_table(calibration, f"{manifest.get('suite')}: calibration "
                                      "(ECE, Brier; lower is better), mean ± std")
        atomic_text(p, tex)
        written.append(p)
    # the optimizers head to head, when the folder holds studies of several (medbench tune)
    tuning = None
    if (results_dir / "tune").is_dir():
        made = write_comparison(results_dir / "tune", out_dir / "tune", results=results_dir,
                                metrics=metrics, report_command=f"medbench report "
                                                                 f"{portable_path(results_dir)}")
        if made is not None:
            written.append(made)
            tuning = made.parent
    if "html" in formats:
        fidelity = results_dir / "fidelity.csv"
        arms = list(dict.fromkeys(df.sort_values("cell_order")["arm"]))
        written.append(write_html(
            out_dir / "report.html", title=f"{manifest.get('suite')}: results", head=head,
            data_line=data_line, note=note, table=table, sig=sig, mcn=mcn, metrics=metrics,
            calibration=calibration,
            per_class=per_class(df, "recall"), failed=store.failures(),
            fidelity=fidelity if fidelity.is_file() else None, arms=arms,
            classes=list(data.get("classes") or []), figures=figures, report_dir=out_dir,
            tuning=tuning))
    return written


def data_extras(data: dict) -> str:
    """The data line's words on near-duplicates and groups, when the suite asked for them
    (empty otherwise, so older data reports read as before)."""
    out = ""
    if data.get("near_duplicates_summary"):
        out += f"; near-duplicates: {data['near_duplicates_summary']}"
    if data.get("groups_summary"):
        out += f"; groups (folds keep each whole): {data['groups_summary']}"
    return out
