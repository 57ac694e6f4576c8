"""`medbench tune`: hyper-parameter search for one arm and classifier of a suite.

A trial sets the searched parameters on the suite's subject (seed 000: the learning rate
and dropout of the classifier and the SIIR of the ProGAN arm), trains the classifier on
the training part of an outer split (a fold of one protocol seed) and scores it on that
split's real validation part, which is carved from training data.

No tuned parameter may have seen an image that the cells trained with it are tested on
(tuning on the test folds of cross-validation biases its estimate: Cawley & Talbot,
JMLR 2010). ``tuning.scheme`` says how (``choose_scheme``):

- shared: one study, scored on the validation part of the first seed's first fold(s),
  allowed only when no outer split of the run (any seed, any fold) tests on those
  images: holdout on a source's fixed test split, or a single holdout split;
- nested: one study per outer split, trained and scored inside that split's training
  part, whose best parameters train that split's cells only (``apply_study``);
- auto (the default): shared when it is clean, nested otherwise (k-fold, or holdout
  carved afresh for each of several seeds).

Every finished trial is appended to its study's journal (``trials.jsonl``) before the
next one starts. A resumed study runs its optimizer again from the same seed; the
optimizer proposes the same parameters, and each one already in the journal is answered
from there instead of being trained again. Optimizers with their own storage (Optuna with
``storage:``) resume from that storage as well.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from . import __version__
from .engine import (Engine, check_feasible, check_plugins, count_folds, load_dataset,
                     suite_folds)
from .errors import MedbenchError, PluginError, ResultsError, SuiteError
from .files import atomic_text
from .metrics import lower_is_better, scalar_metrics
from .plotting import pyplot, save_figure
from .progress import ConsoleProgress
from .registry import registry
from .space import Budget, BudgetedObjective, BudgetExhausted, SearchSpace
from .store import FolderLock
from .suite import LoadedSuite, Suite, format_validation_error
from .trainer import pick_device
from .tune_report import best_so_far, read_journal, write_comparison

# parameter names a suite may search without spelling out where they live
ALIASES = {
    "lr": "training.lr", "weight_decay": "training.weight_decay",
    "momentum": "training.momentum", "batch_size": "training.batch_size",
    "epochs": "training.epochs", "dropout": "classifier.dropout",
    "siir": "arm.injection.siir",
}
SCOPES = ("training", "classifier", "arm")
# the score an optimizer sees for a trial that failed (NaN loss, a diverged GAN)
FAILED_SCORE = 1e6


# --------------------------------------------------------------------------- subject

def subject_of(suite: Suite) -> tuple[str, str]:
    """The (arm, classifier) that tune and ablate vary."""
    arms = [a.name for a in suite.arms]
    clfs = [c.key for c in suite.classifiers]
    arm = suite.subject.arm
    if arm is None:
        arm = next((a.name for a in suite.arms if a.generator), arms[0])
    elif arm not in arms:
        raise SuiteError(f"subject.arm {arm!r} is not an arm of the suite; arms: {', '.join(arms)}")
    clf = suite.subject.classifier or clfs[0]
    if clf not in clfs:
        raise SuiteError(f"subject.classifier {clf!r} is not a classifier of the suite; "
                         f"classifiers: {', '.join(clfs)}")
    return arm, clf


def target(name: str) -> tuple[str, list[str]]:
    """Where a searched parameter lives: (scope, path inside the scope)."""
    path = ALIASES.get(name, name).split(".")
    if path[0] not in SCOPES or len(path) < 2:
        raise SuiteError(f"tuning.space.{name}: unknown parameter; use one of "
                         f"{', '.join(ALIASES)} or a dotted path under training., "
                         "classifier. or arm.")
    if path[0] == "training" and len(path) != 2:
        raise SuiteError(f"tuning.space.{name}: training parameters are one level deep")
    return path[0], path[1:]


def _entry(raw: dict, what: str, key: str) -> dict:
    if what == "arm":
        return next(a for a in raw["arms"] if a["name"] == key)
    return next(c for c in raw["classifiers"] if (c.get("label") or c["name"]) == key)


def apply_params(loaded: LoadedSuite, params: dict[str, Any]) -> LoadedSuite:
    """The suite with ``params`` set on its subject: training settings and classifier
    fields on the subject classifier (so every arm trained with it sees them), arm fields
    on the subject arm."""
    arm, clf = subject_of(loaded.suite)
    raw = copy.deepcopy(loaded.raw)
    for name, value in params.items():
        scope, path = target(name)
        entry = _entry(raw, "arm" if scope == "arm" else "classifier", arm if scope == "arm" else clf)
        if scope == "training":
            entry = entry.setdefault("training", {})
        for part in path[:-1]:
            entry = entry.setdefault(part, {})
            if not isinstance(entry, dict):
                raise SuiteError(f"tuning.space.{name}: {part!r} is not a mapping in the suite")
        entry[path[-1]] = value
    return derived(loaded, raw, what="tuned parameters")


def derived(loaded: LoadedSuite, raw: dict, what: str) -> LoadedSuite:
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as err:
        raise SuiteError(f"{what}: " + format_validation_error(loaded.path, err, raw)) from None
    return LoadedSuite(suite=suite, path=loaded.path, profile=loaded.profile, raw=raw)


def objective_direction(suite: Suite) -> tuple[str, str]:
    t = suite.tuning
    scalar = scalar_metrics()
    if t.objective != "val_loss" and t.objective not in scalar:
        raise SuiteError(f"tuning.objective {t.objective!r} is not known; use val_loss or one "
                         f"of {', '.join(scalar)}")
    # a loss or a calibration error (ece, brier) is minimised, any other metric maximised
    return t.objective, t.direction or ("minimize" if lower_is_better(t.objective) else "maximize")


def check_tuning(loaded: LoadedSuite) -> SearchSpace:
    """Fail before any training: a bad space, an unknown parameter, a SIIR that would
    change nothing, a value the suite schema refuses."""
    s = loaded.suite
    space = SearchSpace.from_config(s.tuning.space)
    objective_direction(s)
    arm_name, _ = subject_of(s)
    arm = next(a for a in s.arms if a.name == arm_name)
    for name in space.names:
        scope, path = target(name)
        if scope == "arm" and path[0] == "injection" and path[-1] == "siir":
            if not arm.generator or arm.injection.policy != "complementary":
                raise SuiteError(f"tuning.space.{name}: SIIR only acts under the complementary "
                                 f"injection policy; give arm {arm_name!r} a generator and "
                                 "injection: {policy: complementary}")
        if scope == "arm" and path[0] in ("name", "generator"):
            raise SuiteError(f"tuning.space.{name}: an arm's name or generator cannot be tuned")
    for name, params in s.tuning.optimizers.items():    # their declared parameters
        registry().get("optimizers", name).obj.check("optimizer", name, params)
    for corner in (0.0, 1.0):   # the extreme values must make valid suites
        apply_params(loaded, space.from_unit([corner] * len(space)))
    return space


def evaluation_splits(loaded: LoadedSuite) -> list[tuple[int, int]]:
    """The (seed, fold) splits a shared study scores on, each trial their mean: the first
    ``tuning.folds`` folds of the first ``tuning.seeds`` protocol seeds."""
    s = loaded.suite
    n = min(s.tuning.folds, count_folds(loaded))
    return [(seed, f) for seed in s.protocol.seeds[:s.tuning.seeds] for f in range(n)]


# --------------------------------------------------------------------------- scheme

def run_splits(loaded: LoadedSuite) -> list[tuple[int, int]]:
    """The outer (seed, fold) splits a run of the suite makes cells of."""
    return [(seed, f) for seed in loaded.suite.protocol.seeds for f in range(count_folds(loaded))]


def split_tag(seed: int, fold: int) -> str:
    """A nested study's folder name, and its key in best.json."""
    return f"s{seed}-f{fold}"


