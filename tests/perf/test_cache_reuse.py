"""What the content-addressed cache saves, measured side by side in one session on a
phantom suite with a DCGAN arm (one fold):

- the first run (cold cache) fits the DCGAN and trains both arms;
- the same suite with only the classifier changed (another dropout) fits no generator:
  it loads the fitted model's synthetic set and trains the classifiers again;
- the same suite into a new results folder takes every cell from the cell cache.

Run alone with:  python -m pytest tests/perf/test_cache_reuse.py -s -q
"""

import time

import pytest
from click.testing import CliRunner

from medbench.cli import cli

from conftest import tiny_suite

pytestmark = pytest.mark.perf


def _suite(dropout: float) -> dict:
    return tiny_suite(
        dataset={"loader": "phantom", "image_size": 28, "channels": 1,
                 "options": {"counts": [150, 50, 25], "seed": 3}},
        protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1},
        arms=[{"name": "none"}, {"name": "dcgan", "generator": "dcgan"}],
        generator_params={"dcgan": {"epochs": 40, "width": 16, "batch_size": 16}},
        classifiers=[{"name": "smallcnn", "dropout": dropout}],
        training={"epochs": 3, "batch_size": 32})


def _timed(path, out, cache):
    t0 = time.perf_counter()
    r = CliRunner(env={"MEDBENCH_CACHE": str(cache)}).invoke(
        cli, ["run", str(path), "--out", str(out), "--threads", "1"])
    seconds = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    return seconds, r.stderr.count("fitting dcgan"), r.stderr.count("(from the cell cache)")


def test_changing_only_the_classifier_retrains_no_generator(write_suite, tmp_path):
    cache = tmp_path / "cache"
    first, fits1, _ = _timed(write_suite(_suite(0.0), "a.yaml"), tmp_path / "a", cache)
    other, fits2, cached2 = _timed(write_suite(_suite(0.3), "b.yaml"), tmp_path / "b", cache)
    again, fits3, cached3 = _timed(write_suite(_suite(0.0), "a.yaml"), tmp_path / "c", cache)
    assert fits1 >= 1 and fits2 == 0 and cached2 == 0
    assert fits3 == 0 and cached3 == 2
    print(f"\n[perf] phantom suite with a DCGAN arm, 1 fold: first run {first:.1f} s "
          f"({fits1} generator fit(s)), classifier changed {other:.1f} s ({fits2} fits), "
          f"same suite into a new folder {again:.2f} s (every cell from the cell cache)")
    print(f"cached / uncached: classifier changed {other / first:.3f}, "
          f"identical cells {again / first:.3f}")
