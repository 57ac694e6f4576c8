"""`medbench plan`: what a run will cost, counted by the engine's own enumeration, so
its counts of cells, generator fits and images are what a run then does; the estimate
`run` prints first, and its refusal of a run that cannot finish here; the progress
display's time left from the plan."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from medbench import plan as planmod
from medbench import progress as progressmod
from medbench.cli import cli
from medbench.engine import load_dataset
from medbench.plan import make_plan
from medbench.registry import registry
from medbench.runner import run_suite
from medbench.suite import load_suite

from conftest import ROOT, tiny_suite

# tiny GANs at 16 px: ProGAN grows 4 -> 8 -> 16 (per class, complementary injection),
# DCGAN per class (balance), the conditional GAN one model for all classes
GANS = {
    "progan": {"base": 4, "kimg": [0.04, 0.04, 0.06], "batch_size": 8, "fmaps_base": 32,
               "fmaps_max": 16, "fmaps_min": 8, "collapse_check": False},
    "dcgan": {"kimg": 0.1, "width": 8, "batch_size": 8, "collapse_check": False},
    "cgan": {"epochs": 2, "width": 8, "batch_size": 8, "collapse_check": False},
}


def gan_suite(**more) -> dict:
    return tiny_suite(
        protocol={"kind": "kfold", "folds": 2, "seeds": [0]},
        arms=[{"name": "none"},
              {"name": "progan", "generator": "progan",
               "injection": {"policy": "complementary", "siir": 0.3}},
              {"name": "dcgan", "generator": "dcgan", "injection": {"policy": "balance"}},
              {"name": "cgan", "generator": "cgan", "injection": {"policy": "balance"}}],
        classifiers=[{"name": "smallcnn", "params": {"hidden": 16}}],
        training={"epochs": 2, "batch_size": 16},
        generator_params=GANS, **more)


def _fits_on_disk(out: Path) -> dict[tuple, float]:
    """(generator, seed, fold, class) -> kimg of every model the run fitted (its record)."""
    found = {}
    for info in out.glob("generators/*/*/info.json"):
        d = json.loads(info.read_text())
        found[(d["generator"], d["seed"], d["fold"], d["class"] or "all classes")] = \
            d["record"].get("kimg")
    return found


def _check_counts(plan, out: Path) -> None:
    """The plan's cells, training sizes, epochs, fits and images shown against what the
    run in ``out`` recorded."""
    rows = pd.read_parquet(out / "results.parquet").drop_duplicates(
        ["arm", "classifier", "seed", "fold"])
    assert len(rows) == len(plan.cells)
    by_cell = {(r.arm, r.classifier, r.seed, r.fold): r for r in rows.itertuples()}
    for c in plan.cells:
        r = by_cell[(c.arm, c.classifier, c.seed, c.fold)]
        assert (c.n_train_real, c.n_synthetic, c.n_val, c.n_test) == \
            (r.n_train_real, r.n_synthetic, r.n_val, r.n_test), c
        assert 1 <= r.epochs_run <= c.epochs
    on_disk = _fits_on_disk(out)
    planned = {(f.generator, f.seed, f.fold, f.unit): f for f in plan.fits}
    assert set(planned) == set(on_disk)
    neural = [k for k in planned if k[0] in GANS or k[0] in ("progan", "dcgan", "cgan",
                                                             "lsgan", "vanilla", "ddpm")]
    assert neural
    for k in neural:
        assert planned[k].kimg == pytest.approx(on_disk[k], abs=1e-9), k


def test_plan_counts_equal_what_a_run_does(write_suite, tmp_path, one_thread):
    loaded = load_suite(write_suite(gan_suite()))
    ds, _ = load_dataset(loaded)
    out = tmp_path / "out"
    # one torch thread: two would spin against each other on a busy 2-core machine
    before = make_plan(loaded, ds=ds, counted_from="data", out=out, threads=1, estimate=False)
    assert len(before.cells) == 4 * 2 and all(c.state == "todo" for c in before.cells)
    # per fold: ProGAN and DCGAN one per minority class (2), the cGAN one for all
    assert sorted((f.generator, f.unit) for f in before.fits if f.fold == 0) == sorted([
        ("cgan", "all classes"), ("dcgan", ds.classes[1]), ("dcgan", ds.classes[2]),
        ("progan", ds.classes[1]), ("progan", ds.classes[2])])
    assert all(f.state == "todo" for f in before.fits)
    run_suite(loaded, out, quiet=True, threads=1)
    _check_counts(before, out)
    # what the folder and the cache hold is subtracted: nothing left in this folder,
    # and in another folder every cell comes from the cell cache, no fit is needed
    after = make_plan(loaded, ds=ds, counted_from="data", out=out, threads=1, estimate=False)
    assert after.todo_cells() == [] and after.todo_fits() == []
    elsewhere = make_plan(loaded, ds=ds, counted_from="data", out=tmp_path / "other",
                          threads=1, estimate=False)
    assert {c.state for c in elsewhere.cells} == {"cached"} and elsewhere.todo_fits() == []


def test_plan_of_the_quick_suite_equals_its_run(quick_runs, monkeypatch):
    out, _ = quick_runs("smoke-local")
    monkeypatch.setenv("MEDBENCH_CACHE", str(out.parent / "cache"))
    loaded = load_suite(ROOT / "suites" / "quick.yaml", "smoke")
    ds, _ = load_dataset(loaded)
    plan = make_plan(loaded, ds=ds, counted_from="data", estimate=False)
    assert len(plan.cells) == 11
    assert any(f.generator == "ddpm" for f in plan.fits)
    _check_counts(plan, out)


@pytest.mark.parametrize("name, params, n", [
    ("dcgan", {"epochs": 2, "batch_size": 8}, 21),        # a last batch of 1 is dropped
    ("dcgan", {"kimg": 0.05, "batch_size": 8}, 20),       # the last batch overshoots
    ("cgan", {"kimg": 0.03, "batch_size": 6, "balanced": True}, 17),
    ("progan", {"base": 4, "epochs": [1, 2, 1], "batch_size": [4, 8, 6], "n_critic": 2}, 19),
    ("progan", {"base": 4, "kimg": [0.01, 0.03, 0.02], "batch_size": 8, "n_critic": 2}, 13),
])
def test_a_generators_budget_is_what_its_fit_shows(name, params, n, one_thread):
    small = {"width": 8} if name != "progan" else {"fmaps_base": 16, "fmaps_max": 8,
                                                   "fmaps_min": 4}
    gen = registry().get("generators", name).obj(collapse_check=False, **small, **params)
    x = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8)
    y = torch.arange(n) % 2
    gen.fit(x, y, classes=["a", "b"], seed=0)
    assert sum(gen.budget(n, 16)) / 1000 == pytest.approx(gen.record["kimg"], abs=1e-9)
    if name == "progan":
        stages = [h for h in gen.history]
        per_stage = [0, 0, 0]
        prev = 0.0
        for h in stages:          # kimg is cumulative: each step's images go to its stage
            per_stage[h["stage"]] += round((h["kimg"] - prev) * 1000)
            prev = h["kimg"]
        assert gen.budget(n, 16) == per_stage


def test_plan_without_the_data_counts_from_counts(tmp_path):
    """The paper profile of covid4 planned on a machine without the database: from the
    counts the suite's header gives, with no calibration."""
    counts = "COVID=3616,Normal=10192,Lung_Opacity=6012,Viral Pneumonia=1345"
    r = CliRunner().invoke(cli, ["plan", str(ROOT / "suites" / "covid4.yaml"), "--profile",
                                 "paper", "--counts", counts, "--no-estimate", "--json",
                                 "--out", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)
    assert len(p["cells"]) == 11 * 10 and p["counts"] == [3616, 10192, 6012, 1345]
    # ProGAN, DCGAN, LSGAN, vanilla: one per minority class (3) per fold; the cGAN and
    # ddpm one per fold; SMOTE, oversampling and augmentation (conditional) one per fold
    per_arm = pd.Series([f["arm"] for f in p["fits"]]).value_counts().to_dict()
    assert per_arm == {"progan": 30, "dcgan": 30, "lsgan": 30, "vanilla": 30, "cgan": 10,
                       "ddpm": 10, "smote": 10, "oversample": 10, "augment": 10}
    # ProGAN's six stages of 250 ... 500 epochs over a fold's COVID images
    progan = next(f for f in p["fits"] if f["arm"] == "progan" and f["unit"] == "COVID")
    assert len(progan["shown"]) == 6
    assert progan["shown"][0] == 250 * progan["images"] - 250 * (progan["images"] % 256 == 1)
    cell = next(c for c in p["cells"] if c["arm"] == "none")
    assert cell["epochs"] == 30 and cell["n_train"] == cell["n_train_real"] > 15000
    assert p["wall_seconds"] is None


def test_plan_without_data_or_counts_says_what_it_cannot_count(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBENCH_DATA", str(tmp_path / "nothing"))
    r = CliRunner().invoke(cli, ["plan", str(ROOT / "suites" / "covid4.yaml"), "--profile",
                                 "paper", "--out", str(tmp_path / "none")])
    assert r.exit_code == 0, r.output
    assert "images not counted" in r.stdout and "--counts" in r.stdout
    assert "110" in r.stdout            # the cells are counted all the same (11 arms x 10 folds)


@pytest.mark.parametrize("counts", ["COVID=many", "7", "A=3,B=0", "=4,B=3"])
def test_bad_counts_are_refused_in_one_line(counts):
    r = CliRunner().invoke(cli, ["plan", str(ROOT / "suites" / "covid4.yaml"),
                                 "--counts", counts])
    assert r.exit_code == 2
    assert r.output.startswith("error: --counts") and len(r.output.strip().splitlines()) == 1


def test_plan_command_prints_a_table_and_json(write_suite, tmp_path, one_thread):
    path = write_suite(tiny_suite(protocol={"kind": "kfold", "folds": 2, "max_folds": 1}))
    r = CliRunner().invoke(cli, ["plan", str(path), "--out", str(tmp_path / "o"), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "epochs x images per cell" in r.stdout and "estimate:" in r.stdout
    assert "timing a few steps of smallcnn" in r.stderr
    r = CliRunner().invoke(cli, ["plan", str(path), "--json", "--out", str(tmp_path / "o"),
                                 "--threads", "1"])
    p = json.loads(r.stdout)
    assert len(p["cells"]) == 2 and p["wall_seconds"] > 0
    assert p["calibration"]["measured_now"] == []          # the second time: from the cache
    cell = p["cells"][0]
    assert cell["seconds"] > 0 and cell["n_train"] > 0


def test_run_prints_the_estimate_and_refuses_what_cannot_finish_here(write_suite, tmp_path,
                                                                     monkeypatch, one_thread):
    suite = tiny_suite(protocol={"kind": "kfold", "folds": 2, "max_folds": 1},
                       profiles={"smoke": {"training": {"epochs": 1}}, "paper": {}})
    path = write_suite(suite)
    monkeypatch.setattr(planmod, "FAR_SECONDS", 1e-6)     # anything is far beyond it now
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", str(path), "--profile", "paper", "--out", str(out),
                                 "--threads", "1"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "far beyond" in err
    assert "--profile smoke" in err and "--yes" in err
    assert not out.exists()                               # refused before anything is written
    r = CliRunner().invoke(cli, ["run", str(path), "--profile", "paper", "--out", str(out),
                                 "--threads", "1", "--no-prompt"])
    assert r.exit_code == 0, r.output
    assert "plan: 2 of 2 cell(s) to run" in r.stderr and "starting anyway" in r.stderr
    monkeypatch.setattr(planmod, "FAR_SECONDS", 7 * 86400)
    r = CliRunner().invoke(cli, ["run", str(path), "--profile", "paper", "--out", str(out),
                                 "--threads", "1"])
    assert r.exit_code == 0 and "plan: 0 of 2 cell(s) to run" in r.stderr


def test_time_left_follows_the_plan_not_the_mean_cell(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progressmod.time, "monotonic", lambda: clock[0])
    left = progressmod.PlannedTimeLeft({"none": 10.0, "gan1": 100.0, "gan2": 100.0})
    assert left.seconds() == pytest.approx(210.0)
    clock[0] += 20.0                  # the `none` cell took twice its plan
    left.finished("none")
    # the mean of the cells done would say 2 x 20 s; the plan says 200 s, times 2
    assert left.seconds() == pytest.approx(400.0)
    clock[0] += 150.0
    left.finished("gan1")
    assert left.seconds() == pytest.approx(100.0 * 170.0 / 110.0)


def test_plugins_of_one_module_with_the_same_parameters_are_timed_apart(write_suite, tmp_path,
                                                                       monkeypatch):
    # augment and smote share a module and have the same (empty) parameters; each needs a
    # timing of its own (the device's name once replaced the plugin's in the key)
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "cache"))
    loaded = load_suite(write_suite(tiny_suite(arms=[
        {"name": "none"}, {"name": "augment", "generator": "augment"},
        {"name": "smote", "generator": "smote"}])))
    said: list[str] = []
    cal = planmod.calibrate(loaded, torch.device("cpu"), 1, 3, set(), {"augment", "smote"},
                            say=said.append)
    assert sorted(cal["measured_now"]) == ["augment", "smote"]
    assert len(said) == 2 and len(list((tmp_path / "cache" / "timings").rglob("*.timings"))) == 2


def test_a_generator_without_a_step_clock_is_timed_phase_by_phase(monkeypatch, one_thread):
    # the fallback of the calibration (a generator written without NeuralGenerator's
    # step clock): one fit per phase, each phase's rate from the difference in time
    from medbench.generative import NeuralGenerator
    log = NeuralGenerator._log

    def no_clock(self, **row):
        log(self, **row)
        self.step_clock.clear()

    monkeypatch.setattr(NeuralGenerator, "_log", no_clock)
    used = []
    by_fits = planmod._rates_by_fits
    monkeypatch.setattr(planmod, "_rates_by_fits", lambda *a: used.append(1) or by_fits(*a))
    info = registry().get("generators", "progan")
    rates = planmod._time_generator(info, {"kimg": [1, 1], "batch_size": 8, "fmaps_base": 32,
                                           "fmaps_max": 16, "base": 8}, 16, 1, 2,
                                    torch.device("cpu"))
    assert used == [1] and len(rates["phases"]) == 2
    assert all(r >= 0 for r in rates["phases"]) and rates["sample"] > 0


def test_jobs_that_share_a_gpu_are_timed_together(write_suite, tmp_path, monkeypatch):
    # on a GPU, --jobs cells step on one device at once: the plan times each plugin with
    # that many worker processes together (here on the CPU, the mechanism alone) and
    # uses those rates; the rates of one job alone are kept beside them
    monkeypatch.setenv("MEDBENCH_CACHE", str(tmp_path / "cache"))
    loaded = load_suite(write_suite(tiny_suite(arms=[
        {"name": "none"}, {"name": "dcgan", "generator": "dcgan"}])))
    key = loaded.suite.classifiers[0].key
    shared = planmod.time_shared(loaded, torch.device("cpu"), 1, 3, "classifiers", key, 2)
    alone = planmod.calibrate(loaded, torch.device("cpu"), 1, 3, {key}, set())["classifiers"][key]
    assert set(shared) == set(alone) and all(v > 0 for k, v in shared.items() if k != "epoch")
    gen = planmod.time_shared(loaded, torch.device("cpu"), 1, 3, "generators", "dcgan", 2)
    assert len(gen["phases"]) >= 1 and all(r > 0 for r in gen["phases"]) and gen["sample"] > 0

    calls = []
    monkeypatch.setattr(planmod, "_shares_device", lambda dev: True)
    monkeypatch.setattr(planmod, "time_shared", lambda *a: calls.append(a[-3:]) or {
        **alone, "train": alone["train"] * 3})
    cal = planmod.calibrate(loaded, torch.device("cpu"), 1, 3, {key}, set(), jobs=4)
    assert calls == [("classifiers", key, 4)] and cal["shared_by"] == 4
    assert cal["classifiers"][key]["train"] == pytest.approx(3 * alone["train"])
    assert cal["alone"]["classifiers"][key] == alone
    assert planmod.sharing_slowdown(cal) == {key: pytest.approx(3.0)}
    # the shared timing is cached apart from the lone one, per number of jobs
    planmod.calibrate(loaded, torch.device("cpu"), 1, 3, {key}, set(), jobs=4)
    assert len(calls) == 1
    planmod.calibrate(loaded, torch.device("cpu"), 1, 3, {key}, set(), jobs=2)
    assert len(calls) == 2
    # a shared timing that fails leaves the lone rates in use and claims no slowdown
    monkeypatch.setattr(planmod, "time_shared", lambda *a: 1 / 0)
    cal = planmod.calibrate(loaded, torch.device("cpu"), 1, 3, {key}, set(), jobs=3)
    assert cal["classifiers"][key] == alone and planmod.sharing_slowdown(cal) == {}
    assert "ZeroDivisionError" in cal["untimed"][key]
