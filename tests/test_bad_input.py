"""Bad input never runs: every suite and dataset fault is refused before work, in one
line, with exit code 2, no traceback, and nothing left in the results folder; cells that
fail at run time end the run with exit code 1 and their reasons, once each."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from medbench.cli import cli
from medbench.errors import ResultsError
from medbench.store import LOCK, FolderLock

from conftest import tiny_suite

# --------------------------------------------------------------------------- helpers


def refused(args: list[str], out: Path | None = None) -> str:
    """Run the CLI; assert a one-line refusal with exit code 2, no traceback and no
    trace of the run in ``out``. Returns the error line."""
    r = CliRunner().invoke(cli, args)
    err = r.stderr.strip()
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    return err


def quick(**overrides) -> dict:
    """The tiny phantom suite cut to the bone: one fold, one epoch."""
    s = tiny_suite(**overrides)
    s["protocol"] = {**s["protocol"], "max_folds": 1}
    s["training"] = {**s["training"], "epochs": 1}
    return s


def dump(path: Path, suite) -> Path:
    path.write_text(suite if isinstance(suite, str) else yaml.safe_dump(suite, sort_keys=False))
    return path


def png(path: Path, seed: int = 0, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def folder_data(root: Path, per_class: int = 6, classes=("a", "b")) -> Path:
    for i, c in enumerate(classes):
        for j in range(per_class):
            png(root / c / f"{j}.png", seed=100 * i + j)
    return root


def huge_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (its data is one empty row): the
    imaging library judges the size from the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


def metadata_csv(root: Path, column: str = "patient", rows: int | None = None,
                 patients: int = 30) -> Path:
    """A metadata CSV for the phantom set of ``quick()`` (96 images, sources
    ``phantom:1:<i>``): ``rows`` of them, each image's patient ``i % patients``."""
    root.mkdir(parents=True, exist_ok=True)
    n = 96 if rows is None else rows
    path = root / "meta.csv"
    path.write_text(f"image,{column}\n" + "".join(f"phantom:1:{i},p{i % patients}\n"
                                                  for i in range(n)))
    return path


def folder_suite(path: Path, **dataset) -> dict:
    s = quick(arms=[{"name": "none"}])
    s["dataset"] = {"loader": "folder", "path": str(path), "image_size": 12, "channels": 1,
                    **dataset}
    s["protocol"] = {"kind": "kfold", "folds": 2, "seeds": [0], "max_folds": 1}
    return s


# --------------------------------------------------------------------------- exit codes


