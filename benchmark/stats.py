"""Significance tests for a results table: is an imbalance remedy better than no remedy?

Every arm of a suite is trained and tested on the same (seed, fold) splits as the baseline
arm (``"none"``), so an arm and the baseline give *paired* numbers: one pair per
(classifier, seed, fold) cell. The tests here use that pairing.

What each function answers, and when to use it
----------------------------------------------
``mean_ci(values)``
    Mean, sample standard deviation (ddof=1) and Student-t confidence interval of the
    mean of one arm's metric over its cells. Descriptive: two overlapping intervals do
    *not* mean that two paired arms are indistinguishable (the pairing removes the
    split-to-split variation the intervals contain); use ``paired_test`` for that.

``paired_test(a, b, method="wilcoxon")``
    Wilcoxon signed-rank test on the per-cell differences ``a - b`` (arm minus
    baseline). It assumes no normality, only that the differences are symmetric under
    the null hypothesis; the default. ``method="ttest"`` is the paired t-test: more
    power when the differences are roughly normal, and the only one of the two that can
    reach p < 0.05 with 3 to 5 pairs (see below).

    Small-sample caveat: the exact two-sided Wilcoxon p-value is at least
    ``2 / 2**n`` for ``n`` non-zero differences (all of one sign), i.e. 0.25 for 3
    pairs, 0.125 for 4, 0.0625 for 5 and 0.03125 for 6. **With fewer than 6 pairs the
    Wilcoxon test cannot reach p < 0.05**, whatever the data: a suite of 3 seeds x 1
    fold (holdout) can never show a significant Wilcoxon result, while 10 folds (or
    2 seeds x 5 folds) can. For such suites read the effect sizes and intervals, use
    the t-test knowing its normality assumption cannot be checked on 3 numbers, or
    use ``mcnemar`` on the pooled test predictions.

``corrected_ttest(a, b, test_train_ratio)``
    The corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004 for
    repeated k-fold): the paired t-test whose variance of the mean difference is
    ``(1/J + n2/n1) * var(d)`` instead of ``var(d) / J``, with ``J`` runs (seed, fold),
    ``n2`` test and ``n1`` training images per run, ``J - 1`` degrees of freedom. The
    runs of k-fold cross-validation and of repeated random holdout share most of their
    training images (and, over seeds, their test images), so their differences are
    positively correlated; the plain t-test and the Wilcoxon test take them as
    independent and are too confident. ``n2/n1`` is Nadeau and Bengio's estimate of that
    correlation; for k-fold it is about ``1/(k-1)``.

    One train/test split repeated over seeds (a dataset's own holdout split) is another
    design: the runs differ only by seed, so there is no resampling to correct for and
    the ratio is 0 (``fixed_test=True`` in ``compare_to_baseline``): the plain paired
    t-test over seeds. It assumes the seeds give independent training runs, and it is
    *conditional on the split*: it asks whether the arm beats the baseline on these test
    images beyond seed-to-seed training noise, and says nothing about a new sample of
    test images (McNemar's test on one seed's predictions speaks to those).

``rank_biserial(a, b)``
    The matched-pairs rank-biserial correlation (Kerby 2014), the effect size that
    belongs to the Wilcoxon test: ``(R+ - R-) / (R+ + R-)`` over the signed ranks of the
    non-zero differences, from -1 (the arm loses every pair) to +1 (wins every pair).

``correct(p_values, method="holm")``
    Family-wise error control when several arms are compared with the same baseline.
    Holm's step-down procedure is uniformly more powerful than Bonferroni and controls
    the same error rate, so it is the default; Bonferroni is there for papers that ask
    for it.

``mcnemar(y_true, pred_a, pred_b)``
    McNemar's test on the images of a test set: of the images exactly one of the two
    classifiers gets right (``b``: only ``a`` right, ``c``: only ``b`` right), are both
    kinds equally likely? It compares two classifiers on *one* test set and uses every
    test image, so it has far more power than a test over 3 cells; but it says nothing
    about the variation between training runs (seeds) or splits.

``compare_to_baseline(df, metric)``
    One row per (arm, classifier): means, interval, paired test against the baseline
    on the matched (seed, fold) cells, Holm-corrected p-value over the arms compared
    for that classifier, significance mark and direction, and the effect sizes: the
    mean difference with its confidence interval (from the corrected t-test's standard
    error) and the rank-biserial correlation.

``mcnemar_to_baseline(preds)``
    McNemar against the baseline on the stored test predictions, pooled over the
    (seed, fold) cells both arms have, Holm-corrected over the arms of each classifier.
    Pooling k folds of one seed uses every image once, which is what McNemar assumes.
    Pooling several seeds counts an image once per seed, and the repeats are not
    independent: the p-value is then optimistic, a screening number rather than a
    test.

scipy options of the Wilcoxon test (see ``WILCOXON_OPTIONS``)
-------------------------------------------------------------
``zero_method="wilcox"``
    Cells where the arm and the baseline score exactly the same carry no sign and are
    dropped before ranking (Wilcoxon's original rule, scipy's default). ``n`` still
    counts them; ``n_nonzero`` is the number the test used. Differences are rounded to
    ``DIFF_DECIMALS`` decimals first, so that floating-point noise (0.85 - 0.80 vs
    0.90 - 0.85) neither breaks real ties nor turns an exact tie into a tiny non-zero
    difference. If every difference is zero the result is statistic 0, p = 1.
``method="auto"``
    Exact null distribution when there are at most 50 pairs and no ties or zeros;
    with ties or zeros and at most 13 pairs, a permutation test over all ``2**n`` sign
    flips (the exact conditional distribution, deterministic); otherwise the normal
    approximation. For the 3 to 10 pairs of a typical suite the p-value is therefore
    always exact.
``correction=False``
    No continuity correction (scipy's default); it only touches the normal
    approximation, which a typical suite never reaches.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

BASELINE = "none"
DEFAULT_CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05
# (threshold, mark): p_adjusted below the threshold earns the mark; tightest first
MARK_LEVELS: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
# metric names ending in this are lower-is-better (test_loss, ...)
LOWER_IS_BETTER_SUFFIX = "loss"
# paired differences are rounded to this many decimals before ranking (see module doc)
DIFF_DECIMALS = 12
WILCOXON_OPTIONS: dict[str, Any] = {"zero_method": "wilcox", "method": "auto",
                                    "correction": False, "alternative": "two-sided"}
# McNemar: exact binomial test when the discordant count b + c is below this
MCNEMAR_EXACT_BELOW = 25
# McNemar's null hypothesis: a discordant image is equally likely to favour either side
MCNEMAR_NULL_PROPORTION = 0.5
# continuity correction subtracted from |b - c| in the chi-square branch (Edwards)
MCNEMAR_CONTINUITY = 1.0
MCNEMAR_DF = 1

PAIRED_METHODS = ("wilcoxon", "ttest", "corrected_t")
CORRECTIONS = ("holm", "bonferroni")
KEYS = ["seed", "fold"]

COMPARE_COLUMNS = ["arm", "classifier", "metric", "n_pairs", "n_dropped", "mean",
                   "mean_baseline", "mean_diff", "ci_low", "ci_high", "statistic",
                   "p_value", "p_adjusted", "significant", "mark", "direction", "method",
                   "diff_ci_low", "diff_ci_high", "rank_biserial", "test_train_ratio"]
# the per-cell sizes of the results table the corrected t-test reads: test images, and
# the images of the training side of the split (real training part plus validation)
SIZE_COLUMNS = ("n_test", "n_train_real", "n_val")
MCNEMAR_COLUMNS = ["arm", "classifier", "n_cells", "n", "b", "c", "statistic", "p_value",
                   "p_adjusted", "mark", "method"]


# ---------------------------------------------------------------------- one sample
def mean_ci(values: Iterable[float], confidence: float = DEFAULT_CONFIDENCE
            ) -> tuple[float, float, float, float, int]:
    """``(mean, std, low, high, n)``: the mean of ``values``, their standard deviation
    (ddof=1) and the two-sided Student-t confidence interval of the mean,
    ``mean +- t_{(1+confidence)/2, n-1} * std / sqrt(n)``.

    Non-finite values (a metric undefined on a cell, e.g. AUC with a class missing)
    are left out and not counted in ``n``. One value: std 0 and interval (nan, nan).
    No values: all nan and n 0.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                   dtype=float).ravel()
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return np.nan, np.nan, np.nan, np.nan, 0
    mean = float(np.mean(x))
    if n == 1:
        return mean, 0.0, np.nan, np.nan, 1
    std = float(np.std(x, ddof=1))
    half = float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / np.sqrt(n)
    return mean, std, mean - half, mean + half, n


