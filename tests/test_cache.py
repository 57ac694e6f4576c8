"""The content-addressed cache: entries verified on load, rebuilt when damaged, never
reused under another configuration; generators fitted once and synthetic sets drawn once
across runs; `medbench cache ls` and `prune`."""

from __future__ import annotations

import ast
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_suite
import medbench
import medbench.plugins
from medbench.cache import (KINDS, READ_ONLY_MODULES, Cache, SyntheticCache, cell_key,
                            code_version, content_key, load_cell, store_cell)
from medbench.api import Generator
from medbench.cli import cli
from medbench.engine import Engine, load_dataset
from medbench.errors import GeneratorDiverged
from medbench.generators import GeneratorCache
from medbench.registry import PluginInfo, registry
from medbench.suite import load_suite

METRIC_COLS = ["arm", "classifier", "seed", "fold", "metric", "class", "value"]


def _write_bytes(data: bytes):
    return lambda p: p.write_bytes(data)


def _read_bytes(p):
    return p.read_bytes()


def _failing_reader(p):
    raise ValueError("cannot parse")


def _age(cache: Cache, kind: str, key: str, seconds: float) -> None:
    """Make an entry look unused for ``seconds``."""
    side = cache.sidecar(kind, key)
    t = time.time() - seconds
    os.utime(side, (t, t))


# ------------------------------------------------------------------ keys


def test_content_key_is_canonical_and_follows_every_value():
    a = content_key({"gen": "dcgan", "params": {"epochs": 2, "width": 16}, "seed": 0})
    assert a == content_key({"seed": 0, "params": {"width": 16, "epochs": 2}, "gen": "dcgan"})
    assert a == content_key({"seed": np.int64(0), "params": {"width": 16, "epochs": 2},
                             "gen": "dcgan"})
    assert len(a) == 64 and int(a, 16) >= 0
    for other in ({"gen": "dcgan", "params": {"epochs": 3, "width": 16}, "seed": 0},
                  {"gen": "dcgan", "params": {"epochs": 2, "width": 16}, "seed": 1},
                  {"gen": "cgan", "params": {"epochs": 2, "width": 16}, "seed": 0}):
        assert content_key(other) != a
    assert content_key({"x": np.arange(4)}) != content_key({"x": np.arange(5)})
    assert cell_key({"arm": "a"}) != content_key({"arm": "a"})


def test_code_version_covers_the_plugin_and_the_engine():
    from medbench.plugins.generators import dcgan, oversample
    v = code_version(dcgan.DCGAN)
    assert v == code_version(dcgan.DCGAN) and v != code_version(oversample.Oversample)
    assert code_version() != v and len(v) == 16


def _engine_imports(path: Path) -> set[str]:
    """The medbench engine modules (file names) that the source at ``path`` imports."""
    root = Path(medbench.__file__).parent
    in_engine = path.parent == root
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and in_engine:
                names = [mod.split(".")[0]] if mod else [a.name for a in node.names]
            elif mod == "medbench":
                names = [a.name for a in node.names]
            elif mod.startswith("medbench."):
                names = [mod.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("medbench.")]
        found.update(f"{n}.py" for n in names)
    return {m for m in found if (root / m).is_file()}


def test_modules_left_out_of_the_code_version_are_never_imported_to_compute_results():
    root = Path(medbench.__file__).parent
    # everything a cell, a generator fit or a synthetic set runs starts from these
    start = ["runner.py", "engine.py", "execution.py", "trainer.py", "generators.py",
             "generative.py", "injection.py", "metrics.py", "splits.py", "data.py", "cache.py",
             "store.py", "api.py", "progress.py"]
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _engine_imports(root / m)
    assert not seen & READ_ONLY_MODULES, seen & READ_ONLY_MODULES
    assert {"suite.py", "registry.py", "errors.py"} <= seen        # the walk does find imports
    # nor does any built-in plugin import one
    for f in sorted(Path(medbench.plugins.__file__).parent.rglob("*.py")):
        assert not _engine_imports(f) & READ_ONLY_MODULES, f


def test_editing_a_read_only_module_keeps_the_code_version(tmp_path, monkeypatch):
    import medbench.cache as cache_module
    src = Path(cache_module.__file__).parent
    copy = tmp_path / "medbench"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_module, "__file__", str(copy / "cache.py"))
    before = code_version()
    (copy / "report.py").write_text((copy / "report.py").read_text() + "\n# a new table\n")
    assert code_version() == before
    (copy / "trainer.py").write_text((copy / "trainer.py").read_text() + "\n# a change\n")
    assert code_version() != before