def describe_splits(loaded: LoadedSuite, splits) -> str:
    """Outer splits in words: folds of the one seed, seeds of holdout, else s<seed>-f<fold>."""
    p = loaded.suite.protocol
    if len(p.seeds) == 1:
        word, items = "fold", [f for _, f in splits]
    elif p.kind == "holdout":
        word, items = "seed", [seed for seed, _ in splits]
    else:
        word, items = "split", [split_tag(*sp) for sp in splits]
    return f"{word}{'s' if len(items) > 1 else ''} {', '.join(map(str, items))}"


@dataclass
class Scheme:
    """How a study keeps every outer split's test images out of the parameters that
    train that split's cells."""

    name: str                                   # shared or nested
    why: str
    studies: dict[str, list[tuple[int, int]]]   # sub-folder ("": the optimizer's) -> splits scored


def choose_scheme(loaded: LoadedSuite, ds) -> Scheme:
    """``tuning.scheme`` against the data: the validation images a shared study would score
    on, against the test images of every outer split the run makes (any seed, any fold).
    A shared study that would see some is refused before any training; auto takes nested
    then."""
    s = loaded.suite
    asked = s.tuning.scheme
    folds = {seed: suite_folds(loaded, ds, seed) for seed in s.protocol.seeds}
    outer = {(seed, f): folds[seed][f] for seed, f in run_splits(loaded)}
    scored = evaluation_splits(loaded)
    val = np.unique(np.concatenate([outer[sp].val for sp in scored]))
    tested = {sp: f.test for sp, f in outer.items() if np.intersect1d(val, f.test).size}
    where = describe_splits(loaded, scored)
    if not tested and asked != "nested":
        return Scheme("shared", f"shared: the validation split of {where} is tested on by no "
                      "outer split", {"": scored})
    if tested and asked == "shared":
        seen = np.intersect1d(val, np.concatenate(list(tested.values()))).size
        raise SuiteError(f"tuning.scheme shared: {seen} of the {len(val)} validation images a "
                         f"shared study scores on ({where}) are test images of "
                         f"{describe_splits(loaded, sorted(tested))}, so the tuned parameters "
                         "would have seen test images; use scheme: nested (one study per "
                         "outer split) or auto")
    why = (f"nested: {s.protocol.kind}'s validation images of {where} are test images of "
           f"{describe_splits(loaded, sorted(tested))}" if tested
           else "nested: tuning.scheme asks for it")
    return Scheme("nested", why, {split_tag(*sp): [sp] for sp in outer})


