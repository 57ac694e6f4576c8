"""``--executor ray``: cells run as Ray tasks, on the cluster at ``--address`` (medbench
installed on its nodes, the same version) or on a local Ray instance started for the
run with ``--jobs`` workers.

Each task reserves as many CPUs as the torch threads it uses and, when asked (``--gpus``
or a CUDA device), GPUs; Ray places them. The dataset the driver decoded goes to the
object store once, so nodes need no copy of MEDBENCH_DATA. Results come back to the
driver, which writes the one results store; a cell whose task dies is recorded as failed.
"""

from __future__ import annotations

import logging
import socket

from medbench.api import Executor
from medbench.errors import PluginError
from medbench.execution import failure
from medbench.hookspecs import hookimpl


def _task(fn, task, dataset):
    return fn(task, dataset=dataset)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when HOST:PORT does not
    answer (``auto`` and ``ray://`` addresses are left to Ray)."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise PluginError(f"cannot reach the Ray cluster at {address}: "
                          f"{getattr(exc, 'strerror', None) or exc}; start it with "
                          "`ray start --head` or check --address") from None


class RayExecutor(Executor):
    description = "run cells as Ray tasks (a local Ray, or a cluster with --address)"
    parallel = True

    def run(self, tasks, fn, on_result):
        if not tasks:
            return
        try:
            import ray
        except ImportError:
            raise PluginError("the ray executor needs Ray: pip install 'ray>=2.9'") from None
        threads = max(1, int(getattr(fn, "threads", 1)))
        started = not ray.is_initialized()
        if started:
            opts = {"include_dashboard": False, "logging_level": logging.ERROR,
                    "log_to_driver": not getattr(fn, "quiet", False)}
            if self.address:
                _check_reachable(self.address)
                opts["address"] = self.address
            else:                      # a local Ray sized for --jobs cells at once
                opts.update(num_cpus=self.jobs * threads, num_gpus=None if self.gpus else 0)
            try:
                ray.init(**opts)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                hint = ("; a cluster started with token authentication (Ray's default) "
                        "needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or "
                        "RAY_AUTH_TOKEN) here" if self.address else "")
                raise PluginError(f"cannot start or join {where}: {exc}{hint}") from None
        remote = ray.remote(_task).options(num_cpus=threads, num_gpus=self.gpus,
                                           max_retries=0)
        pending = {}
        try:
            fn_ref = ray.put(fn)
            data_ref = ray.put(getattr(fn, "dataset", None))
            pending = {remote.remote(fn_ref, t, data_ref): t for t in tasks}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:   # the worker died
                        text = str(exc).strip().splitlines()
                        result = failure(f"its Ray task failed: {text[0] if text else type(exc).__name__}")
                    on_result(task, result)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()


@hookimpl
def register_executors(register):
    register("ray", RayExecutor)
