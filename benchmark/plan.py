"""What a run will cost, before it is paid: ``medbench plan`` and the estimate that
``medbench run`` prints before its first cell.

The plan walks the engine's own enumeration, not a copy of it: the cells of
``expand_cells``, each fold's synthetic counts (``Engine.planned``), the models a run
fits for them (``Engine.fit_units``) under the keys the run looks up
(``Engine.generator_key``, ``Engine.draw_key``, ``cell_description``), and each
generator's own count of the images a fit shows (``Generator.budget``). What the
results folder or the cache already holds is subtracted the way the run skips it: a
finished cell, a cell in the cell cache, a draw in the synthetic cache, a model in the
generator cache.

Seconds come from a calibration: a few real training steps of each generator (every
phase: ProGAN's stages) and of each classifier, built from the plugins with the suite's
parameters at the suite's image size, on this device with the run's torch threads,
timed, and kept in the cache (kind ``timings``) under the device's name and the code
version, so that it is paid once. A fit then costs its phases' images shown times
their seconds per image plus a fixed part; a cell its epochs times its training images
(and the validation pass of each epoch, and the test fold) times the classifier's.
Early stopping can only end a cell sooner: the plan counts every epoch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .cache import Cache, cache_root, cell_key, code_version, content_key, fixed_rng
from .data import ImageSet
from .engine import Engine, count_folds, expand_cells
from .errors import DataError
from .execution import cell_description, run_setup
from .registry import registry
from .store import MANIFEST, ResultsStore
from .suite import LoadedSuite, StageConfig, TrainingConfig
from .trainer import Settings, Trainer, pick_device

__all__ = ["FAR_SECONDS", "CellPlan", "FitPlan", "Plan", "calibrate", "counts_from_report",
           "human_seconds", "label_set", "make_plan", "parse_counts", "plan_table"]

# "far beyond what the device can do in a day": a week of work. The calibration is
# good to a factor of about 2, so a run refused here would take days however lucky.
FAR_SECONDS = 7 * 86400
TIMINGS_VERSION = 2
PROBE_STEPS = 3          # training steps a calibration times per generator phase
CAL_IMAGES = 64          # random images a generator is calibrated on
STANDING_PROBE = 4       # batch-norm re-estimation batches of a calibration fit (see below)


@dataclass
class FitPlan:
    """One generator model a run fits (a class of a fold and seed, or the conditional
    model of all classes): on ``images`` real images, showing ``shown`` per phase."""

    arm: str
    generator: str
    seed: int
    fold: int
    unit: str                     # a class name, or "all classes"
    images: int
    shown: list[int]
    state: str                    # todo, cached (in the generator cache), drawn (its images are)
    cell: int | None = None       # order of the first pending cell that needs it
    seconds: float | None = None

    @property
    def kimg(self) -> float:
        return sum(self.shown) / 1000.0


@dataclass
class CellPlan:
    """One cell: what its classifier trains on, for how many epochs (per training
    stage, and whether its backbone is frozen) and, for a pending cell, its seconds
    (training, the synthetic images it draws, and the fits it is the first to need)."""

    order: int
    arm: str
    classifier: str
    seed: int
    fold: int
    state: str                    # todo, done (in the results folder), cached (in the cell cache)
    n_train_real: int | None = None
    n_synthetic: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    stages: list[tuple[int, bool]] = field(default_factory=list)
    seconds: float | None = None

    @property
    def epochs(self) -> int:
        return sum(e for e, _ in self.stages)

    @property
    def n_train(self) -> int | None:
        return None if self.n_train_real is None else self.n_train_real + self.n_synthetic


@dataclass
class Plan:
    suite: str
    profile: str | None
    device: str
    device_name: str
    threads: int
    jobs: int
    executor: str
    counted_from: str | None       # "data", "data report <path>", "--counts", or None
    classes: list[str]
    counts: list[int]
    cells: list[CellPlan]
    fits: list[FitPlan]
    notes: list[str] = field(default_factory=list)
    calibration: dict | None = None    # what the seconds come from (rates, when measured)
    generator_arms: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ totals
    def todo_cells(self) -> list[CellPlan]:
        return [c for c in self.cells if c.state == "todo"]

    def todo_fits(self) -> list[FitPlan]:
        return [f for f in self.fits if f.state == "todo"]

    @property
    def work_seconds(self) -> float | None:
        """Seconds of work left (one task after another), or None when not estimated."""
        if self.calibration is None or self.counted_from is None:
            return None
        return float(sum(c.seconds or 0.0 for c in self.todo_cells()))

    @property
    def wall_seconds(self) -> float | None:
        """Wall time left with ``jobs`` tasks at once (each timed with its share of the
        cores, so jobs divide the work)."""
        work = self.work_seconds
        if work is None:
            return None
        return work / max(1, min(self.jobs, max(1, len(self.todo_cells()))))

    def cell_seconds(self) -> dict[str, float]:
        """Cell key -> planned seconds (fits it is first to need included), pending cells."""
        from .engine import Cell
        return {Cell(c.order, c.arm, c.classifier, c.seed, c.fold).key: float(c.seconds or 0.0)
                for c in self.todo_cells()}

    def line(self) -> str:
        """The one-line estimate ``medbench run`` prints before it starts."""
        todo = self.todo_cells()
        fits = self.todo_fits()
        head = (f"plan: {len(todo)} of {len(self.cells)} cell(s) to run, "
                f"{len(fits)} generator fit(s)")
        if self.counted_from is None:
            return head + "; images not counted (no data): no estimate"
        kimg = sum(f.kimg for f in fits)
        images = sum(c.epochs * (c.n_train or 0) for c in todo)
        head += f" ({kimg:,.0f} kimg), classifiers {images / 1e6:,.2f} M images"
        wall = self.wall_seconds
        if wall is None:
            return head
        return (head + f": about {human_seconds(wall)} on {self.device} with {self.jobs} "
                f"job(s) (`medbench plan` details it)")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["work_seconds"] = self.work_seconds
        out["wall_seconds"] = self.wall_seconds
        for f, d in zip(self.fits, out["fits"]):
            d["kimg"] = f.kimg
        for c, d in zip(self.cells, out["cells"]):
            d["epochs"], d["n_train"] = c.epochs, c.n_train
        return out


def human_seconds(s: float) -> str:
    """3.2 s, 14 min, 5.1 h, 12 days, 2.3 years."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    if s < 365 * 86400:
        return f"{s / 86400:.0f} days"
    return f"{s / (365.25 * 86400):.1f} years"


