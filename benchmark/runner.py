"""Running a suite: which cells are still to do, in which executor, with what progress
on screen, and what Ctrl-C or SIGTERM leaves behind.

Each cell is computed by ``medbench.engine.Engine`` through ``medbench.execution``
(in this process, or in parallel workers); every finished cell goes into the results
store as soon as it comes back, so a kill loses only cells in flight.
"""

from __future__ import annotations

import contextlib
import json
import platform
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from . import __version__
from .engine import (Cell, Engine, Prefit, check_feasible, check_plugins, count_folds,
                     expand_cells, load_dataset, prefit_tasks)
from .errors import Terminated
from .execution import CellWork, run_setup
from .progress import ConsoleProgress
from .provenance import git_commit
from .store import FolderLock, ResultsStore
from .suite import LoadedSuite
from .trainer import pick_device

__all__ = ["failures_by_reason", "run_suite", "signals_deferred"]


def run_suite(loaded: LoadedSuite, out: Path, *, quiet: bool = False, executor: str = "local",
              device: str | None = None, command: str | None = None,
              echo: Callable[[str], None] | None = None, jobs: int = 1,
              address: str | None = None, gpus: float | None = None,
              threads: int | None = None,
              plan: Callable[[Any, torch.device], dict[str, float] | None] | None = None
              ) -> pd.DataFrame:
    """Run every cell of a suite not yet in ``out`` and return the consolidated results.

    Cells go through the executor plugin (``local`` one by one here; ``processes`` and
    ``ray`` in parallel workers); every finished cell is written to the store as soon as
    it comes back, so a kill loses only cells in flight, and Ctrl-C stops after saving
    what has finished. A cell that fails (NaN loss, plugin exception, generator
    divergence) is recorded with its reason and the others go on.

    Nothing is written to ``out`` before the suite, the data and the folder are
    accepted: a refused run leaves nothing that would change the next one. While it
    runs, the folder's ``FolderLock`` refuses a second driver.

    ``plan``: called with the loaded data and the device once the data is accepted and
    before anything is written; it may refuse the run by raising a ``MedbenchError``,
    and returns the planned seconds per cell key (``medbench.plan``, which the CLI
    passes in: the runner does not import it, so editing the planner leaves the code
    version of results alone), which the progress display then counts down."""
    check_plugins(loaded)
    s = loaded.suite
    executor, exec_cls, threads = run_setup(executor, jobs, threads)
    dev = pick_device(device or s.device)
    if gpus is None:
        gpus = 1.0 if dev.type == "cuda" else 0.0
    lock = FolderLock(out, command)
    lock.check()                       # a live driver on the folder: refused, nothing loaded
    ResultsStore(out).check(loaded.hash)       # another configuration's folder: the same
    ds, data_report = load_dataset(loaded)
    check_feasible(loaded, ds)
    planned = plan(ds, dev) if plan is not None else None
    with lock:
        return _run_accepted(loaded, out, ds, data_report, quiet=quiet, executor=executor,
                             exec_cls=exec_cls, dev=dev, command=command, jobs=jobs,
                             address=address, gpus=gpus, threads=threads, planned=planned)


