"""``--executor processes --jobs N``: cells run in N worker processes on this machine.

Workers are started fresh (spawn, never fork: a forked copy of a process that already
runs torch threads can deadlock), each builds the engine once and keeps it for every
later cell. They ignore Ctrl-C: the driver decides, terminates them and keeps what has
finished. A worker that dies (killed for memory, a crash in native code) fails the cells
it had; the others go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from medbench.api import Executor
from medbench.execution import failure
from medbench.hookspecs import hookimpl


def _die_with_parent(driver: int) -> None:
    """On Linux, have the kernel kill this worker when the driver dies (even by SIGKILL),
    so a killed run leaves no orphan still training a cell nobody will save."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)        # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != driver:                # the driver died before prctl took effect
        os._exit(1)


def _init_worker(slots, gpus: int, driver: int) -> None:
    _die_with_parent(driver)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slot = slots.get()
    if gpus:                         # one GPU per worker, round robin over the visible ones
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the workers (their cells are lost,
    finished ones are already with the driver). The workers are taken before the
    shutdown: it forgets them (``_processes = None``), and the interpreter's exit would
    then wait for each to finish the cell it is training (minutes, for a real cell)."""
    terminate = getattr(pool, "terminate_workers", None)       # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        proc.terminate()


class ProcessExecutor(Executor):
    description = "run cells in --jobs N worker processes on this machine"
    parallel = True

    def run(self, tasks, fn, on_result):
        if not tasks:
            return
        n = max(1, min(self.jobs, len(tasks)))
        ctx = mp.get_context("spawn")
        slots = ctx.Queue()
        for i in range(n):
            slots.put(i)
        gpus = 0
        if self.gpus:
            import torch
            gpus = torch.cuda.device_count()
        pool = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                   initargs=(slots, gpus, os.getpid()))
        try:
            pending = {pool.submit(fn, t): t for t in tasks}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:   # every cell in flight or queued fails
                        result = failure("a worker process died (killed for memory, or a "
                                         "crash in native code)")
                    on_result(task, result)
        except BaseException:
            _stop(pool)
            raise
        else:
            pool.shutdown(wait=True)


@hookimpl
def register_executors(register):
    register("processes", ProcessExecutor)