# --------------------------------------------------------------------------- counts without data


def parse_counts(text: str) -> tuple[list[str], list[int]]:
    """``--counts``: ``NAME=N,NAME=N,...`` (class names as the data names them) or
    ``N,N,...`` (classes in order); images per class of the whole dataset."""
    names, counts = [], []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        name, _, number = part.rpartition("=") if "=" in part else (f"class {i}", "=", part)
        try:
            n = int(number)
        except ValueError:
            n = -1
        if n < 1 or not name.strip():
            raise DataError(f"--counts {text!r}: {part!r} is not NAME=N or N with N >= 1; "
                            "e.g. --counts COVID=3616,Normal=10192")
        names.append(name.strip())
        counts.append(n)
    if len(counts) < 2:
        raise DataError(f"--counts {text!r}: give the images of at least 2 classes, "
                        "e.g. --counts COVID=3616,Normal=10192")
    return names, counts


def counts_from_report(path: Path) -> tuple[list[str], list[int], dict | None] | None:
    """Classes, counts and per-split class counts from a run's ``data_report.json``."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        return list(report["classes"]), [int(c) for c in report["counts"]], \
            report.get("split_counts")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label_set(classes: list[str], counts: list[int], split_counts: dict | None,
               channels: int) -> ImageSet:
    """An ImageSet of the given class counts (and predefined splits) with 1 px images:
    the folds of a protocol depend only on the labels, so the plan can count them
    without the images."""
    labels, splits = [], []
    if split_counts:
        for split, per_class in split_counts.items():
            for c, n in enumerate(per_class):
                labels += [c] * int(n)
                splits += [split] * int(n)
    else:
        for c, n in enumerate(counts):
            labels += [c] * int(n)
    return ImageSet(torch.zeros((len(labels), channels, 1, 1), dtype=torch.uint8),
                    torch.tensor(labels, dtype=torch.int64), list(classes),
                    splits=splits or None, name="counts")


# --------------------------------------------------------------------------- the plan


def make_plan(loaded: LoadedSuite, *, ds: ImageSet | None = None, counts: tuple | None = None,
              counted_from: str | None = None, out: Path | None = None,
              device: str | None = None, executor: str = "local", jobs: int = 1,
              threads: int | None = None, estimate: bool = True, cold: bool = False,
              say: Callable[[str], None] | None = None) -> Plan:
    """The plan of a run of ``loaded`` into ``out`` on ``device``.

    ``ds``: the loaded data (as ``run`` loads it), then everything is counted exactly
    and the cache consulted. Else ``counts`` (classes, counts, per-split counts or None)
    count the images without the cache; with neither, only the cells are counted.
    ``estimate``: calibrate (or read the calibration from the cache) and put seconds
    on everything; ``say`` hears that a calibration is being measured. ``cold``: plan
    as on an empty results folder and cache (what a first run pays; the calibration is
    still read from the cache)."""
    s = loaded.suite
    executor, _, threads = run_setup(executor, jobs, threads)
    dev = pick_device(device or s.device)
    cells = expand_cells(loaded, count_folds(loaded))
    notes: list[str] = []
    done: set[str] = set()
    if out is not None and not cold and (Path(out) / MANIFEST).exists():
        store = ResultsStore(Path(out))
        if store.manifest().get("suite_hash") == loaded.hash:
            done = store.done()
        else:
            notes.append(f"{out} holds results of another configuration: `run` would refuse it")
    use_cache = ds is not None and not cold
    if ds is None and counts is not None:
        ds = label_set(*counts, channels=s.dataset.channels)
    plan = Plan(s.name, loaded.profile, str(dev), device_name(dev), threads, jobs, executor,
                counted_from if ds is not None else None,
                list(ds.classes) if ds is not None else [],
                ds.counts() if ds is not None else [], [], [], notes,
                generator_arms=[a.name for a in s.arms if a.generator])
    if ds is None:
        plan.cells = [CellPlan(c.order, c.arm, c.classifier, c.seed, c.fold,
                               "done" if c.key in done else "todo") for c in cells]
        return plan
    if not use_cache and not cold:
        notes.append("the cache is not consulted without the data (its keys are the data's "
                     "content)")
    engine = Engine(loaded, ds, dev)
    reg = registry()
    fits: dict[str, FitPlan] = {}
    drawn: set[str] = set()
    draw_seconds: list[tuple[int, str, int]] = []      # (cell order, generator key, n)
    for cell in cells:
        split = engine.for_split(cell.seed, cell.fold)     # a nested study's parameters
        arm, ccfg = split.arm(cell.arm), split.classifier(cell.classifier)
        fold = engine.folds(cell.seed)[cell.fold]
        wanted = engine.planned(arm, fold)
        real = 0 if arm.train_on == "synthetic" else len(fold.train)
        tcfg = split.training_config(ccfg)
        stages = [(st.epochs, st.freeze_backbone)
                  for st in (tcfg.stages or [StageConfig(epochs=tcfg.epochs)])]
        state = "done" if cell.key in done else "todo"
        if state == "todo" and use_cache and engine.cache.path(
                "cells", cell_key(cell_description(split, cell, threads))) is not None:
            state = "cached"
        plan.cells.append(CellPlan(cell.order, cell.arm, cell.classifier, cell.seed, cell.fold,
                                   state, real, int(sum(wanted)), len(fold.val), len(fold.test),
                                   stages))
        if not arm.generator:
            continue
        info = reg.get("generators", arm.generator)
        gen = info.obj(**s.params_for(arm))
        for unit in engine.fit_units(arm, wanted):
            key = engine.generator_key(arm, fold, cell.seed, unit)
            if key in fits:
                continue
            n = engine.fit_images(fold, unit)
            cached = use_cache and engine.gen_cache.path(key) is not None
            fits[key] = FitPlan(arm.name, arm.generator, cell.seed, cell.fold,
                                "all classes" if unit is None else ds.classes[unit], n,
                                gen.budget(n, s.dataset.image_size),
                                "cached" if cached else "drawn")
        if state != "todo":
            continue
        # the draws of a pending cell: those not in the synthetic cache need their model
        # (fitted now unless the generator cache has it) and cost their sampling
        for c, n in enumerate(wanted):
            if n <= 0:
                continue
            dkey, _ = engine.draw_key(arm, fold, cell.seed, c, n)
            if dkey in drawn or (use_cache and engine.cache.path("synthetic", dkey) is not None):
                continue
            drawn.add(dkey)
            key = engine.generator_key(arm, fold, cell.seed, c)
            draw_seconds.append((cell.order, key, n))
            f = fits[key]
            if f.state == "drawn":
                f.state, f.cell = "todo", cell.order
    plan.fits = list(fits.values())
    if not estimate:
        return plan
    plan.calibration = calibrate(loaded, dev, threads, len(ds.classes),
                                 {c.classifier for c in plan.todo_cells()},
                                 {f.generator for f in plan.todo_fits()} |
                                 {fits[k].generator for _, k, _ in draw_seconds}, say=say,
                                 jobs=min(jobs, max(1, len(plan.todo_cells()))))
    _put_seconds(plan, loaded, fits, draw_seconds)
    return plan


def _put_seconds(plan: Plan, loaded: LoadedSuite, fits: dict[str, FitPlan],
                 draws: list[tuple[int, str, int]]) -> None:
    """Seconds of every pending fit and cell from the calibration's rates."""
    cal = plan.calibration
    by_order = {c.order: c for c in plan.cells}
    for f in fits.values():
        rate = cal["generators"].get(f.generator)
        if rate is None:
            continue
        if rate["phases"]:
            f.seconds = rate["overhead"] + sum(r * k for r, k in zip(rate["phases"], f.shown))
        else:                    # no training loop: a fit scales with the images it keeps
            f.seconds = rate["fit"] * f.images
    for c in plan.todo_cells():
        rate = cal["classifiers"].get(c.classifier)
        if rate is None:              # its calibration failed: the cell itself will say why
            continue
        per_epoch = lambda frozen: (c.n_train * rate["train_frozen" if frozen else "train"]   # noqa: E731
                                    + c.n_val * rate["eval"] + rate["epoch"])
        c.seconds = (sum(e * per_epoch(frozen) for e, frozen in c.stages)
                     + (c.n_val + c.n_test) * rate["eval"] + rate["cell"])
    for order, key, n in draws:
        rate = cal["generators"].get(fits[key].generator)
        if rate is not None and by_order[order].seconds is not None:
            by_order[order].seconds += n * rate["sample"]
    for f in fits.values():
        if (f.state == "todo" and f.cell is not None and f.seconds is not None
                and by_order[f.cell].seconds is not None):
            by_order[f.cell].seconds += f.seconds


