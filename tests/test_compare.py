"""``medbench compare``: arms ranked across datasets, tested as Demšar (2006) does, and
written as Markdown, LaTeX and HTML with a critical-difference diagram."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from medbench.cli import cli
from medbench.compare import cliques, compare

# mean balanced accuracy of arms a..d on six datasets; "e" is in four of them only
VALUES = {
    "d1": {"a": 0.80, "b": 0.78, "c": 0.75, "d": 0.70, "e": 0.60},
    "d2": {"a": 0.66, "b": 0.67, "c": 0.60, "d": 0.55, "e": 0.50},
    "d3": {"a": 0.90, "b": 0.85, "c": 0.86, "d": 0.80},
    "d4": {"a": 0.71, "b": 0.70, "c": 0.69, "d": 0.72, "e": 0.40},
    "d5": {"a": 0.55, "b": 0.50, "c": 0.50, "d": 0.45},
    "d6": {"a": 0.93, "b": 0.91, "c": 0.90, "d": 0.89, "e": 0.95},
}


def report_folder(root, name, values: dict, classifiers=("smallcnn",), metric="balanced_accuracy"):
    """A report folder as `medbench report` writes it: summary.csv with its header."""
    folder = root / name
    folder.mkdir(parents=True)
    rows = [{"arm": a, "classifier": c, "metric": m, "mean": v + (0.01 * i if m != metric else 0),
             "std": 0.01, "n": 3, "ci95_low": v - 0.02, "ci95_high": v + 0.02}
            for a, v in values.items() for i, c in enumerate(classifiers)
            for m in ("accuracy", metric)]
    (folder / "summary.csv").write_text(
        f"# Made by: `medbench run suites/{name}.yaml` then `medbench report results/{name}`\n"
        "# Suite ...\n" + pd.DataFrame(rows).to_csv(index=False))
    return folder


def folders(root, names=VALUES):
    return [report_folder(root, n, VALUES[n]) for n in names]


def test_ranks_friedman_and_nemenyi_match_scipy_and_demsar(tmp_path):
    c = compare(folders(tmp_path))
    assert c.arms[0] == "a" and set(c.arms) == {"a", "b", "c", "d"}
    assert c.dropped == {"e": ["d3", "d5"]}
    table = np.array([[VALUES[d][a] for a in "abcd"] for d in VALUES])
    ranks = np.array([stats.rankdata(-row) for row in table])
    assert np.allclose(c.mean_ranks[list("abcd")].to_numpy(), ranks.mean(0))
    assert c.ranks.loc["d5", "b"] == c.ranks.loc["d5", "c"] == 2.5       # a tie shares
    chi2, p = stats.friedmanchisquare(*table.T)
    assert math.isclose(c.chi2, chi2) and math.isclose(c.p_friedman, p)
    n, k = table.shape
    assert math.isclose(c.f_iman, (n - 1) * chi2 / (n * (k - 1) - chi2))
    # Demšar's table 5: q_0.05 = 2.569 for four arms, so CD = 2.569 sqrt(k (k+1) / 6N)
    assert math.isclose(c.cd, 2.569 * math.sqrt(k * (k + 1) / (6 * n)), rel_tol=1e-3)
    # a pair's Nemenyi p-value: its rank difference in the studentized range distribution
    diff = abs(c.mean_ranks["a"] - c.mean_ranks["d"])
    q = diff / math.sqrt(k * (k + 1) / (6 * n)) * math.sqrt(2)
    assert math.isclose(c.p_nemenyi.loc["a", "d"], stats.studentized_range.sf(q, k, np.inf),
                        rel_tol=1e-6)
    assert (c.p_nemenyi.loc["a", "d"] < 0.05) == (diff > c.cd)
    assert c.p_nemenyi.loc["b", "b"] == 1.0


def test_cliques_are_the_maximal_runs_within_the_critical_difference():
    ranks = pd.Series({"a": 1.0, "b": 1.5, "c": 2.4, "d": 3.6, "e": 3.8})
    assert cliques(ranks, 1.0) == [["a", "b"], ["b", "c"], ["d", "e"]]
    assert cliques(ranks, 3.0) == [["a", "b", "c", "d", "e"]]
    assert cliques(ranks, 0.1) == []


def test_a_metric_where_less_is_better_ranks_the_lowest_first(tmp_path):
    roots = [report_folder(tmp_path, n, VALUES[n], metric="test_loss") for n in VALUES]
    c = compare(roots, "test_loss")
    assert not c.higher_is_better and c.arms[-1] == "a"
    assert compare(roots, "test_loss", higher_is_better=True).arms[0] == "a"


def test_the_page_in_three_formats_is_made_by_one_command_and_rewritten_byte_for_byte(
        tmp_path, monkeypatch):
    roots = folders(tmp_path, ["d1", "d2", "d3"])
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "page"
    args = ["compare", *map(str, roots), "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cd_diagram.pdf", "cd_diagram.png", "compare.csv", "compare.html",
                     "compare.md", "compare.tex"]
    md = (out / "compare.md").read_text()
    assert md.splitlines()[2] == "Made by: `medbench compare d1 d2 d3 --out page`"
    assert str(tmp_path) not in md + (out / "compare.html").read_text() + \
        (out / "compare.tex").read_text()
    assert "| arm | mean rank | d1 | d2 | d3 |" in md
    assert "Only 3 datasets: with fewer than 5 the Friedman test has little power" in md
    assert "`e` (not in d3)" in md and "Friedman test over 3 datasets and 4 arms" in md
    assert "`medbench run suites/d1.yaml`" in md          # each folder's own provenance
    html = (out / "compare.html").read_text()
    assert "data:image/png;base64," in html and "Content-Security-Policy" in html
    assert r"\includegraphics" in (out / "compare.tex").read_text()
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    # six datasets: no warning on power
    r = CliRunner().invoke(cli, ["compare", *map(str, folders(tmp_path / "six")), "--out",
                                 str(tmp_path / "six-page"), "--format", "md"])
    assert r.exit_code == 0, r.output
    assert "little power" not in (tmp_path / "six-page" / "compare.md").read_text()


def test_a_results_folder_is_read_from_its_cells_without_writing_to_it(tmp_path):
    rows = []
    for order, (arm, v) in enumerate({"a": 0.9, "b": 0.8, "c": 0.7}.items()):
        for seed in (0, 1):
            rows.append({"arm": arm, "classifier": "smallcnn", "seed": seed, "fold": 0,
                         "metric": "balanced_accuracy", "class": "", "value": v + 0.01 * seed,
                         "cell_order": 2 * order + seed})
    res = tmp_path / "results" / "r1"
    (res / "cells").mkdir(parents=True)
    for i, row in enumerate(rows):
        pd.DataFrame([row]).to_parquet(res / "cells" / f"cell{i}.parquet", index=False)
    before = sorted(p.name for p in res.rglob("*"))
    other = report_folder(tmp_path, "r2", {"a": 0.5, "b": 0.6, "c": 0.4})
    c = compare([res, other])
    assert c.values.loc["r1"].round(3).to_dict() == {"a": 0.905, "b": 0.805, "c": 0.705}
    assert c.datasets[0].kind == "results"
    assert sorted(p.name for p in res.rglob("*")) == before


@pytest.mark.parametrize("make,expected", [
    (lambda t: [report_folder(t, "x", VALUES["d1"])], "at least 2 folders"),
    (lambda t: [report_folder(t, "x", {"a": 1, "b": 2, "c": 3}),
                report_folder(t, "y", {"a": 1, "b": 2, "z": 3})],
     "needs at least 3 arms common to every folder; these have 2 in common (a, b)"),
    (lambda t: folders(t, ["d1", "d2"]) + [t / "missing"], "is not a folder"),
    (lambda t: folders(t, ["d1", "d2"]) + [(t / "empty").mkdir() or t / "empty"],
     "holds neither results"),
])
def test_what_compare_cannot_rank_is_refused_in_one_line(tmp_path, make, expected):
    r = CliRunner().invoke(cli, ["compare", *map(str, make(tmp_path)), "--out",
                                 str(tmp_path / "page")])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "page").exists()


def test_an_unknown_metric_names_the_metrics_there_are(tmp_path):
    r = CliRunner().invoke(cli, ["compare", *map(str, folders(tmp_path, ["d1", "d2"])),
                                 "--metric", "kappa", "--out", str(tmp_path / "page")])
    assert r.exit_code == 2
    assert "no metric 'kappa'; it has accuracy, balanced_accuracy" in r.stderr
