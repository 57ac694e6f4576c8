"""Executors (local, processes, ray) and fault tolerance: same numbers everywhere, a
failing cell does not stop the suite, Ctrl-C keeps what finished, a full disk is a
clear error."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from medbench.cli import cli
from medbench.errors import TrainingError
from medbench.cache import Cache
from medbench.execution import Prefit
from medbench.engine import Engine, count_folds, expand_cells, prefit_tasks
from medbench.suite import load_suite

from conftest import tiny_suite

METRIC_COLS = ["arm", "classifier", "seed", "fold", "metric", "class", "value"]


def _suite_two_classifiers():
    """A GAN arm shared by two classifiers: the parallel executors fit its generator
    once per fold before the cells (and cells load it from the cache)."""
    return tiny_suite(
        arms=[{"name": "none"}, {"name": "oversample", "generator": "oversample"},
              {"name": "dcgan", "generator": "dcgan"}],
        generator_params={"dcgan": {"epochs": 2, "width": 16, "batch_size": 16,
                                    "collapse_check": False}},
        classifiers=[{"name": "smallcnn"}, {"name": "smallcnn", "label": "smallcnn-d",
                                            "dropout": 0.3}],
        protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 2})


def _run(path, out, *extra, cache=None):
    env = {"MEDBENCH_CACHE": str(cache)} if cache else {}
    r = CliRunner(env=env).invoke(cli, ["run", str(path), "--out", str(out), "--quiet", *extra])
    assert r.exit_code == 0, r.output
    return pd.read_parquet(out / "results.parquet")


def test_processes_executor_gives_the_same_numbers_as_local(write_suite, tmp_path):
    path = write_suite(_suite_two_classifiers())
    a = _run(path, tmp_path / "local", "--threads", "1", cache=tmp_path / "c1")
    b = _run(path, tmp_path / "procs", "--jobs", "2", "--threads", "1", cache=tmp_path / "c2")
    assert len(a) and set(b.threads) == {1}
    pd.testing.assert_frame_equal(a[METRIC_COLS], b[METRIC_COLS])
    # the recorded command repeats the run as it went, thread count included
    command = json.loads((tmp_path / "procs" / "manifest.json").read_text())["command"]
    assert command.endswith("--jobs 2 --threads 1"), command
    # each generator arm's draw of each of the 2 folds is made by one prefit task, before
    # the 2 classifiers' cells; the DCGAN (one model per class to fill: 2 of 3) is cached
    loaded = load_suite(path)
    cells = expand_cells(loaded, count_folds(loaded))
    assert prefit_tasks(loaded, cells) == [Prefit(0, f, arm) for f in (0, 1)
                                           for arm in ("oversample", "dcgan")]
    assert prefit_tasks(loaded, [c for c in cells if c.classifier == "smallcnn"]) == []
    assert len(Cache(tmp_path / "c2").entries("generators")) == 4


@pytest.mark.slow
def test_ray_executor_runs_the_quick_suite_with_the_same_table_as_local(quick_runs):
    """The quick suite (its smoke profile: all 11 arms, 5 GANs and ddpm included, one fold) through
    a local Ray instance, against the same suite run in this process."""
    pytest.importorskip("ray")
    local, _ = quick_runs("smoke-local")
    ray_out, _ = quick_runs("smoke-ray")
    a = pd.read_parquet(local / "results.parquet")
    b = pd.read_parquet(ray_out / "results.parquet")
    assert len(a) > 0 and not list((ray_out / "cells").glob("*.failed.json"))
    pd.testing.assert_frame_equal(a[METRIC_COLS], b[METRIC_COLS])
    # and the summary table that `medbench report` writes is the same
    for out in (local, ray_out):
        r = CliRunner().invoke(cli, ["report", str(out), "--out", str(out / "rep"),
                                     "--format", "csv"])
        assert r.exit_code == 0, r.output
    ta = pd.read_csv(local / "rep" / "summary.csv", comment="#")
    tb = pd.read_csv(ray_out / "rep" / "summary.csv", comment="#")
    pd.testing.assert_frame_equal(ta, tb)


def test_unknown_executor_is_a_clear_error(write_suite, tmp_path):
    r = CliRunner().invoke(cli, ["run", str(write_suite(tiny_suite())), "--out",
                                 str(tmp_path / "o"), "--executor", "slurm"])
    assert r.exit_code == 2 and "unknown executor plugin 'slurm'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("exc", [RuntimeError("boom in a plugin"),
                                 TrainingError("training loss became nan at epoch 1")])
def test_a_failing_cell_is_recorded_and_the_suite_goes_on(write_suite, tmp_path, monkeypatch,
                                                          exc):
    real = Engine.run_cell

    def flaky(self, cell, progress=None):
        if cell.arm == "oversample" and cell.fold == 1:
            raise exc
        return real(self, cell, progress)

    monkeypatch.setattr(Engine, "run_cell", flaky)
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["run", str(write_suite(tiny_suite())), "--out", str(out)])
    assert r.exit_code == 1, r.output          # a batch script can tell
    assert "1 cell(s) failed, for 1 reason(s)" in r.stderr and str(exc) in r.stderr
    failed = list((out / "cells").glob("*.failed.json"))
    assert len(failed) == 1
    info = json.loads(failed[0].read_text())
    assert str(exc) in info["reason"] and "fold=1" in info["cell"]
    if isinstance(exc, RuntimeError):        # an unexpected exception keeps its traceback
        assert info["reason"].startswith("RuntimeError") and "flaky" in info["traceback"]
    df = pd.read_parquet(out / "results.parquet")
    assert len(df[df.metric == "accuracy"]) == 5
    # a rerun retries only the failed cell, which now succeeds and clears its record
    monkeypatch.setattr(Engine, "run_cell", real)
    r = CliRunner().invoke(cli, ["run", str(write_suite(tiny_suite())), "--out", str(out)])
    assert r.exit_code == 0 and "5 of 6 cells already done" in r.stderr
    assert not list((out / "cells").glob("*.failed.json"))


def test_full_disk_is_a_clear_error_and_keeps_finished_cells(write_suite, tmp_path,
                                                             monkeypatch):
    import medbench.store
    real = medbench.store.atomic_write
    cells_written = []

    def write(path, writer):          # the disk fills up at the third cell's marker
        if path.suffix == ".parquet" and path.parent.name == "cells":
            cells_written.append(path)
            if len(cells_written) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, writer)

    monkeypatch.setattr(medbench.store, "atomic_write", write)
    out = tmp_path / "res"
    r = CliRunner().invoke(cli, ["run", str(write_suite(tiny_suite())), "--out", str(out)])
    assert r.exit_code == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write results") and "disk is full" in last
    assert "2 finished cell(s) are kept" in last and "Traceback" not in r.stderr
    assert len(list((out / "cells").glob("*.parquet"))) == 2
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("jobs, signum, code, words", [
    (1, signal.SIGINT, 130, "interrupted: finished cells"),
    (2, signal.SIGINT, 130, "interrupted: finished cells"),
    (2, signal.SIGTERM, 143, "terminated (SIGTERM): finished cells")])
def test_a_signal_stops_cleanly_keeping_finished_cells(write_suite, tmp_path, jobs, signum,
                                                      code, words):
    # Ctrl-C, or SIGTERM (kill, a batch scheduler's time limit) sent to the driver
    # cells of a second or more (40 epochs), so that 7 of them cannot all finish between
    # the second "done" line and the signal; a cache of its own, so none is served from it
    suite = tiny_suite(arms=[{"name": "none"}, {"name": "class-weights", "class_weights": True},
                             {"name": "oversample", "generator": "oversample"}],
                       training={"epochs": 40, "batch_size": 16})
    path = write_suite(suite)
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEDBENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "medbench", "run", str(path), "--out", str(out),
           "--threads", "1", *(("--jobs", str(jobs)) if jobs > 1 else ())]
    # the driver starts with SIGINT at its default, as from a terminal, even when these
    # tests run in the background of a non-interactive shell (which ignores it for them)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "] done " in line and sum("] done " in x for x in lines) == 2:
            proc.send_signal(signum)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == code, "".join(lines) + rest
    assert words in rest and "Traceback" not in rest
    finished = len(list((out / "cells").glob("*.parquet")))
    assert 2 <= finished < 9
    # what finished is consolidated and nothing half-written is left
    assert len(pd.read_parquet(out / "results.parquet").query("metric == 'accuracy'")) == finished
    assert not list(out.rglob("*.tmp"))
    r = CliRunner(env={"MEDBENCH_CACHE": str(tmp_path / "cache")}).invoke(
        cli, ["run", str(path), "--out", str(out), "--threads", "1"])
    assert r.exit_code == 0 and f"{finished} of 9 cells already done" in r.stderr


def test_a_signal_does_not_wait_for_the_cells_in_flight(write_suite, tmp_path):
    # with --jobs 2, SIGTERM while both workers train cells that would run for hours: the
    # driver terminates them and exits, instead of waiting at exit for those cells
    quick = {"name": "smallcnn", "label": "quick", "training": {"epochs": 1}}
    slow = {"name": "smallcnn", "label": "slow", "training": {"epochs": 100000}}
    suite = tiny_suite(arms=[{"name": "none"}], classifiers=[quick, slow],
                       training={"epochs": 1, "batch_size": 16, "early_stopping": None})
    path = write_suite(suite)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MEDBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "medbench", "run", str(path), "--out",
                             str(tmp_path / "res"), "--threads", "1", "--jobs", "2", "--yes"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    try:
        for line in proc.stderr:      # 2 of the 3 quick cells done: a slow one is in flight
            lines.append(line)
            if sum("] done " in x for x in lines) == 2:
                proc.send_signal(signal.SIGTERM)
                break
        _, rest = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("the driver waited for the cells in flight after SIGTERM") from None
    finally:
        proc.kill()
    assert proc.returncode == 143, "".join(lines) + rest
    assert "terminated (SIGTERM)" in rest and "Traceback" not in rest


def test_cell_cache_serves_the_same_cells_to_another_results_folder(write_suite, tmp_path):
    path = write_suite(tiny_suite())
    a = _run(path, tmp_path / "a")
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and r.stderr.count("(from the cell cache)") == 6
    b = pd.read_parquet(tmp_path / "b" / "results.parquet")
    pd.testing.assert_frame_equal(a[METRIC_COLS], b[METRIC_COLS])
    # another classifier setting is another cell: nothing reused, the none arm retrained
    changed = tiny_suite(classifiers=[{"name": "smallcnn", "dropout": 0.25}])
    r = CliRunner().invoke(cli, ["run", str(write_suite(changed, "c.yaml")), "--out",
                                 str(tmp_path / "c")])
    assert r.exit_code == 0 and "(from the cell cache)" not in r.stderr
    # corrupt entries are detected, and those cells computed again, to the same numbers
    entries = sorted((Path(os.environ["MEDBENCH_CACHE"]) / "cells").rglob("*.npz"))
    assert len(entries) == 12                 # 6 cells of each suite
    for f in entries:
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "d")])
    assert r.exit_code == 0 and "(from the cell cache)" not in r.stderr
    d = pd.read_parquet(tmp_path / "d" / "results.parquet")
    pd.testing.assert_frame_equal(a[METRIC_COLS], d[METRIC_COLS])


def test_unreachable_ray_cluster_is_a_clear_error_within_seconds(write_suite, tmp_path):
    import socket
    with socket.socket() as s:                 # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = CliRunner().invoke(cli, ["run", str(write_suite(tiny_suite())), "--out",
                                 str(tmp_path / "o"), "--executor", "ray", "--address",
                                 f"127.0.0.1:{port}"])
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert "Traceback" not in r.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_of_a_parallel_run_leaves_no_worker_and_resumes_to_the_same_numbers(
        write_suite, tmp_path):
    import time
    suite = tiny_suite(arms=[{"name": "none"}, {"name": "class-weights", "class_weights": True},
                             {"name": "oversample", "generator": "oversample"}])
    path = write_suite(suite)
    full = _run(path, tmp_path / "full", "--threads", "1", cache=tmp_path / "cold")
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medbench", "run", str(path), "--out", str(out),
                             "--jobs", "2", "--threads", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    done = 0
    for line in proc.stderr:
        done += "] done " in line
        if done == 3:
            workers = [k for k in _children(proc.pid)
                       if "multiprocessing" in Path(f"/proc/{k}/cmdline").read_text()]
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and workers
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if Path(f"/proc/{w}").exists()
             and " Z " not in Path(f"/proc/{w}/stat").read_text()]
    assert not alive, f"workers outlived the killed driver: {alive}"
    finished = len(list((out / "cells").glob("*.parquet")))
    assert 3 <= finished < 9
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--jobs", "2",
                                 "--threads", "1"])
    assert r.exit_code == 0 and f"{finished} of 9 cells already done" in r.stderr
    pd.testing.assert_frame_equal(full[METRIC_COLS],
                                  pd.read_parquet(out / "results.parquet")[METRIC_COLS])