# ------------------------------------------------------------------ entries


def test_store_load_round_trip_and_layout(tmp_path):
    c = Cache(tmp_path)
    key = content_key({"what": "round trip"})
    assert c.load("synthetic", key, _read_bytes) is None                 # a miss
    assert c.store("synthetic", key, _write_bytes(b"payload" * 100), ".bin", "a test entry",
                   {"what": "round trip"})
    payload = tmp_path / "synthetic" / key[:2] / f"{key}.bin"
    side = tmp_path / "synthetic" / key[:2] / f"{key}.json"
    assert payload.is_file() and side.is_file() and not list(tmp_path.rglob("*.tmp"))
    meta = json.loads(side.read_text())
    assert meta["kind"] == "synthetic" and meta["key"] == key
    assert meta["bytes"] == 700 and len(meta["sha256"]) == 64 and meta["created"].endswith("Z")
    assert meta["describe"] == "a test entry" and meta["config"] == {"what": "round trip"}
    assert c.load("synthetic", key, _read_bytes) == b"payload" * 100
    (entry,) = c.entries()
    assert entry["kind"] == "synthetic" and entry["path"] == payload
    assert entry["size"] == 700 + side.stat().st_size
    with pytest.raises(ValueError):
        c.store("nonsense", key, _write_bytes(b""), ".bin", "", {})


@pytest.mark.parametrize("damage", ["flip", "truncate", "no payload", "bad sidecar", "reader"])
def test_damaged_entry_is_removed_and_rebuilt(tmp_path, damage):
    c = Cache(tmp_path)
    key = content_key({"what": damage})
    data = bytes(range(256)) * 4
    c.store("cells", key, _write_bytes(data), ".bin", "entry", {})
    payload, side = c.path("cells", key), c.sidecar("cells", key)
    reader = _failing_reader if damage == "reader" else _read_bytes
    if damage == "flip":
        raw = bytearray(payload.read_bytes())
        raw[100] ^= 0xFF
        payload.write_bytes(bytes(raw))
    elif damage == "truncate":
        payload.write_bytes(data[:500])
    elif damage == "no payload":
        payload.unlink()
    elif damage == "bad sidecar":
        side.write_text("{not json")
    assert c.load("cells", key, reader) is None
    assert not payload.exists() and not side.exists()          # removed, not left to rot
    # the caller rebuilds and stores again; the next load is a verified hit
    assert c.store("cells", key, _write_bytes(data), ".bin", "entry", {})
    assert c.load("cells", key, _read_bytes) == data


def test_another_configuration_is_never_reused(tmp_path):
    c = Cache(tmp_path)
    old = {"generator": "dcgan", "params": {"epochs": 2}, "seed": 0}
    c.store("generators", content_key(old), _write_bytes(b"old"), ".pt", "old", old)
    new = dict(old, params={"epochs": 3})
    assert c.load("generators", content_key(new), _read_bytes) is None
    assert c.load("generators", content_key(old), _read_bytes) == b"old"
    # an entry whose sidecar belongs to another key (a copied file) is not a hit either
    k_new = content_key(new)
    side = c.sidecar("generators", k_new)
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(c.sidecar("generators", content_key(old)).read_text())
    assert c.load("generators", k_new, _read_bytes) is None


