"""Whole-suite costs of the engine, measured side by side in one session on the shipped
quick suite (10 arms incl. five GANs; a cold cache per run; see ``quick_runs`` in
tests/conftest.py):

- a rerun of the finished suite (3 folds, ``--jobs 2``) against its first run (target:
  under 3%);
- on its smoke profile (1 fold, 2 epochs; the whole suite with MEDBENCH_PERF_FULL=1),
  one torch thread per cell: ``--jobs 2`` (processes) against ``--jobs 1``, and the Ray
  executor against the processes executor at the same ``--jobs`` (what Ray itself
  costs, its start included) and against local. The smoke profile is mostly start-up
  (workers importing torch, Ray starting), so it shows overheads; the whole suite shows
  the speed-up.

Run alone with:  python -m pytest tests/perf/test_run_overhead.py -s -q
"""

import os
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from medbench.cli import cli

from conftest import ROOT

pytestmark = [pytest.mark.perf, pytest.mark.slow]

PROFILE = "whole" if os.environ.get("MEDBENCH_PERF_FULL") == "1" else "smoke profile"
METRIC_COLS = ["arm", "classifier", "seed", "fold", "metric", "class", "value"]


def test_rerun_of_a_finished_quick_suite_costs_under_3_percent(quick_runs, monkeypatch):
    out, first = quick_runs("full")
    monkeypatch.setenv("MEDBENCH_CACHE", str(out.parent / "cache"))
    before = pd.read_parquet(out / "results.parquet")
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["run", str(ROOT / "suites" / "quick.yaml"), "--out", str(out),
                                 "-q", "--jobs", "2"])
    rerun = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "results.parquet"))
    ratio = rerun / first
    print(f"\n[perf] quick suite: first run {first:.1f} s, rerun of the finished suite "
          f"{rerun:.2f} s")
    print(f"rerun ratio (rerun / first run): {ratio:.4f} (target < 0.03)")
    assert ratio < 0.03


def test_jobs_2_against_jobs_1(quick_runs):
    local, t1 = quick_runs("smoke-local")
    procs, t2 = quick_runs("smoke-processes")
    pd.testing.assert_frame_equal(pd.read_parquet(local / "results.parquet")[METRIC_COLS],
                                  pd.read_parquet(procs / "results.parquet")[METRIC_COLS])
    print(f"\n[perf] quick suite ({PROFILE}), 1 thread per cell: --jobs 1 {t1:.1f} s, --jobs 2 "
          f"(processes) {t2:.1f} s")
    print(f"speed-up --jobs 2 / --jobs 1: {t1 / t2:.2f}x")   # printed, not asserted: timing


def test_ray_executor_overhead(quick_runs):
    pytest.importorskip("ray")
    _, t_local = quick_runs("smoke-local")
    _, t_procs = quick_runs("smoke-processes")
    _, t_ray = quick_runs("smoke-ray")
    print(f"\n[perf] quick suite ({PROFILE}), 1 thread per cell: local {t_local:.1f} s, processes "
          f"--jobs 2 {t_procs:.1f} s, ray --jobs 2 {t_ray:.1f} s (Ray started and stopped "
          "inside the run)")
    print(f"ray overhead (ray / processes at --jobs 2): {t_ray / t_procs:.3f}; "
          f"ray --jobs 2 / local: {t_ray / t_local:.3f}")       # printed, not asserted: timing
