"""End to end: run, determinism, resume after SIGKILL, reports."""

import os
import re
import signal
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from medbench.cli import cli

from conftest import tiny_suite

METRIC_COLS = ["arm", "classifier", "seed", "fold", "metric", "class", "value"]


def _run(suite_path, out, *extra, cache=None):
    """``cache``: a cache folder of its own (a cold start), instead of the test's."""
    env = {"MEDBENCH_CACHE": str(cache)} if cache else {}
    r = CliRunner(env=env).invoke(cli, ["run", str(suite_path), "--out", str(out), "--quiet",
                                        *extra])
    assert r.exit_code == 0, r.output
    return r


def test_run_writes_tidy_results_and_prints_summary(write_suite, tmp_path):
    out = tmp_path / "res"
    r = _run(write_suite(tiny_suite()), out)
    assert "mean ± std" in r.stdout and "oversample" in r.stdout
    df = pd.read_parquet(out / "results.parquet")
    for col in METRIC_COLS + ["suite", "suite_hash", "git_commit", "torch_version", "device",
                              "medbench_version", "n_synthetic", "n_train_real"]:
        assert col in df.columns
    assert set(df.arm) == {"none", "oversample"} and set(df.fold) == {0, 1, 2}
    acc = df[df.metric == "accuracy"]
    assert len(acc) == 6 and acc.value.between(0, 1).all()
    assert (df[df.arm == "none"].n_synthetic == 0).all()
    assert (df[df.arm == "oversample"].n_synthetic > 0).all()
    csv = pd.read_csv(out / "results.csv", keep_default_na=False)
    assert len(csv) == len(df)


def test_same_seed_same_numbers(write_suite, tmp_path):
    path = write_suite(tiny_suite())
    _run(path, tmp_path / "a")
    _run(path, tmp_path / "b", cache=tmp_path / "cold")    # computed again, not reused
    a = pd.read_parquet(tmp_path / "a" / "results.parquet")[METRIC_COLS]
    b = pd.read_parquet(tmp_path / "b" / "results.parquet")[METRIC_COLS]
    pd.testing.assert_frame_equal(a, b)


def test_rerun_skips_finished_cells_and_changed_config_is_refused(write_suite, tmp_path):
    out = tmp_path / "res"
    path = write_suite(tiny_suite())
    _run(path, out)
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")}
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert r.exit_code == 0 and "6 of 6 cells already done" in r.stderr
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")}
    changed = tiny_suite(training={"epochs": 3, "batch_size": 16})
    r = CliRunner().invoke(cli, ["run", str(write_suite(changed, "changed.yaml")), "--out", str(out)])
    assert r.exit_code == 2 and "different configuration" in r.stderr
    assert len(list((out / "cells").glob("*.parquet"))) == 6


def test_sigkill_mid_suite_then_resume_equals_uninterrupted(write_suite, tmp_path):
    suite = tiny_suite(arms=[{"name": "none"}, {"name": "class-weights", "class_weights": True},
                             {"name": "oversample", "generator": "oversample"}])
    path = write_suite(suite)
    _run(path, tmp_path / "full", cache=tmp_path / "cold")  # its cells are not reused below
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medbench", "run", str(path), "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    done_lines = 0
    for line in proc.stderr:                 # blocks on the child's output, no sleeping
        if "] done " in line:
            done_lines += 1
            if done_lines == 4:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = len(list((out / "cells").glob("*.parquet")))
    assert 4 <= finished < 9
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert r.exit_code == 0
    assert f"{finished} of 9 cells already done" in r.stderr
    a = pd.read_parquet(tmp_path / "full" / "results.parquet")[METRIC_COLS]
    b = pd.read_parquet(out / "results.parquet")[METRIC_COLS]
    pd.testing.assert_frame_equal(a, b)