# --------------------------------------------------------------------------- journal

class Journal:
    """``study.json`` (what the study is) and ``trials.jsonl`` (one line per finished
    trial, appended and flushed to disk before the next trial starts)."""

    def __init__(self, folder: Path, config: dict, about: dict | None = None):
        """``config`` is hashed (a changed one is refused); ``about`` is only recorded."""
        self.folder = Path(folder)
        self.path = self.folder / "trials.jsonl"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot write the study to {self.folder}: "
                               f"{exc.strerror or exc}; choose another folder with --out") from None
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        meta = self.folder / "study.json"
        if meta.exists():
            try:
                old = json.loads(meta.read_text())
            except json.JSONDecodeError:
                raise ResultsError(f"{meta} is corrupt; remove {self.folder} to start over") from None
            if old.get("study_hash") != digest:
                raise ResultsError(
                    f"{self.folder} holds a study of another configuration (hash "
                    f"{old.get('study_hash')} != {digest}: the suite, search space, objective, "
                    "scheme, optimizer or its seed changed); pass another --out or remove the "
                    "folder")
        else:
            atomic_text(meta, json.dumps({**config, **(about or {}), "study_hash": digest},
                                         indent=2, default=str))
        self.hash = digest

    def records(self) -> list[dict]:
        return read_journal(self.path)

    def append(self, record: dict) -> None:
        line = json.dumps(record, default=float) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def params_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


# --------------------------------------------------------------------------- study

@dataclass
class TuneResult:
    folder: Path
    records: list[dict]
    best: dict | None
    new_trials: int
    replayed: int
    scheme: str = "shared"
    why: str = ""
    splits: dict[str, "TuneResult"] = field(default_factory=dict)   # nested: tag -> its study


