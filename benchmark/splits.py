"""Train / validation / test splits. Test folds hold real images only, always: the
splits are made here, before any generator runs, and synthetic images are added to the
training part alone (see runner.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

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


def make_folds(ds: ImageSet, kind: str, *, seed: int, folds: int = 5,
               val_fraction: float = 0.1, test_fraction: float = 0.2,
               min_per_class: int = 2) -> list[Fold]:
    labels = ds.labels.numpy()
    out: list[Fold] = []
    if kind == "holdout":
        if ds.splits is not None and "test" in set(ds.splits):
            train = ds.split_index("train")
            test = ds.split_index("test")
            val = ds.split_index("val")
            if len(val) == 0:
                train, val = _carve(train, labels, val_fraction, seed, "validation")
        else:
            all_idx = np.arange(len(ds))
            train, test = _carve(all_idx, labels, test_fraction, seed, "test")
            train, val = _carve(train, labels, val_fraction, seed, "validation")
        out.append(Fold(0, train, val, test))
    elif kind == "kfold":
        counts = np.bincount(labels, minlength=ds.num_classes)
        small = [ds.classes[i] for i, c in enumerate(counts) if c < folds]
        if small:
            raise DataError(f"stratified {folds}-fold CV needs at least {folds} images per class; "
                            f"{small[0]!r} has {counts[ds.classes.index(small[0])]}; lower protocol.folds")
        skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for i, (rest, test) in enumerate(skf.split(np.zeros(len(labels)), labels)):
            train, val = _carve(rest, labels, val_fraction, seed + i, "validation")
            out.append(Fold(i, train, val, np.sort(test)))
    else:
        raise DataError(f"unknown protocol kind {kind!r}; use holdout or kfold")
    for f in out:
        f.check_disjoint()
        counts = np.bincount(labels[f.train], minlength=ds.num_classes)
        low = [ds.classes[i] for i, c in enumerate(counts) if c < min_per_class]
        if low:
            raise DataError(f"class {low[0]!r} has {counts[ds.classes.index(low[0])]} training "
                            f"image(s) in fold {f.index}; at least {min_per_class} needed "
                            "(dataset.min_per_class)")
    return out
