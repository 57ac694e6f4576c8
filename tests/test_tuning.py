"""`medbench tune`, `run --use-tuned` and `medbench ablate` end to end on tiny suites."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from medbench import injection
from medbench.cli import cli
from medbench.space import Budget, SearchSpace
from medbench.suite import load_suite

from conftest import tiny_suite

SPACE = {"lr": {"low": 1e-4, "high": 3e-3, "log": True}, "dropout": {"low": 0.05, "high": 0.25},
         "siir": {"low": 0.0, "high": 0.5}}


def tune_suite_dict(**extra):
    suite = tiny_suite(arms=[{"name": "none"},
                             {"name": "over", "generator": "oversample",
                              "injection": {"policy": "complementary", "siir": 0.2}}])
    suite["subject"] = {"arm": "over", "classifier": "smallcnn"}
    suite["tuning"] = {"space": SPACE, "budget": {"trials": 4},
                       "optimizers": {"sma": {"pop_size": 5}}}
    suite.update(extra)
    return suite


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _journal(folder):
    return [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]


ONE_FOLD = {"kind": "kfold", "folds": 3, "seeds": [0], "max_folds": 1}   # shared is clean


def _split_of(folder):
    """The outer split a nested study's folder tunes for, or None: a shared study's."""
    m = re.fullmatch(r"s(\d+)-f(\d+)", folder.name)
    return None if m is None else (int(m[1]), int(m[2]))


@pytest.fixture
def image_reads(monkeypatch):
    """Poisons every outer split's test part (reading its images fails) and records every
    image the engine reads while tuning (training, fitting a generator, scoring: all go
    through ``Engine.real``) with the study that read it. ``leaks()``: per study, how
    many of the images it read are test images of a split its parameters train: its own
    split's (nested), any split's (shared). The test indices themselves may be read: the
    scheme is chosen from them."""
    import medbench.engine as engine_module
    import medbench.tuning as tuning_module

    tests, reads, current = {}, [], {}
    real_folds = engine_module.make_folds

    def recorded(*a, **k):
        folds = real_folds(*a, **k)
        tests.update({(k["seed"], f.index): f.test for f in folds})
        return folds

    real_journal = tuning_module.Journal.__init__

    def journal(self, folder, *a, **k):
        current["study"] = Path(folder)
        real_journal(self, folder, *a, **k)

    real_read = engine_module.Engine.real

    def read(self, fold, part="train"):
        if part == "test":
            raise AssertionError("a test part was read while tuning")
        reads.append((current["study"], fold.train if part == "train" else fold.val))
        return real_read(self, fold, part)

    monkeypatch.setattr(engine_module, "make_folds", recorded)
    monkeypatch.setattr(tuning_module.Journal, "__init__", journal)
    monkeypatch.setattr(engine_module.Engine, "real", read)

    def leaks() -> dict:
        out = {}
        for study, index in reads:
            split = _split_of(study)
            trained = [split] if split else list(tests)   # a shared study trains every split
            forbidden = np.concatenate([tests[sp] for sp in trained])
            out[study.name] = out.get(study.name, 0) + np.intersect1d(index, forbidden).size
        return out

    return leaks


def test_tune_never_reads_an_image_its_splits_test_on(write_suite, tmp_path, image_reads,
                                                      monkeypatch):
    """Under k-fold, fold 0's validation images are test images of folds 1 and 2: auto
    tunes one study per fold, each reading only its own fold's training part."""
    out = tmp_path / "res"
    path = write_suite(tune_suite_dict())
    r = _invoke("tune", path, "--optimizer", "random", "--budget", 3, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert image_reads() == {"s0-f0": 0, "s0-f1": 0, "s0-f2": 0}
    root = out / "tune" / "random"
    summary = json.loads((root / "best.json").read_text())
    assert summary["scheme"] == "nested" and summary["trials"] == 9
    assert summary["why"] == "nested: kfold's validation images of fold 0 are test images of folds 1, 2"
    assert sorted(summary["per_split"]) == ["s0-f0", "s0-f1", "s0-f2"]
    assert json.loads((root / "study.json").read_text())["scheme"] == "nested"
    space = SearchSpace.from_config(SPACE)
    values = []
    for tag, split in summary["per_split"].items():
        folder = root / tag
        recs = _journal(folder)
        assert len(recs) == 3 and all(rec["status"] == "ok" for rec in recs)
        assert all(space.contains(rec["params"]) for rec in recs)
        best = json.loads((folder / "best.json").read_text())
        assert best["value"] == min(rec["value"] for rec in recs) == split["value"]
        assert best["params"] == split["params"] and best["splits"] == [[0, split["fold"]]]
        assert best["subject"] == {"arm": "over", "classifier": "smallcnn"}
        assert best["scheme"] == "nested" and best["why"] == summary["why"]
        assert json.loads((folder / "study.json").read_text())["why"] == summary["why"]
        assert (folder / "convergence.png").stat().st_size > 1000
        hist = pd.read_csv(folder / "trials.csv")
        assert len(hist) == 3 and {"param_lr", "param_dropout", "param_siir", "val_loss"} <= set(hist.columns)
        # each trial's objective is the validation loss of the split's validation part
        for rec in recs:
            assert rec["value"] == pytest.approx(rec["splits"][0]["val_loss"])
        values.append(split["value"])
    assert summary["value"] == pytest.approx(np.mean(values))
    assert (root / "convergence.png").stat().st_size > 1000
    # the poison catches what tuning did before schemes: one study on fold 0 for all folds
    import medbench.tuning as tuning_module
    monkeypatch.setattr(tuning_module, "choose_scheme", lambda loaded, ds: tuning_module.Scheme(
        "shared", "forced", {"": tuning_module.evaluation_splits(loaded)}))
    r = _invoke("tune", path, "--optimizer", "random", "--budget", 1, "--out", tmp_path / "leaky",
                "--quiet")
    assert r.exit_code == 0, r.output
    assert image_reads()["random"] > 0


@pytest.mark.parametrize("protocol, options, scheme, why", [
    ({"kind": "kfold", "folds": 3}, {}, "nested", "kfold's validation images of fold 0 are "
                                                  "test images of folds 1, 2"),
    (ONE_FOLD, {}, "shared", "the validation split of fold 0 is tested on by no outer split"),
    ({"kind": "holdout", "seeds": [0, 1]}, {}, "nested", "holdout's validation images of seed "
                                                        "0 are test images of seed 1"),
    ({"kind": "holdout"}, {}, "shared", "the validation split of fold 0 is tested on"),
    ({"kind": "holdout", "seeds": [0, 1, 2]}, {"splits": True}, "shared",
     "the validation split of seed 0 is tested on by no outer split"),
    ({"kind": "holdout", "seeds": [0, 1, 2], "scheme": "nested"}, {"splits": True}, "nested",
     "tuning.scheme asks for it"),
])
def test_auto_scheme_is_shared_only_where_no_outer_split_tests_on_its_validation_images(
        write_suite, protocol, options, scheme, why):
    from medbench.engine import load_dataset
    from medbench.tuning import choose_scheme
    protocol = dict(protocol)
    asked = protocol.pop("scheme", "auto")
    suite = tune_suite_dict(protocol=protocol)
    suite["dataset"]["options"].update(options)
    suite["tuning"]["scheme"] = asked
    loaded = load_suite(write_suite(suite))
    got = choose_scheme(loaded, load_dataset(loaded)[0])
    assert got.name == scheme and why in got.why
    splits = [(seed, f) for seed in loaded.suite.protocol.seeds
              for f in range(3 if protocol["kind"] == "kfold" and "max_folds" not in protocol else 1)]
    if scheme == "nested":
        assert got.studies == {f"s{seed}-f{f}": [(seed, f)] for seed, f in splits}
    else:
        assert got.studies == {"": [(loaded.suite.protocol.seeds[0], 0)]}


def test_holdout_on_a_fixed_test_split_tunes_one_shared_study(write_suite, tmp_path):
    suite = tune_suite_dict(protocol={"kind": "holdout", "seeds": [0, 1]})
    suite["dataset"]["options"]["splits"] = True
    path, out = write_suite(suite), tmp_path / "res"
    r = _invoke("tune", path, "--optimizer", "random", "--budget", 2, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "random: scheme shared: the validation split of seed 0 is tested on by no outer split" in r.output
    folder = out / "tune" / "random"
    best = json.loads((folder / "best.json").read_text())
    assert best["scheme"] == "shared" and best["splits"] == [[0, 0]] and len(_journal(folder)) == 2
    assert json.loads((folder / "study.json").read_text())["scheme"] == "shared"
    assert not list(folder.glob("s*-f*"))
    r = _invoke("run", path, "--use-tuned", folder / "best.json", "--out", tmp_path / "final", "-q")
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(tmp_path / "final" / "results.parquet")
    assert set(df.seed) == {0, 1}
    assert (df.tuned_params == json.dumps(best["params"], sort_keys=True)).all()


def test_use_tuned_trains_each_fold_with_its_own_nested_parameters(write_suite, tmp_path,
                                                                   monkeypatch):
    import medbench.engine as engine_module

    def scores(self, arm, clf, seed, fold, progress=None):
        """Each fold's study prefers another SIIR (low, high, middle), so that the
        folds' best parameters differ."""
        return {"val_loss": abs(self.arm(arm).injection.siir - (0.0, 0.5, 0.25)[fold])}

    path = write_suite(tune_suite_dict())
    out = tmp_path / "res"
    with monkeypatch.context() as m:
        m.setattr(engine_module.Engine, "validation_scores", scores)
        assert _invoke("tune", path, "--optimizer", "random", "--budget", 3, "--out", out,
                       "-q").exit_code == 0
    per_split = json.loads((out / "tune" / "random" / "best.json").read_text())["per_split"]
    params = {v["fold"]: v["params"] for v in per_split.values()}
    assert params[0]["siir"] < params[2]["siir"] < params[1]["siir"]
    r = _invoke("run", path, "--use-tuned", out / "tune" / "random" / "best.json",
                "--out", tmp_path / "final", "-q")
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(tmp_path / "final" / "results.parquet")
    # each fold's tuned SIIR decides how many synthetic images its subject arm received
    loaded = load_suite(path)
    from medbench.engine import Engine, load_dataset
    ds, _ = load_dataset(loaded)
    eng = Engine(loaded, ds, "cpu")
    for fold in range(3):
        counts = np.bincount(ds.labels[eng.folds(0)[fold].train].numpy(), minlength=3).tolist()
        want = sum(injection.plan("complementary", counts, ds.classes, siir=params[fold]["siir"]))
        got = df[(df.arm == "over") & (df.fold == fold)].n_synthetic.iloc[0]
        assert got == want
        assert (df[df.fold == fold].tuned_params == json.dumps(params[fold], sort_keys=True)).all()
    assert (df[df.arm == "none"].n_synthetic == 0).all()
    manifest = json.loads((tmp_path / "final" / "manifest.json").read_text())
    assert df.suite_hash.unique().tolist() == [manifest["suite_hash"]]
    assert "--use-tuned" in manifest["command"]
    r = _invoke("run", path, "--use-tuned", "sma", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "medbench tune" in r.output
    # a run with splits the nested study did not tune is refused
    more = write_suite(tune_suite_dict(protocol={"kind": "kfold", "folds": 3, "seeds": [0, 1]}),
                       "more.yaml")
    r = _invoke("run", more, "--use-tuned", out / "tune" / "random" / "best.json", "--out",
                tmp_path / "y")
    assert r.exit_code == 2 and "no tuned parameters for splits s1-f0, s1-f1, s1-f2" in r.output
    # the suite field does the same as the option, with a path relative to the suite
    (path.parent / "tuned.json").write_text((out / "tune" / "random" / "best.json").read_text())
    r = _invoke("run", write_suite(tune_suite_dict(tuning={"space": SPACE, "use": "tuned.json"}),
                                   "with_use.yaml"), "--out", tmp_path / "final2", "-q")
    assert r.exit_code == 0, r.output
    again = pd.read_parquet(tmp_path / "final2" / "results.parquet")
    assert list(again.n_synthetic) == list(df.n_synthetic)
    r = _invoke("validate", write_suite(tune_suite_dict(tuning={"space": {"nope": [0, 1]}}),
                                        "bad.yaml"))
    assert r.exit_code == 2 and "unknown parameter" in r.output


def _tune_killed_at_the_third_trial(path, out, *args) -> None:
    """`medbench tune PATH ARGS --out OUT` in a child process, SIGKILLed as its third
    trial finishes (read from its progress lines, no sleeping)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medbench", "tune", str(path), *args,
                             "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    seen = 0
    for line in proc.stderr:                 # blocks on the child's output
        if line.startswith("[") and "] lr=" in line:
            seen += 1
            if seen == 3:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("optimizer", ["sma", "optuna"])
def test_tune_resumes_after_sigkill_without_rerunning_finished_trials(write_suite, tmp_path,
                                                                      optimizer):
    path = write_suite(tune_suite_dict(tuning={"space": SPACE, "budget": {"trials": 6},
                                               "optimizers": {"sma": {"pop_size": 5}}},
                                       protocol=ONE_FOLD))
    out = tmp_path / "killed"
    _tune_killed_at_the_third_trial(path, out, "--optimizer", optimizer)
    folder = out / "tune" / optimizer
    before = _journal(folder)
    assert 3 <= len(before) < 6
    r = _invoke("tune", path, "--optimizer", optimizer, "--out", out)
    assert r.exit_code == 0, r.output
    assert f"{6 - len(before)} trained now, {len(before)} from the journal" in r.stdout
    after = _journal(folder)
    assert len(after) == 6 and after[:len(before)] == before
    assert len({json.dumps(a["params"], sort_keys=True) for a in after}) == 6
    # the same study without the kill proposes the same trials in the same order
    r = _invoke("tune", path, "--optimizer", optimizer, "--out", tmp_path / "whole", "-q")
    assert r.exit_code == 0, r.output
    whole = _journal(tmp_path / "whole" / "tune" / optimizer)
    assert [w["params"] for w in whole] == [a["params"] for a in after]
    np.testing.assert_allclose([w["value"] for w in whole], [a["value"] for a in after], rtol=1e-5)
    # a changed configuration is refused rather than mixed into the journal
    changed = tune_suite_dict(tuning={"space": {**SPACE, "dropout": {"low": 0.0, "high": 0.3}},
                                      "budget": {"trials": 6}, "optimizers": {"sma": {"pop_size": 5}}},
                              protocol=ONE_FOLD)
    r = _invoke("tune", write_suite(changed, "changed.yaml"), "--optimizer", optimizer, "--out", out)
    assert r.exit_code == 2 and "another configuration" in r.output
    assert _journal(folder) == after


def test_a_killed_nested_study_resumes_each_split_from_its_journal(write_suite, tmp_path):
    path = write_suite(tune_suite_dict())
    out = tmp_path / "killed"
    # the third trial is the second split's first
    _tune_killed_at_the_third_trial(path, out, "--optimizer", "random", "--budget", "2")
    root = out / "tune" / "random"
    before = {tag: _journal(root / tag) if (root / tag / "trials.jsonl").exists() else []
              for tag in ("s0-f0", "s0-f1", "s0-f2")}
    assert len(before["s0-f0"]) == 2 and len(before["s0-f1"]) >= 1 and not before["s0-f2"]
    assert not (root / "best.json").exists()
    r = _invoke("tune", path, "--optimizer", "random", "--budget", 2, "--out", out)
    assert r.exit_code == 0, r.output
    for tag, recs in before.items():
        assert f"{tag}: 2 trial(s) ({2 - len(recs)} trained now, {len(recs)} from the journal)" in r.stdout
        after = _journal(root / tag)
        assert len(after) == 2 and after[:len(recs)] == recs
    assert json.loads((root / "best.json").read_text())["trials"] == 6


def test_tuning_siir_fits_each_generator_once(write_suite, tmp_path, monkeypatch):
    from medbench.registry import registry
    from medbench.tuning import tune_suite
    cls = registry().get("generators", "lsgan").obj
    fits = []
    real_fit = cls.fit

    def counting_fit(self, images, labels, **kw):
        fits.append(int(labels[0]))
        return real_fit(self, images, labels, **kw)

    monkeypatch.setattr(cls, "fit", counting_fit)
    suite = tune_suite_dict(arms=[{"name": "gan", "generator": "lsgan",
                                   "params": {"epochs": 1, "collapse_check": False},
                                   "injection": {"policy": "complementary", "siir": 0.2}}],
                            subject={"arm": "gan"})
    suite["tuning"]["space"] = {"siir": {"low": 0.1, "high": 0.5}}
    suite["protocol"] = ONE_FOLD
    loaded = load_suite(write_suite(suite))
    res = tune_suite(loaded, "random", Budget(trials=4), tmp_path / "res", quiet=True)
    assert len(res.records) == 4 and all(r["status"] == "ok" for r in res.records)
    assert len({r["params"]["siir"] for r in res.records}) == 4
    assert sorted(fits) == [1, 2]            # one GAN per minority class, for all four trials


@pytest.mark.parametrize("suite_change, args, message", [
    ({"arms": [{"name": "over", "generator": "oversample"}]}, [], "complementary"),
    ({"tuning": {"space": {"nope": [0, 1]}}}, [], "unknown parameter"),
    ({"tuning": {"space": {"lr": {"low": 0, "high": 1, "log": True}}}}, [], "log scale needs"),
    ({"tuning": {"objective": "loss"}}, [], "tuning.objective"),
    ({}, ["--optimizer", "nope"], "unknown optimizer plugin"),
    ({"subject": {"arm": "ghost"}}, [], "subject.arm"),
    ({"tuning": {"space": SPACE, "scheme": "bogus"}}, [], "tuning.scheme"),
    # fold 0's validation images are test images of folds 1 and 2
    ({"tuning": {"space": SPACE, "scheme": "shared"}}, [],
     "6 of the 6 validation images a shared study scores on (fold 0) are test images of "
     "folds 1, 2"),
])
def test_bad_tuning_input_is_one_line_and_exit_2(write_suite, tmp_path, suite_change, args, message):
    suite = tune_suite_dict()
    suite.update(suite_change)
    r = _invoke("tune", write_suite(suite), "--out", tmp_path / "o", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()         # refused before anything is written


def test_ablate_siir_writes_table_and_figure(write_suite, tmp_path):
    from medbench.files import portable_path
    path = write_suite(tune_suite_dict())
    out, rep = tmp_path / "res", tmp_path / "rep"
    r = _invoke("ablate", path, "--component", "siir", "--levels", "0,0.25,0.5", "--out", out,
                "--report-dir", rep, "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(rep / "ablation.csv", comment="#")
    assert list(table.level) == ["siir=0", "siir=0.25", "siir=0.5"]
    assert table.synthetic.iloc[0] == 0 and 0 < table.synthetic.iloc[1] < table.synthetic.iloc[2]
    assert (table.runs == 3).all() and table.accuracy_mean.between(0, 1).all()
    md = (rep / "ablation.md").read_text()
    assert "medbench ablate" in md and "--component siir" in md
    # the numbers depend on the threads: the recorded command keeps them, and says so
    assert "--levels 0,0.25,0.5 --threads 1`" in md and "1 torch thread(s) per cell" in md
    # and the folders it was given, so that the command, rerun, writes here again
    assert f"--out {portable_path(out)} --report-dir {portable_path(rep)} --levels" in md
    for ext in ("png", "pdf"):
        assert (rep / f"ablation.{ext}").stat().st_size > 1000
    first = {p.name: p.read_bytes() for p in rep.iterdir()}
    # a rerun trains nothing and rewrites the same files
    r = _invoke("ablate", path, "--component", "siir", "--levels", "0,0.25,0.5", "--out", out,
                "--report-dir", rep, "--threads", "1")
    assert r.exit_code == 0 and r.output.count("3 of 3 cells already done") == 3
    assert first == {p.name: p.read_bytes() for p in rep.iterdir()}


def test_ablate_other_components_build_their_levels(write_suite, tmp_path):
    from medbench.ablation import levels
    loaded = load_suite(write_suite(tune_suite_dict()))
    gen = levels(loaded, "generator", None, tmp_path)
    assert [lv.label for lv in gen] == ["generator=none", "generator=oversample"]
    assert gen[0].loaded.suite.arms[0].generator is None
    syn = levels(loaded, "synthetic", None, tmp_path)
    assert [lv.loaded.suite.arms[0].generator for lv in syn] == [None, "oversample"]
    inj = levels(loaded, "injection", None, tmp_path)
    assert [lv.loaded.suite.arms[0].injection.policy for lv in inj] == ["balance", "complementary"]
    clf = levels(loaded, "classifier", ["smallcnn", "resnet18"], tmp_path)
    assert [lv.loaded.suite.classifiers[0].name for lv in clf] == ["smallcnn", "resnet18"]
    pre = levels(loaded, "pretrained", None, tmp_path)
    assert [lv.loaded.suite.classifiers[0].pretrained for lv in pre] == [False, True]
    for lv in gen + syn + inj + clf:        # everything else is the suite's
        s = lv.loaded.suite
        assert s.protocol == loaded.suite.protocol and s.training == loaded.suite.training
    r = _invoke("ablate", write_suite(tune_suite_dict(), "s2.yaml"), "--component", "optimizer",
                "--out", tmp_path / "none")
    assert r.exit_code == 2 and "medbench tune" in r.output
    # with a finished study, its best parameters are a level beside the untuned suite
    out = tmp_path / "res"
    assert _invoke("tune", write_suite(tune_suite_dict(), "s4.yaml"), "--optimizer", "random",
                   "--budget", 2, "--out", out, "-q").exit_code == 0
    per_split = json.loads((out / "tune" / "random" / "best.json").read_text())["per_split"]
    opt = levels(loaded, "optimizer", None, out)
    assert [lv.label for lv in opt] == ["optimizer=default", "optimizer=random"]
    assert opt[0].loaded.suite.arms[0].injection.siir == 0.2 and not opt[0].loaded.per_split
    # a nested study's level trains each fold with that fold's parameters
    for split in per_split.values():
        best, tuned = split["params"], opt[1].loaded.for_split(0, split["fold"]).suite
        assert tuned.arms[0].injection.siir == best["siir"]
        assert tuned.classifiers[0].dropout == best["dropout"]
        assert tuned.classifiers[0].training["lr"] == best["lr"]
    r = _invoke("ablate", write_suite(tune_suite_dict(), "s3.yaml"), "--component", "colour")
    assert r.exit_code == 2 and "unknown component" in r.output


def test_tune_with_a_shared_optuna_storage(write_suite, tmp_path):
    path = write_suite(tune_suite_dict(protocol=ONE_FOLD))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    r = _invoke("tune", path, "--optimizer", "optuna", "--storage", url, "--budget", 3,
                "--out", tmp_path / "a", "-q")
    assert r.exit_code == 0, r.output
    import optuna
    study = optuna.load_study(study_name="medbench", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    best = json.loads((tmp_path / "a" / "tune" / "optuna" / "best.json").read_text())
    assert best["value"] == pytest.approx(min(t.value for t in done))
    assert best["study_trials"] == 3
    r = _invoke("tune", path, "--optimizer", "sma", "--storage", url, "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--storage" in r.output


def test_ablate_diffaug_varies_only_the_named_arms_augmentation(write_suite, tmp_path):
    from medbench.ablation import levels
    suite = tune_suite_dict()
    suite["arms"].append({"name": "dc", "generator": "dcgan", "params": {"kimg": 0.1},
                          "injection": {"policy": "balance"}})
    loaded = load_suite(write_suite(suite))
    lv = levels(loaded, "diffaug", None, tmp_path, arm="dc")
    assert [x.label for x in lv] == ["diffaug=off", "diffaug=on"]
    for x, on in zip(lv, (False, True)):
        arm = x.loaded.suite.arms[0]
        assert arm.generator == "dcgan" and x.loaded.suite.params_for(arm) == {"kimg": 0.1, "diffaug": on}
        assert x.loaded.suite.protocol == loaded.suite.protocol
    # ADA's adaptive probability, from p = 0, when named
    off, ada = levels(loaded, "diffaug", ["off", "ada"], tmp_path, arm="dc")
    assert (off.label, ada.label) == ("diffaug=off", "diffaug=ada")
    assert ada.loaded.suite.params_for(ada.loaded.suite.arms[0])["diffaug"] == {
        "adaptive": True, "p": 0.0, "speed_kimg": 20.0}
    r = _invoke("ablate", write_suite(suite, "s4.yaml"), "--component", "diffaug", "--arm", "dc",
                "--levels", "off,sometimes", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "levels of diffaug are off, on, ada" in r.output
    assert "Traceback" not in r.output
    r = _invoke("ablate", write_suite(suite, "s2.yaml"), "--component", "diffaug", "--arm", "ghost",
                "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--arm 'ghost'" in r.output and "Traceback" not in r.output
    r = _invoke("ablate", write_suite(tune_suite_dict(), "s3.yaml"), "--component", "diffaug",
                "--arm", "none", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "needs a subject arm with a generator" in r.output


def test_ablate_with_fidelity_adds_image_quality_and_report_finds_arm_folders(write_suite, tmp_path):
    """--arm puts the levels under ablate-<component>/<arm>/; --fidelity-images measures
    each level's synthetic images and the table carries FID, held-out KID and copy rate;
    `medbench report` regenerates the same table from the results alone."""
    suite = tune_suite_dict()
    suite["arms"].append({"name": "over2", "generator": "oversample",
                          "injection": {"policy": "balance"}})
    path, out, rep = write_suite(suite), tmp_path / "res", tmp_path / "rep"
    r = _invoke("ablate", path, "--component", "injection", "--arm", "over2", "--levels",
                "balance,complementary", "--fidelity-images", 20, "--extractor", "medbench-tiny",
                "--out", out, "--report-dir", rep, "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    assert (out / "ablate-injection" / "over2" / "injection=balance" / "fidelity.csv").is_file()
    table = pd.read_csv(rep / "ablation.csv", comment="#")
    assert list(table.level) == ["injection=balance", "injection=complementary"]
    assert (table.copy_rate == 1.0).all()          # oversampling copies its training images
    assert table.fid.notna().all() and table.kid_heldout.notna().all()
    md = (rep / "ablation.md").read_text()
    assert "copy rate" in md and "--arm over2" in md and "--fidelity-images 20" in md
    from medbench.figures import ablation_figures          # what `medbench report` calls
    figs = ablation_figures(out, tmp_path / "full")
    assert len(figs) == 1 and "(over2)" in figs[0].title
    again = tmp_path / "full" / "ablate-injection" / "over2" / "ablation.csv"
    assert again.read_text() == (rep / "ablation.csv").read_text()


def _budget_suite():
    suite = tiny_suite(arms=[
        {"name": "none"},
        {"name": "over", "generator": "oversample", "injection": {"policy": "balance"}},
        {"name": "dc", "generator": "dcgan", "injection": {"policy": "balance"},
         "params": {"kimg": 0.2, "width": 8, "latent": 16, "batch_size": 8,
                    "collapse_check": False}},
        {"name": "diff", "generator": "ddpm", "injection": {"policy": "balance"},
         "params": {"kimg": 0.1, "channels": [8, 16], "sample_steps": 2,
                    "collapse_check": False}},
        {"name": "sm", "generator": "smote", "injection": {"policy": "balance"}}])
    suite["protocol"] = ONE_FOLD
    return suite


def test_ablate_budget_levels_are_snapshots_of_one_fit_with_references(write_suite, tmp_path):
    from medbench.ablation import levels
    loaded = load_suite(write_suite(_budget_suite()))
    lv = levels(loaded, "budget", ["0.5", "1"], tmp_path)
    assert [x.label for x in lv] == ["dc-0.1kimg", "dc-0.2kimg", "diff-0.05kimg", "diff-0.1kimg",
                                     "reference=none", "reference=oversample"]
    for x in lv[:4]:
        arm = x.loaded.suite.arms[0]
        params = x.loaded.suite.params_for(arm)
        # every level of an arm has the same parameters (one fit, one cache key); the
        # whole budget draws from the finished fit, the others from its snapshots
        assert params["snapshots_kimg"] == [params["kimg"] / 2]
        assert arm.snapshot_kimg == (None if x.value["fraction"] == 1 else x.value["kimg"])
        assert x.loaded.suite.protocol == loaded.suite.protocol
    assert lv[4].loaded.suite.arms[0].generator is None
    assert lv[5].loaded.suite.arms[0].generator == "oversample"
    assert [x.label for x in levels(loaded, "budget", None, tmp_path, arm="dc")][:4] == [
        "dc-0.05kimg", "dc-0.1kimg", "dc-0.15kimg", "dc-0.2kimg"]
    for given, arm, message in [(None, "sm", "keeps no snapshots"),
                                (["0.5", "2"], None, "fractions of each generator's kimg"),
                                (["1"], None, "at least two fractions"),
                                (None, "ghost", "--arm 'ghost'")]:
        r = _invoke("ablate", write_suite(_budget_suite(), "b.yaml"), "--component", "budget",
                    *(["--levels", ",".join(given)] if given else []),
                    *(["--arm", arm] if arm else []), "--out", tmp_path / "o")
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    epochs = _budget_suite()
    epochs["arms"][2]["params"] = {"epochs": 1}
    r = _invoke("ablate", write_suite(epochs, "e.yaml"), "--component", "budget", "--arm", "dc",
                "--out", tmp_path / "o")
    assert r.exit_code == 2 and "needs the generator's budget in kimg" in r.output


def test_ablate_budget_writes_the_quality_utility_curve(write_suite, tmp_path):
    """Each arm fitted once per seed and fold (snapshots), the classifier trained on each
    snapshot's images, image quality measured for every level, a table with confidence
    intervals and a figure; `medbench report` regenerates the same table."""
    path, out, rep = write_suite(_budget_suite()), tmp_path / "res", tmp_path / "rep"
    r = _invoke("ablate", path, "--component", "budget", "--arm", "dc", "--levels", "0.5,1",
                "--fidelity-images", 20, "--extractor", "medbench-tiny", "--out", out,
                "--report-dir", rep, "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    root = out / "ablate-budget"
    def fits(level):        # the fitted model of each class the level drew from
        return {p.parent.name: json.loads(p.read_text())["key"]
                for p in (root / level / "generators").rglob("info.json")}
    assert fits("dc-0.1kimg") and fits("dc-0.1kimg") == fits("dc-0.2kimg"), \
        "every snapshot level of an arm draws from the same fit"
    # the snapshot's images are not the finished fit's
    from medbench.store import ResultsStore
    a = ResultsStore(root / "dc-0.1kimg").load()
    b = ResultsStore(root / "dc-0.2kimg").load()
    assert set(a["n_synthetic"]) == set(b["n_synthetic"]) and a["n_synthetic"].max() > 0
    table = pd.read_csv(rep / "ablation.csv", comment="#")
    assert list(table.level) == ["dc-0.1kimg", "dc-0.2kimg", "reference=none", "reference=oversample"]
    assert list(table.kimg[:2]) == [0.1, 0.2] and table.reference.tolist() == [False, False, True, True]
    assert table.fid_heldout[:2].notna().all() and table.copy_rate[3] == 1.0
    assert np.isnan(table.fid_heldout[2])           # none has no synthetic images
    for m in ("accuracy", "balanced_accuracy", "minority_recall", "roc_auc"):
        assert table[f"{m}_mean"].notna().all()
    md = (rep / "ablation.md").read_text()
    assert "--component budget" in md and "95% confidence interval" in md and "KID held out" in md
    assert (rep / "ablation.png").is_file() and (rep / "ablation.pdf").is_file()
    from medbench.figures import ablation_figures          # what `medbench report` calls
    figs = ablation_figures(out, tmp_path / "full")
    assert len(figs) == 1
    again = tmp_path / "full" / "ablate-budget" / "ablation.csv"
    assert again.read_text() == (rep / "ablation.csv").read_text()
