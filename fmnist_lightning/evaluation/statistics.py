"""Is a difference real? Intervals and tests for accuracies, from scipy and statsmodels; all
confidence levels are 95 % (``LEVEL``), accuracies and differences fractions.

- ``wilson_interval``: a test accuracy's binomial interval (Wilson, 1927), statsmodels'
  ``proportion_confint(method="wilson")``.
- ``t_interval``: a mean over seeds with Student's t interval, scipy's ``ttest_1samp``.
- ``paired_t_test``: two configurations over the same seeds, Student's paired t-test
  (scipy's ``ttest_rel``), the test Dror et al. (2018, "The Hitchhiker's Guide to Testing
  Statistical Significance in NLP") recommend for such normal-looking scores.
- ``paired_bootstrap``: two runs on the same test images, the percentile bootstrap of the
  accuracy difference with images resampled in pairs (Efron & Tibshirani, 1993; Koehn,
  2004, for comparing two systems on one test set), scipy's ``bootstrap(paired=True)``.
- ``mcnemar_exact``: McNemar's (1947) exact test on the images one run gets right and the
  other wrong, statsmodels' ``mcnemar(exact=True)`` (Dietterich, 1998, recommends it for
  comparing two classifiers on one test set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: The confidence level of every interval.
LEVEL = 0.95
#: The significance level of every test (1 − ``LEVEL``).
ALPHA = 1 - LEVEL
#: Bootstrap resamples: scipy's default.
RESAMPLES = 9999


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``correct`` out of ``total`` images, as fractions ``(low, high)``."""
    # Imported here: statsmodels (and pandas) would slow down a training run's start-up.
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(correct, total, alpha=ALPHA, method="wilson")
    return float(low), float(high)


@dataclass(frozen=True)
class MeanInterval:
    """A mean over seeds (or folds) with its sample standard deviation and 95 % t interval
    (``std``, ``low`` and ``high`` NaN for fewer than two values)."""

    mean: float
    std: float
    low: float
    high: float
    n: int


def t_interval(values: Sequence[float]) -> MeanInterval:
    """The mean of ``values`` with its 95 % Student's t interval (scipy's ``ttest_1samp``); NaN under two values."""
    array = np.asarray(values, dtype=float)
    if len(array) == 0:
        return MeanInterval(math.nan, math.nan, math.nan, math.nan, 0)
    if len(array) < 2:
        return MeanInterval(float(array.mean()), math.nan, math.nan, math.nan, 1)
    if np.all(array == array[0]):  # no spread: scipy returns NaN, the interval is the value
        return MeanInterval(float(array[0]), 0.0, float(array[0]), float(array[0]), len(array))
    interval = stats.ttest_1samp(array, 0).confidence_interval(LEVEL)
    return MeanInterval(float(array.mean()), float(array.std(ddof=1)), interval.low, interval.high, len(array))


@dataclass(frozen=True)
class Difference:
    """``b − a`` (a fraction) with its 95 % interval, a test's two-sided p-value (NaN when it cannot
    be computed), the test's name and ``n``, the pairs compared (images or seeds)."""

    difference: float
    low: float
    high: float
    p_value: float
    test: str
    n: int

    @property
    def significant(self) -> bool:
        """Whether the p-value is below ``ALPHA``."""
        return not math.isnan(self.p_value) and self.p_value < ALPHA


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Student's paired t-test of ``b − a`` over the same seeds (scipy's ``ttest_rel``),
    with the 95 % interval of the mean difference.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"a paired test needs as many values in both: {len(a)} and {len(b)}")
    differences = b - a
    mean = float(differences.mean()) if len(a) else math.nan
    if len(a) < 2 or np.all(differences == differences[0]):
        # One pair, or differences without spread: no t statistic (scipy gives NaN).
        return Difference(mean, math.nan, math.nan, math.nan, "paired t-test", len(a))
    result = stats.ttest_rel(b, a)
    interval = result.confidence_interval(LEVEL)
    return Difference(mean, interval.low, interval.high, float(result.pvalue), "paired t-test", len(a))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Welch's t-test of ``mean(b) − mean(a)`` for values that are not paired (scipy's
    ``ttest_ind(equal_var=False)``), with its 95 % interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Difference(mean, math.nan, math.nan, math.nan, "Welch's t-test", min(len(a), len(b)))
    result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(LEVEL)
    return Difference(mean, interval.low, interval.high, float(result.pvalue), "Welch's t-test", min(len(a), len(b)))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval ``(low, high)`` of ``accuracy(b) − accuracy(a)`` from bool
    ``(N,)`` per-image correctness on the same images, resampled in pairs ``RESAMPLES`` times from ``seed``."""
    # Resampling image pairs is resampling the per-image differences.
    differences = correct_b.astype(float) - correct_a.astype(float)
    interval = stats.bootstrap(
        (differences,),
        np.mean,
        vectorized=True,
        n_resamples=RESAMPLES,
        batch=500,
        confidence_level=LEVEL,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, int, int]:
    """McNemar's exact test (statsmodels) on two runs' bool ``(N,)`` per-image correctness on the same images:
    ``(two-sided p-value, images only a got right, images only b got right)``."""
    from statsmodels.stats.contingency_tables import mcnemar  # imported here: see wilson_interval

    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    both = int((correct_a & correct_b).sum())
    neither = int((~correct_a & ~correct_b).sum())
    result = mcnemar([[both, only_a], [only_b, neither]], exact=True)
    return float(result.pvalue), only_a, only_b
