"""The default executor: cells run one after another in this process."""

from medbench.api import Executor
from medbench.hookspecs import hookimpl


class LocalExecutor(Executor):
    description = "run cells one by one in this process"

    def run(self, cells, fn, on_result):
        for cell in cells:
            on_result(cell, fn(cell))


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
