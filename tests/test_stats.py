"""csmil.evaluation.stats against independent computations and a published worked example."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from csmil.evaluation import stats


def _data(seed: int, n: int = 80, ties: bool = False):
    """Labels and two correlated scores; with ``ties``, scores rounded to a coarse grid."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    shared = rng.normal(size=n)
    a = 1.2 * y + shared + 0.7 * rng.normal(size=n)
    b = 0.6 * y + shared + 0.7 * rng.normal(size=n)
    if ties:
        a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
    return y.astype(int), a, b


def _loop_placements(y, s):
    """DeLong's placements by the O(n*m) Mann-Whitney definition, with explicit loops."""
    pos = [float(v) for v, t in zip(s, y, strict=True) if t == 1]
    neg = [float(v) for v, t in zip(s, y, strict=True) if t == 0]

    def psi(x, z):
        return 1.0 if x > z else (0.5 if x == z else 0.0)

    v10 = [sum(psi(x, z) for z in neg) / len(neg) for x in pos]
    v01 = [sum(psi(x, z) for x in pos) / len(pos) for z in neg]
    return np.array(v10), np.array(v01)


def _loop_cov(u, v):
    """Sample covariance (ddof=1) by its definition."""
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    return sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True)) / (len(u) - 1)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_double_loop_definition(seed, ties):
    y, a, b = _data(seed, ties=ties)
    if ties:
        assert len(np.unique(a)) < len(a) / 2  # the tied case really has many ties
    a10, a01 = _loop_placements(y, a)
    b10, b01 = _loop_placements(y, b)
    m, n = len(a10), len(a01)
    var_a = _loop_cov(a10, a10) / m + _loop_cov(a01, a01) / n
    var_b = _loop_cov(b10, b10) / m + _loop_cov(b01, b01) / n
    cov_ab = _loop_cov(a10, b10) / m + _loop_cov(a01, b01) / n
    auc_a, auc_b = a10.mean(), b10.mean()
    z = (auc_a - auc_b) / math.sqrt(var_a + var_b - 2 * cov_ab)

    got_auc, got_var = stats.delong_variance(y, a)
    assert got_auc == pytest.approx(auc_a, abs=1e-12)
    assert got_var == pytest.approx(var_a, abs=1e-12)
    res = stats.delong_test(y, a, b)
    assert res.auc_a == pytest.approx(auc_a, abs=1e-12)
    assert res.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert res.z == pytest.approx(z, abs=1e-12)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(z)), abs=1e-12)
    half = norm.ppf(0.975) * math.sqrt(var_a + var_b - 2 * cov_ab)
    assert res.ci_low == pytest.approx(auc_a - auc_b - half, abs=1e-12)
    assert res.ci_high == pytest.approx(auc_a - auc_b + half, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_auc_equals_sklearn_and_accepts_bool_labels(ties):
    y, a, _ = _data(3, n=150, ties=ties)
    expected = roc_auc_score(y, a)
    assert stats.delong_variance(y, a)[0] == pytest.approx(expected, abs=1e-12)
    assert stats.delong_variance(y.astype(bool), a)[0] == pytest.approx(expected, abs=1e-12)
    assert stats.delong_variance(y.astype(float), a)[0] == pytest.approx(expected, abs=1e-12)


def test_delong_test_is_antisymmetric_and_rank_invariant():
    y, a, b = _data(4)
    ab, ba = stats.delong_test(y, a, b), stats.delong_test(y, b, a)
    assert ba.z == pytest.approx(-ab.z, abs=1e-12)
    assert ba.p_value == pytest.approx(ab.p_value, abs=1e-12)
    monotone = stats.delong_test(y, np.exp(a), b * 3 - 1)
    assert monotone.z == pytest.approx(ab.z, abs=1e-12)
    wider = stats.delong_test(y, a, b, level=0.99)
    assert wider.ci_low < ab.ci_low and wider.ci_high > ab.ci_high


def test_hanley_mcneil_ct_example():
    # Hanley & McNeil (1982), Radiology 143:29-36, Table 1: CT images rated 1 (definitely
    # normal) to 5 (definitely abnormal); 58 normal and 51 abnormal patients.
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    ratings = np.arange(1, 6)
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    s = np.r_[np.repeat(ratings, normal), np.repeat(ratings, abnormal)].astype(float)
    # By hand: an abnormal case rated r beats the normals rated below r and ties those at r.
    below = np.cumsum([0] + normal[:-1])
    v10 = [Fraction(2 * int(below[r]) + normal[r], 2 * 58) for r in range(5)]
    above = 51 - np.cumsum(abnormal)
    v01 = [Fraction(2 * int(above[r]) + abnormal[r], 2 * 51) for r in range(5)]
    auc = sum(c * v for c, v in zip(abnormal, v10, strict=True)) / 51
    assert auc == Fraction(2642, 2958)
    assert round(float(auc), 3) == 0.893  # the published area

    def svar(values, counts):
        k = sum(counts)
        mean = sum(c * v for c, v in zip(counts, values, strict=True)) / k
        return sum(c * (v - mean) ** 2 for c, v in zip(counts, values, strict=True)) / (k - 1)

    var = svar(v10, abnormal) / 51 + svar(v01, normal) / 58
    got_auc, got_var = stats.delong_variance(y, s)
    assert got_auc == pytest.approx(float(auc), abs=1e-15)
    assert got_var == pytest.approx(float(var), rel=1e-12)
    # The published SE, 0.032, uses Hanley-McNeil's exponential approximation; DeLong's
    # nonparametric SE on the same table is 0.0307.
    assert abs(math.sqrt(got_var) - 0.032) < 0.002
    low, high = stats.auc_ci(y, s)
    assert (low + high) / 2 == pytest.approx(float(auc), abs=1e-12)
    assert high - low == pytest.approx(2 * norm.ppf(0.975) * math.sqrt(float(var)), rel=1e-12)


def test_perfect_classifiers():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.8, 0.9])
    other_perfect = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0])
    assert stats.delong_variance(y, perfect) == (1.0, 0.0)
    assert stats.auc_ci(y, perfect) == (1.0, 1.0)
    both = stats.delong_test(y, perfect, other_perfect)
    assert both.diff == 0.0 and both.se == 0.0
    assert both.z == 0.0 and both.p_value == 1.0
    assert (both.ci_low, both.ci_high) == (0.0, 0.0)
    # A constant score has AUC 1/2 and constant placements: a zero-variance, nonzero difference.
    vs_constant = stats.delong_test(y, perfect, np.zeros(7))
    assert vs_constant.diff == 0.5 and vs_constant.z == math.inf and vs_constant.p_value == 0.0
    boot = stats.bootstrap_test(y, perfect, other_perfect, n_boot=50)
    assert boot.statistic == 0.0 and boot.p_value == 1.0 and boot.sd == 0.0
    for metric in stats.METRICS:
        r = stats.bootstrap_test(y, perfect, perfect, metric=metric, n_boot=50)
        assert r.value_a == 1.0 and r.p_value == 1.0