def test_failed_cells_exit_1_with_each_reason_once(tmp_path, monkeypatch):
    from medbench.errors import TrainingError
    from medbench.plugins.generators.oversample import Oversample

    def broken(self, class_index, n):
        raise TrainingError("oversample broke on purpose")
    monkeypatch.setattr(Oversample, "sample", broken)
    out = tmp_path / "out"
    suite = quick(arms=[{"name": "none"}, {"name": "over", "generator": "oversample"},
                        {"name": "over2", "generator": "oversample"}],
                  protocol={"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1})
    r = CliRunner().invoke(cli, ["run", str(dump(tmp_path / "s.yaml", suite)), "--out",
                                 str(out), "-q"])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "2 cell(s) failed, for 1 reason(s)" in r.stderr
    assert r.stderr.count("oversample broke on purpose") == 1          # the reason once
    assert "arm=over classifier=smallcnn seed=0 fold=0" in r.stderr
    assert "arm=over2 classifier=smallcnn seed=0 fold=0" in r.stderr
    assert (out / "cells" / "none__smallcnn__s0__f0.parquet").exists()   # the rest is kept


# --------------------------------------------------------------------------- what the data cannot do


@pytest.mark.parametrize("dataset,protocol,arms,expected", [
    # more folds than the smallest class has images
    ({"options": {"counts": [60, 24, 4], "seed": 1}}, {"kind": "kfold", "folds": 5}, None,
     "needs at least 5 images per class"),
    # a class with a single image
    ({"options": {"counts": [60, 24, 1], "seed": 1}}, {"kind": "kfold", "folds": 3}, None,
     "has 1"),
    # a class too small for the validation split of a holdout
    ({"options": {"counts": [60, 24, 3], "seed": 1, "splits": False}},
     {"kind": "holdout", "test_fraction": 0.5}, None, "validation split"),
    # a positive class the data lacks, and one given to a multi-class task
    ({"options": {"counts": [60, 24], "seed": 1}, "positive_class": "covid"},
     {"kind": "kfold", "folds": 3}, None, "dataset.positive_class 'covid' is not a class"),
    ({"positive_class": "covid"}, {"kind": "kfold", "folds": 3}, None,
     "dataset.positive_class 'covid' applies to binary tasks"),
    # a class too small for its generator (dcgan needs 2 training images per class)
    ({"options": {"counts": [60, 24, 4], "seed": 1}, "min_per_class": 1},
     {"kind": "kfold", "folds": 2, "val_fraction": 0.3},
     [{"name": "dcgan", "generator": "dcgan", "params": {"epochs": 1}}],
     "generator 'dcgan' needs at least 2 training images"),
])
def test_what_the_data_cannot_satisfy_is_refused_once_before_any_cell(
        tmp_path, dataset, protocol, arms, expected):
    suite = quick(protocol={**protocol, "seeds": [0, 1]}, **({"arms": arms} if arms else {}))
    suite["dataset"] = {**suite["dataset"], **dataset}
    path = dump(tmp_path / "s.yaml", suite)
    out = tmp_path / "out"
    err = refused(["run", str(path), "--out", str(out)], out)
    assert expected in err, err
    assert not out.exists()
    # validate checks the suite alone, and with --data what run checks after loading
    assert CliRunner().invoke(cli, ["validate", str(path)]).exit_code == 0
    assert expected in refused(["validate", str(path), "--data"])


def test_ablate_checks_every_level_against_the_data_before_the_first(tmp_path):
    suite = quick(arms=[{"name": "none"}, {"name": "g", "generator": "dcgan",
                                           "params": {"epochs": 1}}],
                  protocol={"kind": "kfold", "folds": 2, "val_fraction": 0.3, "seeds": [0]})
    suite["dataset"] = {**suite["dataset"], "min_per_class": 1,
                        "options": {"counts": [60, 24, 4], "seed": 1}}
    out = tmp_path / "out"
    err = refused(["ablate", str(dump(tmp_path / "s.yaml", suite)), "--component", "generator",
                   "--levels", "none,dcgan", "--out", str(out), "--report-dir",
                   str(tmp_path / "rep")], out)
    assert "generator 'dcgan' needs at least 2" in err
    assert not out.exists() and not (tmp_path / "rep").exists()


def test_the_same_data_is_fine_for_a_generator_that_needs_one_image(tmp_path):
    from medbench.engine import check_feasible, load_dataset
    from medbench.suite import load_suite
    suite = quick(arms=[{"name": "over", "generator": "oversample"}],
                  protocol={"kind": "kfold", "folds": 2, "val_fraction": 0.3, "seeds": [0]})
    suite["dataset"] = {**suite["dataset"], "min_per_class": 1,
                        "options": {"counts": [60, 24, 4], "seed": 1}}
    loaded = load_suite(dump(tmp_path / "s.yaml", suite))
    ds, _ = load_dataset(loaded)
    check_feasible(loaded, ds)          # oversample copies a lone image: accepted


@pytest.mark.parametrize("change,expected", [
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"training": {"epochs": 2, "stages": [{"epochs": 0}, {"epochs": 0}]}}, "0 epochs in all"),
    ({"arms": [{"name": "g", "generator": "dcgan", "params": {"epochs": 0}}]},
     "epochs = 0; allowed: an integer >= 1"),
    ({"arms": [{"name": "p", "generator": "progan"}]}, "image size 16 is not base 7"),
    ({"dataset": {"loader": "phantom", "image_size": 9},
      "arms": [{"name": "g", "generator": "dcgan"}]}, "cannot be halved"),
])
def test_zero_budgets_and_sizes_a_generator_cannot_take_are_refused_by_validate(
        tmp_path, change, expected):
    suite = quick()
    for k, v in change.items():
        suite[k] = {**suite[k], **v} if isinstance(v, dict) else v
    err = refused(["validate", str(dump(tmp_path / "s.yaml", suite))])
    assert expected in err, err


@pytest.mark.parametrize("change,expected", [
    ({"training": {"selection": "recall"}},
     "field `training.selection` = \"recall\": unknown selection rule 'recall'; allowed: "
     "balanced_loss, loss, accuracy"),
    ({"training": {"selection": "val_loss"}}, "unknown selection rule 'val_loss'"),
    ({"classifiers": [{"name": "smallcnn", "training": {"selection": "f1"}}]},
     "classifier 'smallcnn': training.selection: unknown selection rule 'f1'"),
    ({"dataset": {"loader": "phantom", "positive_class": 1}}, "dataset.positive_class"),
])
def test_a_selection_rule_or_positive_class_of_the_wrong_kind_is_refused_by_validate(
        tmp_path, change, expected):
    suite = quick()
    for k, v in change.items():
        suite[k] = {**suite[k], **v} if isinstance(v, dict) else v
    path = dump(tmp_path / "s.yaml", suite)
    assert expected in refused(["validate", str(path)])
    out = tmp_path / "out"
    assert expected in refused(["run", str(path), "--out", str(out)], out)


