"""Seeded bootstrap intervals, the paired bootstrap test and Spearman's rank correlation.

Every function draws from ``numpy.random.default_rng(seed)``, so the same inputs give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


def _resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of ``values`` (drawn with replacement), (resamples,)."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(len(values), 1))  # bounded memory for large sets
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        means[start : start + count] = values[rng.integers(0, len(values), (count, len(values)))].mean(1)
    return means


def bootstrap_interval(values, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item values (e.g. 1/0 correctness)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    means = _resample_means(values, resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_statistic_interval(statistic: Callable[[np.ndarray], float], units: int,
                                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of any statistic of resampled unit indices (for composite scores such as Ties)."""
    if units == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, units, units)) for _ in range(resamples)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


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
    means = _resample_means(diff, resamples, seed)
    extreme = np.sum(np.abs(means - observed) >= abs(observed) - 1e-12)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"difference": observed, "difference_ci": [float(low), float(high)],
            "p_value": float((1 + extreme) / (resamples + 1)), "items": int(len(diff))}


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])
