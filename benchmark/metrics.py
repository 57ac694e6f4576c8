"""Classification metrics on a real test fold, as tidy (metric, class, value) rows."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (average_precision_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, roc_auc_score)


# whole-set metrics (one number per cell): what a tuning objective can be
SCALAR = ("accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall",
          "roc_auc", "pr_auc")


def tune_threshold(y_val: np.ndarray, p_val: np.ndarray) -> float:
    """Binary tasks: the probability threshold for class 1 that maximises validation F1."""
    scores = p_val[:, 1]
    best_t, best_f1 = 0.5, -1.0
    for t in np.unique(np.concatenate([scores, [0.5]])):
        f1 = f1_score(y_val, (scores >= t).astype(int), zero_division=0)
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


def predict(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(np.int64)
    return probs.argmax(1)


def compute(y_true: np.ndarray, probs: np.ndarray, classes: list[str], wanted: list[str],
            threshold: float | None = None) -> list[tuple[str, str, float]]:
    """Rows of (metric, class, value); class is "" for whole-set metrics.

    accuracy, balanced_accuracy, macro_f1/precision/recall (over the classes present in
    the test fold); per class precision, recall, f1 (recall and f1 NaN for a class absent
    from the test fold), specificity; roc_auc and pr_auc (one-vs-rest macro average when multi-class;
    positive class 1 when binary; NaN when a class is absent from the test fold);
    confusion: one row per (true, predicted) pair named "true->pred".
    """
    k = len(classes)
    y_pred = predict(probs, threshold)
    labels = np.arange(k)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    rows: list[tuple[str, str, float]] = []
    want = set(wanted)
    n = cm.sum()
    prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                       zero_division=0)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = n - tp - fp - fn
    spec = np.divide(tn, tn + fp, out=np.zeros(k), where=(tn + fp) > 0)
    present = cm.sum(1) > 0
    if "accuracy" in want:
        rows.append(("accuracy", "", float(tp.sum() / max(n, 1))))
    if "balanced_accuracy" in want:
        rows.append(("balanced_accuracy", "", float(rec[present].mean()) if present.any() else np.nan))
    # a class absent from the test fold has no recall or F1: those are NaN, and the
    # macro averages run over the classes present (as balanced accuracy and AUC do)
    rec = np.where(present, rec, np.nan)
    f1 = np.where(present, f1, np.nan)
    if "macro_f1" in want:
        rows.append(("macro_f1", "", float(f1[present].mean()) if present.any() else np.nan))
    if "macro_precision" in want:
        rows.append(("macro_precision", "", float(prec[present].mean()) if present.any() else np.nan))
    if "macro_recall" in want:
        rows.append(("macro_recall", "", float(rec[present].mean()) if present.any() else np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "roc_auc" in want or "pr_auc" in want:
            auc, ap = _auc(y_true, probs, k)
            if "roc_auc" in want:
                rows.append(("roc_auc", "", auc))
            if "pr_auc" in want:
                rows.append(("pr_auc", "", ap))
    for i, name in enumerate(classes):
        if "precision" in want:
            rows.append(("precision", name, float(prec[i])))
        if "recall" in want:
            rows.append(("recall", name, float(rec[i])))
        if "f1" in want:
            rows.append(("f1", name, float(f1[i])))
        if "specificity" in want:
            rows.append(("specificity", name, float(spec[i])))
    if "confusion" in want:
        for i in range(k):
            for j in range(k):
                rows.append(("confusion", f"{classes[i]}->{classes[j]}", float(cm[i, j])))
    return rows


def _auc(y_true: np.ndarray, probs: np.ndarray, k: int) -> tuple[float, float]:
    if len(np.unique(y_true)) < 2:
        return float("nan"), float("nan")
    if k == 2:
        return (float(roc_auc_score(y_true, probs[:, 1])),
                float(average_precision_score(y_true, probs[:, 1])))
    onehot = np.eye(k)[y_true]
    keep = onehot.sum(0) > 0          # classes present in this fold
    p = probs / probs.sum(1, keepdims=True)
    auc = roc_auc_score(onehot[:, keep], p[:, keep], average="macro")
    ap = average_precision_score(onehot[:, keep], p[:, keep], average="macro")
    return float(auc), float(ap)
