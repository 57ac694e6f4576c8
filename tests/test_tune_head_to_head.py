"""The optimizers head to head: `medbench tune --seeds`, the comparison of studies at
equal budget (best so far against trials, over seeds), and the tuned runs' test results
beside the untuned run in `medbench report`."""

import json
import math

import numpy as np
import pandas as pd
from click.testing import CliRunner

from medbench.cli import cli
from medbench.tune_report import Study, load_studies, mean_curve, summary_table, write_comparison

from conftest import tiny_suite

SPACE = {"lr": {"low": 1e-4, "high": 3e-3, "log": True}, "dropout": {"low": 0.05, "high": 0.25}}


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _study(values, direction="minimize", optimizer="x", seed=0):
    return Study(name=f"{optimizer}-seed{seed}", optimizer=optimizer, seed=seed, objective="v",
                 direction=direction, values=values, seconds=1.0, best={})


def test_best_so_far_keeps_the_best_value_and_skips_failed_trials():
    nan = math.nan
    np.testing.assert_array_equal(_study([nan, 3.0, 4.0, 2.0, nan, 2.5]).best_so_far(),
                                  [nan, 3.0, 3.0, 2.0, 2.0, 2.0])
    np.testing.assert_array_equal(_study([0.5, 0.4, 0.9], "maximize").best_so_far(),
                                  [0.5, 0.5, 0.9])


def test_summary_groups_the_seeds_of_each_optimizer():
    studies = [_study([3.0, 2.0, 1.0], optimizer="a", seed=0),
               _study([3.0, 1.0, 1.0], optimizer="a", seed=1),
               _study([5.0, 4.0, 4.0], optimizer="b", seed=0)]
    t = summary_table(studies).set_index("optimizer")
    assert t.loc["a", "seeds"] == "0,1" and t.loc["b", "seeds"] == "0"
    assert t.loc["a", "final_mean"] == 1.0 and t.loc["a", "final_sd"] == 0.0
    # the mean of the best-so-far curves: (3+2+1)/3 and (3+1+1)/3, averaged
    assert math.isclose(t.loc["a", "mean_best_so_far"], (2.0 + 5 / 3) / 2)
    # the first trial within 1% of each study's own final best: 3 and 2
    assert t.loc["a", "trials_to_1pct"] == 2.5 and t.loc["b", "trials_to_1pct"] == 2


