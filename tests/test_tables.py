"""medbench.tables: the report's table builders on small hand-made inputs, and the
import graph of the report modules (tables a leaf, no circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from medbench import tables

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"
REPORT_MODULES = ("report", "html", "figures", "ablation", "ablation_report", "tables",
                  "plotting")


def _imports(module: str) -> set[str]:
    """The medbench modules that ``module`` imports anywhere in its file (at the top or
    inside a function), by their name within the package."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("medbench"):
                parts = node.module.split(".")
                out.add(parts[1] if len(parts) > 1 else "")
                if len(parts) == 1:
                    out.update(a.name for a in node.names)
            elif node.level == 1:
                if node.module:
                    out.add(node.module.split(".")[0])
                else:                                   # from . import x
                    out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("medbench."))
    return out - {""}


def test_tables_imports_no_other_report_module():
    found = _imports("tables") & set(REPORT_MODULES)
    assert found == set(), f"tables.py imports {sorted(found)}"


def test_report_modules_import_no_circle():
    graph = {m: _imports(m) & set(REPORT_MODULES) for m in REPORT_MODULES}
    assert "ablation" not in graph["ablation_report"] and "report" not in graph["ablation_report"]
    assert "report" not in graph["figures"] and "report" not in graph["html"]
    assert "runner" not in _imports("ablation_report")

    state: dict[str, int] = {}          # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import circle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in REPORT_MODULES:
        if m not in state:
            visit(m, [])


def _results() -> pd.DataFrame:
    """A results table of two arms, one classifier, one seed and two folds."""
    rows = []
    order = 0
    for arm, accs in (("none", (0.6, 0.8)), ("my_gan", (0.9, 0.9))):
        for fold, acc in enumerate(accs):
            rows.append({"arm": arm, "classifier": "cnn", "seed": 0, "fold": fold,
                         "metric": "accuracy", "class": "", "value": acc, "cell_order": order})
            for cls, rec in (("a", 0.5), ("b", acc)):
                rows.append({"arm": arm, "classifier": "cnn", "seed": 0, "fold": fold,
                             "metric": "recall", "class": cls, "value": rec,
                             "cell_order": order})
            order += 1
    return pd.DataFrame(rows)


def test_summary_wide_marked_and_text_tables():
    df = _results()
    summary = tables.summarize(df, ["accuracy"])
    assert list(summary["arm"]) == ["none", "my_gan"]         # in run order
    assert list(summary["n"]) == [2, 2]
    assert np.allclose(summary["mean"], [0.7, 0.9])
    assert np.allclose(summary["std"], [np.sqrt(0.02), 0.0])
    wide = tables.wide(summary)
    assert list(wide.columns) == ["arm", "classifier", "runs", "ACC"]
    assert list(wide["ACC"]) == ["0.7000 ± 0.1414", "0.9000 ± 0.0000"]
    sig = pd.DataFrame([{"arm": "my_gan", "classifier": "cnn", "metric": "accuracy",
                         "mark": "*"}])
    table = tables.marked(wide, sig)
    assert list(table["ACC"]) == ["0.7000 ± 0.1414", "0.9000 ± 0.0000 *"]
    assert tables.md_table(table) == (
        "| arm | classifier | runs | ACC |\n|---|---|---|---|\n"
        "| none | cnn | 2 | 0.7000 ± 0.1414 |\n| my_gan | cnn | 2 | 0.9000 ± 0.0000 * |")
    tex = tables.latex_table(table, "a 50% caption")
    assert r"\caption{a 50\% caption}" in tex and r"\begin{tabular}{llrr}" in tex
    assert r"my\_gan & cnn & 2 & 0.9000 $\pm$ 0.0000 * \\" in tex
    pc = tables.per_class(df)
    assert list(pc.columns) == ["arm", "classifier", "a", "b"]
    assert np.allclose(pc["b"], [0.7, 0.9])


def test_minority_recall_is_the_recall_of_the_smallest_class():
    df = _results()
    out, minority = tables.with_minority_recall(df, {"classes": ["a", "b"], "counts": [9, 4]})
    assert minority == "b"
    rows = out[out["metric"] == "minority_recall"]
    assert list(rows["class"]) == [""] * 4
    assert np.allclose(rows["value"], [0.6, 0.8, 0.9, 0.9])
    assert tables.with_minority_recall(df, {}) == (df, None)