@dataclass
class _Setup:
    """What the studies of one optimizer in one `medbench tune` call share."""

    loaded: LoadedSuite
    ds: Any
    optimizer: str
    space: SearchSpace
    budget: Budget
    config: dict            # hashed into each study.json, with the study's splits
    why: str
    device: str | None
    quiet: bool
    command: str | None

    def summary(self, opt_params: dict) -> dict:
        """The fields every best.json starts with."""
        c = self.config
        return {
            "suite": c["suite"], "profile": c["profile"], "command": self.command,
            "optimizer": self.optimizer, "optimizer_params": opt_params, "seed": c["seed"],
            "budget": {"trials": self.budget.trials, "seconds": self.budget.seconds},
            "subject": c["subject"], "objective": c["objective"], "direction": c["direction"],
            "scheme": c["scheme"], "why": self.why,
        }


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def study_name(loaded: LoadedSuite, optimizer: str, seed: int | None) -> str:
    """The study's folder under ``tune/``: the optimizer's name at the suite's
    ``tuning.seed``, ``<optimizer>-seed<S>`` at another seed (so that several seeds of
    one optimizer sit side by side and ``--use-tuned <optimizer>-seed<S>`` finds one)."""
    return optimizer if seed is None or seed == loaded.suite.tuning.seed else f"{optimizer}-seed{seed}"


def tune_suite(loaded: LoadedSuite, optimizer: str, budget: Budget, out: Path, *,
               storage: str | None = None, device: str | None = None, quiet: bool = False,
               command: str | None = None, seed: int | None = None) -> TuneResult:
    """Run (or resume) the studies of one optimizer and seed (default ``tuning.seed``) in
    ``out/tune/<study_name>``: one
    (scheme shared), or one per outer split in ``s<seed>-f<fold>/`` with a summary
    best.json beside them (nested), each with the whole ``budget``. Nothing is written
    there before the suite, the data and the scheme are accepted, and one process at a
    time writes the studies (``FolderLock``), unless it is an Optuna study in a ``storage``
    that several processes share by design."""
    check_plugins(loaded)
    check_tuning(loaded)
    registry().get("optimizers", optimizer)
    lock = FolderLock(Path(out) / "tune" / study_name(loaded, optimizer, seed), command)
    if storage is None:
        lock.check()
    ds, _ = load_dataset(loaded)
    check_feasible(loaded, ds)
    scheme = choose_scheme(loaded, ds)
    with lock if storage is None else contextlib.nullcontext():
        return _tune_accepted(loaded, optimizer, budget, out, ds, scheme, storage=storage,
                              device=device, quiet=quiet, command=command, seed=seed)


def _tune_accepted(loaded: LoadedSuite, optimizer: str, budget: Budget, out: Path, ds,
                   scheme: Scheme, *, storage: str | None, device: str | None, quiet: bool,
                   command: str | None, seed: int | None) -> TuneResult:
    check_plugins(loaded)
    space = check_tuning(loaded)
    s = loaded.suite
    info = registry().get("optimizers", optimizer)
    opt_params = dict(s.tuning.optimizers.get(optimizer, {}))
    if storage is not None:
        opt_params["storage"] = storage
    objective, direction = objective_direction(s)
    arm, clf = subject_of(s)
    config = {
        "suite": s.name, "suite_hash": loaded.hash, "profile": loaded.profile,
        "subject": {"arm": arm, "classifier": clf}, "space": s.tuning.space,
        "objective": objective, "direction": direction, "scheme": scheme.name,
        "optimizer": optimizer, "optimizer_params": opt_params,
        "seed": s.tuning.seed if seed is None else int(seed),
    }
    setup = _Setup(loaded, ds, optimizer, space, budget, config, scheme.why, device, quiet,
                   command)
    root = Path(out) / "tune" / study_name(loaded, optimizer, seed)
    if scheme.name == "shared":
        res = _run_study(setup, root, scheme.studies[""], opt_params)
    else:
        # the root's study.json refuses a folder that holds a shared study (or another
        # configuration's splits) before any split is trained
        Journal(root, {**config, "splits": run_splits(loaded)}, about={"why": scheme.why})
        splits = {}
        for tag, scored in scheme.studies.items():
            params = dict(opt_params)
            if storage is not None:       # one study per split in the shared storage
                name = params.get("study_name") or info.obj.defaults["study_name"]
                params["study_name"] = f"{name}-{tag}"
            splits[tag] = _run_study(setup, root / tag, scored, params, tag)
        res = _nested_summary(setup, root, scheme, splits, opt_params)
    # with studies of other optimizers or seeds beside it: the head-to-head table and figure
    write_comparison(Path(out) / "tune")
    return res


