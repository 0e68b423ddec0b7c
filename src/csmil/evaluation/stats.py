"""ROC statistics for comparing methods: DeLong variance and test, AUC intervals, paired bootstrap.

Conventions (as scikit-learn): ``y_true`` holds 0/1 (or bool) labels, one per patient, and a
higher score means class 1. The ROC direction is never flipped: a classifier worse than chance
gets an AUC below 0.5. AUC is the Mann-Whitney probability ``P(score_pos > score_neg)`` with ties
counted as 1/2; AP is scikit-learn's ``average_precision_score``.

DeLong follows DeLong, DeLong & Clarke-Pearson (1988), computed with the fast algorithm of
Sun & Xu (2014): the structural components (placements) come from midranks in O(n log n), and
their covariance gives the variance of each AUC and of paired differences. The values match
R's pROC (``var(roc)``, ``ci.auc``, ``roc.test(method="delong")``) for curves whose pROC direction
is ``"<"`` (controls lower), which is this module's fixed direction.

The bootstrap resamples patients with replacement, both models together (paired), by default
within each class (pROC's ``boot.stratified=TRUE``), and is vectorised over resamples.

Degenerate comparisons: when the difference of two metrics has zero variance (identical
scores, or two perfect classifiers), the test statistic is 0 and ``p_value`` 1.0 if the observed
difference is zero (as pROC's ``roc.test`` reports for identical curves), and ``+-inf`` with
``p_value`` 0.0 otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

log = logging.getLogger(__name__)

METHODS = ("delong", "bootstrap")
METRICS = ("auc", "ap")
_CHUNK = 250  # bootstrap resamples drawn and scored per block (bounds memory at large n)


@dataclass(frozen=True)
class DeLongResult:
    """Paired DeLong test of two correlated AUCs (model a minus model b).

    ``diff = auc_a - auc_b``; ``se`` is its DeLong standard error; ``z = diff / se``;
    ``p_value`` is two-sided; ``(ci_low, ci_high)`` is the normal-approximation interval of
    ``diff`` at ``level`` (not clipped).
    """

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    level: float


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap test of a metric difference (model a minus model b).

    ``statistic = diff / sd`` where ``sd`` is the standard deviation (ddof=1) of the bootstrap
    differences (pROC's ``D``); ``p_value`` is two-sided from the standard normal.
    ``n_valid`` resamples entered ``sd`` (without stratification, resamples lacking a class are
    dropped).
    """

    metric: str
    value_a: float
    value_b: float
    diff: float
    sd: float
    statistic: float
    p_value: float
    n_boot: int
    n_valid: int
    stratified: bool


# --------------------------------------------------------------------------- validation