def test_an_unwritable_cache_warns_once_and_goes_on(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    said = []
    c = Cache(tmp_path / "file" / "cache", warn=said.append)
    for i in range(3):
        assert c.store("cells", content_key({"i": i}), _write_bytes(b"x"), ".bin", "", {}) is False
    assert len(said) == 1 and "cannot write" in said[0]
    assert c.load("cells", content_key({"i": 0}), _read_bytes) is None
    assert c.entries() == [] and c.prune(everything=True) == []


def test_prune_by_age_size_and_leftovers(tmp_path):
    c = Cache(tmp_path)
    keys = [content_key({"n": i}) for i in range(4)]
    for i, k in enumerate(keys):
        c.store("synthetic", k, _write_bytes(b"x" * 1000), ".bin", f"entry {i}", {"n": i})
        _age(c, "synthetic", k, (4 - i) * 3600)         # entry 0 is the least recently used
    c.store("cells", content_key({"cell": 1}), _write_bytes(b"y" * 10), ".npz", "cell", {})
    # leftovers: a payload without sidecar and an unfinished write, both old
    orphan = tmp_path / "generators" / "ab" / f"{'ab' * 32}.pt"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"z" * 50)
    tmp = tmp_path / "synthetic" / keys[0][:2] / f".{keys[0]}.bin.123abc.tmp"
    tmp.write_bytes(b"t")
    young = tmp_path / "generators" / "ab" / f"{'cd' * 32}.pt"   # maybe a write in progress
    young.write_bytes(b"w")
    for p in (orphan, tmp):
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    assert len(c.entries()) == 5 and len(c.entries("synthetic")) == 4
    assert {p["path"] for p in c.leftovers()} == {orphan, tmp, young}

    dry = c.prune(older_than_s=2.5 * 3600, dry_run=True)
    assert {e.get("describe") for e in dry if not e.get("leftover")} == {"entry 0", "entry 1"}
    assert len(c.entries()) == 5 and orphan.exists()           # a dry run removes nothing

    gone = c.prune(kind="synthetic", older_than_s=2.5 * 3600)
    assert [e["describe"] for e in gone if not e.get("leftover")] == ["entry 0", "entry 1"]
    assert tmp.exists() is False and orphan.exists()            # other kinds untouched
    assert [e["describe"] for e in c.entries("synthetic")] == ["entry 2", "entry 3"]

    one_entry = c.entries("synthetic")[1]["size"]
    gone = c.prune(kind="synthetic", max_bytes=one_entry)       # least recently used first
    assert [e["describe"] for e in gone] == ["entry 2"]
    assert [e["describe"] for e in c.entries("synthetic")] == ["entry 3"]

    gone = c.prune()                                            # no criteria: leftovers only
    assert [e["path"] for e in gone] == [orphan] and young.exists()
    assert len(c.entries()) == 2

    gone = c.prune(everything=True)
    assert len(gone) == 3 and c.entries() == [] and c.leftovers() == []
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ------------------------------------------------------------------ helpers


def test_cell_results_round_trip_and_damage(tmp_path):
    c = Cache(tmp_path)
    df = pd.DataFrame({"arm": ["none", "none"], "metric": ["accuracy", "f1"],
                       "value": [0.5, np.nan], "seed": [0, 0]})
    preds = {"y_true": np.array([0, 1, 2]), "probs": np.random.rand(3, 3).astype(np.float32)}
    key = cell_key({"suite_hash": "abc", "cell": "none__smallcnn__s0__f0"})
    assert load_cell(c, key) is None
    assert store_cell(c, key, df, preds, "none / smallcnn s0 f0")
    got_df, got_preds = load_cell(c, key)
    pd.testing.assert_frame_equal(got_df, df)
    assert set(got_preds) == set(preds)
    assert all(np.array_equal(got_preds[k], preds[k]) and got_preds[k].dtype == preds[k].dtype
               for k in preds)
    c.path("cells", key).write_bytes(b"PK broken")
    assert load_cell(c, key) is None and c.entries("cells") == []
    with pytest.raises(ValueError):
        store_cell(c, key, df, {"bad": np.array([object()])}, "")


def test_a_cached_divergence_is_raised_again(tmp_path):
    info = registry().get("generators", "dcgan")
    gc = GeneratorCache(Cache(tmp_path))
    key = gc.key(info, {"epochs": 1}, 0, "data", np.arange(10), 1, ["a", "b"], (1, 16, 16))
    gc.save_failure(key, "dcgan: loss became NaN")
    with pytest.raises(GeneratorDiverged, match="loss became NaN .cached"):
        gc.load(key, info, {"epochs": 1}, "cpu")
    (entry,) = Cache(tmp_path).entries("generators")
    assert entry["config"]["generator"] == "dcgan" and "diverged" in entry["describe"]


# ------------------------------------------------------------------ the engine


class _GlobalRng(Generator):
    """A per-class generator that draws from torch's global RNG and counts its fits."""

    name = "globalrng"
    conditional = False
    fits = 0

    def fit(self, images, labels, **kw):
        _GlobalRng.fits += 1
        self.shape = tuple(images.shape[1:])
        return self

    def sample(self, c, n):
        return torch.randint(0, 256, (n, *self.shape), dtype=torch.uint8)