def _run_study(setup: _Setup, folder: Path, splits: list[tuple[int, int]], opt_params: dict,
               tag: str = "") -> TuneResult:
    """One study: ``setup.budget`` trials scored on ``splits``, journalled in ``folder``."""
    loaded, s, optimizer = setup.loaded, setup.loaded.suite, setup.optimizer
    objective, direction = setup.config["objective"], setup.config["direction"]
    try:
        opt = registry().get("optimizers", optimizer).obj(**opt_params)
    except TypeError as exc:
        raise PluginError(f"optimizer {optimizer!r}: {exc}") from None
    journal = Journal(folder, {**setup.config, "optimizer_params": opt_params, "splits": splits},
                      about={"why": setup.why})
    memo = {params_key(r["params"]): r for r in journal.records()}
    dev = pick_device(setup.device or s.device)
    study = folder.parent.name if tag else folder.name      # the optimizer[-seedS]
    progress = ConsoleProgress(setup.budget.trials,
                               f"tune {s.name} ({study}{', ' + tag if tag else ''})",
                               setup.quiet)
    engine = Engine(loaded, setup.ds, dev, out=None, progress=progress)
    counters = {"new": 0, "replayed": 0}
    seen: list[dict] = []
    budgeted = BudgetedObjective(lambda p: 0.0, setup.budget)

    def evaluate(params: dict) -> float:
        key = params_key(params)
        rec = memo.get(key)
        replayed = rec is not None
        if replayed:
            counters["replayed"] += 1
            budgeted.used_seconds += float(rec.get("seconds", 0.0))
        else:
            rec = _run_trial(loaded, engine, params, splits, objective, direction)
            rec["number"] = len(journal.records())
            rec["optimizer"] = optimizer
            journal.append(rec)
            memo[key] = rec
            counters["new"] += 1
        seen.append(rec)
        best = _best(seen)
        best_txt = "-" if best is None else f"{objective} {best['value']:.4f}"
        status = (f"{objective} {rec['value']:.4f}" if rec["status"] == "ok"
                  else f"FAILED: {rec['reason']}")
        src = " (from the journal)" if replayed else ""
        progress.status(f"best {best_txt}")
        progress.finished(len(seen), f"{_fmt_params(params)} -> {status} ({rec['seconds']:.1f} s)"
                                     f"{src}; best {best_txt}")
        return float(rec["score"])

    budgeted.fn = evaluate
    if memo:
        progress.log(f"resuming {folder}: {len(memo)} finished trial(s) in the journal are "
                     "answered from it, not trained again")
    returned: list[dict] = []
    try:
        try:
            returned = opt.minimize(budgeted, setup.space, setup.budget,
                                    seed=setup.config["seed"]) or []
        except BudgetExhausted:
            pass
        for note in opt.notes:
            progress.note(note)
    finally:
        progress.close()
    best = _best(seen)
    # a study in a storage other processes share (Optuna) returns all of its trials,
    # numbered: the best is the study's, wherever it ran
    stored = [t for t in returned if "number" in t and t.get("value") is not None]
    if stored:
        top = min(stored, key=lambda t: t["value"])
        best = {"params": top["params"], "number": top["number"],
                "value": top["value"] if direction == "minimize" else -top["value"]}
        atomic_text(folder / "study_trials.csv", pd.DataFrame(
            [{"number": t["number"], "host": t.get("host"), "pid": t.get("pid"),
              "score": t["value"], **{f"param_{k}": v for k, v in t["params"].items()}}
             for t in stored]).to_csv(index=False))
    summary = {
        **setup.summary(opt_params), "plan": opt.plan, "splits": splits,
        **({"split": tag} if tag else {}), "trials": len(seen),
        "study_trials": len(stored) if stored else None,
        "seconds": round(sum(float(r["seconds"]) for r in seen), 2),
        "medbench": __version__, "host": socket.gethostname(),
    }
    if best is not None:
        summary.update(params=best["params"], value=best["value"], trial=best["number"])
        atomic_text(folder / "best.json", json.dumps(summary, indent=2, default=str))
    write_history(folder, seen, objective)
    # the order this run's optimizer visited the trials in (the journal may hold more)
    atomic_text(folder / "order.json", json.dumps([params_key(r["params"]) for r in seen]))
    plot_convergence(folder / "convergence.png", {folder.name: seen}, objective, direction)
    return TuneResult(folder, seen, best, counters["new"], counters["replayed"],
                      setup.config["scheme"], setup.why)


