"""The hyper-parameter optimizer plugins: sma (mealpy), random, optuna.

Fast (no training): objectives are closed-form functions. Run with ``-s`` to see the
sphere comparison table.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medbench.errors import PluginError
from medbench.plugins.optimizers import optuna_study, random_search, sma
from medbench.plugins.optimizers.optuna_study import OptunaStudy
from medbench.plugins.optimizers.random_search import RandomSearch
from medbench.plugins.optimizers.sma import SMAOptimizer
from medbench.space import Budget, BudgetedObjective, BudgetExhausted, SearchSpace

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

MAKERS = {
    "random": RandomSearch,
    "sma": SMAOptimizer,
    "optuna": OptunaStudy,
}
CUBE = {f"x{i}": {"low": -5.0, "high": 5.0} for i in range(3)}
MIXED = {
    "lr": {"low": 1e-5, "high": 1e-1, "log": True},
    "layers": {"low": 1, "high": 4, "int": True},
    "width": {"low": 8, "high": 256, "int": True, "log": True},
    "act": {"choices": ["relu", "gelu", None, 3, True]},
    "dropout": [0.0, 0.5],
}


def sphere(center):
    return lambda p: float(sum((p[f"x{i}"] - c) ** 2 for i, c in enumerate(center)))


def key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


class Recorder:
    """A plain callable objective that keeps every call."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, params):
        value = self.fn(params)
        self.calls.append({"params": dict(params), "value": value})
        return value


def mixed_value(p: dict) -> float:
    act = {"relu": 0.0, "gelu": 0.1, None: 0.2, 3: 0.3, True: 0.4}[p["act"]]
    return (math.log10(p["lr"]) + 3) ** 2 + (p["layers"] - 2) ** 2 + p["dropout"] + act \
        + abs(math.log2(p["width"]) - 6)


# --------------------------------------------------------------------------- quality

def test_sphere_sma_and_optuna_beat_random():
    space = SearchSpace.from_config(CUBE)
    seeds = range(20)      # SMA's results are heavy-tailed: 5 seeds give a noisy mean
    table = {}
    for budget in (30, 60):
        for name, make in MAKERS.items():
            bests = []
            for seed in seeds:
                # the optimum moves with the seed; (1.3, -2.1, 0.7) for seed 0
                shift = np.random.default_rng(seed).uniform(-1, 1, 3) if seed else np.zeros(3)
                center = np.array([1.3, -2.1, 0.7]) + shift
                trials = make().minimize(sphere(center), space, Budget(trials=budget), seed=seed)
                assert len(trials) == budget
                bests.append(min(t["value"] for t in trials))
            table[name, budget] = (float(np.mean(bests)), float(np.median(bests)))
    print(f"\nshifted 3-d sphere in [-5, 5]^3: best value, mean (median) over {len(seeds)} seeds")
    for budget in (30, 60):
        print(f"  {budget:3d} trials: " + "  ".join(
            f"{n} {table[n, budget][0]:.3f} ({table[n, budget][1]:.3f})" for n in MAKERS))
    # measured at 60 trials: random 1.99, sma 0.83, optuna 0.15 (means)
    random_mean = table["random", 60][0]
    assert table["sma", 60][0] < 0.5 * random_mean
    assert table["optuna", 60][0] < 0.25 * random_mean


# --------------------------------------------------------------------------- contract

OPTIMIZER_CASES = [
    ("random", {}),
    ("sma", {}),
    ("sma", {"variant": "dev", "pop_size": 5}),
    ("optuna", {}),
    ("optuna", {"sampler": "random"}),
    ("optuna", {"sampler": "qmc"}),
    ("optuna", {"sampler": "gp", "n_startup_trials": 4}),
]


@pytest.mark.parametrize("name,params", OPTIMIZER_CASES)
@pytest.mark.parametrize("config", [CUBE, MIXED], ids=["cube", "mixed"])
def test_bounds_and_exact_budget(name, params, config):
    space = SearchSpace.from_config(config)
    fn = sphere((1.3, -2.1, 0.7)) if config is CUBE else mixed_value
    n = 8 if params.get("sampler") == "gp" else 23   # 23: not a multiple of pop_size
    obj = Recorder(fn)
    trials = MAKERS[name](**params).minimize(obj, space, Budget(trials=n), seed=3)
    assert len(obj.calls) == n
    assert [t["params"] for t in trials] == [c["params"] for c in obj.calls]
    assert [t["value"] for t in trials] == [c["value"] for c in obj.calls]
    for t in trials:
        assert space.contains(t["params"]), t["params"]


