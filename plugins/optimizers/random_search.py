"""Uniform random search: each trial is a uniform draw from the unit cube, decoded by the
search space (so a log-scale dimension is sampled log-uniformly, an integer or a choice
uniformly among its values). The baseline every other optimizer should beat."""

from __future__ import annotations

import numpy as np

from medbench.api import Optimizer
from medbench.hookspecs import hookimpl
from medbench.space import BudgetedObjective, BudgetExhausted


class RandomSearch(Optimizer):
    description = "uniform random search over the space (numpy, seeded)"

    def __init__(self, **params):
        self.check("optimizer", "random", params)
        self.notes: list[str] = []
        self.plan: dict | None = None

    def minimize(self, objective, space, budget, seed=0):
        if not isinstance(objective, BudgetedObjective):
            objective = BudgetedObjective(objective, budget)
        self.plan = {"evaluations": budget.trials}
        rng = np.random.default_rng(seed)
        trials: list[dict] = []
        while True:
            params = space.from_unit(rng.random(len(space)))
            try:
                value = objective(params)
            except BudgetExhausted:
                return trials
            trials.append({"params": params, "value": float(value)})


@hookimpl
def register_optimizers(register):
    register("random", RandomSearch)