# --------------------------------------------------------------------------- nothing written


def test_a_run_refused_for_its_data_leaves_nothing_that_refuses_the_corrected_suite(tmp_path):
    out = tmp_path / "out"
    bad = quick(arms=[{"name": "none"}])
    bad["dataset"]["options"] = {"counts": [60, 24, 12], "seed": 1, "colour": "red"}
    refused(["run", str(dump(tmp_path / "bad.yaml", bad)), "--out", str(out)], out)
    good = quick(arms=[{"name": "none"}])
    r = CliRunner().invoke(cli, ["run", str(dump(tmp_path / "good.yaml", good)), "--out",
                                 str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").exists() and not (out / LOCK).exists()


def test_a_refused_run_never_touches_results_already_on_disk(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("precious")
    bad = quick()
    bad["dataset"]["options"] = {"counts": [60, 24, 1]}
    r = CliRunner().invoke(cli, ["run", str(dump(tmp_path / "s.yaml", bad)), "--out", str(out)])
    assert r.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]
    assert (out / "results.csv").read_text() == "precious"


# --------------------------------------------------------------------------- parameters


def test_a_word_where_a_number_belongs_is_refused_by_validate_and_run(tmp_path):
    suite = quick(arms=[{"name": "g", "generator": "dcgan", "params": {"epochs": "ten"}}])
    path = dump(tmp_path / "s.yaml", suite)
    for args in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "out")]):
        err = refused(args, tmp_path / "out")
        assert err == "error: generator 'dcgan': epochs = 'ten'; allowed: an integer >= 1", err


def test_numbers_in_yaml_1_1_spelling_are_numbers_but_nan_is_not(tmp_path):
    suite = quick(arms=[{"name": "g", "generator": "dcgan", "params": {"g_lr": "G_LR"}}])
    text = yaml.safe_dump(suite, sort_keys=False)
    ok = CliRunner().invoke(cli, ["validate", str(dump(tmp_path / "a.yaml",
                                                         text.replace("G_LR", "2e-4")))])
    assert ok.exit_code == 0, ok.output            # YAML reads 2e-4 as a string
    err = refused(["validate", str(dump(tmp_path / "b.yaml", text.replace("G_LR", ".nan")))])
    assert "g_lr = nan; allowed: a number > 0" in err


@pytest.mark.parametrize("where,params,expected", [
    ("generator_params", {"smote": {"k_neighbors": "five"}}, "generator 'smote': k_neighbors"),
    ("generator_params", {"dcgan": {"g_lr": "fast"}}, "generator 'dcgan': g_lr = 'fast'"),
    ("classifier", {"hidden": "wide"}, "classifier 'smallcnn': hidden = 'wide'"),
    ("tuning", {"sma": {"pop_size": "many"}}, "optimizer 'sma': pop_size = 'many'"),
    ("dataset", {"counts": [60, 24, 12], "seed": "one"}, "dataset 'phantom': seed = 'one'"),
])
def test_every_kind_of_plugin_checks_its_declared_parameters(tmp_path, where, params, expected):
    suite = quick(arms=[{"name": "g", "generator": "dcgan"},
                        {"name": "s", "generator": "smote"}])
    if where == "generator_params":
        suite["generator_params"] = params
    elif where == "classifier":
        suite["classifiers"] = [{"name": "smallcnn", "params": params}]
    elif where == "dataset":
        suite["dataset"]["options"] = params
    else:
        suite["tuning"] = {"optimizers": params, "space": {"lr": {"low": 1e-4, "high": 1e-2}}}
    err = refused(["validate", str(dump(tmp_path / "s.yaml", suite))])
    assert expected in err and "allowed" in err, err


