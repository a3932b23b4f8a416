"""Seeded bootstrap intervals and the paired bootstrap test (scipy's percentile bootstrap).

Every function draws from ``numpy.random.default_rng(seed)``, so the same inputs give the same numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


def _bootstrap(values: np.ndarray, statistic, resamples: int, seed: int, confidence: float, vectorized: bool):
    """scipy's percentile bootstrap of ``statistic`` over ``values`` (resampled with replacement)."""
    with warnings.catch_warnings():  # identical values make a degenerate (but correct) distribution
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap((values,), statistic, n_resamples=resamples, confidence_level=confidence,
                               method="percentile", vectorized=vectorized, batch=max(1, 2_000_000 // len(values)),
                               random_state=np.random.default_rng(seed))


def bootstrap_interval(values, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item values (e.g. 1/0 correctness)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:  # nothing to resample: the interval is the value itself (or unknown)
        return (float(values[0]),) * 2 if len(values) else (float("nan"), float("nan"))
    interval = _bootstrap(values, np.mean, resamples, seed, confidence, True).confidence_interval
    return float(interval.low), float(interval.high)


def bootstrap_statistic_interval(statistic: Callable[[np.ndarray], float], units: int,
                                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of any statistic of resampled unit indices (for composite scores such as Ties)."""
    if units < 2:
        return (float(statistic(np.zeros(1, dtype=int))),) * 2 if units else (float("nan"), float("nan"))
    result = _bootstrap(np.arange(units), lambda index: statistic(index.astype(int)), resamples, seed, confidence,
                        False)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_statistics_intervals(statistic: Callable[[np.ndarray], np.ndarray], units: int,
                                   resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                   confidence: float = CONFIDENCE) -> list[tuple[float, float]]:
    """Percentile intervals of several statistics computed together from each resample of unit indices
    (``statistic`` returns one value per statistic): one pass over the resamples for all of them."""
    if units < 2:
        values = statistic(np.zeros(1, dtype=int)) if units else None
        return [(float(v), float(v)) if units else (float("nan"), float("nan")) for v in values]
    result = _bootstrap(np.arange(units), lambda index: np.asarray(statistic(index.astype(int)), dtype=float),
                        resamples, seed, confidence, False)
    return [(float(lo), float(hi)) for lo, hi in zip(result.confidence_interval.low, result.confidence_interval.high)]


def paired_bootstrap(a, b, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict[str, float]:
    """Paired bootstrap test of mean(a) - mean(b) over the same items.

    The per-item differences d are resampled together (the pairing is kept). Two-sided p-value: the share of
    resampled mean differences, centred on the observed one, at least as far from zero as the observed one, with
    the observed sample counted once: p = (1 + #{|m* - d̄| >= |d̄|}) / (resamples + 1). Identical predictions give
    p = 1; a difference far outside the resampling spread gives p = 1 / (resamples + 1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same items, got {a.shape} and {b.shape}")
    diff = a - b
    observed = float(diff.mean()) if len(diff) else float("nan")
    if len(diff) < 2:
        return {"difference": observed, "difference_ci": [observed, observed], "p_value": 1.0, "items": len(diff)}
    result = _bootstrap(diff, np.mean, resamples, seed, confidence, True)
    means = result.bootstrap_distribution
    extreme = np.sum(np.abs(means - observed) >= abs(observed) - 1e-12)
    interval = result.confidence_interval
    return {"difference": observed, "difference_ci": [float(interval.low), float(interval.high)],
            "p_value": float((1 + extreme) / (resamples + 1)), "items": int(len(diff))}