@pytest.mark.parametrize("name", MAKERS)
def test_budgeted_objective_stops_at_its_budget(name):
    space = SearchSpace.from_config(MIXED)
    calls = []
    obj = BudgetedObjective(lambda p: calls.append(p) or mixed_value(p), Budget(trials=40),
                            used_trials=33)   # a resumed study: 7 evaluations left
    trials = MAKERS[name]().minimize(obj, space, Budget(trials=40), seed=0)
    assert len(calls) == 7 and len(trials) == 7


@pytest.mark.parametrize("name", MAKERS)
def test_time_budget_spent_gives_no_trials(name):
    space = SearchSpace.from_config(CUBE)
    calls = []
    budget = Budget(seconds=0.01)
    obj = BudgetedObjective(lambda p: calls.append(p) or 0.0, budget, used_seconds=5.0)
    assert MAKERS[name]().minimize(obj, space, budget, seed=0) == []
    assert calls == []


@pytest.mark.parametrize("name", MAKERS)
def test_same_seed_same_trials(name):
    space = SearchSpace.from_config(MIXED)
    run = lambda seed: MAKERS[name]().minimize(mixed_value, space, Budget(trials=25), seed=seed)  # noqa: E731
    first, again, other = run(7), run(7), run(8)
    assert [t["params"] for t in first] == [t["params"] for t in again]
    assert [t["params"] for t in first] != [t["params"] for t in other]


@pytest.mark.parametrize("name,params", [("random", {}), ("sma", {}), ("sma", {"pop_size": 5}),
                                         ("optuna", {})])
def test_replay_proposes_the_same_parameters(name, params):
    """A resumed study answers the trials it already has from its journal: with the same
    seed, budget and values, the optimizer must propose the same parameters again."""
    space = SearchSpace.from_config(CUBE)
    first = Recorder(sphere((1.3, -2.1, 0.7)))
    MAKERS[name](**params).minimize(first, space, Budget(trials=20), seed=11)
    journal = {key(c["params"]): c["value"] for c in first.calls[:12]}

    def replay(p):
        k = key(p)
        return journal[k] if k in journal else 100.0 + sum(abs(v) for v in p.values())

    second = Recorder(replay)
    MAKERS[name](**params).minimize(second, space, Budget(trials=20), seed=11)
    assert [c["params"] for c in second.calls[:12]] == [c["params"] for c in first.calls[:12]]
    assert len(second.calls) == 20


# --------------------------------------------------------------------------- sma

def test_sma_plan_from_budget():
    space = SearchSpace.from_config(CUBE)
    opt = SMAOptimizer()
    opt.minimize(sphere((0, 0, 0)), space, Budget(trials=60), seed=0)
    # 15 initial agents + 3 epochs of 15 = 60; the 4th (last, zero-step) epoch never runs
    assert opt.plan == {"variant": "original", "pop_size": 15, "epochs": 4, "p_t": 0.03,
                        "evaluations": 60}
    assert opt.notes == []

    opt = SMAOptimizer(pop_size=10)
    obj = Recorder(sphere((0, 0, 0)))
    opt.minimize(obj, space, Budget(trials=3), seed=0)
    assert len(obj.calls) == 3
    assert opt.plan["pop_size"] == 5          # mealpy's smallest population
    assert any("pop_size 10" in n for n in opt.notes)
    assert any("random search" in n for n in opt.notes)

    opt = SMAOptimizer(epochs=2)
    obj = Recorder(sphere((0, 0, 0)))
    opt.minimize(obj, space, Budget(trials=100), seed=0)
    assert len(obj.calls) == 45 and opt.plan["evaluations"] == 45
    assert any("uses 45 of the 100" in n for n in opt.notes)

    opt = SMAOptimizer()
    budget = Budget(seconds=0.01)
    spent = BudgetedObjective(lambda p: 0.0, budget, used_seconds=5.0)
    assert opt.minimize(spent, space, budget, seed=0) == []
    assert opt.plan["epochs"] == sma.TIME_ONLY_EPOCHS
    assert len(opt.notes) == 1 and "time-only" in opt.notes[0]


def test_mealpy_lets_budget_exhausted_through():
    from mealpy import SMA, FloatVar

    def obj_func(x):
        raise BudgetExhausted()

    problem = {"bounds": FloatVar(lb=[0.0] * 2, ub=[1.0] * 2), "minmax": "min",
               "obj_func": obj_func, "log_to": None}
    with pytest.raises(BudgetExhausted):
        SMA.OriginalSMA(epoch=3, pop_size=5).solve(problem, seed=0)