def test_plugins_params_lists_every_parameter_with_type_and_default():
    from medbench.registry import registry
    r = CliRunner().invoke(cli, ["plugins", "--params", "dcgan"])
    assert r.exit_code == 0, r.output
    specs = registry().get("generators", "dcgan").obj.param_specs()
    assert len(specs) >= 20
    rows = {line.split("│")[1].strip(): line for line in r.output.splitlines()
            if line.count("│") >= 5 and line.split("│")[1].strip()}
    for p in specs:
        assert p.name in rows, p.name
        assert f" {p.type} " in rows[p.name], rows[p.name]
    assert "256" in rows["latent"] and "integer >= 1" in rows["latent"]
    refused(["plugins", "--params", "stylegan9"])


# --------------------------------------------------------------------------- unreadable images


def test_unreadable_images_are_refused_naming_them_and_the_option(tmp_path):
    root = folder_data(tmp_path / "data")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "b" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    err = refused(["run", str(dump(tmp_path / "s.yaml", folder_suite(root))), "--out", str(out)],
                  out)
    assert "2 file(s) cannot be read" in err and "a/broken.png" in err and "b/empty.png" in err
    assert "dataset.unreadable: skip" in err


def test_unreadable_images_skipped_on_request_are_said_on_the_console_and_recorded(tmp_path):
    import json
    root = folder_data(tmp_path / "data")
    (root / "a" / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    path = dump(tmp_path / "s.yaml", folder_suite(root, unreadable="skip"))
    r = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 file(s) cannot be read as images: a/broken.png" in r.stderr
    assert "skipped" in r.stderr
    report = json.loads((out / "data_report.json").read_text())
    assert [u.split(" (")[0] for u in report["unreadable"]] == ["a/broken.png"]


def test_oversized_images_get_medbench_s_own_message(tmp_path, capfd):
    from medbench.api import DatasetSpec
    from medbench.plugins.datasets.folder import Folder
    root = folder_data(tmp_path / "data")
    huge_png(root / "a" / "bomb.png", 20000, 10000)          # 200 Mpx: PIL refuses it
    huge_png(root / "b" / "big.png", 10000, 9500)            # 95 Mpx: PIL would warn
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = Folder().load(DatasetSpec("folder", root, 12, 1))
    assert not [w for w in seen if "DecompressionBomb" in type(w.message).__name__
                or "decompression bomb" in str(w.message)]
    bomb = next(u for u in ds.unreadable if u.startswith("a/bomb.png"))
    assert "above 179 Mpx" in bomb and "\n" not in bomb
    err = capfd.readouterr().err
    assert "b/big.png: 10000 x 9500 px" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- one driver


@pytest.fixture
def live_pid():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait()


def _lock_for(folder: Path, pid: int) -> None:
    import json
    import socket
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                           "command": "medbench run other.yaml",
                                           "since": "2026-01-01 00:00:00"}))


def test_a_second_driver_on_a_live_folder_is_refused_naming_the_process(tmp_path, live_pid):
    out = tmp_path / "out"
    _lock_for(out, live_pid)
    suite = quick(tuning={"space": {"lr": {"low": 1e-4, "high": 1e-2}}, "budget": {"trials": 1}})
    path = dump(tmp_path / "s.yaml", suite)
    err = refused(["run", str(path), "--out", str(out)])
    assert f"process {live_pid}" in err and "medbench run other.yaml" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK]      # nothing else written
    _lock_for(out / "tune" / "random", live_pid)
    err = refused(["tune", str(path), "--optimizer", "random", "--out", str(out)])
    assert f"process {live_pid}" in err
    _lock_for(out / "ablate-synthetic", live_pid)
    err = refused(["ablate", str(path), "--component", "synthetic", "--out", str(out),
                   "--report-dir", str(tmp_path / "rep")])
    assert f"process {live_pid}" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        [f"{LOCK}", f"ablate-synthetic/{LOCK}", f"tune/random/{LOCK}"]


def test_a_killed_driver_does_not_leave_the_folder_stuck(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()                                 # a pid that no longer lives
    _lock_for(tmp_path, p.pid)
    lock = FolderLock(tmp_path, "medbench run s.yaml")
    lock.check()
    with lock:
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK).read_text()
        with pytest.raises(ResultsError, match=f"process {os.getpid()}"):
            FolderLock(tmp_path).check()     # a second driver in this very process
    assert not (tmp_path / LOCK).exists()


# --------------------------------------------------------------------------- the corpus


def _suite(**top) -> dict:
    s = quick()
    for path, value in top.items():
        node, keys = s, path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return s