def test_synthetic_sets_are_cached_and_equal_fresh_draws(write_suite, tmp_path, monkeypatch):
    monkeypatch.setitem(registry().plugins["generators"], "globalrng",
                        PluginInfo("globalrng", "generators", _GlobalRng, "tests", "0", __name__))
    loaded = load_suite(write_suite(tiny_suite(
        arms=[{"name": "g", "generator": "globalrng", "injection": {"policy": "balance"}}])))
    ds, _ = load_dataset(loaded)

    def draw(root, noise):
        monkeypatch.setenv("MEDBENCH_CACHE", str(root))
        torch.manual_seed(noise)                 # what ran before must not matter
        engine = Engine(loaded, ds, torch.device("cpu"))
        return engine.training_set(engine.arm("g"), engine.folds(0)[1], 0)

    _GlobalRng.fits = 0
    x1, y1, s1, w1 = draw(tmp_path / "a", 1)
    assert _GlobalRng.fits == 2                  # the two minority classes
    synth = Cache(tmp_path / "a").entries("synthetic")
    assert len(synth) == 2 and {e["config"]["n"] for e in synth} == {n for n in w1 if n}
    x2, y2, s2, w2 = draw(tmp_path / "b", 2)     # another, empty cache: drawn afresh
    assert _GlobalRng.fits == 4
    x3, y3, s3, w3 = draw(tmp_path / "a", 3)     # from the cache: nothing fitted
    assert _GlobalRng.fits == 4
    for x, y, s in ((x2, y2, s2), (x3, y3, s3)):
        assert torch.equal(x, x1) and torch.equal(y, y1) and torch.equal(s, s1)
    # a damaged synthetic set is drawn again, identically
    Cache(tmp_path / "a").path("synthetic", synth[0]["key"]).write_bytes(b"junk")
    x4, *_ = draw(tmp_path / "a", 4)
    assert torch.equal(x4, x1) and _GlobalRng.fits == 5


def _run(args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    return r


def test_generators_are_not_fitted_again_for_another_classifier(write_suite, tmp_path):
    def suite(*classifiers):
        return tiny_suite(
            dataset={"loader": "phantom", "image_size": 16, "channels": 1,
                     "options": {"counts": [40, 16, 10], "seed": 1}},
            protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1},
            arms=[{"name": "dcgan", "generator": "dcgan", "injection": {"policy": "balance"}}],
            classifiers=list(classifiers),
            generator_params={"dcgan": {"epochs": 2, "width": 16, "batch_size": 16,
                                        "collapse_check": False}},
            training={"epochs": 1, "batch_size": 16})
    cnn = {"name": "smallcnn"}
    first = write_suite(suite(cnn), "first.yaml")
    second = write_suite(suite(cnn, {"name": "smallcnn", "label": "cnn2", "dropout": 0.2}),
                         "second.yaml")
    r = _run(["run", str(first), "--out", str(tmp_path / "a")])       # an empty cache
    assert r.stderr.count("fitting dcgan") == 2                 # one per minority class
    r = _run(["run", str(second), "--out", str(tmp_path / "b")])
    assert "fitting" not in r.stderr, r.stderr                  # nothing fitted again
    arts = sorted((tmp_path / "b" / "generators" / "dcgan").glob("*/info.json"))
    assert len(arts) == 2 and all(json.loads(a.read_text())["source"] == "cache" for a in arts)
    cold = pd.read_parquet(tmp_path / "a" / "results.parquet")[METRIC_COLS]
    warm = pd.read_parquet(tmp_path / "b" / "results.parquet")[METRIC_COLS]
    assert set(warm.classifier) == {"smallcnn", "cnn2"}
    pd.testing.assert_frame_equal(warm[warm.classifier == "smallcnn"].reset_index(drop=True),
                                  cold.reset_index(drop=True))
    kinds = {e["kind"] for e in Cache(os.environ["MEDBENCH_CACHE"]).entries()}
    assert {"generators", "synthetic"} <= kinds