# ---------------------------------------------------------------------- paired tests
def paired_test(a: Sequence[float], b: Sequence[float], method: str = "wilcoxon"
                ) -> dict[str, Any]:
    """Two-sided paired test of arm ``a`` against baseline ``b`` (``a[i]`` and ``b[i]``
    are the same cell). Returns ``statistic``, ``p_value``, ``n`` (pairs used),
    ``n_nonzero`` (pairs whose difference is not zero), ``mean_diff`` (mean of
    ``a - b``) and ``method``.

    ``method="wilcoxon"``: ``scipy.stats.wilcoxon`` with ``WILCOXON_OPTIONS`` (see the
    module docstring); the statistic is the smaller of the two signed-rank sums. With
    fewer than 6 pairs the exact two-sided Wilcoxon p-value cannot be below 0.05 (its
    minimum is ``2 / 2**n``), so a 3-seed holdout suite never shows significance here.

    ``method="ttest"``: paired t-test, ``t = mean(d) / (std(d, ddof=1) / sqrt(n))``
    with ``n - 1`` degrees of freedom (the same numbers as ``scipy.stats.ttest_rel``).
    If the differences are constant and non-zero, ``t`` is infinite and p is 0.

    Pairs where either value is not finite are left out. All differences zero: statistic
    0 and p = 1. Fewer than 2 pairs: statistic and p nan. (The corrected t-test needs
    the test/train ratio: ``corrected_ttest``.)
    """
    if method not in PAIRED_METHODS[:2]:
        raise ValueError(f"unknown paired test {method!r}; choose one of {PAIRED_METHODS[:2]}")
    xa = np.asarray(a, dtype=float).ravel()
    xb = np.asarray(b, dtype=float).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    ok = np.isfinite(xa) & np.isfinite(xb)
    d = xa[ok] - xb[ok]
    n = int(d.size)
    mean_diff = float(np.mean(d)) if n else np.nan
    d_rank = np.round(d, DIFF_DECIMALS)
    n_nonzero = int(np.count_nonzero(d_rank))
    out: dict[str, Any] = {"statistic": np.nan, "p_value": np.nan, "n": n,
                           "n_nonzero": n_nonzero, "mean_diff": mean_diff, "method": method}
    if n < 2:
        return out
    if n_nonzero == 0:
        out.update(statistic=0.0, p_value=1.0)
        return out
    if method == "wilcoxon":
        res = sps.wilcoxon(d_rank, **WILCOXON_OPTIONS)
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
        return out
    sd = float(np.std(d, ddof=1))
    if sd == 0.0:
        out.update(statistic=float(np.copysign(np.inf, mean_diff)), p_value=0.0)
        return out
    t = mean_diff / (sd / np.sqrt(n))
    out.update(statistic=float(t), p_value=float(2.0 * sps.t.sf(abs(t), n - 1)))
    return out


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    xa = np.asarray(a, dtype=float).ravel()
    xb = np.asarray(b, dtype=float).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired samples differ in length: {xa.size} vs {xb.size}")
    ok = np.isfinite(xa) & np.isfinite(xb)
    return xa[ok] - xb[ok]


