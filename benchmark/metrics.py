"""Classification metrics on a real test fold, as tidy (metric, class, value) rows.

Metrics are plugins (``register_metrics``, each a ``medbench.api.Metric``); the built-in
ones are registered from this module, so an outside package adds one the same way."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (average_precision_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)

from .api import Metric
from .errors import PluginError
from .hookspecs import hookimpl
from .registry import registry


# expected calibration error: equal-width confidence bins over [0, 1] (Guo et al. 2017)
ECE_BINS = 15


def tune_threshold(y_val: np.ndarray, p_val: np.ndarray, positive: int = 1) -> float:
    """Binary tasks: the threshold on the probability of class ``positive`` that
    maximises the validation F1 of that class."""
    scores = p_val[:, positive]
    truth = (np.asarray(y_val) == positive).astype(int)
    best_t, best_f1 = 0.5, -1.0
    for t in np.unique(np.concatenate([scores, [0.5]])):
        f1 = f1_score(truth, (scores >= t).astype(int), zero_division=0)
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


def predict(probs: np.ndarray, threshold: float | None = None, positive: int = 1) -> np.ndarray:
    """Argmax predictions; binary tasks with a ``threshold``: class ``positive`` where its
    probability reaches the threshold, the other class elsewhere."""
    if threshold is not None and probs.shape[1] == 2:
        return np.where(probs[:, positive] >= threshold, positive, 1 - positive).astype(np.int64)
    return probs.argmax(1)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Top-label ECE: the images are binned by their top probability (``bins``
    equal-width bins over [0, 1], each bin (lo, hi]); ECE is the mean over bins,
    weighted by their share of images, of |accuracy - mean top probability|. The label
    is the argmax: calibration is a property of the probabilities, not of a tuned
    threshold."""
    y = np.asarray(y_true)
    if len(y) == 0:
        return float("nan")
    conf = probs.max(1)
    right = (probs.argmax(1) == y).astype(float)
    # bin b holds (b/bins, (b+1)/bins]; a top probability of exactly 0 cannot happen
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    # per bin |sum(right) - sum(conf)| = |B| * |acc(B) - conf(B)|; their sum / n is ECE
    gap = np.abs(np.bincount(which, right, bins) - np.bincount(which, conf, bins))
    return float(gap.sum() / len(y))


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score (Brier 1950): the mean over images of the squared distance
    between the probability vector and the one-hot label, from 0 (perfect) to 2. For a
    binary task it is twice scikit-learn's ``brier_score_loss``."""
    y = np.asarray(y_true)
    if len(y) == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs.astype(float) - onehot) ** 2).sum(1).mean())


class Scores:
    """What every metric of one test fold reads, worked out once: labels, probabilities,
    predictions, the confusion matrix and the per-class rates.

    Recall and F1 are NaN for a class absent from the test fold, and the macro averages
    run over the classes present (as balanced accuracy and AUC do)."""

    def __init__(self, y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                 threshold: float | None = None, positive: int | None = None):
        self.y_true, self.probs, self.classes = y_true, probs, list(classes)
        self.k = k = len(classes)
        # binary tasks: the class PR-AUC and the threshold are about (the engine passes
        # the data's positive class, by default its minority class; 1 when not told)
        self.positive = (1 if positive is None else int(positive)) if k == 2 else None
        self.y_pred = predict(probs, threshold, 1 if self.positive is None else self.positive)
        labels = np.arange(k)
        self.cm = cm = confusion_matrix(y_true, self.y_pred, labels=labels)
        n = cm.sum()
        self.n = n
        prec, rec, f1, _ = precision_recall_fscore_support(y_true, self.y_pred, labels=labels,
                                                           zero_division=0)
        self.tp = tp = np.diag(cm)
        fp = cm.sum(0) - tp
        fn = cm.sum(1) - tp
        tn = n - tp - fp - fn
        self.specificity = np.divide(tn, tn + fp, out=np.zeros(k), where=(tn + fp) > 0)
        self.present = present = cm.sum(1) > 0
        self.precision = prec
        self.recall = np.where(present, rec, np.nan)
        self.f1 = np.where(present, f1, np.nan)
        self._auc: tuple[float, float] | None = None

    def macro(self, values: np.ndarray) -> float:
        return float(values[self.present].mean()) if self.present.any() else np.nan

    def auc(self) -> tuple[float, float]:
        """(ROC AUC, average precision): one-vs-rest macro averages when multi-class,
        of the positive class when binary; NaN when a class is absent from the fold."""
        if self._auc is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._auc = _auc(self.y_true, self.probs, self.k, self.positive)
        return self._auc