# --------------------------------------------------------------------------- calibration


def device_name(dev: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return dev.type


def _timed(fn: Callable[[], Any], dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def calibrate(loaded: LoadedSuite, dev: torch.device, threads: int, num_classes: int,
              classifiers: set[str], generators: set[str],
              say: Callable[[str], None] | None = None, jobs: int = 1) -> dict:
    """Seconds per image of each named classifier (by key) and generator of the suite
    on ``dev`` with ``threads`` torch threads, from the cache or measured now: a
    ``timings`` entry per plugin configuration, keyed by what a step's cost depends on
    (plugin, parameters, image size, channels, classes, batch and training settings,
    the device's name, threads, torch and the code version).

    ``jobs`` cells at once on one GPU share it: each plugin is then also timed with
    ``jobs`` worker processes stepping on the GPU together (``time_shared``), and the
    plan uses those rates (``out["alone"]`` keeps the rates of one job alone). On a CPU
    each job is timed with its own share of the cores, so the rates of one job hold."""
    s = loaded.suite
    cache = Cache(cache_root())
    size = s.dataset.image_size
    where = _where(dev, threads)
    out: dict[str, Any] = {"device": where, "generators": {}, "classifiers": {},
                           "measured_now": [], "seconds_measuring": 0.0}
    shared = jobs if _shares_device(dev) and jobs > 1 else 1
    if shared > 1:
        out["shared_by"], out["alone"] = shared, {"generators": {}, "classifiers": {}}
    for kind, name, desc, measure in _measures(loaded, dev, threads, num_classes, classifiers,
                                               generators):
        rates = _cached_or_measured(cache, kind, name, desc, measure, dev, threads, size,
                                    out, say)
        if rates is None:
            continue
        out[kind][name] = rates
        if shared == 1:
            continue
        share = {**desc, "what": desc["what"] + " sharing the device", "jobs": shared}
        together = _cached_or_measured(
            cache, kind, name, share,
            lambda k=kind, n=name: time_shared(loaded, dev, threads, num_classes, k, n, shared),
            dev, threads, size, out, say, f" with {shared} jobs at once on the GPU")
        if together is not None:    # else the lone rates stand, and no slowdown is claimed
            out["alone"][kind][name], out[kind][name] = rates, together
    return out


@functools.lru_cache(maxsize=1)
def _planner_version() -> str:
    """Hash of this module's source: how a timing was measured (this module is left out
    of the engine's code version, which keys results it does not change)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _shares_device(dev: torch.device) -> bool:
    """Whether the cells of ``--jobs`` share one device (a GPU) rather than divide it (the
    cores of a CPU, each job timed with its share)."""
    return dev.type == "cuda"


def _where(dev: torch.device, threads: int) -> dict:
    # "device_name", not "name": spread into each description after the plugin's name,
    # a "name" key replaced it, and two plugins of one module with the same parameters
    # (lsgan and vanilla, augment and smote) shared one timing
    return {"device": str(dev.type), "device_name": device_name(dev), "threads": threads,
            "torch": torch.__version__}


def _measures(loaded: LoadedSuite, dev: torch.device, threads: int, num_classes: int,
              classifiers: set[str], generators: set[str]) -> list[tuple]:
    """(kind, name, timing description, measure) of each named classifier and generator:
    ``measure()`` times a few of its steps and returns its rates."""
    s = loaded.suite
    reg = registry()
    size, channels = s.dataset.image_size, s.dataset.channels
    where = _where(dev, threads)
    jobs = []
    engine_like = _TrainingOf(loaded)
    for key in sorted(classifiers):
        ccfg = next(c for c in s.classifiers if c.key == key)
        info = reg.get("classifiers", ccfg.name)
        tcfg = engine_like.training_config(ccfg)
        settings = Settings.resolve(tcfg, info.obj.default_training or {})
        frozen = any(st.freeze_backbone for st in (tcfg.stages or []))
        desc = {"v": TIMINGS_VERSION, "what": "classifier", "name": ccfg.name,
                "params": ccfg.params, "dropout": ccfg.dropout, "size": size,
                "channels": channels, "classes": num_classes, "frozen": frozen,
                "batch": settings.batch_size, "optimizer": settings.optimizer,
                "training": tcfg.model_dump(mode="json", include={"augment", "amp",
                                                                   "channels_last", "compile",
                                                                   "cudnn_benchmark",
                                                                   "eval_batch_size"}),
                **where, "code": code_version(info.obj), "planner": _planner_version()}
        jobs.append(("classifiers", key, desc, lambda c=ccfg, i=info, t=tcfg, st=settings, f=frozen:
                     _time_classifier(c, i, t, st, f, size, channels, num_classes, dev)))
    for name in sorted(generators):
        arm = next(a for a in s.arms if a.generator == name)
        info = reg.get("generators", name)
        params = s.params_for(arm)
        cond = info.obj.conditional
        desc = {"v": TIMINGS_VERSION, "what": "generator", "name": name, "params": params,
                "size": size, "channels": channels, "classes": num_classes if cond else 1,
                **where, "code": code_version(info.obj), "planner": _planner_version()}
        jobs.append(("generators", name, desc, lambda i=info, p=params:
                     _time_generator(i, p, size, channels, num_classes, dev)))
    return jobs


def _cached_or_measured(cache: Cache, kind: str, name: str, desc: dict, measure: Callable,
                        dev: torch.device, threads: int, size: int, out: dict,
                        say: Callable[[str], None] | None, how: str = "") -> dict | None:
    """The rates of ``desc`` from the cache, or measured now and cached; None (and the
    reason in ``out["untimed"]``) when the plugin failed."""
    key = content_key(desc)
    hit = cache.load("timings", key, lambda p: json.loads(p.read_text(encoding="utf-8")))
    if isinstance(hit, dict) and hit.get("desc") == json.loads(json.dumps(desc, default=str)):
        return hit["rates"]
    if say is not None:
        say(f"timing a few steps of {name} at {size} px on {dev.type}{how} (once per device "
            "and code version)")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        with fixed_rng("calibration:" + key, dev):     # the run's numbers stay its own
            rates = measure()
    except Exception as exc:  # noqa: BLE001 - a plugin's failure is its cells' to report
        # the estimate goes on without this plugin: a run must not be refused (exit 2)
        # for what its cells would report as failures (exit 1), nor a plan fail for it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        out.setdefault("untimed", {})[name] = f"{type(exc).__name__}: {first}"
        if say is not None:
            say(f"could not time {name} for the plan ({type(exc).__name__}: {first}); "
                "the estimate leaves it out")
        return None
    finally:
        torch.set_num_threads(old)
    spent = time.perf_counter() - t0
    out["seconds_measuring"] += spent
    out["measured_now"].append(name)
    blob = json.dumps({"desc": desc, "rates": rates, "seconds": spent}, default=str)
    cache.store("timings", key, lambda p, b=blob: p.write_text(b, encoding="utf-8"), ".timings",
                f"timings of {name} at {size} px on {desc['device_name']}", {})
    return rates


SHARED_TIMEOUT = 1800     # seconds a shared timing may take before the plan gives it up


def time_shared(loaded: LoadedSuite, dev: torch.device, threads: int, num_classes: int,
                kind: str, name: str, jobs: int) -> dict:
    """The rates of one plugin when ``jobs`` cells step on the device at once, as
    ``--jobs`` runs them (a worker process each): ``jobs`` spawned processes run its
    measure together, starting at one barrier, and each one that finishes keeps stepping
    until the last is done, so every timed step shares the device with ``jobs - 1``
    others. Returns the mean of the workers' rates (per-image seconds of one job)."""
    ctx = torch.multiprocessing.get_context("spawn")
    barrier, done, results = ctx.Barrier(jobs), ctx.Value("i", 0), ctx.Queue()
    procs = [ctx.Process(target=_shared_worker, daemon=True,
                         args=(loaded, str(dev), threads, num_classes, kind, name, jobs,
                               barrier, done, results)) for _ in range(jobs)]
    for p in procs:
        p.start()
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=SHARED_TIMEOUT))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    errors = [g[1] for g in got if g[0] == "error"]
    if errors:
        raise RuntimeError(f"a worker timing {name} with {jobs} jobs at once failed: {errors[0]}")
    rates = [g[1] for g in got]
    return {k: ([float(np.mean(x)) for x in zip(*(r[k] for r in rates))]
                if isinstance(rates[0][k], list) else float(np.mean([r[k] for r in rates])))
            for k in rates[0]}