def _nested_summary(setup: _Setup, root: Path, scheme: Scheme, splits: dict[str, TuneResult],
                    opt_params: dict) -> TuneResult:
    """The nested study's best.json in ``root``: every split's best parameters and value
    (what `run --use-tuned` applies, split by split), and as ``value`` the mean of the
    splits' best values (what ``write_comparison`` compares). Written once every split
    has a successful trial."""
    objective, direction = setup.config["objective"], setup.config["direction"]
    records = [r for res in splits.values() for r in res.records]
    best = None
    if all(res.best is not None for res in splits.values()):
        per_split = {tag: {"seed": scheme.studies[tag][0][0], "fold": scheme.studies[tag][0][1],
                           "params": res.best["params"], "value": res.best["value"],
                           "trial": res.best["number"], "trials": len(res.records)}
                     for tag, res in splits.items()}
        best = {
            **setup.summary(opt_params), "trials": len(records),
            "seconds": round(sum(float(r["seconds"]) for r in records), 2),
            "value": sum(p["value"] for p in per_split.values()) / len(per_split),
            "per_split": per_split, "medbench": __version__, "host": socket.gethostname(),
        }
        atomic_text(root / "best.json", json.dumps(best, indent=2, default=str))
    plot_convergence(root / "convergence.png", {tag: res.records for tag, res in splits.items()},
                     objective, direction)
    return TuneResult(root, records, best, sum(r.new_trials for r in splits.values()),
                      sum(r.replayed for r in splits.values()), "nested", setup.why, splits)


def _run_trial(loaded: LoadedSuite, engine, params: dict, splits, objective: str,
               direction: str) -> dict:
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"params": params, "pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        trial = engine.derive(apply_params(loaded, params))
        arm, clf = subject_of(loaded.suite)
        per_split = [trial.validation_scores(arm, clf, seed, fold) for seed, fold in splits]
        value = sum(p[objective] for p in per_split) / len(per_split)
        if not math.isfinite(value):
            raise MedbenchError(f"{objective} is {value}")
        rec.update(status="ok", value=value, score=value if direction == "minimize" else -value,
                   splits=per_split)
    except PluginError:
        raise
    except MedbenchError as exc:
        rec.update(status="failed", reason=str(exc), value=float("nan"), score=FAILED_SCORE)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def _best(records: list[dict]) -> dict | None:
    ok = [r for r in records if r.get("status") == "ok"]
    return min(ok, key=lambda r: r["score"]) if ok else None


def write_history(folder: Path, records: list[dict], objective: str) -> None:
    rows = []
    for i, r in enumerate(records, 1):
        row = {"trial": i, "journal_number": r.get("number"), "status": r["status"], objective: r["value"],
               "seconds": r["seconds"], **{f"param_{k}": v for k, v in r["params"].items()}}
        rows.append(row)
    atomic_text(folder / "trials.csv", pd.DataFrame(rows).to_csv(index=False))


