"""medbench.stats against scipy and hand-worked numbers, on small fixed inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from medbench import stats

WILCOXON = {"zero_method": "wilcox", "method": "auto", "correction": False,
            "alternative": "two-sided"}
TOL = 1e-12

# multiples of 1/64 are exact in binary, so a - b is exact and scipy sees the same
# differences as paired_test
A = np.array([52, 55, 49, 58, 61, 54, 50, 57]) / 64
B = np.array([50, 56, 45, 55, 54, 52, 51, 52]) / 64        # d = 2 -1 4 3 7 2 -1 5
C = np.array([52, 55, 47, 58, 60, 54, 50, 57]) / 64
D = np.array([50, 55, 45, 55, 54, 52, 51, 52]) / 64        # d = 2 0 2 3 6 2 -1 5


# ---------------------------------------------------------------------- mean_ci
def test_mean_ci_matches_scipy_t_interval():
    x = np.array([0.81, 0.84, 0.79, 0.86, 0.83])
    for conf in (0.95, 0.9):
        mean, std, lo, hi, n = stats.mean_ci(x, conf)
        exp_lo, exp_hi = sps.t.interval(conf, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
        assert n == 5
        assert mean == pytest.approx(x.mean(), abs=TOL)
        assert std == pytest.approx(np.std(x, ddof=1), abs=TOL)
        assert lo == pytest.approx(exp_lo, abs=TOL)
        assert hi == pytest.approx(exp_hi, abs=TOL)


def test_mean_ci_edge_cases():
    assert stats.mean_ci([0.7]) == (0.7, 0.0, pytest.approx(np.nan, nan_ok=True),
                                    pytest.approx(np.nan, nan_ok=True), 1)
    mean, std, lo, hi, n = stats.mean_ci([])
    assert n == 0 and all(np.isnan(v) for v in (mean, std, lo, hi))
    # non-finite values are left out
    assert stats.mean_ci([0.8, np.nan, 0.9])[4] == 2
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, 2.0], confidence=1.5)


# ---------------------------------------------------------------------- paired tests
def test_wilcoxon_matches_scipy_exact_branch():
    res = stats.paired_test(A, B, "wilcoxon")
    ref = sps.wilcoxon(A, B, **WILCOXON)
    assert res["statistic"] == pytest.approx(ref.statistic, abs=TOL)
    assert res["p_value"] == pytest.approx(ref.pvalue, abs=TOL)
    assert res["n"] == 8 and res["n_nonzero"] == 8 and res["method"] == "wilcoxon"
    assert res["mean_diff"] == pytest.approx(np.mean(A - B), abs=TOL)


def test_wilcoxon_matches_scipy_with_zero_and_ties():
    # a zero difference and ties: scipy's "auto" runs the full sign-flip permutation
    res = stats.paired_test(C, D)
    ref = sps.wilcoxon(C, D, **WILCOXON)
    assert res["statistic"] == pytest.approx(ref.statistic, abs=TOL)
    assert res["p_value"] == pytest.approx(ref.pvalue, abs=TOL)
    assert res["n"] == 8 and res["n_nonzero"] == 7


def test_wilcoxon_floating_point_ties_are_ties():
    # 0.85-0.80, 0.90-0.85 and 0.75-0.70 are all 0.05 but differ in the last bits
    a = [0.85, 0.90, 0.75, 0.70, 0.95, 0.90]
    b = [0.80, 0.85, 0.70, 0.75, 0.80, 0.70]
    exact_d = [0.05, 0.05, 0.05, -0.05, 0.15, 0.2]
    res = stats.paired_test(a, b)
    ref = sps.wilcoxon(exact_d, **WILCOXON)
    assert res["statistic"] == pytest.approx(ref.statistic, abs=TOL)
    assert res["p_value"] == pytest.approx(ref.pvalue, abs=TOL)


def test_wilcoxon_small_n_floor():
    # all differences of one sign: exact p = 2 / 2**n; below 0.05 only from 6 pairs
    for n in range(3, 8):
        res = stats.paired_test(np.arange(1, n + 1) / 8, np.zeros(n))
        assert res["p_value"] == pytest.approx(2.0 / 2 ** n, abs=TOL)
        assert (res["p_value"] < 0.05) == (n >= 6)


def test_paired_degenerate_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("wilcoxon", "ttest"):
            res = stats.paired_test([0.8, 0.7, 0.9], [0.8, 0.7, 0.9], method)
            assert res["p_value"] == 1.0 and res["statistic"] == 0.0
            assert res["n"] == 3 and res["n_nonzero"] == 0
            one = stats.paired_test([0.8], [0.7], method)
            assert np.isnan(one["p_value"]) and one["n"] == 1
            assert one["mean_diff"] == pytest.approx(0.1)
    const = stats.paired_test([0.75, 0.5, 0.25], [0.5, 0.25, 0.0], "ttest")
    assert const["statistic"] == np.inf and const["p_value"] == 0.0
    # a pair with a NaN is left out
    assert stats.paired_test([0.8, np.nan, 0.9, 0.7], [0.7, 0.6, 0.8, 0.5])["n"] == 3
    with pytest.raises(ValueError):
        stats.paired_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        stats.paired_test([1, 2], [1, 2], "sign")


def test_ttest_matches_scipy_ttest_rel():
    for a, b in ((A, B), (C, D), ([0.81, 0.84, 0.79], [0.80, 0.80, 0.78])):
        res = stats.paired_test(a, b, "ttest")
        ref = sps.ttest_rel(a, b)
        assert res["statistic"] == pytest.approx(ref.statistic, abs=TOL)
        assert res["p_value"] == pytest.approx(ref.pvalue, abs=TOL)
        assert res["method"] == "ttest"


# ---------------------------------------------------------------------- corrections
def test_holm_hand_worked():
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Ascending: 0.005 (#3), 0.01 (#0), 0.03 (#2),
    # 0.04 (#1); times m-i+1 = 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04. Running maximum:
    # 0.02, 0.03, 0.06, 0.06 (0.04 is raised to 0.06: monotonicity). Input order:
    # [0.03, 0.06, 0.06, 0.02].
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(stats.correct(p, "holm"), [0.03, 0.06, 0.06, 0.02],
                               rtol=0, atol=TOL)
    np.testing.assert_allclose(stats.correct(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02],
                               rtol=0, atol=TOL)


def test_holm_monotone_and_capped():
    # [0.3, 0.5]: 2 * 0.3 = 0.6, 1 * 0.5 = 0.5 -> running max 0.6, 0.6
    np.testing.assert_allclose(stats.correct([0.3, 0.5]), [0.6, 0.6], atol=TOL)
    # [0.4, 0.9, 0.45]: 3 * 0.4 = 1.2 -> 1, 2 * 0.45 = 0.9 -> max 1, 0.9 -> max 1
    np.testing.assert_allclose(stats.correct([0.4, 0.9, 0.45]), [1.0, 1.0, 1.0], atol=TOL)
    np.testing.assert_allclose(stats.correct([0.3, 0.5], "bonferroni"), [0.6, 1.0],
                               atol=TOL)
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12)
    adj = stats.correct(p)
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj >= p) and np.all(adj <= 1)
    assert np.all(adj <= stats.correct(p, "bonferroni") + TOL)


def test_correction_passes_nan_through():
    # m = 2 (the NaN does not count): 2 * 0.01 = 0.02, 1 * 0.04 = 0.04
    out = stats.correct([0.01, np.nan, 0.04])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04], atol=TOL)
    out = stats.correct([0.01, np.nan, 0.04], "bonferroni")
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.08], atol=TOL)
    assert np.isnan(stats.correct([np.nan])).all() and stats.correct([]).size == 0
    with pytest.raises(ValueError):
        stats.correct([0.1], "bh")
    with pytest.raises(ValueError):
        stats.correct([1.5])


# ---------------------------------------------------------------------- McNemar
def discordant(b: int, c: int, both_right: int = 5, both_wrong: int = 3):
    """y_true, pred_a, pred_b with b images only a gets right and c only b gets right."""
    n = b + c + both_right + both_wrong
    y = np.zeros(n, dtype=int)
    pa = np.zeros(n, dtype=int)
    pb = np.zeros(n, dtype=int)
    pb[:b] = 1                                    # a right, b wrong
    pa[b:b + c] = 1                               # a wrong, b right
    pa[n - both_wrong:] = pb[n - both_wrong:] = 1  # both wrong
    return y, pa, pb


def test_mcnemar_exact_branch():
    for b, c in ((7, 2), (0, 5), (12, 12), (20, 4)):
        res = stats.mcnemar(*discordant(b, c))
        assert (res["b"], res["c"], res["method"]) == (b, c, "exact")
        assert res["p_value"] == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, abs=TOL)


def test_mcnemar_chi2_branch():
    for b, c in ((30, 12), (10, 15), (4, 40)):
        res = stats.mcnemar(*discordant(b, c))
        stat = (abs(b - c) - 1) ** 2 / (b + c)
        assert res["method"] == "chi2"
        assert res["statistic"] == pytest.approx(stat, abs=TOL)
        assert res["p_value"] == pytest.approx(sps.chi2.sf(stat, 1), abs=TOL)
    assert stats.mcnemar(*discordant(15, 15))["p_value"] == 1.0


def test_mcnemar_no_discordant_pairs():
    res = stats.mcnemar(*discordant(0, 0))
    assert res["p_value"] == 1.0 and res["b"] == res["c"] == 0
    with pytest.raises(ValueError):
        stats.mcnemar([0, 1], [0, 1, 1], [0, 1])


# ---------------------------------------------------------------------- tables
BASE = [0.80, 0.78, 0.82, 0.79, 0.81, 0.77]
UP = [0.050, 0.052, 0.048, 0.051, 0.049, 0.050]          # smote: consistently better
MIXED = [0.01, -0.02, 0.015, -0.01, -0.005, 0.004]      # gan: no clear effect


def tidy() -> pd.DataFrame:
    """3 arms x 1 classifier x 3 seeds x 2 folds, accuracy and test_loss (1 - accuracy),
    plus per-class rows that must be ignored; gan lacks (seed 2, fold 1) and smote has
    an extra (seed 3, fold 0) the baseline lacks."""
    rows = []
    cells = [(s, f) for s in range(3) for f in range(2)]
    for arm, shift in (("none", [0.0] * 6), ("smote", UP), ("gan", MIXED)):
        for (seed, fold), base, dv in zip(cells, BASE, shift):
            if arm == "gan" and (seed, fold) == (2, 1):
                continue
            acc = base + dv
            rows += [(arm, "cnn", seed, fold, "accuracy", "", acc),
                     (arm, "cnn", seed, fold, "test_loss", "", 1.0 - acc),
                     (arm, "cnn", seed, fold, "accuracy", "covid", 0.1)]
    rows.append(("smote", "cnn", 3, 0, "accuracy", "", 0.99))
    return pd.DataFrame(rows, columns=["arm", "classifier", "seed", "fold", "metric",
                                       "class", "value"])


def test_compare_to_baseline_pairs_and_holm():
    df = tidy()
    out = stats.compare_to_baseline(df, "accuracy")
    assert list(out.columns) == stats.COMPARE_COLUMNS
    assert list(out["arm"]) == ["smote", "gan"]
    smote, gan = out.iloc[0], out.iloc[1]
    assert (smote["n_pairs"], smote["n_dropped"]) == (6, 1)
    assert (gan["n_pairs"], gan["n_dropped"]) == (5, 1)
    assert smote["mean_diff"] == pytest.approx(np.mean(UP), abs=TOL)
    assert gan["mean_diff"] == pytest.approx(np.mean(MIXED[:5]), abs=TOL)
    assert smote["mean_baseline"] == pytest.approx(np.mean(BASE), abs=TOL)
    assert gan["mean_baseline"] == pytest.approx(np.mean(BASE[:5]), abs=TOL)
    acc = np.add(BASE, UP)
    mean, _, lo, hi, _ = stats.mean_ci(acc)
    assert (smote["mean"], smote["ci_low"], smote["ci_high"]) == pytest.approx((mean, lo, hi))
    # 6 positive differences: exact two-sided p = 2 / 2**6
    assert smote["p_value"] == pytest.approx(2 / 64, abs=TOL)
    raw = stats.paired_test(np.add(BASE[:5], MIXED[:5]), BASE[:5])["p_value"]
    assert gan["p_value"] == pytest.approx(raw, abs=TOL)
    np.testing.assert_allclose(out["p_adjusted"], stats.correct(out["p_value"], "holm"),
                               atol=TOL)
    # Holm over 2 arms lifts 0.03125 to 0.0625: the Wilcoxon cannot show it with 6 pairs
    assert smote["p_adjusted"] == pytest.approx(2 / 32, abs=TOL)
    assert list(out["significant"]) == [False, False] and list(out["mark"]) == ["", ""]
    assert gan["mean_diff"] < 0
    assert list(out["direction"]) == ["better", "worse"]


def test_compare_to_baseline_ttest_marks_and_loss_direction():
    df = tidy()
    out = stats.compare_to_baseline(df, "accuracy", method="ttest")
    smote, gan = out.iloc[0], out.iloc[1]
    assert smote["p_adjusted"] < 0.001 and smote["mark"] == "***" and smote["significant"]
    assert gan["p_adjusted"] > 0.05 and gan["mark"] == "" and not gan["significant"]
    assert list(out["mark"]) == [stats.significance_mark(p) for p in out["p_adjusted"]]
    loss = stats.compare_to_baseline(df, "test_loss", method="ttest")
    assert loss.iloc[0]["mean_diff"] < 0
    assert loss.iloc[0]["direction"] == "better" and loss.iloc[0]["mark"] == "***"
    bonf = stats.compare_to_baseline(df, "accuracy", method="ttest", correction="bonferroni")
    np.testing.assert_allclose(bonf["p_adjusted"],
                               np.minimum(1, 2 * bonf["p_value"]), atol=TOL)


# ---------------------------------------------------------------------- corrected t-test
def test_corrected_ttest_hand_worked():
    # J = 5 runs (5-fold CV), d = 0.02 0.04 0.03 0.05 0.01, n2/n1 = 1/4:
    # mean 0.03; var(d, ddof=1) = (1 + 1 + 0 + 4 + 4)e-4 / 4 = 2.5e-4;
    # se = sqrt((1/5 + 1/4) * 2.5e-4) = sqrt(1.125e-4) = 0.0075 * sqrt(2);
    # t = 0.03 / se = 2 * sqrt(2) = 2.8284, df = 4, two-sided p = 0.04742
    # (the plain paired t-test: se = sqrt(2.5e-4 / 5) = 0.005 * sqrt(2), t = 3 * sqrt(2))
    d = np.array([2, 4, 3, 5, 1]) / 100
    base = np.array([0.70, 0.72, 0.69, 0.71, 0.73])
    out = stats.corrected_ttest(base + d, base, 0.25)
    assert out["n"] == 5 and out["df"] == 4
    assert out["mean_diff"] == pytest.approx(0.03, abs=TOL)
    assert out["se"] == pytest.approx(0.0075 * np.sqrt(2), abs=TOL)
    assert out["statistic"] == pytest.approx(2 * np.sqrt(2), rel=1e-9)
    assert out["p_value"] == pytest.approx(0.047421, abs=1e-6)
    assert out["p_value"] == pytest.approx(2 * sps.t.sf(2 * np.sqrt(2), 4), rel=1e-9)
    half = 2.776445105 * 0.0075 * np.sqrt(2)             # t_{0.975, 4} * se
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.03 - half, 0.03 + half), rel=1e-8)
    plain = stats.corrected_ttest(base + d, base, 0.0)
    assert plain["statistic"] == pytest.approx(3 * np.sqrt(2), rel=1e-9)
    ref = sps.ttest_rel(base + d, base)
    assert plain["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert out["p_value"] > plain["p_value"]           # the correction is more cautious


def test_corrected_ttest_degenerate_cases():
    assert np.isnan(stats.corrected_ttest([0.8], [0.7], 0.25)["p_value"])
    same = stats.corrected_ttest([0.8, 0.7], [0.8, 0.7], 0.25)
    assert (same["statistic"], same["p_value"]) == (0.0, 1.0)
    const = stats.corrected_ttest([0.9, 0.8], [0.8, 0.7], 0.25)
    assert const["statistic"] == np.inf and const["p_value"] == 0.0
    with pytest.raises(ValueError, match="test_train_ratio"):
        stats.corrected_ttest([0.9, 0.8], [0.8, 0.7], -1)


def test_rank_biserial_hand_worked():
    # d = 2 -1 4 3 7 2 -1 5 (in 64ths): |d| ranks 1.5 1.5 (the -1s) 3.5 3.5 5 6 7 8;
    # R- = 3, R+ = 33: r = (33 - 3) / 36 = 5/6; Wilcoxon's statistic is min(R+, R-) = 3
    assert stats.rank_biserial(A, B) == pytest.approx(5 / 6, abs=TOL)
    assert stats.paired_test(A, B)["statistic"] == 3.0
    assert stats.rank_biserial(B, A) == pytest.approx(-5 / 6, abs=TOL)
    # zeros are dropped: d = 2 0 2 3 6 2 -1 5 -> ranks of 2 2 3 6 2 1 5: R- = 1, R+ = 27
    assert stats.rank_biserial(C, D) == pytest.approx(26 / 28, abs=TOL)
    assert stats.rank_biserial([0.5, 0.6], [0.5, 0.6]) == 0.0
    assert np.isnan(stats.rank_biserial([], []))


def sized(df: pd.DataFrame, n_test=20, n_train=70, n_val=10) -> pd.DataFrame:
    return df.assign(n_test=n_test, n_train_real=n_train, n_val=n_val)


def test_compare_to_baseline_corrected_t_reads_the_split_sizes():
    df = sized(tidy())                                 # n2/n1 = 20 / (70 + 10) = 0.25
    out = stats.compare_to_baseline(df, "accuracy", method="corrected_t")
    assert list(out.columns) == stats.COMPARE_COLUMNS
    smote = out.iloc[0]
    want = stats.corrected_ttest(np.add(BASE, UP), BASE, 0.25)
    assert smote["test_train_ratio"] == 0.25 and smote["method"] == "corrected_t"
    assert smote["p_value"] == pytest.approx(want["p_value"], abs=TOL)
    assert (smote["diff_ci_low"], smote["diff_ci_high"]) == pytest.approx(
        (want["ci_low"], want["ci_high"]), abs=TOL)
    assert smote["rank_biserial"] == 1.0 and smote["mark"] == "***"
    # one split repeated over seeds: no resampling to correct for, the plain t-test
    fixed = stats.compare_to_baseline(df, "accuracy", method="corrected_t", fixed_test=True)
    plain = stats.compare_to_baseline(df, "accuracy", method="ttest")
    np.testing.assert_allclose(fixed["p_value"], plain["p_value"], atol=TOL)
    assert list(fixed["test_train_ratio"]) == [0.0, 0.0]
    # the Wilcoxon rows carry the same effect sizes
    wil = stats.compare_to_baseline(df, "accuracy")
    np.testing.assert_allclose(wil["diff_ci_low"], out["diff_ci_low"], atol=TOL)
    # without sizes and without a ratio, the corrected test cannot be made
    with pytest.raises(ValueError, match="test_train_ratio"):
        stats.compare_to_baseline(tidy(), "accuracy", method="corrected_t")
    given = stats.compare_to_baseline(tidy(), "accuracy", method="corrected_t",
                                      test_train_ratio=0.25)
    np.testing.assert_allclose(given["p_value"], out["p_value"], atol=TOL)
    assert np.isnan(stats.compare_to_baseline(tidy(), "accuracy")["test_train_ratio"]).all()


def test_direction():
    assert stats.direction(0.01, "accuracy") == "better"
    assert stats.direction(-0.01, "accuracy") == "worse"
    assert stats.direction(-0.01, "test_loss") == "better"
    assert stats.direction(0.01, "test_loss") == "worse"
    assert stats.direction(1e-17, "accuracy") == stats.direction(np.nan, "macro_f1") == ""
    # calibration errors are lower-is-better metric plugins
    assert stats.direction(-0.01, "ece") == stats.direction(-0.01, "brier") == "better"


def test_significance_marks():
    assert [stats.significance_mark(p) for p in (0.0004, 0.004, 0.04, 0.05, 0.5, np.nan)] \
        == ["***", "**", "*", "", "", ""]


def test_compare_to_baseline_errors():
    df = tidy()
    with pytest.raises(ValueError, match="baseline arm 'none'"):
        stats.compare_to_baseline(df[df["arm"] != "none"], "accuracy")
    with pytest.raises(ValueError, match="baseline arm 'control'"):
        stats.compare_to_baseline(df, "accuracy", baseline="control")
    with pytest.raises(ValueError, match="no rows for metric"):
        stats.compare_to_baseline(df, "roc_auc")
    with pytest.raises(ValueError, match="more than one"):
        stats.compare_to_baseline(pd.concat([df, df.iloc[:1]]), "accuracy")


# ---------------------------------------------------------------------- McNemar table
def probs(pred: list[int], k: int = 3) -> np.ndarray:
    return np.eye(k)[pred] * 0.7 + 0.1


Y00 = [0, 1, 2, 1, 0]
Y01 = [1, 1, 0, 2]


def prediction_map() -> dict:
    # cell (0, 0): baseline wrong at 2 and 3, gan wrong at 4 -> b 2, c 1
    # cell (0, 1): baseline wrong at 1, gan right everywhere -> b 1, c 0
    # gan's (1, 0) has no baseline partner; smote predicts exactly like the baseline
    return {
        ("none", "cnn"): [(0, 0, Y00, probs([0, 1, 0, 0, 0])),
                          (0, 1, Y01, probs([1, 0, 0, 2]))],
        ("gan", "cnn"): [(0, 0, Y00, probs([0, 1, 2, 1, 1])),
                         (0, 1, Y01, probs([1, 1, 0, 2])),
                         (1, 0, [0, 0], probs([1, 1]))],
        ("smote", "cnn"): [(0, 0, Y00, probs([0, 1, 0, 0, 0])),
                           (0, 1, Y01, probs([1, 0, 0, 2]))],
    }


def test_mcnemar_to_baseline_pools_and_corrects():
    out = stats.mcnemar_to_baseline(prediction_map())
    assert list(out.columns) == stats.MCNEMAR_COLUMNS
    gan, smote = out.iloc[0], out.iloc[1]
    assert (gan["arm"], gan["n_cells"], gan["n"], gan["b"], gan["c"]) == ("gan", 2, 9, 3, 1)
    assert gan["p_value"] == pytest.approx(sps.binomtest(3, 4, 0.5).pvalue, abs=TOL)
    assert (smote["b"], smote["c"], smote["p_value"]) == (0, 0, 1.0)
    np.testing.assert_allclose(out["p_adjusted"], stats.correct(out["p_value"]), atol=TOL)
    assert list(out["mark"]) == ["", ""]


def test_mcnemar_to_baseline_errors():
    preds = prediction_map()
    preds[("gan", "cnn")][1] = (0, 1, [1, 1, 0, 0], probs([1, 1, 0, 2]))
    with pytest.raises(ValueError, match="different y_true"):
        stats.mcnemar_to_baseline(preds)
    preds = prediction_map()
    del preds[("none", "cnn")]
    with pytest.raises(ValueError, match="baseline arm 'none'"):
        stats.mcnemar_to_baseline(preds)
    preds = prediction_map()
    preds[("gan", "cnn")][0] = (0, 0, Y00, probs([0, 1, 2]))
    with pytest.raises(ValueError, match="N x K"):
        stats.mcnemar_to_baseline(preds)
