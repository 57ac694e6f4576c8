"""Train / validation / test splits. Test folds hold real images only, always: the
splits are made here, before any generator runs, and synthetic images are added to the
training part alone (see runner.py).

When the images carry groups (``ImageSet.groups``: a patient or lesion id, from
``dataset.groups``), every split keeps each group whole: stratified group k-fold for the
test folds and for the validation part carved from the rest, so no patient is seen in
training and judged in validation or test. On the source's own splits (holdout) a group
that spans them keeps its test images; its training and validation images are left out.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from .data import ImageSet
from .errors import DataError


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def check_disjoint(self) -> None:
        a, b, c = set(self.train.tolist()), set(self.val.tolist()), set(self.test.tolist())
        if a & b or a & c or b & c:
            raise AssertionError("train, val and test overlap")

    def check_groups(self, groups: np.ndarray) -> None:
        a, b, c = (set(groups[part].tolist()) for part in (self.train, self.val, self.test))
        if a & b or a & c or b & c:
            raise AssertionError("a group is in two of train, val and test")


def _carve(index: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
           what: str) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels[index])
    present = counts[counts > 0]
    if present.min() < 2:
        raise DataError(f"cannot carve a stratified {what} split: a class has only "
                        f"{present.min()} image(s) in the part it is carved from")
    n_take = max(int(round(fraction * len(index))), len(present))
    try:
        rest, taken = train_test_split(index, test_size=n_take, stratify=labels[index],
                                       random_state=seed)
    except ValueError as exc:      # too few images left to stratify both parts
        raise DataError(f"cannot carve a stratified {what} split of {n_take} image(s) from "
                        f"{len(index)} of {len(present)} classes: {exc}") from None
    return np.sort(rest), np.sort(taken)


def _carve_grouped(index: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float,
                   seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``_carve`` keeping groups whole: stratified group k-fold over ``index`` with about
    1 / fraction folds, one of which is taken (the first whose part holds every class of
    ``index``, when one does: a validation split without a class cannot select for it)."""
    n_splits = max(2, int(round(1.0 / fraction)))
    n_groups = len(np.unique(groups[index]))
    if n_groups < n_splits:
        raise DataError(f"cannot carve a {what} split of about {fraction:.0%} keeping groups "
                        f"whole: the part it is carved from has {n_groups} group(s), at least "
                        f"{n_splits} needed; use more groups or a larger fraction")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    present = set(labels[index].tolist())
    with warnings.catch_warnings():
        # "the least populated class has fewer members than n_splits": only one part is
        # taken here, and the class check below is what matters
        warnings.simplefilter("ignore", UserWarning)
        parts = [(index[r], index[t]) for r, t in sgkf.split(np.zeros(len(index)),
                                                            labels[index], groups[index])]
    rest, taken = next(((r, t) for r, t in parts if set(labels[t].tolist()) == present),
                       parts[0])
    return np.sort(rest), np.sort(taken)


def _leave_out_shared(train: np.ndarray, val: np.ndarray, test: np.ndarray,
                      groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source's own train / val parts without the images of groups that its test part
    (and, for train, its val part) also holds: the published test set stays whole."""
    in_test = set(groups[test].tolist())
    val = val[~np.isin(groups[val], list(in_test))]
    seen = in_test | set(groups[val].tolist())
    return train[~np.isin(groups[train], list(seen))], val


def make_folds(ds: ImageSet, kind: str, *, seed: int, folds: int = 5,
               val_fraction: float = 0.1, test_fraction: float = 0.2,
               min_per_class: int = 2) -> list[Fold]:
    labels = ds.labels.numpy()
    groups = None if ds.groups is None else np.asarray(ds.groups, dtype=str)

    def carve(index, fraction, seed_, what):
        if groups is None:
            return _carve(index, labels, fraction, seed_, what)
        return _carve_grouped(index, labels, groups, fraction, seed_, what)

    out: list[Fold] = []
    if kind == "holdout":
        if ds.splits is not None and "test" in set(ds.splits):
            train = ds.split_index("train")
            test = ds.split_index("test")
            val = ds.split_index("val")
            if groups is not None:
                train, val = _leave_out_shared(train, val, test, groups)
            if len(val) == 0:
                train, val = carve(train, val_fraction, seed, "validation")
        else:
            all_idx = np.arange(len(ds))
            train, test = carve(all_idx, test_fraction, seed, "test")
            train, val = carve(train, val_fraction, seed, "validation")
        out.append(Fold(0, train, val, test))
    elif kind == "kfold":
        counts = np.bincount(labels, minlength=ds.num_classes)
        small = [ds.classes[i] for i, c in enumerate(counts) if c < folds]
        if small:
            raise DataError(f"stratified {folds}-fold CV needs at least {folds} images per class; "
                            f"{small[0]!r} has {counts[ds.classes.index(small[0])]}; lower protocol.folds")
        if groups is None:
            split = StratifiedKFold(n_splits=folds, shuffle=True,
                                    random_state=seed).split(np.zeros(len(labels)), labels)
        else:
            n_groups = len(set(ds.groups))
            if n_groups < folds:
                raise DataError(f"stratified group {folds}-fold CV needs at least {folds} groups "
                                f"(dataset.groups); the data has {n_groups}; lower protocol.folds")
            split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(
                np.zeros(len(labels)), labels, groups)
        for i, (rest, test) in enumerate(split):
            train, val = carve(rest, val_fraction, seed + i, "validation")
            out.append(Fold(i, train, val, np.sort(test)))
    else:
        raise DataError(f"unknown protocol kind {kind!r}; use holdout or kfold")
    for f in out:
        f.check_disjoint()
        if groups is not None:
            f.check_groups(groups)
        counts = np.bincount(labels[f.train], minlength=ds.num_classes)
        low = [ds.classes[i] for i, c in enumerate(counts) if c < min_per_class]
        if low:
            raise DataError(f"class {low[0]!r} has {counts[ds.classes.index(low[0])]} training "
                            f"image(s) in fold {f.index}; at least {min_per_class} needed "
                            "(dataset.min_per_class)")
    return out
