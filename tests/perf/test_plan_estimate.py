"""The plan's calibrated estimate against the measured wall time of the shipped quick
suite on a cold cache: the ratio is printed; within a factor of 2 is useful.

The run is the session's ``quick_runs`` (tests/conftest.py, shared with
test_run_overhead.py and test_executors.py): by default the whole suite with ``--jobs
2`` (3 folds, ten arms, five GANs); MEDBENCH_PERF_PROFILE=smoke takes the smoke profile's
run with one thread instead (one fold, 2 epochs: minutes where the whole suite takes too
long). That run measured its own calibration (its cache was cold), so the plan here is
made from the timings it left in the cache, as on a cold cache and an empty folder, with
the run's jobs and threads; the run's wall time less its calibration is what the
estimate is compared with.

Run alone with:  python -m pytest tests/perf/test_plan_estimate.py -s -q
"""

import json
import os

import pandas as pd
import pytest

from medbench.cache import Cache
from medbench.engine import load_dataset
from medbench.plan import human_seconds, make_plan
from medbench.suite import load_suite

from conftest import QUICK_WAYS, ROOT

pytestmark = [pytest.mark.perf, pytest.mark.slow]

WAY = "smoke-local" if os.environ.get("MEDBENCH_PERF_PROFILE") == "smoke" else "full"


def _option(args: list[str], name: str):
    return args[args.index(name) + 1] if name in args else None


def test_estimate_of_the_quick_suite_against_its_run(quick_runs, monkeypatch, tmp_path):
    out, seconds = quick_runs(WAY)
    cache = out.parent / "cache"
    monkeypatch.setenv("MEDBENCH_CACHE", str(cache))
    args = QUICK_WAYS[WAY]
    profile = _option(args, "--profile")
    jobs, threads = int(_option(args, "--jobs") or 1), _option(args, "--threads")
    loaded = load_suite(ROOT / "suites" / "quick.yaml", profile)
    ds, _ = load_dataset(loaded)
    plan = make_plan(loaded, ds=ds, counted_from="data", out=tmp_path / "empty", jobs=jobs,
                     threads=int(threads) if threads else None, cold=True)
    assert plan.calibration["measured_now"] == []       # the run's own calibration
    calibration = sum(json.loads(e["path"].read_text())["seconds"]
                      for e in Cache(cache).entries("timings"))
    work = seconds - calibration
    ratio = plan.wall_seconds / work
    print(f"\nquick suite{' --profile ' + profile if profile else ''} ({' '.join(args)}): "
          f"{len(plan.cells)} cells, {len(plan.fits)} fits; estimate "
          f"{human_seconds(plan.wall_seconds)} ({plan.wall_seconds:.1f} s), measured "
          f"{seconds:.1f} s of which calibration {calibration:.1f} s: "
          f"estimate / (run - calibration) = {ratio:.2f}, estimate / run = "
          f"{plan.wall_seconds / seconds:.2f}")
    # per arm, planned against what the run recorded (classifier training, and the
    # record of every fit of the arm's generator)
    rows = pd.read_parquet(out / "results.parquet").drop_duplicates(
        ["arm", "classifier", "seed", "fold"])
    fitted: dict[str, float] = {}
    for info in out.glob("generators/*/*/info.json"):
        d = json.loads(info.read_text())
        fitted[d["generator"]] = fitted.get(d["generator"], 0.0) + d["record"].get("seconds", 0.0)
    for arm in loaded.suite.arms:
        planned = sum(c.seconds or 0.0 for c in plan.cells if c.arm == arm.name)
        trained = rows.loc[rows.arm == arm.name, "train_seconds"].sum()
        fit = fitted.get(arm.generator, 0.0) if arm.generator else 0.0
        print(f"  {arm.name:12s} planned {planned:8.1f} s   trained {trained:8.1f} s + "
              f"fits {fit:8.1f} s")
    assert 0.5 <= ratio <= 2.0, f"estimate / actual = {ratio:.2f}"
