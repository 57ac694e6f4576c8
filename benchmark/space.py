"""Search spaces and budgets for hyper-parameter optimizers.

A space is a list of named dimensions: a float range (optionally on a log scale), an
integer range, or a set of choices. Every dimension maps to and from the unit interval,
so an optimizer that works in a box (SMA, random search) searches ``[0, 1]^d`` and lets
the space decode; an optimizer with its own notion of types (Optuna) reads the
dimensions directly.

A budget caps objective evaluations and wall time. The objective an optimizer receives
raises ``BudgetExhausted`` when the budget is spent, so no optimizer can overrun it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import SuiteError


@dataclass(frozen=True)
class Dim:
    name: str
    kind: str                  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def from_unit(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        if self.kind == "categorical":
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        if self.kind == "int":
            # equal-width bins, one per integer, so every integer is equally likely
            n = int(self.high) - int(self.low) + 1
            return int(self.low) + min(int(u * n), n - 1) if not self.log else \
                int(min(max(round(v), self.low), self.high))
        return min(max(v, self.low), self.high)

    def to_unit(self, value: Any) -> float:
        if self.kind == "categorical":
            return (self.choices.index(value) + 0.5) / len(self.choices)
        if self.kind == "int" and not self.log:
            n = int(self.high) - int(self.low) + 1
            return (int(value) - int(self.low) + 0.5) / n
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low) if self.high > self.low else 0.0

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if self.kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            return False
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dim, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def __len__(self) -> int:
        return len(self.dims)

    def from_unit(self, u: Sequence[float]) -> dict[str, Any]:
        return {d.name: d.from_unit(x) for d, x in zip(self.dims, u)}

    def to_unit(self, params: dict[str, Any]) -> list[float]:
        return [d.to_unit(params[d.name]) for d in self.dims]

    def contains(self, params: dict[str, Any]) -> bool:
        return set(params) == set(self.names) and all(d.contains(params[d.name]) for d in self.dims)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SearchSpace":
        """From a suite's ``tuning.space``: ``{name: {low, high, log?, int?}}`` or
        ``{name: {choices: [...]}}`` (a two-item list ``[low, high]`` is a float range)."""
        if not config:
            raise SuiteError("tuning.space is empty; give at least one parameter, e.g. "
                             "lr: {low: 1.0e-5, high: 1.0e-3, log: true}")
        dims = []
        for name, spec in config.items():
            if isinstance(spec, (list, tuple)) and len(spec) == 2:
                spec = {"low": spec[0], "high": spec[1]}
            if not isinstance(spec, dict):
                raise SuiteError(f"tuning.space.{name}: give {{low, high}} or {{choices: [...]}}")
            unknown = set(spec) - {"low", "high", "log", "int", "choices"}
            if unknown:
                raise SuiteError(f"tuning.space.{name}: unknown key {sorted(unknown)[0]!r}; "
                                 "allowed: low, high, log, int, choices")
            if "choices" in spec:
                choices = tuple(spec["choices"] or ())
                if len(choices) < 1 or len(set(map(repr, choices))) != len(choices):
                    raise SuiteError(f"tuning.space.{name}.choices must be distinct and non-empty")
                dims.append(Dim(name, "categorical", choices=choices))
                continue
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (KeyError, TypeError, ValueError):
                raise SuiteError(f"tuning.space.{name}: needs numeric `low` and `high`") from None
            log, is_int = bool(spec.get("log", False)), bool(spec.get("int", False))
            if not (math.isfinite(low) and math.isfinite(high)) or high < low:
                raise SuiteError(f"tuning.space.{name}: need low <= high, got {low} and {high}")
            if log and low <= 0:
                raise SuiteError(f"tuning.space.{name}: a log scale needs low > 0, got {low}")
            if is_int:
                if low != int(low) or high != int(high):
                    raise SuiteError(f"tuning.space.{name}: integer bounds must be whole numbers")
                low, high = int(low), int(high)
            dims.append(Dim(name, "int" if is_int else "float", low, high, log))
        return cls(tuple(dims))


class BudgetExhausted(Exception):
    """Raised by a budgeted objective when no evaluation is left (trials or time)."""


@dataclass
class Budget:
    """At most ``trials`` objective evaluations and ``seconds`` of wall time (None: no cap)."""

    trials: int | None = None
    seconds: float | None = None

    def __post_init__(self):
        if self.trials is None and self.seconds is None:
            raise SuiteError("a tuning budget needs trials, seconds or both")
        if self.trials is not None and self.trials < 1:
            raise SuiteError(f"budget trials must be >= 1, got {self.trials}")
        if self.seconds is not None and self.seconds <= 0:
            raise SuiteError(f"budget seconds must be > 0, got {self.seconds}")


@dataclass
class BudgetedObjective:
    """Wraps ``fn(params) -> float`` and stops it at the budget.

    ``used_trials`` and ``used_seconds`` may start above zero (a resumed study counts
    what it already spent). Every call that would start an evaluation past the budget
    raises ``BudgetExhausted`` instead.
    """

    fn: Callable[[dict], float]
    budget: Budget
    used_trials: int = 0
    used_seconds: float = 0.0
    _start: float = field(default_factory=time.perf_counter)

    def exhausted(self) -> bool:
        b = self.budget
        if b.trials is not None and self.used_trials >= b.trials:
            return True
        return b.seconds is not None and self.elapsed() >= b.seconds

    def elapsed(self) -> float:
        return self.used_seconds + (time.perf_counter() - self._start)

    def __call__(self, params: dict) -> float:
        if self.exhausted():
            raise BudgetExhausted()
        self.used_trials += 1
        return float(self.fn(params))