def test_sma_survives_failed_trials():
    space = SearchSpace.from_config(CUBE)
    values = iter([math.inf, math.nan] * 3 + [1.0] * 100)
    obj = Recorder(lambda p: next(values) + p["x0"] ** 2)
    trials = SMAOptimizer(pop_size=5).minimize(obj, space, Budget(trials=30), seed=0)
    assert len(trials) == 30
    assert math.isinf(trials[0]["value"]) and math.isnan(trials[1]["value"])
    assert all(space.contains(t["params"]) for t in trials)


# --------------------------------------------------------------------------- optuna

def test_optuna_nan_is_returned_and_stored_as_fail():
    space = SearchSpace.from_config(CUBE)
    values = iter([math.nan, 2.0, math.inf, 1.0, 0.5])
    trials = OptunaStudy().minimize(lambda p: next(values), space, Budget(trials=5), seed=0)
    assert len(trials) == 5 and math.isnan(trials[0]["value"])


WORKER = textwrap.dedent("""
    import json, os, sys, time
    from medbench.plugins.optimizers.optuna_study import OptunaStudy
    from medbench.space import Budget, SearchSpace

    url, out = sys.argv[1], sys.argv[2]
    space = SearchSpace.from_config({f"x{i}": {"low": -5.0, "high": 5.0} for i in range(3)})
    mine = []

    def objective(p):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.025:   # some work, so the workers interleave
            pass
        value = sum((p[f"x{i}"] - c) ** 2 for i, c in enumerate((1.3, -2.1, 0.7)))
        mine.append({"params": p, "value": value, "pid": os.getpid()})
        return value

    print("ready", flush=True)
    sys.stdin.readline()          # the barrier: both workers start together
    opt = OptunaStudy(storage=url, study_name="shared")
    returned = opt.minimize(objective, space, Budget(trials=16), seed=0)
    json.dump({"mine": mine, "returned": returned, "plan": opt.plan}, open(out, "w"))
""")


