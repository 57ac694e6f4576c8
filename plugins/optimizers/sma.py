"""Slime Mould Algorithm (Li et al., 2020) through mealpy.

SMA searches the unit cube ``[0, 1]^d``; the search space decodes each position into
parameters (log scales, integers and choices included). mealpy evaluates ``pop_size``
random agents, then ``pop_size`` new agents per epoch, so ``epochs`` epochs cost
``pop_size * (epochs + 1)`` evaluations.

SMA's step sizes shrink with ``epoch / epochs`` and are exactly zero in the last epoch
(every coordinate of a new agent is then either the best agent's or 0, the lower bound),
so that epoch only re-evaluates copies and corners. With a trial budget of N and no
``epochs`` given, the plan is therefore ``epochs = max(1, ceil(N / pop_size))``: the N
evaluations are the initial population and the first ``ceil(N / pop_size) - 1`` epochs
(the budgeted objective stops the run at exactly N), and the degenerate last epoch is
never reached. The plan depends on the budget only, not on what was already spent, so a
resumed study proposes the same parameters again.
"""

from __future__ import annotations

import math

from medbench.api import Optimizer, Param
from medbench.hookspecs import hookimpl
from medbench.space import BudgetedObjective, BudgetExhausted

MIN_POP = 5              # mealpy's SMA rejects pop_size < 5
MAX_POP = 10000
MAX_EPOCHS = 100000      # mealpy's upper limit on epoch
TIME_ONLY_EPOCHS = 1000  # plan when only a time budget is given
# mealpy sorts and divides by fitness values; a failed trial (inf or NaN) is shown to it
# as this large finite value instead (the returned trial keeps the real value)
PENALTY = 1e300

VARIANTS = {"original": "OriginalSMA", "dev": "DevSMA"}
DEFAULTS = {"variant": "original", "pop_size": 15, "epochs": None, "p_t": 0.03}


class SMAOptimizer(Optimizer):
    description = "Slime Mould Algorithm (mealpy) over the unit cube; epochs derived from the budget"
    defaults = DEFAULTS
    choices = {"variant": tuple(VARIANTS)}
    declared = {
        "variant": Param(help="original: mealpy's OriginalSMA; dev: its DevSMA"),
        "pop_size": Param("int", "agents per epoch", low=MIN_POP, high=MAX_POP),
        "epochs": Param("int", "epochs (default: derived from the budget)", low=1, high=MAX_EPOCHS),
        "p_t": Param("number", "probability of a random agent", low=0, high=1, low_open=True,
                     high_open=True),
    }

    def __init__(self, **params):
        cfg = self.check("optimizer", "sma", params)
        self.variant = cfg["variant"]
        self.pop_size = cfg["pop_size"]
        self.epochs = cfg["epochs"]
        self.p_t = float(cfg["p_t"])
        self.notes: list[str] = []
        self.plan: dict | None = None

    def _make_plan(self, budget) -> dict:
        n = budget.trials
        pop = self.pop_size
        if n is not None and pop > n:
            pop = max(n, MIN_POP)
            if pop != self.pop_size:
                self.notes.append(f"sma: pop_size {self.pop_size} is more than the budget of "
                                  f"{n} trials; using pop_size {pop}")
        if self.epochs is not None:
            epochs = self.epochs
        elif n is not None:
            # one epoch more than the budget reaches: see the module docstring
            epochs = min(math.ceil(n / pop), MAX_EPOCHS)
        else:
            epochs = TIME_ONLY_EPOCHS
            self.notes.append(f"sma: time-only budget, so {epochs} epochs are planned and the "
                              "clock stops the run; SMA's step sizes shrink over the planned "
                              "epochs, so it stays exploratory: set `epochs` to what fits the time")
        schedule = pop * (epochs + 1)
        if n is not None and n <= pop:
            self.notes.append(f"sma: the budget of {n} trials fills only the initial random "
                              f"population ({pop} agents), so this run is a random search")
        elif n is not None and schedule < n:
            self.notes.append(f"sma: epochs = {epochs} with pop_size {pop} uses {schedule} "
                              f"of the {n} trials in the budget")
        return {"variant": self.variant, "pop_size": pop, "epochs": epochs, "p_t": self.p_t,
                "evaluations": schedule if n is None else min(n, schedule)}

    def minimize(self, objective, space, budget, seed=0):
        import numpy as np
        from mealpy import SMA, FloatVar   # slow import (about 1 s): only when used

        if not isinstance(objective, BudgetedObjective):
            objective = BudgetedObjective(objective, budget)
        self.notes = []
        self.plan = plan = self._make_plan(budget)
        trials: list[dict] = []
        caller_err = np.geterr()

        def obj_func(x) -> float:
            params = space.from_unit(x)
            # the objective runs under the caller's numpy error settings, not the ones
            # set around model.solve below; BudgetExhausted ends model.solve
            with np.errstate(**caller_err):
                value = float(objective(params))
            trials.append({"params": params, "value": value})
            return value if math.isfinite(value) else PENALTY

        d = len(space)
        problem = {"bounds": FloatVar(lb=[0.0] * d, ub=[1.0] * d), "minmax": "min",
                   "obj_func": obj_func, "log_to": None}
        model = getattr(SMA, VARIANTS[self.variant])(epoch=plan["epochs"],
                                                     pop_size=plan["pop_size"], p_t=self.p_t)
        try:
            # mealpy calls obj_func directly and catches nothing it raises, so
            # BudgetExhausted arrives here unchanged (tests/test_optimizers.py checks it).
            # errstate: mealpy's end-of-run statistics divide 0 by 0 when the population
            # has collapsed to one point, a harmless RuntimeWarning
            with np.errstate(divide="ignore", invalid="ignore"):
                model.solve(problem, seed=seed)
        except BudgetExhausted:
            pass
        return trials


@hookimpl
def register_optimizers(register):
    register("sma", SMAOptimizer)