def test_a_longer_budget_continues_the_cached_shorter_fit(write_suite, tmp_path, monkeypatch):
    """A suite at 0.3 kimg after one at 0.15: each GAN continues its cached shorter fit
    (the console says so) and draws exactly the images a fit of 0.3 kimg from scratch,
    in an empty cache, draws; the results are the same."""
    def suite(kimg):
        return tiny_suite(
            dataset={"loader": "phantom", "image_size": 16, "channels": 1,
                     "options": {"counts": [40, 16, 10], "seed": 1}},
            protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1},
            arms=[{"name": "dcgan", "generator": "dcgan", "injection": {"policy": "balance"}}],
            generator_params={"dcgan": {"kimg": kimg, "width": 8, "batch_size": 8,
                                        "collapse_check": False}},
            training={"epochs": 1, "batch_size": 16})
    short, long = write_suite(suite(0.15), "short.yaml"), write_suite(suite(0.3), "long.yaml")
    _run(["run", str(short), "--out", str(tmp_path / "a")])
    r = _run(["run", str(long), "--out", str(tmp_path / "b")])
    assert r.stderr.count("continuing the fit of 0.15 kimg on") == 2, r.stderr
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "fresh-cache"))
    r = _run(["run", str(long), "--out", str(tmp_path / "c")])
    assert "continuing" not in r.stderr and r.stderr.count("fitting dcgan") == 2
    cont = pd.read_parquet(tmp_path / "b" / "results.parquet")[METRIC_COLS]
    fresh = pd.read_parquet(tmp_path / "c" / "results.parquet")[METRIC_COLS]
    pd.testing.assert_frame_equal(cont, fresh)
    for a, b in zip(sorted((tmp_path / "b" / "generators" / "dcgan").glob("*/losses.csv")),
                    sorted((tmp_path / "c" / "generators" / "dcgan").glob("*/losses.csv"))):
        assert a.read_text() == b.read_text()


# ------------------------------------------------------------------ the command line


def test_cache_ls_and_prune_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path))
    c = Cache(tmp_path)
    for i, kind in enumerate(KINDS):
        c.store(kind, content_key({"i": i}), _write_bytes(b"x" * 2048), ".bin",
                f"test entry {kind}", {"i": i})
    _age(c, "cells", content_key({"i": 3}), 3 * 86400)
    r = _run(["cache", "ls"])
    assert str(tmp_path) in r.stdout
    assert all(kind in r.stdout for kind in KINDS) and "KiB" in r.stdout
    r = _run(["cache", "ls", "--long", "--kind", "synthetic"])
    assert "test entry synthetic" in r.stdout and "test entry cells" not in r.stdout
    assert content_key({"i": 2})[:12] in r.stdout

    r = _run(["cache", "prune", "--older-than", "2d", "--dry-run"])
    assert "would remove cells" in r.stdout and len(c.entries()) == len(KINDS)
    r = _run(["cache", "prune", "--older-than", "2d"])
    assert "removed cells" in r.stdout and "1 entry" in r.stdout
    assert {e["kind"] for e in c.entries()} == set(KINDS) - {"cells"}
    r = _run(["cache", "prune", "--all"])
    assert f"removed {len(KINDS) - 1} entries" in r.stdout and c.entries() == []
    assert "no entries" in _run(["cache", "ls"]).stdout


@pytest.mark.parametrize("args, words", [
    (["--older-than", "xyz"], "--older-than 'xyz'"),
    (["--max-size", "lots"], "--max-size 'lots'"),
    (["--kind", "models"], "unknown cache kind 'models'"),
])
def test_cache_prune_bad_values_are_one_line_exit_2(tmp_path, monkeypatch, args, words):
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path))
    key = content_key({"keep": 1})
    Cache(tmp_path).store("cells", key, _write_bytes(b"x"), ".bin", "", {})
    r = CliRunner().invoke(cli, ["cache", "prune", "--all", *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.output
    assert len(Cache(tmp_path).entries()) == 1                 # nothing removed


def test_parse_durations_and_sizes():
    from medbench.cache_cli import parse_duration, parse_size
    assert parse_duration("30m") == 1800 and parse_duration("1d12h") == 1.5 * 86400
    assert parse_duration("2w") == 14 * 86400
    assert parse_size("500M") == 500 * 1024 ** 2 and parse_size("5G") == 5 * 1024 ** 3
    assert parse_size("1.5GB") == int(1.5 * 1024 ** 3) and parse_size("100") == 100


def test_synthetic_cache_rejects_a_wrong_shape(tmp_path):
    sc = SyntheticCache(Cache(tmp_path))
    key = content_key(SyntheticCache.describe_key("g" * 64, 1, 4))
    assert sc.store(key, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), ["a note"], "test", {})
    images, notes = sc.load(key, (1, 8, 8))
    assert images.shape == (4, 1, 8, 8) and notes == ["a note"]
    assert sc.load(key, (1, 16, 16)) is None                    # damaged: removed
    assert sc.load(key, (1, 8, 8)) is None