GEN = "generator"
MALFORMED_SUITES = {
    "not yaml": "name: x\ndataset: [unclosed\n",
    "empty file": "",
    "a list": "- a\n- b\n",
    "python tag": "name: !!python/object/apply:os.system ['true']\n",
    "alias bomb": "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\nname: [*c, *c]\n",
    "tab indentation": "name: x\n\tdataset: {}\n",
    "missing dataset": {k: v for k, v in quick().items() if k != "dataset"},
    "missing classifiers": {k: v for k, v in quick().items() if k != "classifiers"},
    "typo field": {**quick(), "clasifiers": []},
    "bad name": _suite(name="my suite/1"),
    "negative size": _suite(dataset__image_size=-5),
    "two channels": _suite(dataset__channels=2),
    "unknown loader": _suite(dataset__loader="nosuch"),
    "duplicates policy": _suite(dataset__duplicates="perhaps"),
    "unreadable policy": _suite(dataset__unreadable="maybe"),
    "protocol kind": _suite(protocol__kind="bootstrap"),
    "one fold": _suite(protocol__folds=1),
    "val fraction": _suite(protocol__val_fraction=0.7),
    "no seeds": _suite(protocol__seeds=[]),
    "repeated seeds": _suite(protocol__seeds=[1, 1]),
    "duplicate arms": _suite(arms=[{"name": "none"}, {"name": "none"}]),
    "arm name slash": _suite(arms=[{"name": "a/b"}]),
    "tstr without generator": _suite(arms=[{"name": "t", "train_on": "synthetic"}]),
    "unknown generator": _suite(arms=[{"name": "g", GEN: "stylegan9"}]),
    "unknown generator parameter": _suite(arms=[{"name": "g", GEN: "dcgan",
                                                  "params": {"epoks": 2}}]),
    "generator word for number": _suite(arms=[{"name": "g", GEN: "dcgan",
                                                "params": {"batch_size": "big"}}]),
    "generator zero epochs": _suite(arms=[{"name": "g", GEN: "dcgan", "params": {"epochs": 0}}]),
    "generator bad choice": _suite(arms=[{"name": "g", GEN: "dcgan", "params": {"loss": "l7"}}]),
    "progan stage size": _suite(arms=[{"name": "g", GEN: "progan"}]),
    "smote word": _suite(generator_params={"smote": {"k_neighbors": "five"}},
                         arms=[{"name": "s", GEN: "smote"}]),
    "bad injection": _suite(arms=[{"name": "o", GEN: "oversample",
                                   "injection": {"policy": "magic"}}]),
    "fixed without per_class": _suite(arms=[{"name": "o", GEN: "oversample",
                                             "injection": {"policy": "fixed"}}]),
    "unknown classifier": _suite(classifiers=[{"name": "resnet999"}]),
    "classifier parameter": _suite(classifiers=[{"name": "smallcnn", "params": {"depth": 3}}]),
    "classifier dropout": _suite(classifiers=[{"name": "smallcnn", "dropout": 1.5}]),
    "lr word": _suite(training__lr="fast"),
    "zero epochs": _suite(training__epochs=0),
    "negative epochs": _suite(training__epochs=-1),
    "zero stages": _suite(training__stages=[{"epochs": 0}]),
    "unknown metric": _suite(metrics=["accuracy", "kappa"]),
    "amp word": _suite(training__amp="sometimes"),
    "groups without metadata": _suite(dataset__groups="patient"),
    "metadata without groups": _suite(dataset__metadata="meta.csv"),
    "empty groups column": _suite(dataset__groups="", dataset__metadata="meta.csv"),
    "near-duplicate hash": _suite(dataset__near_duplicates={"hash": "md5"}),
    "near-duplicate distance": _suite(dataset__near_duplicates={"max_distance": 65}),
    "near-duplicate distance word": _suite(dataset__near_duplicates={"max_distance": "few"}),
    "near-duplicate typo": _suite(dataset__near_duplicates={"max_distanse": 3}),
}