def corrected_ttest(a: Sequence[float], b: Sequence[float], test_train_ratio: float,
                    confidence: float = DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """The corrected resampled t-test of arm ``a`` against baseline ``b`` over ``J``
    paired runs (Nadeau & Bengio 2003): with ``d = a - b``,

        t = mean(d) / sqrt((1/J + n2/n1) * var(d)),   df = J - 1,

    ``var`` with ddof=1 and ``test_train_ratio`` = ``n2/n1``, the test images over the
    training images of a run (0 gives the plain paired t-test). Returns ``statistic``,
    ``p_value`` (two-sided), ``df``, ``n``, ``mean_diff``, ``se`` (the corrected
    standard error of the mean difference) and ``ci_low``/``ci_high``, the ``confidence``
    interval ``mean(d) +- t_{(1+confidence)/2, J-1} * se``. Pairs with a non-finite side
    are left out. Fewer than 2 pairs: NaNs. All differences equal: p = 1 when they are
    0, else statistic +-inf and p = 0, with a zero-width interval."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence!r}")
    r = float(test_train_ratio)
    if not (np.isfinite(r) and r >= 0.0):
        raise ValueError(f"test_train_ratio must be a number >= 0, got {test_train_ratio!r}")
    d = _differences(a, b)
    n = int(d.size)
    out: dict[str, Any] = {"statistic": np.nan, "p_value": np.nan, "df": n - 1, "n": n,
                           "mean_diff": float(np.mean(d)) if n else np.nan, "se": np.nan,
                           "ci_low": np.nan, "ci_high": np.nan, "method": "corrected_t",
                           "test_train_ratio": r}
    if n < 2:
        return out
    mean = out["mean_diff"]
    var = float(np.var(d, ddof=1))
    se = float(np.sqrt((1.0 / n + r) * var))
    half = float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1)) * se
    out.update(se=se, ci_low=mean - half, ci_high=mean + half)
    # equal differences up to floating-point noise (0.9 - 0.8 vs 0.8 - 0.7) vary not at all
    if se == 0.0 or not np.any(np.round(d - d[0], DIFF_DECIMALS)):
        out.update(se=0.0, ci_low=mean, ci_high=mean)
        zero = round(mean, DIFF_DECIMALS) == 0.0
        out.update(statistic=0.0 if zero else float(np.copysign(np.inf, mean)),
                   p_value=1.0 if zero else 0.0)
        return out
    t = mean / se
    out.update(statistic=float(t), p_value=float(2.0 * sps.t.sf(abs(t), n - 1)))
    return out


def rank_biserial(a: Sequence[float], b: Sequence[float]) -> float:
    """The matched-pairs rank-biserial correlation of ``a - b`` (Kerby 2014):
    ``(R+ - R-) / (R+ + R-)``, the rank sums of the positive and negative differences,
    ranked by absolute value with ties averaged, after dropping zero differences (as the
    Wilcoxon test does; differences rounded to ``DIFF_DECIMALS`` first). +1: the arm wins
    every pair; 0 when every difference is zero; NaN without pairs."""
    d = np.round(_differences(a, b), DIFF_DECIMALS)
    if d.size == 0:
        return np.nan
    d = d[d != 0.0]
    if d.size == 0:
        return 0.0
    ranks = sps.rankdata(np.abs(d))
    plus, minus = float(ranks[d > 0].sum()), float(ranks[d < 0].sum())
    return (plus - minus) / (plus + minus)


def resampling_ratio(df: pd.DataFrame) -> float | None:
    """``n2/n1`` of a results table's runs: the mean over its (seed, fold) cells of the
    test images over the training side of the split (``n_train_real + n_val``: the real
    images a run may learn from or select on). None when the table lacks those columns
    (older results)."""
    if not set(SIZE_COLUMNS) <= set(df.columns) or df.empty:
        return None
    cells = df.drop_duplicates(KEYS)
    train = cells["n_train_real"].to_numpy(float) + cells["n_val"].to_numpy(float)
    ok = train > 0
    if not ok.any():
        return None
    return float(np.mean(cells["n_test"].to_numpy(float)[ok] / train[ok]))


# ---------------------------------------------------------------------- multiplicity
def correct(p_values: Iterable[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values for family-wise error control over ``p_values``.

    ``bonferroni``: ``min(1, m * p)``. ``holm``: sort the m p-values ascending,
    ``p_(1) <= ... <= p_(m)``; the i-th (1-based) gets ``(m - i + 1) * p_(i)``, then a
    running maximum makes the adjusted values monotone in the raw ones, capped at 1.
    Rejecting where the adjusted value is below alpha is Holm's step-down procedure.

    NaN p-values (comparisons that could not be made) stay NaN and are not counted in
    ``m``. The result is in the input order.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; choose one of {CORRECTIONS}")
    p = np.asarray(list(p_values) if not isinstance(p_values, np.ndarray) else p_values,
                   dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    live = np.flatnonzero(~np.isnan(p))
    m = live.size
    if m == 0:
        return out
    q = p[live]
    if np.any((q < 0.0) | (q > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1], got {q[(q < 0) | (q > 1)].tolist()}")
    if method == "bonferroni":
        out[live] = np.minimum(1.0, m * q)
        return out
    order = np.argsort(q, kind="stable")
    factors = m - np.arange(m)               # m, m-1, ..., 1
    adj = np.minimum(1.0, np.maximum.accumulate(factors * q[order]))
    out[live[order]] = adj
    return out


def significance_mark(p: float) -> str:
    """``"***"``, ``"**"``, ``"*"`` or ``""`` for p below the ``MARK_LEVELS`` thresholds."""
    if p is None or not np.isfinite(p):
        return ""
    for threshold, mark in MARK_LEVELS:
        if p < threshold:
            return mark
    return ""


def lower_is_better(metric: str) -> bool:
    """Loss-like metrics (names ending in ``LOWER_IS_BETTER_SUFFIX``) and the metric
    plugins that say so (calibration errors: ece, brier) improve downwards."""
    if metric.endswith(LOWER_IS_BETTER_SUFFIX):
        return True
    from .metrics import registered      # the plugins' own word; only read here
    found = registered().get(metric)
    return bool(found is not None and found.lower_is_better)


def direction(mean_diff: float, metric: str) -> str:
    """``"better"`` / ``"worse"`` from the sign of (arm - baseline) for this metric,
    ``""`` if the difference is zero (after rounding to ``DIFF_DECIMALS`` decimals, so
    floating-point noise has no direction) or undefined."""
    if not np.isfinite(mean_diff):
        return ""
    diff = round(float(mean_diff), DIFF_DECIMALS)
    if diff == 0.0:
        return ""
    up = diff > 0.0
    return "better" if up != lower_is_better(metric) else "worse"


# ---------------------------------------------------------------------- McNemar
def mcnemar(y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]
            ) -> dict[str, Any]:
    """McNemar's test of classifier ``a`` against ``b`` on the same test images.

    ``b``: images ``a`` gets right and ``b`` wrong; ``c``: the reverse. Under the null
    hypothesis each discordant image favours either side with probability 1/2.

    * ``b + c < MCNEMAR_EXACT_BELOW`` (25): exact two-sided binomial test,
      ``scipy.stats.binomtest(b, b + c, 0.5)``; the statistic is ``min(b, c)``;
      ``method="exact"``.
    * otherwise: chi-square with one degree of freedom and Edwards' continuity
      correction, ``(|b - c| - 1)**2 / (b + c)`` (``|b - c| - 1`` floored at 0, so
      ``b == c`` gives p = 1); ``method="chi2"``.
    * ``b == c == 0`` (the two classifiers agree on correctness everywhere): statistic 0,
      p = 1, ``method="exact"``.
    """
    yt = np.asarray(y_true).ravel()
    pa = np.asarray(pred_a).ravel()
    pb = np.asarray(pred_b).ravel()
    if not yt.shape == pa.shape == pb.shape:
        raise ValueError(f"y_true, pred_a and pred_b differ in length: "
                         f"{yt.size}, {pa.size}, {pb.size}")
    ok_a = pa == yt
    ok_b = pb == yt
    b = int(np.sum(ok_a & ~ok_b))
    c = int(np.sum(~ok_a & ok_b))
    disc = b + c
    if disc == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": "exact"}
    if disc < MCNEMAR_EXACT_BELOW:
        p = sps.binomtest(b, disc, MCNEMAR_NULL_PROPORTION).pvalue
        return {"b": b, "c": c, "statistic": float(min(b, c)), "p_value": float(p),
                "method": "exact"}
    stat = max(abs(b - c) - MCNEMAR_CONTINUITY, 0.0) ** 2 / disc
    return {"b": b, "c": c, "statistic": float(stat),
            "p_value": float(sps.chi2.sf(stat, MCNEMAR_DF)), "method": "chi2"}


# ---------------------------------------------------------------------- tables
def _first_seen(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("cell_order", kind="stable") if "cell_order" in df.columns else df


def compare_to_baseline(df: pd.DataFrame, metric: str, baseline: str = BASELINE,
                        method: str = "wilcoxon", correction: str = "holm",
                        alpha: float = DEFAULT_ALPHA, *, cls: str = "",
                        test_train_ratio: float | None = None,
                        fixed_test: bool = False) -> pd.DataFrame:
    """Every arm against ``baseline`` on one metric, one row per (arm, classifier).

    ``df`` is the tidy results table (columns arm, classifier, seed, fold, metric,
    value, and class: only rows with ``class == cls`` are used, ``""`` being the
    whole-test-set metrics). An arm's cell is paired with the baseline cell of the same
    (classifier, seed, fold); cells without a partner, and pairs where either value is
    not finite, are dropped and counted in ``n_dropped`` (both sides).

    Columns: ``n_pairs``; ``mean`` and ``mean_baseline`` over the matched pairs;
    ``mean_diff`` (arm - baseline); ``ci_low``/``ci_high``, the ``1 - alpha`` t-interval
    of the arm's mean (see ``mean_ci``); ``statistic``/``p_value`` of ``paired_test``;
    ``p_adjusted``, corrected with ``correct(..., correction)`` over the arms compared
    for that classifier; ``significant`` (``p_adjusted < alpha``); ``mark``
    (``significance_mark(p_adjusted)``); ``direction``, "better"/"worse" from the sign
    of ``mean_diff`` (lower is better for metrics ending in "loss"), whether or not it
    is significant; ``method``.

    Effect sizes: ``diff_ci_low``/``diff_ci_high``, the ``1 - alpha`` interval of the mean
    difference from the corrected t-test (see ``corrected_ttest``), and
    ``rank_biserial`` (see ``rank_biserial``). ``test_train_ratio`` (``n2/n1``) is the
    one given, else 0 with ``fixed_test`` (every run tests on the same images: one split
    repeated over seeds), else read from the baseline's cells (``resampling_ratio``;
    NaN when it lacks the size columns, and the interval is then the plain
    paired t-interval). ``method="corrected_t"`` needs a ratio and raises ValueError
    without one.

    Raises ValueError if the metric or the baseline arm is absent, or a cell appears
    twice. A classifier the baseline never ran gets rows with ``n_pairs`` 0 and NaNs.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    if method not in PAIRED_METHODS:
        raise ValueError(f"unknown paired test {method!r}; choose one of {PAIRED_METHODS}")
    need = {"arm", "classifier", "seed", "fold", "metric", "value"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"results table lacks column(s) {sorted(missing)}")
    sub = _ordered(df[df["metric"] == metric])
    if "class" in sub.columns:
        sub = sub[sub["class"].fillna("") == cls]
    if sub.empty:
        raise ValueError(f"no rows for metric {metric!r}"
                         + (f" and class {cls!r}" if cls else "")
                         + f"; metrics present: {sorted(df['metric'].unique())}")
    arms = _first_seen(sub["arm"])
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no {metric!r} results; arms "
                         f"present: {arms}. Pass baseline= one of them")
    cell = ["arm", "classifier", *KEYS]
    dup = sub.duplicated(cell, keep=False)
    if dup.any():
        first = sub.loc[dup, cell].iloc[0].to_dict()
        raise ValueError(f"cell {first} has more than one {metric!r} value")
    confidence = 1.0 - alpha
    rows: list[dict[str, Any]] = []
    for clf in _first_seen(sub["classifier"]):
        part = sub[sub["classifier"] == clf]
        base = part.loc[part["arm"] == baseline, [*KEYS, "value"]]
        ratio = test_train_ratio
        if ratio is None:
            ratio = 0.0 if fixed_test else resampling_ratio(part[part["arm"] == baseline])
        if ratio is None and method == "corrected_t":
            raise ValueError("the corrected t-test needs test_train_ratio (n_test / n_train) "
                             f"or the columns {list(SIZE_COLUMNS)} in the results table")
        block: list[dict[str, Any]] = []
        for arm in _first_seen(part["arm"]):
            if arm == baseline:
                continue
            mine = part.loc[part["arm"] == arm, [*KEYS, "value"]]
            pairs = mine.merge(base, on=KEYS, suffixes=("", "_base"), how="inner")
            finite = np.isfinite(pairs["value"].to_numpy(float)) & \
                np.isfinite(pairs["value_base"].to_numpy(float))
            pairs = pairs[finite]
            n = len(pairs)
            dropped = len(mine) + len(base) - 2 * n
            va = pairs["value"].to_numpy(float)
            vb = pairs["value_base"].to_numpy(float)
            mean, _, lo, hi, _ = mean_ci(va, confidence)
            corrected = corrected_ttest(va, vb, 0.0 if ratio is None else ratio, confidence)
            test = corrected if method == "corrected_t" else paired_test(va, vb, method)
            block.append({
                "arm": arm, "classifier": clf, "metric": metric, "n_pairs": n,
                "n_dropped": dropped, "mean": mean,
                "mean_baseline": float(np.mean(vb)) if n else np.nan,
                "mean_diff": test["mean_diff"], "ci_low": lo, "ci_high": hi,
                "statistic": test["statistic"], "p_value": test["p_value"],
                "method": method, "diff_ci_low": corrected["ci_low"],
                "diff_ci_high": corrected["ci_high"], "rank_biserial": rank_biserial(va, vb),
                "test_train_ratio": np.nan if ratio is None else float(ratio)})
        adjusted = correct([r["p_value"] for r in block], correction)
        for r, p_adj in zip(block, adjusted):
            r["p_adjusted"] = float(p_adj)
            r["significant"] = bool(np.isfinite(p_adj) and p_adj < alpha)
            r["mark"] = significance_mark(p_adj)
            r["direction"] = direction(r["mean_diff"], metric)
        rows.extend(block)
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


