"""csmil.evaluation.stats against R's pROC on pROC's own example data set, ``aSAH``.

Data: ``tests/data/asah.tsv`` holds four columns of ``aSAH`` (113 patients with aneurysmal
subarachnoid haemorrhage; Turck et al. 2010, Intensive Care Med 36:107-115), the data set
distributed with the R package pROC (Robin et al. 2011, BMC Bioinformatics 12:77) as
``data/aSAH``. ``outcome`` is 1 for "Poor" (41 patients) and 0 for "Good" (72); ``s100b`` and
``ndka`` are serum concentrations; ``wfns`` is the WFNS grade 1-5, an ordered factor in R that
``roc()`` turns into its codes 1-5, the numbers stored here. Rows are in pROC's order. The values
were taken from a CSV export of ``aSAH.RData`` and checked against pROC's own test fixtures: the
DeLong placements of every patient for all three markers
(``tests/testthat/helper-deLongPlacementsCpp-expected.R`` in github.com/xrobin/pROC) are
reproduced to 1e-15.

Reference values, all from github.com/xrobin/pROC unless stated, for
``r.<marker> <- roc(aSAH$outcome, aSAH$<marker>)`` (``tests/testthat/helper-rocs.R``):

- AUC: ``tests/testthat/test-auc.R`` (wfns, ndka) and the ``theta`` of
  ``helper-deLongPlacementsCpp-expected.R`` (s100b), 15 significant digits; printed
  "Area under the curve" in ``tests/testthat/print_output/r.{s100b,wfns,ndka}``.
- ``var()`` (DeLong): ``tests/testthat/test-var.R``; ``cov()`` (DeLong):
  ``tests/testthat/test-cov.R``.
- ``ci.auc()`` (DeLong) of ndka: ``tests/testthat/test-ci.auc.R``. For s100b, pROC prints
  "95% CI: 0.6301-0.8326 (DeLong)" (its documented example, as reproduced in R session
  transcripts of ``ci(roc(outcome ~ s100b, aSAH))``), four decimals.
- ``roc.test()`` (DeLong, paired, two-sided): statistic, p-value and 95% interval of the AUC
  difference, ``tests/testthat/test-roc.test.R``.

Values quoted to 15 significant digits are required to 1e-12 relative; printed values to the
digits printed.

Direction: ``roc()`` picks the direction from the medians (controls below cases gives ``"<"``); for
all three markers pROC reports "72 controls (aSAH$outcome Good) < 41 cases (aSAH$outcome Poor)",
i.e. a higher value means Poor. That is csmil.evaluation.stats' fixed convention (a higher score
means class 1), so the scores go in unchanged. pROC's bootstrap outputs are documented only for 10
replicates under R's random number generator, too few to compare with, so the bootstrap is not
checked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from csmil.evaluation import stats

ASAH = Path(__file__).parent / "data" / "asah.tsv"
MARKERS = ("s100b", "wfns", "ndka")
REL = 1e-12

AUC = {"s100b": 0.731368563685637, "wfns": 0.823678861788618, "ndka": 0.611957994579946}
PRINTED_AUC = {"s100b": "0.7314", "wfns": "0.8237", "ndka": "0.612"}
VAR = {"s100b": 0.00266868245717244, "wfns": 0.00146991470882363, "ndka": 0.0031908105493913}
COV = {
    ("wfns", "ndka"): -0.000532967856762438,
    ("ndka", "s100b"): -0.000756164938056579,
    ("s100b", "wfns"): 0.00119615567376754,
}
# roc.test(r.a, r.b): (Z, p-value, 95% CI of auc_a - auc_b)
ROC_TEST = {
    ("wfns", "s100b"): (
        2.20898359144091,
        0.0271757822291882,
        0.0104061769564846,
        0.174214419249478,
    ),
    ("wfns", "ndka"): (
        2.79777591868904,
        0.00514557970691098,
        0.0634011709339876,
        0.3600405634833566,
    ),
    ("ndka", "s100b"): (
        -1.39077002573558,
        0.164295175223054,
        -0.2876917446341914,
        0.0488706064228094,
    ),
}


@pytest.fixture(scope="module")
def asah() -> dict[str, np.ndarray]:
    table = np.genfromtxt(ASAH, delimiter="\t", names=True, dtype=float)
    return {name: table[name] for name in table.dtype.names}


def test_data_is_procs_asah_with_cases_scoring_higher(asah):
    y = asah["outcome"]
    assert y.shape == (113,)
    assert set(np.unique(y)) == {0.0, 1.0}
    assert (int((y == 0).sum()), int((y == 1).sum())) == (72, 41)
    assert set(np.unique(asah["wfns"])) == {1.0, 2.0, 3.0, 4.0, 5.0}
    for marker in MARKERS:
        s = asah[marker]
        # pROC's automatic direction: "<" when the controls' median is below the cases'.
        assert np.median(s[y == 0]) < np.median(s[y == 1]), marker


@pytest.mark.parametrize("marker", MARKERS)
def test_auc_and_variance_equal_proc(asah, marker):
    auc, var = stats.delong_variance(asah["outcome"], asah[marker])
    assert auc == pytest.approx(AUC[marker], rel=REL)
    assert f"{auc:.4g}" == PRINTED_AUC[marker]
    assert var == pytest.approx(VAR[marker], rel=REL)


def test_ci_auc_equals_proc(asah):
    y = asah["outcome"]
    low, high = stats.auc_ci(y, asah["ndka"], method="delong")
    assert low == pytest.approx(0.501244999271703, rel=REL)
    assert high == pytest.approx(0.722670989888189, rel=REL)
    low, high = stats.auc_ci(y, asah["s100b"], method="delong")
    assert f"{low:.4f}-{high:.4f}" == "0.6301-0.8326"


@pytest.mark.parametrize(("a", "b"), list(ROC_TEST))
def test_delong_test_equals_proc_roc_test(asah, a, b):
    z, p, ci_low, ci_high = ROC_TEST[(a, b)]
    r = stats.delong_test(asah["outcome"], asah[a], asah[b])
    assert r.auc_a == pytest.approx(AUC[a], rel=REL)
    assert r.auc_b == pytest.approx(AUC[b], rel=REL)
    assert r.z == pytest.approx(z, rel=REL)
    assert r.p_value == pytest.approx(p, rel=REL)
    assert r.ci_low == pytest.approx(ci_low, rel=REL)
    assert r.ci_high == pytest.approx(ci_high, rel=REL)
    assert r.level == 0.95


@pytest.mark.parametrize(("a", "b"), list(COV))
def test_delong_difference_variance_uses_procs_covariance(asah, a, b):
    # var(auc_a - auc_b) = var(a) + var(b) - 2 cov(a, b), with pROC's var() and cov().
    r = stats.delong_test(asah["outcome"], asah[a], asah[b])
    expected = VAR[a] + VAR[b] - 2.0 * COV[(a, b)]
    assert r.se**2 == pytest.approx(expected, rel=REL)
