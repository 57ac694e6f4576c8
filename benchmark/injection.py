"""How many synthetic images each class receives (training part of a fold only).

Injection policies are plugins (``register_injections``); the built-in ones:

balance        n_c = n_max - n_c: every class is filled up to the majority (seed 001).
complementary  seed 000's weighted injection. With N real training images, class counts
               n_c and n_max the largest, the total synthetic budget is
               T = round(SIIR x N), shared in proportion to the complementary frequency:
               n_c = T x (n_max - n_c) / sum_j (n_max - n_j)   (largest-remainder rounding,
               so the shares add up to T exactly; the majority class gets none).
fixed          a given number per class: an int for every class but the majority, or a
               mapping of class name to count (seed 003 adds 3000 malignant images).
"""

from __future__ import annotations

import numpy as np

from .api import InjectionPolicy
from .errors import PluginError, SuiteError
from .hookspecs import hookimpl
from .registry import registry


class Balance(InjectionPolicy):
    description = "every class filled up to the majority (seed 001)"

    def plan(self, counts, classes, *, siir=0.2, per_class=None):
        counts_a = np.asarray(counts, dtype=np.int64)
        return (counts_a.max() - counts_a).tolist()


class Complementary(InjectionPolicy):
    description = "round(SIIR x N) images shared by complementary frequency (seed 000)"

    def plan(self, counts, classes, *, siir=0.2, per_class=None):
        counts_a = np.asarray(counts, dtype=np.int64)
        gap = counts_a.max() - counts_a
        total = int(round(siir * counts_a.sum()))
        if gap.sum() == 0 or total == 0:
            return [0] * len(counts)
        exact = total * gap / gap.sum()
        out = np.floor(exact).astype(np.int64)
        short = total - int(out.sum())
        order = np.argsort(-(exact - out), kind="stable")
        out[order[:short]] += 1
        return out.tolist()


class Fixed(InjectionPolicy):
    description = "per_class images for every minority class, or a count per class name (seed 003)"

    def plan(self, counts, classes, *, siir=0.2, per_class=None):
        if per_class is None:
            raise SuiteError("injection policy `fixed` needs `per_class` (an int or a mapping)")
        counts_a = np.asarray(counts, dtype=np.int64)
        n_max = int(counts_a.max())
        if isinstance(per_class, int):
            return [0 if c == n_max else int(per_class) for c in counts_a.tolist()]
        unknown = [k for k in per_class if k not in classes]
        if unknown:
            raise SuiteError(f"injection.per_class names unknown class {unknown[0]!r}; "
                             f"classes: {', '.join(classes)}")
        return [int(per_class.get(c, 0)) for c in classes]


@hookimpl
def register_injections(register):
    register("balance", Balance())
    register("complementary", Complementary())
    register("fixed", Fixed())


def policy_names() -> list[str]:
    return list(registry().plugins["injections"])


def check_policy(policy: str) -> None:
    if policy not in registry().plugins["injections"]:
        raise SuiteError(f"unknown injection policy {policy!r}; use "
                         f"{', '.join(policy_names())}")


def plan(policy: str, counts: list[int], classes: list[str], *, siir: float = 0.2,
         per_class: int | dict[str, int] | None = None) -> list[int]:
    """Synthetic images per class under the named policy, for real counts ``counts``."""
    check_policy(policy)
    out = registry().get("injections", policy).obj.plan(list(counts), list(classes), siir=siir,
                                                         per_class=per_class)
    out = [int(n) for n in out]
    if len(out) != len(counts) or any(n < 0 for n in out):
        raise PluginError(f"injection policy {policy!r} returned {out}; expected one count "
                          f">= 0 per class ({len(counts)})")
    return out
