"""`medbench tune`, `run --use-tuned` and `medbench ablate` end to end on tiny suites."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

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


def test_tune_writes_history_best_and_plot_and_never_reads_the_test_fold(write_suite, tmp_path,
                                                                         monkeypatch):
    import medbench.engine as engine_module

    class Poison:
        """Any use of a test fold while tuning fails the test."""
        def __getattr__(self, name):
            raise AssertionError("the test fold was read while tuning")

        def __array__(self, *a, **k):
            raise AssertionError("the test fold was read while tuning")

        def __len__(self):
            raise AssertionError("the test fold was read while tuning")

    real = engine_module.make_folds
    monkeypatch.setattr(engine_module, "make_folds",
                        lambda *a, **k: [dataclasses.replace(f, test=Poison()) for f in real(*a, **k)])
    out = tmp_path / "res"
    r = _invoke("tune", write_suite(tune_suite_dict()), "--optimizer", "random", "--out", out,
                "--quiet")
    assert r.exit_code == 0, r.output
    folder = out / "tune" / "random"
    recs = _journal(folder)
    assert len(recs) == 4 and all(rec["status"] == "ok" for rec in recs)
    space = SearchSpace.from_config(SPACE)
    assert all(space.contains(rec["params"]) for rec in recs)
    best = json.loads((folder / "best.json").read_text())
    assert best["value"] == min(rec["value"] for rec in recs)
    assert best["subject"] == {"arm": "over", "classifier": "smallcnn"}
    assert (folder / "convergence.png").stat().st_size > 1000
    hist = pd.read_csv(folder / "trials.csv")
    assert len(hist) == 4 and {"param_lr", "param_dropout", "param_siir", "val_loss"} <= set(hist.columns)
    # each trial's objective is the validation loss of the real validation split
    for rec in recs:
        assert rec["value"] == pytest.approx(rec["splits"][0]["val_loss"])


def test_use_tuned_trains_the_final_protocol_with_the_best_parameters(write_suite, tmp_path):
    path = write_suite(tune_suite_dict())
    out = tmp_path / "res"
    assert _invoke("tune", path, "--optimizer", "random", "--out", out, "-q").exit_code == 0
    best = json.loads((out / "tune" / "random" / "best.json").read_text())["params"]
    r = _invoke("run", path, "--use-tuned", out / "tune" / "random" / "best.json",
                "--out", tmp_path / "final", "-q")
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(tmp_path / "final" / "results.parquet")
    # the tuned SIIR decides how many synthetic images the subject arm received
    loaded = load_suite(path)
    from medbench.engine import Engine, load_dataset
    ds, _ = load_dataset(loaded)
    eng = Engine(loaded, ds, "cpu")
    for fold in range(3):
        counts = np.bincount(ds.labels[eng.folds(0)[fold].train].numpy(), minlength=3).tolist()
        want = sum(injection.plan("complementary", counts, ds.classes, siir=best["siir"]))
        got = df[(df.arm == "over") & (df.fold == fold)].n_synthetic.iloc[0]
        assert got == want
    assert (df[df.arm == "none"].n_synthetic == 0).all()
    manifest = json.loads((tmp_path / "final" / "manifest.json").read_text())
    assert "--use-tuned" in manifest["command"]
    r = _invoke("run", path, "--use-tuned", "sma", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "medbench tune" in r.output
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


@pytest.mark.parametrize("optimizer", ["sma", "optuna"])
def test_tune_resumes_after_sigkill_without_rerunning_finished_trials(write_suite, tmp_path,
                                                                      optimizer):
    path = write_suite(tune_suite_dict(tuning={"space": SPACE, "budget": {"trials": 6},
                                               "optimizers": {"sma": {"pop_size": 5}}}))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medbench", "tune", str(path), "--optimizer",
                             optimizer, "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    seen = 0
    for line in proc.stderr:                 # blocks on the child's output, no sleeping
        if line.startswith("[") and "] lr=" in line:
            seen += 1
            if seen == 3:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
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
                                      "budget": {"trials": 6}, "optimizers": {"sma": {"pop_size": 5}}})
    r = _invoke("tune", write_suite(changed, "changed.yaml"), "--optimizer", optimizer, "--out", out)
    assert r.exit_code == 2 and "another configuration" in r.output
    assert _journal(folder) == after


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
])
def test_bad_tuning_input_is_one_line_and_exit_2(write_suite, tmp_path, suite_change, args, message):
    suite = tune_suite_dict()
    suite.update(suite_change)
    r = _invoke("tune", write_suite(suite), "--out", tmp_path / "o", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_ablate_siir_writes_table_and_figure(write_suite, tmp_path):
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
    best = json.loads((out / "tune" / "random" / "best.json").read_text())["params"]
    opt = levels(loaded, "optimizer", None, out)
    assert [lv.label for lv in opt] == ["optimizer=default", "optimizer=random"]
    assert opt[0].loaded.suite.arms[0].injection.siir == 0.2
    assert opt[1].loaded.suite.arms[0].injection.siir == best["siir"]
    assert opt[1].loaded.suite.classifiers[0].dropout == best["dropout"]
    assert opt[1].loaded.suite.classifiers[0].training["lr"] == best["lr"]
    r = _invoke("ablate", write_suite(tune_suite_dict(), "s3.yaml"), "--component", "colour")
    assert r.exit_code == 2 and "unknown component" in r.output


def test_tune_with_a_shared_optuna_storage(write_suite, tmp_path):
    path = write_suite(tune_suite_dict())
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
