"""What an executor runs, in this process or in a worker: one cell, or the generator
fits of one (seed, fold, arm) that the cells of several classifiers then share.

``CellWork`` is picklable: a worker process (``--executor processes``) or a Ray worker
(``--executor ray``) rebuilds the engine from the suite once, keeps it for every later
task of the same run, and returns each result to the calling process, which alone
writes the results store. A task never raises for a failing cell: the exception (a NaN
loss, a plugin bug, CUDA out of memory) comes back as a failure with its reason, so the
suite goes on.
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import torch

from .cache import cell_key, code_version, load_cell, store_cell
from .engine import Cell, Engine, Prefit, load_dataset
from .errors import DataError, MedbenchError
from .progress import Progress, WorkerProgress
from .registry import registry

__all__ = ["CellWork", "cell_description", "default_threads", "failure", "run_setup"]

# engines built in this process, by run token: a worker serves many tasks of one run
_ENGINES: dict[str, Any] = {}


def failure(reason: str, detail: str | None = None, seconds: float = 0.0) -> tuple:
    return ("failed", reason, detail, seconds)


class CellWork:
    """Runs tasks of one run of a suite. ``threads`` is the number of CPU threads torch
    uses per task: a cell trained with the same seed and the same number of threads
    gives the same numbers in any executor."""

    def __init__(self, loaded, device: str, out: Path | None, threads: int, quiet: bool,
                 fingerprint: str):
        self.loaded = loaded
        self.device = device
        self.out = out
        self.threads = threads
        self.quiet = quiet
        self.fingerprint = fingerprint
        self.token = uuid.uuid4().hex
        self.dataset = None          # the driver's ImageSet; shipped separately, if at all
        self._engine = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_engine"] = None
        state["dataset"] = None
        return state

    def attach(self, engine) -> None:
        """Run in this process on an engine the caller already built."""
        self._engine = engine

    def engine(self, dataset=None) -> Engine:
        if self._engine is not None:
            return self._engine
        eng = _ENGINES.get(self.token)
        if eng is None:
            torch.set_num_threads(self.threads)
            if dataset is None:
                dataset, _ = load_dataset(self.loaded)
            if dataset.fingerprint() != self.fingerprint:
                raise DataError("the dataset this worker read differs from the driver's "
                                f"(fingerprint {dataset.fingerprint()} != {self.fingerprint}); "
                                "every worker must see the same files under MEDBENCH_DATA")
            _ENGINES.clear()         # one run at a time per worker
            eng = _ENGINES[self.token] = Engine(self.loaded, dataset, torch.device(self.device),
                                                out=self.out, progress=WorkerProgress(self.quiet))
        return eng

    def __call__(self, task: Cell | Prefit, dataset=None, progress: Progress | None = None) -> tuple:
        t0 = time.perf_counter()
        try:
            # a nested study's parameters apply to their own split only
            engine = self.engine(dataset).for_split(task.seed, task.fold)
            if isinstance(task, Prefit):
                fold = engine.folds(task.seed)[task.fold]
                engine.training_set(engine.arm(task.arm), fold, task.seed)
                return ("ok", None, None, time.perf_counter() - t0)
            rep = progress or engine.progress
            rep.started(task.short())
            desc = cell_description(engine, task, self.threads)
            key = cell_key(desc)
            hit = load_cell(engine.cache, key)
            if hit is not None:         # the same cell under the same config and code
                df, preds = hit
                for col, value in (("suite", engine.s.name), ("suite_hash", engine.suite_hash),
                                   ("profile", engine.loaded.profile or ""),
                                   ("cell_order", task.order)):
                    df[col] = value
                return ("cached", df, preds, time.perf_counter() - t0)
            df, preds = engine.run_cell(task, rep)
            store_cell(engine.cache, key, df, preds, f"{engine.s.name}: {task.label()}", desc)
            return ("ok", df, preds, time.perf_counter() - t0)
        except (KeyboardInterrupt, SystemExit):
            raise
        except MedbenchError as exc:
            return failure(str(exc), None, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the suite
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return failure(f"{type(exc).__name__}: {first}", traceback.format_exc(),
                           time.perf_counter() - t0)


def cell_description(engine: Engine, cell: Cell, threads: int) -> dict:
    """Everything a cell's numbers depend on, for its key in the cell cache: the data
    (content fingerprint), the protocol that makes its fold, its arm with the generator's
    parameters, its classifier, the training settings, the metrics, the seed and fold,
    the code of the engine and of both plugins, torch, the device type and the threads.
    Names of the suite and of other arms or classifiers do not enter: a cell computed in
    one suite is reused by another that holds the same cell."""
    s = engine.s
    arm = engine.arm(cell.arm)
    ccfg = engine.classifier(cell.classifier)
    plugins = [registry().get("classifiers", ccfg.name).obj]
    if arm.generator:
        plugins.append(registry().get("generators", arm.generator).obj)
    return {
        "data": engine.fingerprint, "dataset": s.dataset.model_dump(mode="json"),
        "protocol": s.protocol.model_dump(mode="json", exclude={"seeds", "max_folds"}),
        "arm": arm.model_dump(mode="json"),
        "generator_params": s.params_for(arm) if arm.generator else None,
        "classifier": ccfg.model_dump(mode="json"),
        "training": s.training.model_dump(mode="json"), "metrics": list(s.metrics),
        "seed": cell.seed, "fold": cell.fold, "code": code_version(*plugins),
        "torch": torch.__version__, "device": engine.device.type, "threads": threads,
    }


def default_threads(jobs: int) -> int:
    """Torch threads per task when the user does not say: the cores shared out."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:           # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def run_setup(executor: str, jobs: int, threads: int | None) -> tuple[str, Any, int]:
    """The executor a run uses (``--jobs N`` alone means processes), its plugin class and
    the torch threads of each task: what ``run`` runs with, and what ``plan`` times and
    keys the cell cache by, so both agree."""
    if jobs > 1 and executor == "local":
        executor = "processes"
    exec_cls = registry().get("executors", executor).obj
    return executor, exec_cls, threads or default_threads(jobs if exec_cls.parallel else 1)