def test_minority_column_follows_the_positive_class_of_a_binary_task():
    df = _results()
    data = {"classes": ["a", "b"], "counts": [9, 4], "positive_class": "a"}
    out, minority = tables.with_minority_recall(df, data)
    assert minority == "a"
    assert np.allclose(out.loc[out["metric"] == "minority_recall", "value"], [0.5] * 4)


def _sized_results(seeds=3, folds=3, fixed=False) -> pd.DataFrame:
    """none and gan over seeds x folds, accuracy, ECE and the split sizes; gan better by
    0.02 to 0.04 in every run."""
    rng = np.random.default_rng(0)
    rows, order = [], 0
    for seed in range(seeds):
        for fold in range(folds):
            base = 0.7 + rng.normal(0, 0.02)
            for arm, acc in (("none", base), ("gan", base + rng.uniform(0.02, 0.04))):
                for metric, value in (("accuracy", acc), ("ece", 1 - acc)):
                    rows.append({"arm": arm, "classifier": "cnn", "seed": seed, "fold": fold,
                                 "metric": metric, "class": "", "value": value,
                                 "cell_order": order, "n_test": 30, "n_train_real": 54,
                                 "n_val": 6})
                order += 1
    return pd.DataFrame(rows)


def test_the_corrected_t_test_leads_and_the_report_says_why():
    from medbench import stats
    df = _sized_results()
    sig = tables.significance(df, ["accuracy"])
    row = sig.iloc[0]
    assert row["method"] == "corrected_t" and row["test_train_ratio"] == 0.5
    want = stats.compare_to_baseline(df, "accuracy", method="corrected_t")
    assert row["p_adjusted"] == want["p_adjusted"].iloc[0]
    assert row["p_wilcoxon"] == stats.compare_to_baseline(df, "accuracy")["p_value"].iloc[0]
    note, diff, _ = tables.significance_tables(sig, pd.DataFrame(), ["accuracy"])
    assert note.startswith("Marks: corrected resampled t-test") and "n_test/n_train = 0.5" in note
    assert "[" in diff["ACC"].iloc[0] and f"p {tables._p(row['p_adjusted'])}" in diff["ACC"].iloc[0]
    effects = tables.effect_table(sig, ["accuracy"])
    assert effects["ACC"].iloc[0].startswith("+1.00 (p ")
    # one split repeated over seeds: the plain t-test over seeds, said to be conditional
    fixed = tables.significance(_sized_results(folds=1), ["accuracy"], fixed_test=True)
    assert fixed["test_train_ratio"].iloc[0] == 0.0
    note, _, _ = tables.significance_tables(fixed, pd.DataFrame(), ["accuracy"])
    assert "same images" in note and "seed-to-seed" in note
    # older results without the split sizes: Wilcoxon leads, as before
    old = tables.significance(df.drop(columns=["n_test"]), ["accuracy"])
    assert set(old["method"]) == {"wilcoxon"}
    assert tables.significance_tables(old, pd.DataFrame(), ["accuracy"])[0].startswith(
        "Marks: paired Wilcoxon")
    assert tables.effect_table(old, ["accuracy"]) is None


def test_calibration_table_and_lower_is_better_direction():
    df = _sized_results()
    cal = tables.calibration_table(df)
    assert list(cal.columns) == ["arm", "classifier", "runs", "ECE"]
    assert tables.calibration_table(_results()).empty
    sig = tables.significance(df, ["ece"])
    assert list(sig["direction"]) == ["better"]         # a smaller ECE is an improvement


def test_fidelity_table_means_over_runs_in_arm_and_class_order(tmp_path):
    path = tmp_path / "fidelity.csv"
    path.write_text("# made by a test\n"
                    "arm,generator,class,seed,fold,n_real,fid,kid_mean,extractor\n"
                    "late,g,y,0,0,8,1500,0.0123456,inc\n"
                    "late,g,y,0,1,8,2500,0.0123456,inc\n"
                    "early,g,y,0,0,6,10,nan,inc\n"
                    "early,g,x,0,0,6,20,0.5,other\n", encoding="utf-8")
    table, extractors = tables.fidelity_table(path, ["early", "late"], ["x", "y"])
    assert extractors == ["inc", "other"]
    assert list(table.columns) == ["arm", "generator", "class", "runs", "real images", "FID",
                                   "KID"]
    assert table.values.tolist() == [["early", "g", "x", 1, "6", "20", "0.5"],
                                     ["early", "g", "y", 1, "6", "10", "n/a"],
                                     ["late", "g", "y", 2, "8", "2000.0", "0.01235"]]
