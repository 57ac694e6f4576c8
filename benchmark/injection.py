"""How many synthetic images each class receives (training part of a fold only).

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

from .errors import SuiteError


def plan(policy: str, counts: list[int], classes: list[str], *, siir: float = 0.2,
         per_class: int | dict[str, int] | None = None) -> list[int]:
    counts_a = np.asarray(counts, dtype=np.int64)
    n_max = int(counts_a.max())
    gap = n_max - counts_a
    if policy == "balance":
        return gap.tolist()
    if policy == "complementary":
        total = int(round(siir * counts_a.sum()))
        if gap.sum() == 0 or total == 0:
            return [0] * len(counts)
        exact = total * gap / gap.sum()
        out = np.floor(exact).astype(np.int64)
        short = total - int(out.sum())
        order = np.argsort(-(exact - out), kind="stable")
        out[order[:short]] += 1
        return out.tolist()
    if policy == "fixed":
        if per_class is None:
            raise SuiteError("injection policy `fixed` needs `per_class` (an int or a mapping)")
        if isinstance(per_class, int):
            return [0 if c == n_max else int(per_class) for c in counts_a.tolist()]
        unknown = [k for k in per_class if k not in classes]
        if unknown:
            raise SuiteError(f"injection.per_class names unknown class {unknown[0]!r}; "
                             f"classes: {', '.join(classes)}")
        return [int(per_class.get(c, 0)) for c in classes]
    raise SuiteError(f"unknown injection policy {policy!r}; use balance, complementary or fixed")