PredCell = tuple[Hashable, Hashable, Sequence[int], Any]


def _by_split(cells: Iterable[PredCell], arm: str, clf: str
              ) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    out: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for seed, fold, y_true, probs in cells:
        y = np.asarray(y_true).ravel()
        pr = np.asarray(probs)
        if pr.ndim != 2 or pr.shape[0] != y.size:
            raise ValueError(f"arm {arm!r} classifier {clf!r} seed {seed} fold {fold}: "
                             f"probs must be N x K with N = len(y_true) = {y.size}, "
                             f"got shape {pr.shape}")
        if (seed, fold) in out:
            raise ValueError(f"arm {arm!r} classifier {clf!r}: seed {seed} fold {fold} "
                             "given twice")
        out[(seed, fold)] = (y, np.argmax(pr, axis=1))
    return out


def mcnemar_to_baseline(preds: Mapping[tuple[str, str], Iterable[PredCell]],
                        baseline: str = BASELINE, correction: str = "holm"
                        ) -> pd.DataFrame:
    """McNemar's test of every arm against ``baseline`` on pooled test predictions.

    ``preds`` maps ``(arm, classifier)`` to a list of ``(seed, fold, y_true, probs)``
    (``probs`` N x K; the prediction is its argmax). For each arm, the cells whose
    (seed, fold) the baseline of the same classifier also has are pooled, after
    checking that both have the same ``y_true`` (same test images, same order; a
    ValueError otherwise, since McNemar needs the same test set). Columns: arm,
    classifier, ``n_cells`` (cells pooled), ``n`` (images pooled), ``b`` (arm right,
    baseline wrong), ``c`` (arm wrong, baseline right), statistic, p_value (see
    ``mcnemar``), ``p_adjusted`` (corrected over the arms of that classifier), mark,
    method. No common cell: ``n`` 0 and NaNs. Raises ValueError if the baseline arm
    is absent.

    Pooling the folds of one seed uses each image once. Pooling seeds repeats images
    and the repeats are correlated, so the p-value is then too small: read it as a
    screening number.
    """
    keys = list(preds.keys())
    arms = list(dict.fromkeys(k[0] for k in keys))
    if baseline not in arms:
        raise ValueError(f"baseline arm {baseline!r} has no predictions; arms present: "
                         f"{arms}. Pass baseline= one of them")
    clfs = list(dict.fromkeys(k[1] for k in keys))
    rows: list[dict[str, Any]] = []
    for clf in clfs:
        base = (_by_split(preds[(baseline, clf)], baseline, clf)
                if (baseline, clf) in preds else {})
        block: list[dict[str, Any]] = []
        for arm in arms:
            if arm == baseline or (arm, clf) not in preds:
                continue
            mine = _by_split(preds[(arm, clf)], arm, clf)
            common = [k for k in mine if k in base]
            ys, pa, pb = [], [], []
            for key in common:
                y, p_arm = mine[key]
                y_base, p_base = base[key]
                if y.shape != y_base.shape or not np.array_equal(y, y_base):
                    raise ValueError(
                        f"classifier {clf!r} seed {key[0]} fold {key[1]}: arm {arm!r} and "
                        f"baseline {baseline!r} have different y_true; McNemar needs the "
                        "same test images in the same order")
                ys.append(y)
                pa.append(p_arm)
                pb.append(p_base)
            row: dict[str, Any] = {"arm": arm, "classifier": clf, "n_cells": len(common)}
            if common:
                y_all = np.concatenate(ys)
                res = mcnemar(y_all, np.concatenate(pa), np.concatenate(pb))
                row.update(n=int(y_all.size), b=res["b"], c=res["c"],
                           statistic=res["statistic"], p_value=res["p_value"],
                           method=res["method"])
            else:
                row.update(n=0, b=0, c=0, statistic=np.nan, p_value=np.nan, method="")
            block.append(row)
        adjusted = correct([r["p_value"] for r in block], correction)
        for r, p_adj in zip(block, adjusted):
            r["p_adjusted"] = float(p_adj)
            r["mark"] = significance_mark(p_adj)
        rows.extend(block)
    return pd.DataFrame(rows, columns=MCNEMAR_COLUMNS)
