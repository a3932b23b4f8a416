"""Statistics the uncertainty benchmarks report: how well a predicted spread separates two kinds of items, and
how much of the reward's spread the predicted means explain."""

from __future__ import annotations

import numpy as np
from scipy import stats


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half: the area under the ROC
    curve (Mann-Whitney U / (n_pos n_neg)). NaN when either class is empty."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    u = stats.mannwhitneyu(scores[positive], scores[~positive]).statistic
    return float(u / (positive.sum() * (~positive).sum()))


def r_squared(means: np.ndarray, variances: np.ndarray) -> float:
    """Var(mu) / (Var(mu) + mean(sigma^2)) over responses: the share of the reward's spread that the predicted
    means explain (Siththaranjan et al., 2024). Low when the predicted spread dwarfs the differences between the
    means, as when annotators with hidden objectives disagree. Var is the population variance; NaN when the
    model gives every response the same point reward."""
    spread = float(np.var(np.asarray(means, dtype=float)))
    total = spread + float(np.mean(variances))
    return spread / total if total > 0 else float("nan")