def test_identical_methods_give_z_0_and_p_1():
    """A method compared with itself (or with a monotone transform of its scores, which ranks
    the patients the same) has a zero-variance difference: z = 0 and p = 1, as pROC."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 40)
    y[:2] = (0, 1)
    s = np.round(rng.normal(size=40) + y, 1)  # with ties
    for other in (s.copy(), np.exp(s) * 3.0):
        d = stats.delong_test(y, s, other)
        assert (d.diff, d.se, d.z, d.p_value) == (0.0, 0.0, 0.0, 1.0)
        assert (d.ci_low, d.ci_high) == (0.0, 0.0)
        for metric in stats.METRICS:
            b = stats.bootstrap_test(y, s, other, metric=metric, n_boot=100, seed=3)
            assert (b.diff, b.sd, b.statistic, b.p_value) == (0.0, 0.0, 0.0, 1.0), metric
    # a real difference still gives a finite z and a p-value below 1
    d = stats.delong_test(y, s, rng.normal(size=40))
    assert math.isfinite(d.z) and d.z != 0.0 and d.p_value < 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.delong_variance([1, 1, 1], [0.1, 0.2, 0.3]), "class 0"),
        (lambda: stats.delong_variance([0, 0, 0], [0.1, 0.2, 0.3]), "class 1"),
        (lambda: stats.delong_test([0, 1, 1], [0.1, 0.2, 0.3], [0.2, 0.1]), "score_b has 2"),
        (lambda: stats.delong_variance([0, 1], [0.1, 0.2, 0.3]), "y_score has 3 .* y_true has 2"),
        (lambda: stats.bootstrap_test([0, 1], [0.1, 0.2], [0.1, 0.2, 0.3]), "score_b has 3"),
        (lambda: stats.delong_test([0, 1], [0.1, np.nan], [0.1, 0.2]), "score_a contains 1 NaN"),
        (lambda: stats.delong_variance([0, 1, 2], [0.1, 0.2, 0.3]), r"y_true .* \[2\]"),
        (lambda: stats.delong_variance([-1, 1], [0.1, 0.2]), r"y_true .* \[-1\]"),
        (lambda: stats.delong_variance(["a", "b"], [0.1, 0.2]), "y_true must hold 0/1"),
        (lambda: stats.auc_ci([0, 1], [0.1, 0.2], level=1.0), "level .* 1.0"),
        (lambda: stats.delong_test([0, 1], [0.1, 0.2], [0.2, 0.1], level=0), "level .* 0"),
        (lambda: stats.auc_ci([0, 1], [0.1, 0.2], method="wald"), "method .* 'wald'"),
        (lambda: stats.bootstrap_test([0, 1], [0.1, 0.2], [0.2, 0.1], metric="f1"), "'f1'"),
        (lambda: stats.bootstrap_test([0, 1], [0.1, 0.2], [0.2, 0.1], n_boot=1), "n_boot"),
        (lambda: stats.delong_variance([[0, 1]], [[0.1, 0.2]]), "y_true must be 1-D"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_weighted_resample_metrics_equal_sklearn_on_materialised_resamples():
    y, a, _ = _data(5, n=40, ties=True)
    y = y.astype(bool)
    rng = np.random.default_rng(0)
    counts = stats._resample_counts(rng, y, 12, stratified=False)
    assert (counts.sum(axis=1) == y.size).all()
    order = np.argsort(-a, kind="stable")
    s_sorted = a[order]
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    got = {m: stats._weighted_metric(m, counts[:, order], y[order], last) for m in stats.METRICS}
    for row in range(counts.shape[0]):
        idx = np.repeat(np.arange(y.size), counts[row].astype(int))
        assert got["auc"][row] == pytest.approx(roc_auc_score(y[idx], a[idx]), abs=1e-12)
        assert got["ap"][row] == pytest.approx(average_precision_score(y[idx], a[idx]), abs=1e-12)
    strat = stats._resample_counts(rng, y, 12, stratified=True)
    assert (strat[:, y].sum(axis=1) == y.sum()).all()
    assert (strat[:, ~y].sum(axis=1) == (~y).sum()).all()


@pytest.mark.parametrize("metric", stats.METRICS)
def test_bootstrap_observed_values_equal_sklearn(metric):
    y, a, b = _data(6, n=90, ties=True)
    fn = roc_auc_score if metric == "auc" else average_precision_score
    r = stats.bootstrap_test(y, a, b, metric=metric, n_boot=200)
    assert r.value_a == pytest.approx(fn(y, a), abs=1e-12)
    assert r.value_b == pytest.approx(fn(y, b), abs=1e-12)
    assert r.diff == pytest.approx(fn(y, a) - fn(y, b), abs=1e-12)
    assert r.n_valid == 200 and r.stratified


def test_bootstrap_agrees_with_delong_within_monte_carlo_error():
    y, a, b = _data(7, n=150)
    d = stats.delong_test(y, a, b)
    assert 1.5 < abs(d.z) < 4  # a comparison where the p-value is informative
    boot = stats.bootstrap_test(y, a, b, n_boot=2000, seed=1)
    # sd from 2000 resamples has ~1.6% relative Monte-Carlo error; DeLong's se is close to it.
    assert boot.diff == pytest.approx(d.diff, abs=1e-12)
    assert boot.sd == pytest.approx(d.se, rel=0.08)
    assert boot.statistic == pytest.approx(d.z, rel=0.08)
    assert abs(boot.p_value - d.p_value) < 0.3 * d.p_value
    low_d, high_d = stats.auc_ci(y, a, method="delong")
    low_b, high_b = stats.auc_ci(y, a, method="bootstrap", n_boot=2000, seed=1)
    # Percentile and normal intervals differ by skewness as well as Monte-Carlo error.
    assert low_b == pytest.approx(low_d, abs=0.015)
    assert high_b == pytest.approx(high_d, abs=0.015)
    # Pairing matters: the correlated models' difference varies far less than if independent.
    _, var_a = stats.delong_variance(y, a)
    _, var_b = stats.delong_variance(y, b)
    assert boot.sd < 0.8 * math.sqrt(var_a + var_b)


def test_seeded_determinism():
    y, a, b = _data(8, n=60, ties=True)
    for metric in stats.METRICS:
        first = stats.bootstrap_test(y, a, b, metric=metric, n_boot=300, seed=3)
        assert stats.bootstrap_test(y, a, b, metric=metric, n_boot=300, seed=3) == first
        other = stats.bootstrap_test(y, a, b, metric=metric, n_boot=300, seed=4)
        assert other.sd != first.sd
    ci = stats.auc_ci(y, a, method="bootstrap", n_boot=300, seed=3)
    assert stats.auc_ci(y, a, method="bootstrap", n_boot=300, seed=3) == ci
    assert stats.auc_ci(y, a, method="bootstrap", n_boot=300, seed=4) != ci


def test_unstratified_bootstrap_drops_resamples_missing_a_class(caplog):
    y = np.array([1, 0, 0, 0, 0, 0])
    a = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    b = np.array([0.3, 0.1, 0.2, 0.5, 0.4, 0.6])
    r = stats.bootstrap_test(y, a, b, n_boot=400, stratified=False, seed=0)
    # P(the one positive is never drawn in 6 draws) = (5/6)^6 ~ 0.33
    assert 0.55 * 400 < r.n_valid < 0.8 * 400
    assert "lacked a class" in caplog.text
    assert np.isfinite(r.statistic)