def _run_accepted(loaded: LoadedSuite, out: Path, ds, data_report: dict, *, quiet: bool,
                  executor: str, exec_cls, dev: torch.device, command: str | None, jobs: int,
                  address: str | None, gpus: float, threads: int,
                  planned: dict[str, float] | None = None) -> pd.DataFrame:
    """``run_suite`` once the suite and its data are accepted and the folder is ours."""
    s = loaded.suite
    store = ResultsStore(out)
    meta = {
        "suite": s.name, "suite_path": str(loaded.path), "profile": loaded.profile,
        "command": command, "medbench": __version__, "torch": torch.__version__,
        "python": platform.python_version(), "device": str(dev), "git_commit": git_commit(),
        "report": s.report.model_dump(),
    }
    store.open(loaded.hash, meta)
    store.write_text("data_report.json", json.dumps(data_report, indent=2, default=str))
    cells = expand_cells(loaded, count_folds(loaded))
    done = store.done()
    todo = [c for c in cells if c.key not in done]
    progress = ConsoleProgress(len(cells), "cells", quiet, planned=planned, jobs=jobs)
    if data_report["duplicates"]["groups"]:
        progress.warn(f"{ds.name or s.dataset.loader}: {data_report['duplicates_summary']}")
    if (data_report.get("near_duplicates") or {}).get("groups"):
        progress.warn(f"{ds.name or s.dataset.loader}: {data_report['near_duplicates_summary']}")
    for line in data_report.get("warnings", []):
        progress.warn(line)
    if done:
        progress.log(f"resuming {out}: {len(cells) - len(todo)} of {len(cells)} cells already done")
    provenance = {"git_commit": meta["git_commit"], "medbench_version": __version__,
                  "torch_version": torch.__version__, "device": str(dev), "threads": threads}
    n_done = len(cells) - len(todo)

    work = CellWork(loaded, str(dev), out, threads, quiet, ds.fingerprint())
    runner = exec_cls(jobs=jobs, address=address, gpus=gpus)
    if runner.parallel:
        work.dataset = ds
        progress.log(f"{executor}: {min(jobs, max(len(todo), 1))} worker(s), "
                     f"{threads} torch thread(s) each")
    else:
        work.attach(Engine(loaded, ds, dev, out=out, progress=progress))

    def on_result(cell: Cell, result) -> None:
        with signals_deferred():      # Ctrl-C or SIGTERM never cuts a cell's files in half
            _save_result(cell, result)

    def _save_result(cell: Cell, result) -> None:
        nonlocal n_done
        status, payload, preds, secs = result
        n_done += 1
        if status in ("ok", "cached"):
            for k, v in provenance.items():
                payload[k] = v
            tuned = loaded.for_split(cell.seed, cell.fold).tuned
            if tuned is not None:     # which study's parameters trained this cell
                payload["tuned_params"] = json.dumps(tuned, sort_keys=True)
            store.save_cell(cell.key, payload, preds)
            store.clear_failure(cell.key)
            acc = payload.loc[payload.metric == "accuracy", "value"]
            summary = f"accuracy={acc.iloc[0]:.4f} " if len(acc) else ""
            how = "from the cell cache" if status == "cached" else f"{secs:.1f} s"
            progress.finished(n_done, f"done {cell.label()} {summary}({how})", unit=cell.key)
        else:
            info = {"cell": cell.label(), "reason": payload}
            if preds:                  # the traceback of an unexpected exception
                info["traceback"] = preds
            store.save_failure(cell.key, info)
            progress.finished(n_done, f"done {cell.label()} FAILED: {payload}", unit=cell.key)

    def on_prefit(task: Prefit, result) -> None:
        if result[0] != "ok":          # the cells that need it will record the reason
            progress.log(f"{task.label()}: {result[1]}")

    old_threads = torch.get_num_threads()
    try:
        if not runner.parallel:
            torch.set_num_threads(threads)
        prefits = prefit_tasks(loaded, todo)
        if prefits and runner.parallel:
            progress.log(f"fitting {len(prefits)} generator set(s) shared by several "
                         "classifiers before their cells")
            runner.run(prefits, work, on_prefit)
        runner.run(todo, work, on_result)
    except KeyboardInterrupt:
        store.consolidate()            # the tables hold every cell that finished
        raise
    finally:
        torch.set_num_threads(old_threads)
        progress.close()
    return store.consolidate()


def failures_by_reason(loaded: LoadedSuite, out: Path) -> dict[str, list[str]]:
    """The cells of the suite that failed and are not finished, grouped by reason
    (reason -> cell labels, in cell order), from their ``cells/*.failed.json``."""
    store = ResultsStore(out)
    if not store.cells.is_dir():
        return {}
    done = store.done()
    pending = {c.label(): c for c in expand_cells(loaded, count_folds(loaded))
               if c.key not in done}
    groups: dict[str, list[Cell]] = {}
    for info in store.failures():
        cell = pending.get(info.get("cell"))
        if cell is not None:
            groups.setdefault(str(info.get("reason", "unknown")), []).append(cell)
    return {reason: [c.label() for c in sorted(cells, key=lambda c: c.order)]
            for reason, cells in groups.items()}


@contextlib.contextmanager
def signals_deferred():
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until the block is done,
    then raise it (main thread only; elsewhere signals cannot be handled and this does
    nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}   # e.g. a `cmd &` job
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise Terminated() if signal.SIGTERM in caught else KeyboardInterrupt