def plot_convergence(path: Path, studies: dict[str, list[dict]], objective: str,
                     direction: str) -> None:
    """Each trial's objective (dots) and the best so far (a step line), per optimizer."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0), dpi=120)
    for name, recs in studies.items():
        xs = [i for i, r in enumerate(recs, 1) if r["status"] == "ok"]
        ys = [r["value"] for r in recs if r["status"] == "ok"]
        if not xs:
            continue
        best = best_so_far(ys, direction)
        line, = ax.step(xs, best, where="post", label=f"{name} (best {best[-1]:.4f})")
        ax.scatter(xs, ys, s=12, alpha=0.45, color=line.get_color())
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} on the validation split")
    ax.set_title(f"convergence ({direction} {objective})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path.with_suffix(""), formats=("png",))


# --------------------------------------------------------------------------- use

@dataclass
class Study:
    """A finished study's best parameters: one set for every cell (shared), or one per
    outer (seed, fold) split for that split's cells only (nested)."""

    path: Path
    scheme: str
    params: dict[str, Any] | None = None                                  # shared
    per_split: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)  # nested

    def describe(self) -> str:
        if self.params is not None:
            return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in self.params.items())
        return "nested, per outer split: " + "; ".join(
            f"{split_tag(*sp)} {_fmt_params(p)}" for sp, p in sorted(self.per_split.items()))


def load_study(loaded: LoadedSuite, spec: str, results_root: Path) -> Study:
    """The best parameters of a finished study: ``spec`` is a best.json path or an
    optimizer name, looked up in ``results_root/tune/<name>/best.json``."""
    p = Path(spec)
    if p.suffix == ".json" or p.is_file():
        if not p.is_absolute() and not p.is_file():   # a suite's tuning.use: beside the suite
            p = loaded.path.parent / p
    else:
        p = results_root / "tune" / spec / "best.json"
    if not p.is_file():
        opt, _, seed = spec.partition("-seed")
        raise ResultsError(f"no tuned parameters at {p}; run `medbench tune {loaded.path.name}"
                           + (f" --profile {loaded.profile}" if loaded.profile else "")
                           + f" --optimizer {opt}" + (f" --seeds {seed}" if seed else "")
                           + "` first, or give the path of a best.json")
    try:
        best = json.loads(p.read_text())
        if best.get("scheme") == "nested":
            study = Study(p, "nested", per_split={(int(v["seed"]), int(v["fold"])): v["params"]
                                                  for v in best["per_split"].values()})
        else:
            study = Study(p, "shared", params=best["params"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ResultsError(f"{p} is not a medbench best.json (no `params`, nor `per_split` "
                           "of a nested study)") from None
    arm, clf = subject_of(loaded.suite)
    subj = best.get("subject") or {}
    if subj and (subj.get("arm"), subj.get("classifier")) != (arm, clf):
        raise ResultsError(f"{p} was tuned for arm {subj.get('arm')!r} and classifier "
                           f"{subj.get('classifier')!r}, but this suite's subject is {arm!r} and {clf!r}")
    return study


def apply_study(loaded: LoadedSuite, study: Study) -> LoadedSuite:
    """The suite trained with a study's parameters (``apply_params`` on its subject): a
    shared study's on every cell; a nested study's per outer split, each on that split's
    cells only (``LoadedSuite.per_split``), refused when the study lacks a split the run
    makes (it was tuned under other seeds or folds)."""
    if study.params is not None:
        return replace(apply_params(loaded, study.params), tuned=study.params)
    splits = run_splits(loaded)
    missing = [sp for sp in splits if sp not in study.per_split]
    if missing:
        raise ResultsError(f"{study.path} holds no tuned parameters for "
                           f"{describe_splits(loaded, missing)} of this run; tune the suite "
                           "with the seeds and folds it runs")
    return replace(loaded, per_split={sp: replace(apply_params(loaded, study.per_split[sp]),
                                                  tuned=study.per_split[sp])
                                      for sp in splits})