def sharing_slowdown(cal: dict) -> dict[str, float]:
    """Plugin -> how many times longer its steps took with ``cal["shared_by"]`` jobs on
    the device at once than alone (training steps: a classifier's ``train``, a
    generator's phases, or its whole fit when it has no training loop)."""
    out = {}
    for kind in ("classifiers", "generators"):
        for name, alone in cal.get("alone", {}).get(kind, {}).items():
            shared = cal[kind].get(name)
            if kind == "classifiers":
                a, b = alone["train"], shared["train"]
            else:
                a, b = ((sum(alone["phases"]), sum(shared["phases"])) if alone["phases"]
                        else (alone["fit"], shared["fit"]))
            if a > 0:
                out[name] = b / a
    return out


def _shared_worker(loaded: LoadedSuite, device: str, threads: int, num_classes: int,
                   kind: str, name: str, jobs: int, barrier, done, results) -> None:
    """One of ``time_shared``'s processes."""
    try:
        dev = torch.device(device)
        torch.set_num_threads(threads)
        classifiers, generators = ({name}, set()) if kind == "classifiers" else (set(), {name})
        (_, _, _, measure), = _measures(loaded, dev, threads, num_classes, classifiers,
                                        generators)
        barrier.wait(timeout=SHARED_TIMEOUT)
        with fixed_rng(f"calibration:shared:{name}", dev):
            rates = measure()
    except Exception as exc:  # noqa: BLE001 - reported by the parent as the plugin's failure
        barrier.abort()           # the others stop waiting for this one at once
        with done.get_lock():
            done.value += 1
        results.put(("error", f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return
    results.put(("rates", rates))
    with done.get_lock():
        done.value += 1
    while done.value < jobs:       # keep the others' steps sharing the device
        measure()


class _TrainingOf:
    """``Engine.training_config`` without an engine (no data needed)."""

    def __init__(self, loaded: LoadedSuite):
        self.s = loaded.suite

    training_config = Engine.training_config


def _random_images(n: int, channels: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)


def _time_generator(info, params: dict, size: int, channels: int, num_classes: int,
                    dev: torch.device) -> dict:
    """Seconds per image shown in each phase of a fit, the fixed part of a fit, and
    seconds per sampled image. After a fit of one step per phase (it pays the warm-up),
    one fit of 1 + PROBE_STEPS steps per phase is timed: a generator that keeps a step
    clock (``NeuralGenerator.step_clock``) gives each phase's seconds per step as the
    median of its steps after the first (the first of a phase carries the phase's own
    start-up, which the fixed part keeps); the fixed part is the rest of the fit's time.
    A generator without one is timed phase by phase instead (``_rates_by_fits``). A
    generator without a training loop is fitted and sampled once, whole."""
    gen = info.obj(**params)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    classes = [f"c{i}" for i in range(num_classes)]
    x = _random_images(CAL_IMAGES, channels, size)
    y = (torch.arange(CAL_IMAGES) % num_classes if gen.conditional
         else torch.zeros(CAL_IMAGES, dtype=torch.int64))

    def fit(g):
        return g.fit(x, y, classes=classes, device=str(dev), seed=0)

    phases = gen.budget(CAL_IMAGES, size)
    if not phases:
        fitted: list = []
        t_fit = _timed(lambda: fitted.append(fit(gen)), dev)
        t_sample = _timed(lambda: fitted[0].sample(0, CAL_IMAGES), dev)
        return {"phases": [], "overhead": 0.0, "fit": t_fit / CAL_IMAGES,
                "sample": t_sample / CAL_IMAGES}
    with _few_standing_batches(type(gen)) as full:
        one = gen.with_budget([1] * len(phases))
        step = one.budget(CAL_IMAGES, size)             # the images of one step, per phase
        _timed(lambda: fit(one), dev)                   # pays the warm-up
        probe = gen.with_budget([(1 + PROBE_STEPS) * k for k in step])
        fitted = []
        total = _timed(lambda: fitted.append(fit(probe)), dev)
        t_sample = _timed(lambda: fitted[0].sample(0, CAL_IMAGES), dev)
        clock = list(getattr(fitted[0], "step_clock", None) or [])
        if len(clock) == (1 + PROBE_STEPS) * len(phases):
            per = 1 + PROBE_STEPS
            rates = [float(np.median(np.diff(clock[p * per:(p + 1) * per]))) / max(k, 1)
                     for p, k in enumerate(step)]
            overhead = max(total - sum(r * k * per for r, k in zip(rates, step)), 0.0)
        else:
            rates, overhead = _rates_by_fits(gen, fit, step, size, dev)
        if full is not None:       # the batch-norm batches the calibration fits left out
            t_few = _timed(lambda: fitted[0]._standing_stats(y), dev)
            overhead += t_few * (full - STANDING_PROBE) / STANDING_PROBE
    out = {"phases": rates, "overhead": overhead, "sample": t_sample / CAL_IMAGES, "fit": 0.0}
    if dev.type == "cuda":        # the fit's peak, its last (largest) phase's in effect
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def _rates_by_fits(gen, fit: Callable, step: list[int], size: int,
                   dev: torch.device) -> tuple[list[float], float]:
    """Seconds per image of each phase without a step clock: a fit of one step per phase
    is the baseline; each phase is then run for PROBE_STEPS more steps, and the
    difference over the difference in images shown is that phase's rate. Returns the
    rates and the fixed part of a fit."""
    base = _timed(lambda: fit(gen.with_budget([1] * len(step))), dev)
    rates = []
    for p in range(len(step)):
        probe = gen.with_budget([PROBE_STEPS * k if i == p else 1 for i, k in enumerate(step)])
        extra = probe.budget(CAL_IMAGES, size)[p] - step[p]
        t = _timed(lambda: fit(probe), dev)
        rates.append(max(t - base, 0.0) / max(extra, 1))
    return rates, max(base - sum(r * k for r, k in zip(rates, step)), 0.0)


@contextlib.contextmanager
def _few_standing_batches(cls: type):
    """Calibration fits of a generator that re-estimates its batch-norm statistics at
    the end of a fit (``NeuralGenerator.STANDING_BATCHES`` batches of noise) run only
    STANDING_PROBE of them: at 224 px those batches cost more than the few training
    steps timed (a calibration of the cGAN took over 20 minutes on two cores), and each
    of the calibration's fits would pay them again. Yields the full count (None for a
    generator without them), whose cost the caller adds from one timed re-estimation."""
    full = getattr(cls, "STANDING_BATCHES", None)
    if not isinstance(full, int) or full <= STANDING_PROBE:
        yield None
        return
    own = "STANDING_BATCHES" in vars(cls)
    cls.STANDING_BATCHES = STANDING_PROBE
    try:
        yield full
    finally:
        if own:
            cls.STANDING_BATCHES = full
        else:
            del cls.STANDING_BATCHES


def _time_classifier(ccfg, info, tcfg: TrainingConfig, settings: Settings, frozen: bool,
                     size: int, channels: int, num_classes: int, dev: torch.device) -> dict:
    """Seconds per training image (with the backbone frozen too, when a stage freezes
    it), per evaluated image, the fixed part of an epoch and of a cell: one-epoch fits
    of one and of two batches, the net built from the plugin as the suite builds it
    (without pretrained weights: they do not change the cost)."""
    clf = info.obj()
    bs = settings.batch_size
    x_val = _random_images(2, channels, size)
    y_val = torch.arange(2) % num_classes
    out: dict[str, float] = {}
    t_build = time.perf_counter()
    model = clf.build(num_classes, channels, size, pretrained=False, dropout=ccfg.dropout,
                      **ccfg.params)
    t_build = time.perf_counter() - t_build
    for freeze in ((False, True) if frozen else (False,)):
        cfg = tcfg.model_copy(update={"stages": [StageConfig(epochs=1, freeze_backbone=freeze)],
                                      "early_stopping": None, "schedule": "none"})
        trainer = Trainer(Settings(settings.optimizer, settings.lr, settings.weight_decay,
                                   settings.momentum, bs, cfg), dev, "half", channels)

        def epoch(n: int) -> float:
            x = _random_images(n, channels, size)
            y = torch.arange(n) % num_classes
            return _timed(lambda: trainer.fit(model, clf.head(model), x, y, x_val, y_val,
                                              seed=0), dev)

        first = epoch(bs)                     # pays the warm-up
        two = epoch(2 * bs)
        one = min(first, epoch(bs))
        rate = max(two - one, 0.0) / bs
        out["train_frozen" if freeze else "train"] = rate
        if not freeze:
            out["epoch"] = max(one - bs * rate, 0.0)
            if dev.type == "cuda":
                out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
            x = _random_images(max(bs, 32), channels, size)
            trainer.evaluate(model, x[:2])
            out["eval"] = _timed(lambda: trainer.evaluate(model, x), dev) / len(x)
    out.setdefault("train_frozen", out["train"])
    out["cell"] = t_build
    return out


# --------------------------------------------------------------------------- the table


def plan_table(plan: Plan) -> tuple[list[str], list[list[str]]]:
    """Rows per arm and classifier: cells, fits, kimg per fit, epochs x images per cell,
    and the estimated time of what is left."""
    head = ["arm", "classifier", "cells to run", "fits to run", "kimg per fit",
            "epochs x images per cell", "time left"]
    rows = []
    arms = list(dict.fromkeys(c.arm for c in plan.cells))
    clfs = list(dict.fromkeys(c.classifier for c in plan.cells))
    counted = plan.counted_from is not None
    estimated = plan.work_seconds is not None
    for arm in arms:
        fits = [f for f in plan.fits if f.arm == arm]
        for i, clf in enumerate(clfs):
            cells = [c for c in plan.cells if c.arm == arm and c.classifier == clf]
            todo = [c for c in cells if c.state == "todo"]
            fit_text = kimg_text = "-"
            if i == 0 and fits:
                fit_text = f"{sum(f.state == 'todo' for f in fits)}/{len(fits)}"
                trained = [f.kimg for f in fits if f.shown]   # SMOTE & co. show none
                kimg_text = f"{np.mean(trained):,.1f}" if trained else "-"
            elif i == 0 and not counted and arm in plan.generator_arms:
                fit_text = kimg_text = "?"
            images = ("?" if not counted else
                      f"{cells[0].epochs} x {np.mean([c.n_train for c in cells]):,.0f}")
            secs = sum(c.seconds or 0.0 for c in todo)
            rows.append([arm, clf, f"{len(todo)}/{len(cells)}", fit_text, kimg_text, images,
                         human_seconds(secs) if estimated else "?"])
    return head, rows