def test_tune_with_seeds_compares_optimizers_and_reports_tuned_test_results(write_suite, tmp_path,
                                                                           monkeypatch):
    # headers write paths relative to the working folder, or by their last part when that
    # climbs more than two folders (files.portable_path): work where the results are, as a
    # user does, so the page's commands do not depend on where the clone lies
    monkeypatch.chdir(tmp_path)
    # one holdout split: its validation images are tested on by no split
    suite = tiny_suite(protocol={"kind": "holdout", "seeds": [0]})
    suite["tuning"] = {"space": SPACE, "budget": {"trials": 3}}
    path = write_suite(suite)
    out = tmp_path / "res"
    r = _invoke("tune", path, "--optimizer", "random,optuna", "--seeds", "0,1", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    tune = out / "tune"
    assert sorted(p.name for p in tune.iterdir() if p.is_dir()) == [
        "optuna", "optuna-seed1", "random", "random-seed1"]
    # another seed is another study: other parameters, its seed recorded
    first = [json.loads(line)["params"] for line in (tune / "random" / "trials.jsonl").open()]
    other = [json.loads(line)["params"] for line in (tune / "random-seed1" / "trials.jsonl").open()]
    assert first != other
    assert json.loads((tune / "random-seed1" / "best.json").read_text())["seed"] == 1
    assert "--seeds 1" in json.loads((tune / "random-seed1" / "best.json").read_text())["command"]
    studies = load_studies(tune)
    assert sorted((s.optimizer, s.seed) for s in studies) == [
        ("optuna", 0), ("optuna", 1), ("random", 0), ("random", 1)]
    table = pd.read_csv(tune / "comparison.csv")
    assert sorted(table.optimizer) == ["optuna", "random"] and set(table.seeds) == {"0,1"}
    curves = pd.read_csv(tune / "best_so_far.csv")
    for _, g in curves.groupby("study"):
        assert len(g) == 3 and (np.diff(g.best_so_far.to_numpy()) <= 1e-12).all()
    assert (tune / "convergence.png").stat().st_size > 1000

    # the final protocol untuned and with one study's parameters, then the report
    assert _invoke("run", path, "--out", out, "-q").exit_code == 0
    r = _invoke("run", path, "--use-tuned", tune / "random-seed1" / "best.json", "--out",
                out.with_name("res-tuned-random-seed1"), "-q")
    assert r.exit_code == 0, r.output
    report = tmp_path / "report"
    r = _invoke("report", out, "--out", report)
    assert r.exit_code == 0, r.output
    page = (report / "tune" / "comparison.md").read_text()
    assert "| optuna | 0,1 | 3 |" in page and "| random | 0,1 | 3 |" in page
    tested = pd.read_csv(report / "tune" / "tuned_test.csv")
    assert list(dict.fromkeys(tested.parameters)) == ["untuned", "random-seed1"]
    assert "medbench tune " in page and "random-seed1/best.json" in page
    page = (report / "report.html").read_text()          # the html report shows it too
    assert "Tuning: the optimizers head to head" in page and "random-seed1" in page


def test_bad_seeds_are_one_line_and_exit_2(write_suite, tmp_path):
    suite = tiny_suite()
    suite["tuning"] = {"space": SPACE, "budget": {"trials": 2}}
    r = _invoke("tune", write_suite(suite), "--seeds", "0,x", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "--seeds takes integers" in r.output
    assert not (tmp_path / "o").exists()


def _write_study(folder, recs, **best):
    folder.mkdir(parents=True)
    (folder / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (folder / "order.json").write_text(json.dumps([json.dumps(r["params"], sort_keys=True)
                                                   for r in recs]))
    (folder / "best.json").write_text(json.dumps(best))


def test_a_nested_study_enters_with_the_mean_over_its_splits(tmp_path):
    ok = lambda x, v: {"params": {"lr": x}, "status": "ok", "value": v}          # noqa: E731
    failed = {"params": {"lr": 9}, "status": "failed", "value": None}
    assert mean_curve([[ok(1, 3.0), ok(2, 1.0)], [failed, ok(3, 2.0)]], "minimize")[1] == 1.5
    assert math.isnan(mean_curve([[ok(1, 3.0)], [failed]], "minimize")[0])
    root = tmp_path / "tune" / "random"
    _write_study(root / "s0-f0", [ok(1, 3.0), ok(2, 1.0)])
    _write_study(root / "s0-f1", [ok(3, 2.0), ok(4, 4.0)])
    (root / "best.json").write_text(json.dumps({
        "optimizer": "random", "seed": 0, "objective": "val_loss", "direction": "minimize",
        "scheme": "nested", "value": 1.5, "seconds": 4,
        "per_split": {"s0-f0": {}, "s0-f1": {}}}))
    _write_study(tmp_path / "tune" / "sma", [ok(5, 2.5), ok(6, 2.0)], optimizer="sma", seed=0,
                 objective="val_loss", direction="minimize", scheme="shared", value=2.0,
                 params={"lr": 6}, seconds=2)
    studies = {s.name: s for s in load_studies(tmp_path / "tune")}
    np.testing.assert_allclose(studies["random"].best_so_far(), [2.5, 1.5])
    np.testing.assert_allclose(studies["sma"].best_so_far(), [2.5, 2.0])
    page = write_comparison(tmp_path / "tune").read_text()
    assert "| random | nested | 0 | 1.5000 | one set per split (2), in best.json |" in page


def test_tuning_seeds_scores_each_trial_over_several_training_seeds(write_suite, tmp_path):
    suite = tiny_suite(protocol={"kind": "holdout", "seeds": [0, 1]})
    suite["dataset"]["options"]["splits"] = True          # a fixed test split: shared is clean
    values = {}
    for n in (1, 2):
        suite["tuning"] = {"space": SPACE, "budget": {"trials": 2}, "seeds": n}
        out = tmp_path / f"seeds{n}"
        r = _invoke("tune", write_suite(suite, f"s{n}.yaml"), "--optimizer", "random",
                    "--out", out, "-q")
        assert r.exit_code == 0, r.output
        best = json.loads((out / "tune" / "random" / "best.json").read_text())
        assert best["scheme"] == "shared" and best["splits"] == [[0, 0], [1, 0]][:n]
        values[n] = [json.loads(line) for line in (out / "tune" / "random" / "trials.jsonl").open()]
    for one, two in zip(values[1], values[2]):              # the same proposals
        assert one["params"] == two["params"] and len(two["splits"]) == 2
        # the two-seed score is the mean of the first seed's (the one-seed study's) and
        # the second's, which differs from it
        s0, s1 = (sp["val_loss"] for sp in two["splits"])
        assert math.isclose(s0, one["value"], rel_tol=1e-5) and not math.isclose(s0, s1)
        assert math.isclose(two["value"], (s0 + s1) / 2)