BUILTIN = {
    "accuracy": Metric(lambda s: float(s.tp.sum() / max(s.n, 1)), "set", "share of test images right"),
    "balanced_accuracy": Metric(lambda s: s.macro(s.recall), "set",
                                "mean recall over the classes present"),
    "macro_f1": Metric(lambda s: s.macro(s.f1), "set", "mean F1 over the classes present"),
    "macro_precision": Metric(lambda s: s.macro(s.precision), "set",
                              "mean precision over the classes present"),
    "macro_recall": Metric(lambda s: s.macro(s.recall), "set", "mean recall over the classes present"),
    "roc_auc": Metric(lambda s: s.auc()[0], "set", "area under the ROC curve (one-vs-rest macro)"),
    "pr_auc": Metric(lambda s: s.auc()[1], "set", "average precision (one-vs-rest macro; "
                     "of the positive class when binary)"),
    "ece": Metric(lambda s: expected_calibration_error(s.y_true, s.probs), "set",
                  f"expected calibration error (top label, {ECE_BINS} equal-width bins)",
                  lower_is_better=True),
    "brier": Metric(lambda s: brier_score(s.y_true, s.probs), "set",
                    "multi-class Brier score (0 to 2)", lower_is_better=True),
    "precision": Metric(lambda s: s.precision, "class", "precision of each class"),
    "recall": Metric(lambda s: s.recall, "class", "recall of each class (NaN if absent)"),
    "f1": Metric(lambda s: s.f1, "class", "F1 of each class (NaN if absent)"),
    "specificity": Metric(lambda s: s.specificity, "class", "specificity of each class"),
    "confusion": Metric(lambda s: s.cm, "pair", "test images per (true, predicted) class pair"),
}


@hookimpl
def register_metrics(register):
    for name, metric in BUILTIN.items():
        register(name, metric)


def registered() -> dict[str, Metric]:
    """Every metric plugin, by name, in registration order (built-ins first)."""
    return {name: info.obj for name, info in registry().plugins["metrics"].items()}


def scalar_metrics() -> list[str]:
    """The metrics with one number per fold: what a tuning objective can be."""
    return [name for name, m in registered().items() if m.per == "set"]


def lower_is_better(name: str) -> bool:
    """Whether smaller values of a metric are better: a loss (the name ends in "loss") or
    a metric plugin that says so (calibration errors)."""
    metric = registered().get(name)
    return name.endswith("loss") or bool(metric is not None and metric.lower_is_better)


def compute(y_true: np.ndarray, probs: np.ndarray, classes: list[str], wanted: list[str],
            threshold: float | None = None, positive: int | None = None
            ) -> list[tuple[str, str, float]]:
    """Rows of (metric, class, value) for the wanted metrics; class is "" for whole-set
    metrics, the class name for per-class ones, "true->pred" for pair metrics. Rows come
    whole-set metrics first, then class by class, then pairs, each in registration
    order. ``positive``: the positive class of a binary task (see ``Scores``)."""
    table = registered()
    unknown = [m for m in wanted if m not in table]
    if unknown:
        raise PluginError(f"unknown metric {unknown[0]!r}; available: {', '.join(table)}")
    want = set(wanted)
    s = Scores(y_true, probs, classes, threshold, positive)
    chosen = {per: [(n, m) for n, m in table.items() if n in want and m.per == per]
              for per in ("set", "class", "pair")}
    rows: list[tuple[str, str, float]] = [(n, "", float(m.compute(s))) for n, m in chosen["set"]]
    per_class = {n: np.asarray(m.compute(s), dtype=float) for n, m in chosen["class"]}
    for i, cname in enumerate(s.classes):
        for n, _ in chosen["class"]:
            rows.append((n, cname, float(per_class[n][i])))
    for n, m in chosen["pair"]:
        values = np.asarray(m.compute(s), dtype=float)
        for i in range(s.k):
            for j in range(s.k):
                rows.append((n, f"{s.classes[i]}->{s.classes[j]}", float(values[i, j])))
    return rows


def _auc(y_true: np.ndarray, probs: np.ndarray, k: int, positive: int | None = 1
         ) -> tuple[float, float]:
    if len(np.unique(y_true)) < 2:
        return float("nan"), float("nan")
    if k == 2:
        pos = 1 if positive is None else positive
        truth = (np.asarray(y_true) == pos).astype(int)
        return (float(roc_auc_score(truth, probs[:, pos])),
                float(average_precision_score(truth, probs[:, pos])))
    onehot = np.eye(k)[y_true]
    keep = onehot.sum(0) > 0          # classes present in this fold
    p = probs / probs.sum(1, keepdims=True)
    auc = roc_auc_score(onehot[:, keep], p[:, keep], average="macro")
    ap = average_precision_score(onehot[:, keep], p[:, keep], average="macro")
    return float(auc), float(ap)