BROKEN_DATASETS = {
    "folds above the smallest class": lambda root: _suite(
        dataset__options={"counts": [60, 24, 2]}),
    "a one-image class": lambda root: _suite(dataset__options={"counts": [60, 24, 1]}),
    "a phantom option that does not exist": lambda root: _suite(
        dataset__options={"counts": [60, 24, 12], "noise": "lots"}),
    "a class too small for its generator": lambda root: _suite(
        dataset__options={"counts": [60, 24, 4]}, dataset__min_per_class=1,
        protocol={"kind": "kfold", "folds": 2, "val_fraction": 0.3},
        arms=[{"name": "g", GEN: "dcgan"}]),
    "a missing folder": lambda root: folder_suite(root / "nowhere"),
    "a single class folder": lambda root: folder_suite(folder_data(root / "d", classes=("a",))),
    "an empty class folder": lambda root: folder_suite(
        (folder_data(root / "d"), (root / "d" / "c").mkdir(), root / "d")[-1]),
    "a corrupt image": lambda root: folder_suite(
        (folder_data(root / "d"), (root / "d" / "a" / "x.png").write_bytes(b"junk"),
         root / "d")[-1]),
    "a zero-byte image": lambda root: folder_suite(
        (folder_data(root / "d"), (root / "d" / "b" / "z.png").write_bytes(b""), root / "d")[-1]),
    "a decompression bomb": lambda root: folder_suite(
        (folder_data(root / "d"), huge_png(root / "d" / "a" / "bomb.png", 20000, 10000),
         root / "d")[-1]),
    "only unreadable images": lambda root: folder_suite(
        ([(root / "d" / c).mkdir(parents=True) or (root / "d" / c / "x.png").write_bytes(b"no")
          for c in "ab"], root / "d")[-1]),
    "a class with too few images": lambda root: folder_suite(folder_data(root / "d", per_class=1)),
    "duplicates refused": lambda root: folder_suite(
        (folder_data(root / "d"), (root / "d" / "a" / "copy.png").write_bytes(
            (root / "d" / "a" / "0.png").read_bytes()), root / "d")[-1], duplicates="refuse"),
    "a class to drop that is not there": lambda root: folder_suite(
        folder_data(root / "d", classes=("a", "b", "c")), drop_classes=["z"]),
    "a metadata file that is not there": lambda root: _suite(
        dataset__groups="patient", dataset__metadata=str(root / "nowhere.csv")),
    "a groups column the metadata lacks": lambda root: _suite(
        dataset__groups="patient", dataset__metadata=str(metadata_csv(root, column="lesion"))),
    "images without a group": lambda root: _suite(
        dataset__groups="patient", dataset__metadata=str(metadata_csv(root, rows=50))),
    "fewer groups than folds": lambda root: _suite(
        dataset__groups="patient", dataset__metadata=str(metadata_csv(root, patients=2))),
    "near-duplicates refused": lambda root: folder_suite(
        (folder_data(root / "d"), Image.open(root / "d" / "a" / "0.png").point(
            lambda v: min(255, v + 3)).save(root / "d" / "a" / "brighter.png"), root / "d")[-1],
        duplicates="refuse", near_duplicates={"max_distance": 4}),
    "a damaged npz file": lambda root: {
        **quick(), "dataset": {"loader": "medmnist", "path": str(
            (root.mkdir(parents=True, exist_ok=True),
             (root / "pneumoniamnist.npz").write_bytes(b"PK\x03\x04 not a zip"), root)[-1]),
            "image_size": 28, "options": {"flag": "pneumoniamnist"}}},
}


def test_the_corpus_is_big_enough():
    assert len(MALFORMED_SUITES) >= 37 and len(BROKEN_DATASETS) >= 17


@pytest.mark.parametrize("case", sorted(MALFORMED_SUITES))
def test_malformed_suite_is_refused_by_run_leaving_nothing(case, tmp_path):
    out = tmp_path / "out"
    refused(["run", str(dump(tmp_path / "s.yaml", MALFORMED_SUITES[case])), "--out", str(out)],
            out)
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BROKEN_DATASETS))
def test_broken_dataset_is_refused_by_run_leaving_nothing(case, tmp_path):
    out = tmp_path / "out"
    suite = BROKEN_DATASETS[case](tmp_path / "data")
    refused(["run", str(dump(tmp_path / "s.yaml", suite)), "--out", str(out)], out)
    assert not out.exists()


def test_a_snapshot_an_arm_draws_from_must_be_kept_by_its_generator(tmp_path):
    """An arm that draws at a kimg milestone its generator does not keep, or that has no
    generator at all, is refused before any work."""
    suite = tiny_suite(arms=[{"name": "dc", "generator": "dcgan", "snapshot_kimg": 0.1,
                              "params": {"kimg": 0.2, "snapshots_kimg": [0.05]}}])
    out = tmp_path / "out"
    err = refused(["run", str(dump(tmp_path / "s.yaml", suite)), "--out", str(out)], out)
    assert "snapshot_kimg 0.1 is not a milestone" in err and "[0.05]" in err
    suite["arms"] = [{"name": "none", "snapshot_kimg": 0.1}]
    err = refused(["run", str(dump(tmp_path / "s2.yaml", suite)), "--out", str(out)], out)
    assert "snapshot_kimg needs a generator" in err