def test_two_processes_share_one_study(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    url = f"sqlite:///{tmp_path}/study.db"
    outs = [tmp_path / f"out{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), url, str(out)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for out in outs]
    try:
        for p in procs:           # blocks until each worker has imported everything
            assert p.stdout.readline().strip() == "ready"
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads(out.read_text()) for out in outs]
    pids = {p.pid for p in procs}

    study = optuna.load_study(study_name="shared", storage=url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 16
    # anything else can only be a trial that lost the race for the last slot, never run
    for t in study.trials:
        assert t.state == TrialState.COMPLETE or t.user_attrs.get("medbench", "").startswith("not run")
    assert {t.user_attrs["pid"] for t in complete} == pids
    assert {t.user_attrs["host"] for t in complete} == {socket.gethostname()}

    # what the workers evaluated is exactly the study's COMPLETE trials, each once
    mine = [m for r in results for m in r["mine"]]
    assert len(mine) == 16
    study_rows = sorted((key(t.params), t.value, t.user_attrs["pid"]) for t in complete)
    worker_rows = sorted((key(m["params"]), m["value"], m["pid"]) for m in mine)
    assert study_rows == worker_rows
    assert len({row[0] for row in study_rows}) == 16
    # each worker returns the study's COMPLETE trials as it saw them at its end
    for r in results:
        numbers = [t["number"] for t in r["returned"]]
        assert numbers == sorted(numbers) and 0 < len(numbers) <= 16
        assert r["plan"]["storage"] == url
    assert len({r["plan"]["sampler_seed"] for r in results}) == 2


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _running_trial(study, params: dict, pid: int) -> int:
    """Add a RUNNING trial with these params, as a worker with this pid would leave it."""
    study.enqueue_trial(params)
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", pid)
    for name in params:
        t.suggest_float(name, -5.0, 5.0)
    assert t.params == params
    return t.number


def test_killed_worker_trial_is_failed_and_run_again(tmp_path):
    url = f"sqlite:///{tmp_path}/resume.db"
    space = SearchSpace.from_config(CUBE)
    study = optuna.create_study(study_name="resume", storage=url, direction="minimize")
    for i in range(2):            # two trials finished before the crash
        study.enqueue_trial({"x0": float(i), "x1": 0.0, "x2": 0.0})
        t = study.ask()
        for name in ("x0", "x1", "x2"):
            t.suggest_float(name, -5.0, 5.0)
        study.tell(t, 10.0 + i)
    stale_params = {"x0": 1.25, "x1": -2.5, "x2": 0.75}
    stale = _running_trial(study, stale_params, _dead_pid())

    obj = Recorder(sphere((1.3, -2.1, 0.7)))
    opt = OptunaStudy(storage=url, study_name="resume")
    returned = opt.minimize(obj, space, Budget(trials=5), seed=0)

    study = optuna.load_study(study_name="resume", storage=url)
    assert study.trials[stale].state == TrialState.FAIL
    assert obj.calls[0]["params"] == stale_params
    assert len(obj.calls) == 3          # 2 already COMPLETE + 3 = the budget of 5
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    redo = [t for t in complete if t.user_attrs.get("retry_of") == stale]
    assert len(redo) == 1 and redo[0].params == stale_params
    assert [t["number"] for t in returned] == [t.number for t in complete]
    assert any(f"trial {stale}" in n for n in opt.notes)

    # a second start finds nothing stale and nothing left to do
    again = Recorder(sphere((0, 0, 0)))
    assert len(OptunaStudy(storage=url, study_name="resume").minimize(
        again, space, Budget(trials=5), seed=0)) == 5
    assert again.calls == []


def test_running_trial_of_a_live_process_counts_against_the_budget(tmp_path):
    url = f"sqlite:///{tmp_path}/live.db"
    space = SearchSpace.from_config(CUBE)
    study = optuna.create_study(study_name="resume", storage=url, direction="minimize")
    live = _running_trial(study, {"x0": 0.0, "x1": 0.0, "x2": 0.0}, os.getppid())
    obj = Recorder(sphere((0, 0, 0)))
    opt = OptunaStudy(storage=url, study_name="resume")
    opt.minimize(obj, space, Budget(trials=4), seed=0)
    assert len(obj.calls) == 3
    assert optuna.load_study(study_name="resume", storage=url).trials[live].state == TrialState.RUNNING
    assert any("RUNNING in other processes" in n for n in opt.notes)


def test_shared_study_with_another_space_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    OptunaStudy(storage=url, study_name="s").minimize(
        sphere((0, 0, 0)), SearchSpace.from_config(CUBE), Budget(trials=2), seed=0)
    with pytest.raises(PluginError, match="different search space"):
        OptunaStudy(storage=url, study_name="s").minimize(
            mixed_value, SearchSpace.from_config(MIXED), Budget(trials=2), seed=0)


# --------------------------------------------------------------------------- plugin

@pytest.mark.parametrize("make,params,match", [
    (SMAOptimizer, {"popsize": 10}, "unknown parameter 'popsize'"),
    (SMAOptimizer, {"variant": "fast"}, "variant = 'fast'; use one of original, dev"),
    (SMAOptimizer, {"pop_size": 3}, r"pop_size = 3; allowed: an integer in \[5, 10000\]"),
    (SMAOptimizer, {"pop_size": "many"}, r"pop_size = 'many'; allowed: an integer"),
    (SMAOptimizer, {"epochs": 0}, "epochs"),
    (SMAOptimizer, {"p_t": 1.5}, "p_t"),
    (RandomSearch, {"seed": 1}, "takes no parameters"),
    (OptunaStudy, {"samplr": "tpe"}, "unknown parameter 'samplr'"),
    (OptunaStudy, {"sampler": "nope"}, "tpe, random, cmaes, qmc, gp"),
    (OptunaStudy, {"sampler": "random", "n_startup_trials": 3}, "n_startup_trials"),
    (OptunaStudy, {"n_startup_trials": -1}, "n_startup_trials"),
    (OptunaStudy, {"storage": "study.db"}, "database URL"),
    (OptunaStudy, {"storage": "sqlite:////no/such/folder/study.db"}, "does not exist"),
    (OptunaStudy, {"study_name": ""}, "study_name"),
])
def test_bad_parameters(make, params, match):
    with pytest.raises(PluginError, match=match):
        make(**params)


def test_sampler_with_a_missing_package():
    import importlib.util
    if importlib.util.find_spec("cmaes") is not None:
        OptunaStudy(sampler="cmaes")
    else:
        with pytest.raises(PluginError, match="pip install cmaes"):
            OptunaStudy(sampler="cmaes")


def test_plugins_register_and_import_light():
    got = {}
    for module in (sma, random_search, optuna_study):
        module.register_optimizers(register=lambda name, cls: got.__setitem__(name, cls))
    assert got == {"sma": SMAOptimizer, "random": RandomSearch, "optuna": OptunaStudy}
    assert all(cls.description for cls in got.values())
    code = ("import sys, medbench.plugins.optimizers.sma, medbench.plugins.optimizers.random_search, "
            "medbench.plugins.optimizers.optuna_study; "
            "print(sorted(m for m in ('mealpy', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