def _labels(y_true) -> np.ndarray:
    """Return ``y_true`` as a bool array (n,), checking it is binary with both classes."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (one label per patient); received shape {y.shape}")
    if y.dtype != bool:
        if not (np.issubdtype(y.dtype, np.number)):
            raise ValueError(
                f"y_true must hold 0/1 or bool labels; received dtype {y.dtype} "
                f"(map the classes to 0/1 first)"
            )
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            shown = np.unique(y[bad])[:5].tolist()
            raise ValueError(
                f"y_true must hold only 0 and 1 (or bools); received other values {shown} "
                f"(binarise the labels first)"
            )
        y = y == 1
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        missing = "1 (positive)" if n_pos == 0 else "0 (negative)"
        raise ValueError(
            f"y_true must contain both classes; class {missing} is missing among "
            f"{y.size} labels, so the AUC is undefined"
        )
    return y


def _scores(score, name: str, n: int) -> np.ndarray:
    """Return ``score`` as a float array (n,), checking length and finiteness."""
    s = np.asarray(score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per patient); received shape {s.shape}")
    if s.size != n:
        raise ValueError(
            f"{name} has {s.size} entries but y_true has {n}; paired inputs must describe the "
            f"same patients in the same order"
        )
    if not np.isfinite(s).all():
        raise ValueError(
            f"{name} contains {int((~np.isfinite(s)).sum())} NaN or infinite values; "
            f"every patient needs a finite score"
        )
    return s


def _check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1; received {level!r}")
    return float(level)


def _check_n_boot(n_boot: int) -> int:
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2; received {n_boot!r}")
    return int(n_boot)


# --------------------------------------------------------------------------- DeLong


def _scaled_placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components of each classifier, scaled to exact half-integer counts.

    ``scores`` is (k, n). Returns ``(c10, c01)`` of shapes (k, m) and (k, n_neg): ``c10[r, i]``
    is the number of negatives scored below positive ``i`` plus half the ties, and ``c01[r, j]``
    the number of positives scored above negative ``j`` plus half the ties (Sun & Xu 2014,
    from midranks). DeLong's placements are ``V10 = c10 / n_neg`` and ``V01 = c01 / m``.
    """
    pos, neg = scores[:, y], scores[:, ~y]
    m = pos.shape[1]
    t_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # (k, m + n_neg) midranks
    t_pos = rankdata(pos, axis=1)
    t_neg = rankdata(neg, axis=1)
    c10 = t_all[:, :m] - t_pos
    c01 = m - (t_all[:, m:] - t_neg)
    return c10, c01


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,), DeLong covariance (k, k), and scaled placements for ``scores`` (k, n)."""
    c10, c01 = _scaled_placements(y, scores)
    m, n_neg = c10.shape[1], c01.shape[1]
    aucs = c10.mean(axis=1) / n_neg
    s10 = np.atleast_2d(np.cov(c10, ddof=1)) / n_neg**2  # covariance of V10 over positives
    s01 = np.atleast_2d(np.cov(c01, ddof=1)) / m**2  # covariance of V01 over negatives
    return aucs, s10 / m + s01 / n_neg, np.concatenate([c10, c01], axis=1)


def delong_variance(y_true, y_score) -> tuple[float, float]:
    """AUC and its DeLong variance (as pROC's ``var(roc, method="delong")``).

    Args:
        y_true: (n,) labels in {0, 1} or bool.
        y_score: (n,) scores, higher meaning class 1.

    Returns:
        ``(auc, variance)``; the variance is ``var(V10)/m + var(V01)/n_neg`` with sample
        variances (ddof=1), ``m`` positives and ``n_neg`` negatives. 0 for a perfect classifier.
    """
    y = _labels(y_true)
    s = _scores(y_score, "y_score", y.size)
    aucs, cov, _ = _delong(y, s[None, :])
    return float(aucs[0]), float(max(cov[0, 0], 0.0))


def _z_and_p(diff: float, se: float) -> tuple[float, float]:
    """z statistic and two-sided normal p-value, with the documented degenerate cases."""
    if se == 0.0:
        if diff == 0.0:
            return 0.0, 1.0
        return math.copysign(math.inf, diff), 0.0
    z = diff / se
    return z, float(2.0 * norm.sf(abs(z)))


def delong_test(y_true, score_a, score_b, level: float = 0.95) -> DeLongResult:
    """Paired DeLong test for two correlated ROC curves (pROC's ``roc.test``, DeLong).

    Args:
        y_true: (n,) labels in {0, 1} or bool.
        score_a, score_b: (n,) scores of the two models on the same patients, same order.
        level: confidence level of the interval of the AUC difference, in (0, 1).

    Returns:
        :class:`DeLongResult` for ``auc_a - auc_b``. If the difference has zero variance
        (identical scores, two perfect classifiers) ``z`` is 0 and ``p_value`` 1.0 when the
        AUCs are equal, else ``z`` is +-inf and ``p_value`` 0.0; the interval then collapses
        to ``diff``.
    """
    level = _check_level(level)
    y = _labels(y_true)
    a = _scores(score_a, "score_a", y.size)
    b = _scores(score_b, "score_b", y.size)
    aucs, cov, comps = _delong(y, np.stack([a, b]))
    diff = float(aucs[0] - aucs[1])
    d = comps[0] - comps[1]  # exact half-integer differences of scaled placements
    m = int(y.sum())
    constant = np.ptp(d[:m]) == 0.0 and np.ptp(d[m:]) == 0.0
    var = 0.0 if constant else max(float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]), 0.0)
    se = math.sqrt(var)
    z, p = _z_and_p(diff, se)
    half = float(norm.ppf(0.5 + level / 2.0)) * se
    return DeLongResult(
        auc_a=float(aucs[0]),
        auc_b=float(aucs[1]),
        diff=diff,
        se=se,
        z=z,
        p_value=p,
        ci_low=diff - half,
        ci_high=diff + half,
        level=level,
    )


# --------------------------------------------------------------------------- bootstrap


def _weighted_metric(metric: str, w: np.ndarray, y_sorted: np.ndarray, last: np.ndarray):
    """Metric of each weighted resample, for one model.

    ``w`` is (B, n) resample counts with patients sorted by decreasing score, ``y_sorted`` the
    (n,) bool labels in that order, ``last`` the index of the last patient of each group of tied
    scores. Returns (B,) values, nan where a class is absent from the resample.
    """
    tp = np.cumsum(w * y_sorted, axis=1)[:, last]  # (B, T) positives scored >= each threshold
    fp = np.cumsum(w * ~y_sorted, axis=1)[:, last]
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    zeros = np.zeros((w.shape[0], 1))
    tp0 = np.concatenate([zeros, tp], axis=1)
    fp0 = np.concatenate([zeros, fp], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "auc":  # trapezoid under the ROC = Mann-Whitney with ties as 1/2
            area = (np.diff(fp0, axis=1) * (tp0[:, 1:] + tp0[:, :-1])).sum(axis=1) / 2.0
            out = area / (n_pos * n_neg)
        else:  # step-wise AP: sum over thresholds of recall gain times precision
            precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
            out = (np.diff(tp0, axis=1) * precision).sum(axis=1) / n_pos
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def _resample_counts(rng: np.random.Generator, y: np.ndarray, b: int, stratified: bool):
    """(b, n) counts of how often each patient is drawn in each of ``b`` resamples."""
    n = y.size
    if stratified:
        groups = [np.flatnonzero(y), np.flatnonzero(~y)]
    else:
        groups = [np.arange(n)]
    idx = np.concatenate([g[rng.integers(0, g.size, size=(b, g.size))] for g in groups], axis=1)
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


def _bootstrap(y, scores, metric, n_boot, stratified, seed) -> np.ndarray:
    """(n_boot, k) metric values of each model ``scores`` (k, n) over paired resamples."""
    rng = np.random.default_rng(seed)
    prepared = []
    for s in scores:
        order = np.argsort(-s, kind="stable")
        s_sorted = s[order]
        last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
        prepared.append((order, y[order], last))
    out = np.empty((n_boot, len(scores)))
    for start in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - start)
        w = _resample_counts(rng, y, b, stratified)  # shared by all models: paired
        for k, (order, y_sorted, last) in enumerate(prepared):
            out[start : start + b, k] = _weighted_metric(metric, w[:, order], y_sorted, last)
    return out


def _bootstrap_observed(y: np.ndarray, scores: np.ndarray, metric: str) -> np.ndarray:
    """Metric of each model on the full sample (all weights 1), (k,)."""
    out = []
    for s in scores:
        order = np.argsort(-s, kind="stable")
        s_sorted = s[order]
        last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
        out.append(_weighted_metric(metric, np.ones((1, s.size)), y[order], last)[0])
    return np.asarray(out)


def auc_ci(
    y_true,
    y_score,
    level: float = 0.95,
    method: str = "delong",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Confidence interval of the AUC (as pROC's ``ci.auc``).

    Args:
        y_true: (n,) labels in {0, 1} or bool.
        y_score: (n,) scores, higher meaning class 1.
        level: confidence level in (0, 1).
        method: ``"delong"``: ``auc +- z * sqrt(DeLong variance)``, clipped to [0, 1];
            ``"bootstrap"``: percentile interval of ``n_boot`` resamples stratified by class
            (pROC's default ``boot.stratified=TRUE``), quantiles as R's type 7.
        n_boot: bootstrap resamples (bootstrap only).
        seed: seed of the resampling (bootstrap only).

    Returns:
        ``(low, high)``.
    """
    level = _check_level(level)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; received {method!r}")
    y = _labels(y_true)
    s = _scores(y_score, "y_score", y.size)
    if method == "delong":
        auc, var = delong_variance(y, s)
        half = float(norm.ppf(0.5 + level / 2.0)) * math.sqrt(var)
        return max(auc - half, 0.0), min(auc + half, 1.0)
    n_boot = _check_n_boot(n_boot)
    aucs = _bootstrap(y, s[None, :], "auc", n_boot, True, seed)[:, 0]
    low, high = np.quantile(aucs, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def bootstrap_test(
    y_true,
    score_a,
    score_b,
    metric: str = "auc",
    n_boot: int = 2000,
    stratified: bool = True,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap test of ``metric(a) - metric(b)`` (pROC's ``roc.test``, bootstrap).

    Patients are resampled with replacement, the same resample scoring both models; with
    ``stratified`` the positives and negatives are resampled separately, keeping class sizes.
    ``D = (value_a - value_b) / sd(bootstrap differences)`` and the two-sided p-value is
    ``2 * (1 - Phi(|D|))``.

    Args:
        y_true: (n,) labels in {0, 1} or bool.
        score_a, score_b: (n,) scores of the two models on the same patients, same order.
        metric: ``"auc"`` (ROC AUC) or ``"ap"`` (scikit-learn's average precision).
        n_boot: resamples (>= 2).
        stratified: resample within each class.
        seed: seed of the resampling; equal seeds give equal results.

    Returns:
        :class:`BootstrapResult`. A zero bootstrap sd gives the degenerate values described in
        the module docstring.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}; received {metric!r}")
    n_boot = _check_n_boot(n_boot)
    y = _labels(y_true)
    scores = np.stack([_scores(score_a, "score_a", y.size), _scores(score_b, "score_b", y.size)])
    observed = _bootstrap_observed(y, scores, metric)
    boots = _bootstrap(y, scores, metric, n_boot, bool(stratified), seed)
    diffs = boots[:, 0] - boots[:, 1]
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size < n_boot:
        log.warning(
            "bootstrap_test: %d of %d resamples lacked a class and were dropped "
            "(use stratified=True to keep both classes in every resample)",
            n_boot - diffs.size,
            n_boot,
        )
    if diffs.size < 2:
        raise ValueError(
            f"only {diffs.size} of {n_boot} bootstrap resamples contained both classes; "
            f"use stratified=True or more patients"
        )
    diff = float(observed[0] - observed[1])
    sd = float(np.std(diffs, ddof=1)) if np.ptp(diffs) > 0 else 0.0
    statistic, p = _z_and_p(diff, sd)
    return BootstrapResult(
        metric=metric,
        value_a=float(observed[0]),
        value_b=float(observed[1]),
        diff=diff,
        sd=sd,
        statistic=statistic,
        p_value=p,
        n_boot=n_boot,
        n_valid=int(diffs.size),
        stratified=bool(stratified),
    )