def test_report_writes_tables_and_regenerates_identically(write_suite, tmp_path):
    out = tmp_path / "res"
    _run(write_suite(tiny_suite()), out)
    rep = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["report", str(out), "--out", str(rep)])
    assert r.exit_code == 0, r.output
    md = (rep / "summary.md").read_text()
    # the command that made it, with the data root when MEDBENCH_DATA is set (as in CI)
    assert re.match(r"Made by: `(MEDBENCH_DATA=\S+ )?medbench run \S*suite\.yaml` then "
                    r"`medbench report \S+`", md.splitlines()[2]), md.splitlines()[2]
    assert "| oversample | smallcnn | 3 |" in md and "±" in md
    assert re.search(r"device cpu, \d+ torch thread\(s\) per cell\.$", md.splitlines()[3])
    assert r"\toprule" in (rep / "summary.tex").read_text()
    # significance against `none`: the corrected resampled t-test over the 3 folds leads,
    # the Wilcoxon test and McNemar on the pooled test predictions beside it, the same
    # numbers as medbench.stats gives on the results
    assert "Marks: corrected resampled t-test" in md and "McNemar's test against `none`" in md
    assert "Rank effect size" in md and "Calibration on the real test fold(s)" in md
    sig = pd.read_csv(rep / "significance.csv", comment="#", nrows=4)
    from medbench.stats import compare_to_baseline
    df = pd.read_parquet(out / "results.parquet")
    want = compare_to_baseline(df, "accuracy", method="corrected_t")
    got = sig[(sig.metric == "accuracy") & (sig.arm == "oversample")]
    assert got.p_adjusted.iloc[0] == pytest.approx(want.p_adjusted.iloc[0], rel=1e-5)
    assert got.p_wilcoxon_adjusted.iloc[0] == pytest.approx(
        compare_to_baseline(df, "accuracy").p_adjusted.iloc[0], rel=1e-5)
    assert got.n_pairs.iloc[0] == 3
    # every cell was selected by the same rule, recorded in its rows
    assert set(df.selection) == {"balanced_loss"}
    # figures (PNG and PDF) and report.html come with the tables by default
    assert (rep / "report.html").is_file()
    assert {p.name for p in (rep / "figures").iterdir()} >= {
        "confusion-smallcnn.png", "confusion-smallcnn.pdf", "roc-pr-smallcnn.png",
        "roc-pr-smallcnn.pdf"}

    def files():
        return {p.relative_to(rep): p.read_bytes() for p in rep.rglob("*") if p.is_file()}
    first = files()
    CliRunner().invoke(cli, ["report", str(out), "--out", str(rep)])
    assert first == files()


def test_report_on_missing_folder_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "not found" in r.stderr


def test_unwritable_output_is_a_clear_error(write_suite, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(cli, ["run", str(write_suite(tiny_suite())), "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and "cannot write results" in r.stderr


@pytest.mark.slow
def test_quick_suite_runs_offline_and_beats_chance(quick_runs):
    out, _ = quick_runs("full")
    df = pd.read_parquet(out / "results.parquet")
    mean = df[df["class"] == ""].groupby(["metric", "arm"]).value.mean()
    # 3 classes, 6:2:1: a majority-class guess has balanced accuracy 1/3 and AUC 0.5
    assert (mean["balanced_accuracy"] > 0.45).all(), mean["balanced_accuracy"]
    assert (mean["roc_auc"] > 0.7).all(), mean["roc_auc"]


def test_git_commit_is_dirty_for_changed_code_but_not_for_written_reports(tmp_path):
    from medbench.provenance import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "reports").mkdir()
    (tmp_path / "benchmark" / "engine.py").write_text("x = 1\n")
    (tmp_path / "reports" / "summary.md").write_text("old table\n")
    git("add", ".")
    git("commit", "-q", "-m", "c")
    here = tmp_path / "benchmark"
    clean = git_commit(here)
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "reports" / "summary.md").write_text("a regenerated table\n")
    assert git_commit(here) == clean              # medbench's own output: still clean
    (tmp_path / "benchmark" / "engine.py").write_text("x = 2\n")
    assert git_commit(here) == clean + "-dirty"


def test_recorded_command_names_medbench_data_relative_to_the_working_folder(tmp_path,
                                                                              monkeypatch):
    from medbench.cli import _command_line
    work, data = tmp_path / "checkout", tmp_path / "shared" / "data"
    work.mkdir()
    data.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MEDBENCH_DATA", str(data))             # an absolute path of this machine
    line = _command_line("run", "suites/x.yaml")
    assert line == "MEDBENCH_DATA=../shared/data medbench run suites/x.yaml"
    assert str(tmp_path) not in line
    monkeypatch.setenv("MEDBENCH_DATA", "../shared/data")      # already relative: kept
    assert _command_line("run", "s.yaml").startswith("MEDBENCH_DATA=../shared/data ")


def test_no_header_names_an_absolute_path_of_the_machine(tmp_path, monkeypatch):
    from medbench.cli import _command_line
    from medbench.files import portable_path
    from medbench.tables import header_lines
    work = tmp_path / "a" / "b" / "checkout"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    # a suite and a results folder given as absolute paths: written relative to the
    # working folder, as a user would type them there
    line = _command_line("run", str(work / "suites" / "x.yaml"), "--out", work / "results" / "x")
    assert line.endswith("medbench run suites/x.yaml --out results/x")
    monkeypatch.setenv("MEDBENCH_DATA", "/srv/someone/medical/data")   # far from the checkout
    line = _command_line("run", "suites/x.yaml")
    assert line == "MEDBENCH_DATA=data medbench run suites/x.yaml", line
    assert _command_line("compare", "r1", data=False) == "medbench compare r1"
    assert portable_path(tmp_path / "a" / "shared") == "../../shared"
    head = header_lines({"suite_path": str(work / "suites" / "x.yaml"), "suite": "x"},
                        work / "results" / "x")
    assert head[0] == "Made by: `medbench run suites/x.yaml` then `medbench report results/x`"
    assert str(tmp_path) not in "\n".join(head)
