"""``report.html``: the whole report as one self-contained page.

No external files and no network: figures are embedded as base64 data URIs, the CSS is
inline and there is no script; a Content-Security-Policy forbids the page to load
anything but data: images. All text is escaped. Nothing depends on the time, so
rerunning the report rewrites the same bytes.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from .files import atomic_text
from .tables import (CALIBRATION_CAPTION, DIFF_CAPTION, EFFECT_CAPTION, MCNEMAR_CAPTION, _fmt,
                     effect_table, fidelity_table, significance_tables)

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
.head p { margin: .2em 0; color: #444; font-size: .92em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
.wrap { overflow-x: auto; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .88em; color: #444; }
.note { font-size: .9em; color: #444; }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# text columns, left-aligned
LEFT = {"arm", "classifier", "generator", "class", "level", "cell", "reason", "optimizer",
        "parameters", "seeds"}


def _code(text: str) -> str:
    """Escape, then show `backticked` parts as code (the Markdown header lines)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def table_html(t: pd.DataFrame) -> str:
    cols = [str(c) for c in t.columns]
    cls = [' class="l"' if c in LEFT else "" for c in cols]
    head = "".join(f"<th{k}>{html.escape(c)}</th>" for c, k in zip(cols, cls))
    body = "\n".join("<tr>" + "".join(f"<td{k}>{html.escape(_fmt(v))}</td>" for v, k in zip(row, cls))
                     + "</tr>" for row in t.itertuples(index=False))
    return f'<div class="wrap"><table>\n<tr>{head}</tr>\n{body}\n</table></div>'


def significance_html(sig: pd.DataFrame, mcn: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The tables of the Markdown report (tables.significance_tables), as HTML."""
    note, diff, mc = significance_tables(sig, mcn, metrics)
    out = [f'<p class="note">{_inline(note)}</p>', f"<p>{_inline(DIFF_CAPTION)}</p>",
           table_html(diff)]
    effects = effect_table(sig, metrics)
    if effects is not None:
        out += [f"<p>{_inline(EFFECT_CAPTION)}</p>", table_html(effects)]
    if mc is not None:
        out += [f"<p>{_inline(MCNEMAR_CAPTION)}</p>", table_html(mc)]
    return out


def _inline(text: str) -> str:
    """Escaped text with Markdown `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _tuning_html(folder: Path) -> list[str]:
    """The optimizers head to head: the comparison, the tuned runs' test results and the
    best-so-far figure (the files of tune/, which comparison.md describes)."""
    out = ["<h2>Tuning: the optimizers head to head</h2>",
           '<p class="note">Best objective found on the validation split after all trials, '
           "over each optimizer's seeds (see tune/comparison.md for the commands and each "
           "study's parameters).</p>", table_html(pd.read_csv(folder / "comparison.csv"))]
    tested = folder / "tuned_test.csv"
    if tested.is_file():
        out += ['<p class="note">Test results (mean and sd over the cells) with the untuned '
                "parameters and with each study's.</p>", table_html(pd.read_csv(tested))]
    png = folder / "convergence.png"
    if png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="best so far against '
                   'trials"><figcaption>Best so far against trials: the mean over seeds and '
                   'their range (tune/convergence.png).</figcaption></figure>')
    return out


# ------------------------------------------------------------------ page
def _figure(fig, report_dir: Path) -> str:
    data = base64.b64encode(fig.png.read_bytes()).decode("ascii")
    files = ", ".join(p.relative_to(report_dir).as_posix() for p in fig.paths
                      if p.suffix in (".png", ".pdf"))
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}">'
            f"<figcaption><b>{html.escape(fig.title)}.</b> {html.escape(fig.caption)} "
            f"<span class=\"note\">({html.escape(files)})</span></figcaption></figure>")


FIGURE_SECTIONS = [("confusion", "Confusion matrices"), ("curves", "ROC and precision-recall curves"),
                   ("gan", "Generators: losses, samples and real images"),
                   ("ablation", "Ablations")]


def write_html(path: Path, *, title: str, head: list[str], data_line: str | None, note: str,
               table: pd.DataFrame, sig: pd.DataFrame, mcn: pd.DataFrame, metrics: list[str],
               per_class: pd.DataFrame, failed: list[dict], fidelity: Path | None,
               arms: list[str], classes: list[str], figures: list, report_dir: Path,
               calibration: pd.DataFrame | None = None, tuning: Path | None = None) -> Path:
    """``tuning``: the report's tune/ folder, when it holds the optimizers' comparison
    (tune_report.write_comparison)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>", '<div class="head">']
    parts += [f"<p>{_code(line)}</p>" for line in head]
    if data_line:
        parts.append(f"<p>{_code(data_line)}</p>")
    parts += ["</div>", "<h2>Summary</h2>", f"<p>{_code(note)}</p>", table_html(table)]
    if calibration is not None and not calibration.empty:
        parts += ["<h2>Calibration</h2>", f"<p>{_inline(CALIBRATION_CAPTION)}</p>",
                  table_html(calibration)]
    if not sig.empty:
        parts += ["<h2>Significance against <code>none</code></h2>"]
        parts += significance_html(sig, mcn, metrics)
    if not per_class.empty:
        parts += ["<h2>Per-class recall (mean)</h2>", table_html(per_class)]
    if fidelity is not None:
        fid, extractors = fidelity_table(fidelity, arms, classes)
        if not fid.empty:
            parts += ["<h2>Fidelity of the synthetic images</h2>",
                      f"<p class=\"note\">From {html.escape(fidelity.name)}: mean over the "
                      "(seed, fold) runs per arm, generator and class. The held-out columns "
                      "compare synthetic images with real test images of their class that the "
                      "generator never saw, at matched n, beside as many real training images "
                      "against the same held-out images; KID leads (FID is biased upwards below "
                      "about 2,000 images). The copy rate is the share of synthetic images "
                      "nearer a training image than 95% of unseen real images are (about 0.05 "
                      "for new images, 1 for copies). The other columns compare with the real "
                      "training images of the class; the real-vs-real columns compare real "
                      "images only (see fidelity.json). Features: " + (html.escape(", ".join(extractors)) or "not stated")
                      + ".</p>", table_html(fid)]
    if tuning is not None and (tuning / "comparison.csv").is_file():
        parts += _tuning_html(tuning)
    if failed:
        parts += ["<h2>Failed cells</h2>", "<ul>"]
        parts += [f"<li>{html.escape(str(f.get('cell')))}: {html.escape(str(f.get('reason')))}</li>"
                  for f in failed]
        parts.append("</ul>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for kind, heading in FIGURE_SECTIONS:
            mine = [f for f in figures if f.kind == kind]
            if mine:
                parts.append(f"<h3>{html.escape(heading)}</h3>")
                parts += [_figure(f, report_dir) for f in mine]
    parts += ["</body>", "</html>", ""]
    atomic_text(path, "\n".join(parts))
    return path
