import os
import socket
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    env = os.environ.get("MEDBENCH_DATA")
    p = Path(env) if env else ROOT.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache, so no test depends on another's files."""
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


def tiny_suite(**overrides) -> dict:
    """A phantom suite that trains in seconds on a CPU."""
    suite = {
        "name": "tiny",
        "dataset": {"loader": "phantom", "image_size": 16, "channels": 1,
                    "options": {"counts": [60, 24, 12], "seed": 1}},
        "protocol": {"kind": "kfold", "folds": 3, "seeds": [0]},
        "arms": [{"name": "none"}, {"name": "oversample", "generator": "oversample"}],
        "classifiers": [{"name": "smallcnn"}],
        "training": {"epochs": 2, "batch_size": 16},
    }
    for key, value in overrides.items():
        suite[key] = value
    return suite


@pytest.fixture
def write_suite(tmp_path):
    def write(data, name="suite.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return p
    return write


# the executors' comparison runs the quick suite's smoke profile (11 arms, 1 fold), or the
# whole suite with MEDBENCH_PERF_FULL=1 (about 7 minutes more on 2 cores)
_EXEC_PROFILE = [] if os.environ.get("MEDBENCH_PERF_FULL") == "1" else ["--profile", "smoke"]
QUICK_WAYS = {
    # the whole quick suite, its cells in two worker processes (half the wall time of
    # one process on two cores)
    "full": ["--jobs", "2"],
    # one torch thread per cell, so that the executors' numbers can be compared exactly
    "smoke-local": [*_EXEC_PROFILE, "--threads", "1"],
    "smoke-processes": [*_EXEC_PROFILE, "--threads", "1", "--jobs", "2"],
    "smoke-ray": [*_EXEC_PROFILE, "--threads", "1", "--executor", "ray", "--jobs", "2"],
}


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """The shipped quick suite, run at most once per session in each way of QUICK_WAYS,
    each with its own cold cache (so their times can be compared). ``quick_runs(way)``
    gives (results folder, seconds)."""
    import time

    from click.testing import CliRunner

    from medbench.cli import cli

    done: dict[str, tuple[Path, float]] = {}

    def get(way: str) -> tuple[Path, float]:
        if way not in done:
            root = tmp_path_factory.mktemp(f"quick-{way}")
            old = os.environ.get("MEDBENCH_CACHE")
            os.environ["MEDBENCH_CACHE"] = str(root / "cache")
            try:
                t0 = time.perf_counter()
                r = CliRunner().invoke(cli, ["run", str(ROOT / "suites" / "quick.yaml"), "--out",
                                             str(root / "out"), "-q", *QUICK_WAYS[way]])
                seconds = time.perf_counter() - t0
            finally:
                if old is None:
                    os.environ.pop("MEDBENCH_CACHE", None)
                else:
                    os.environ["MEDBENCH_CACHE"] = old
            assert r.exit_code == 0, r.output
            done[way] = (root / "out", seconds)
        return done[way]

    return get


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny batches: on a busy 2-core machine OpenMP
    threads spinning against other processes made them several times slower."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        pytest.fail("a test tried to reach the network")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def pytest_collection_modifyitems(config, items):
    """The benchmarks of tests/perf (marked `perf`) measure; they do not belong in every
    run of the test suite (CI runs `python -m pytest -q`). They run when asked for: a
    path inside tests/perf on the command line, or a `-m` expression."""
    if config.option.markexpr:
        return
    perf_dir = (ROOT / "tests" / "perf").resolve()

    def inside_perf(arg: str) -> bool:
        p = Path(arg.split("::")[0]).resolve()
        return p == perf_dir or perf_dir in p.parents

    if any(inside_perf(a) for a in config.args):
        return
    perf = [i for i in items if i.get_closest_marker("perf") is not None]
    if perf:
        config.hook.pytest_deselected(items=perf)
        items[:] = [i for i in items if i.get_closest_marker("perf") is None]
