"""Pairwise metrics for every head: accuracy, margins, NLL, Brier score, ECE, and for distributional heads the
predicted spread. Inputs are the head parameters of chosen and rejected, ``(B, K)`` each, and the target
probability that chosen is preferred ``y`` (1, or a soft label)."""

from __future__ import annotations

import math

import numpy as np
import torch

from discorm.model.heads import RewardHead


def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs whose chosen reward is higher; ties count as half."""
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def expected_calibration_error(prob: np.ndarray, target: np.ndarray, bins: int = 15) -> float:
    """ECE on the symmetrised set {(p, y)} U {(1 - p, 1 - y)}: sum_b |B|/N |mean conf_b - mean outcome_b|.

    Symmetrising makes the result independent of which response is listed first."""
    conf = np.concatenate([prob, 1 - prob])
    outcome = np.concatenate([target, 1 - target])
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            ece += members.mean() * abs(conf[members].mean() - outcome[members].mean())
    return float(ece)


def reliability_bins(prob: np.ndarray, target: np.ndarray, bins: int = 15):
    """(mean confidence, observed frequency, count) per bin of the symmetrised set, for the diagram."""
    conf = np.concatenate([prob, 1 - prob])
    outcome = np.concatenate([target, 1 - target])
    index = np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    rows = [(conf[index == b].mean(), outcome[index == b].mean(), int((index == b).sum()))
            for b in range(bins) if (index == b).any()]
    return [np.array(col) for col in zip(*rows)] if rows else [np.array([])] * 3


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half: the area under the ROC
    curve (Mann-Whitney U / (n_pos n_neg)). NaN when either class is empty."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    negatives = np.sort(scores[~positive])
    if not positive.any() or not len(negatives):
        return float("nan")
    below = np.searchsorted(negatives, scores[positive], side="left")
    ties = np.searchsorted(negatives, scores[positive], side="right") - below
    return float((below + 0.5 * ties).sum() / (positive.sum() * len(negatives)))


def r_squared(means: np.ndarray, variances: np.ndarray) -> float:
    """Var(mu) / (Var(mu) + mean(sigma^2)) over responses: the share of the reward's spread that the predicted
    means explain (Siththaranjan et al., 2024). Low when the predicted spread dwarfs the differences between the
    means, as when annotators with hidden objectives disagree. Var is the population variance; NaN when the
    model gives every response the same point reward."""
    spread = float(np.var(np.asarray(means, dtype=float)))
    total = spread + float(np.mean(variances))
    return spread / total if total > 0 else float("nan")  # NaN: every response gets the same point reward


def fit_temperature(diff: np.ndarray, target: np.ndarray) -> float:
    """T minimising the NLL of sigmoid(diff / T) on held-out pairs (scalar head), by golden-section search on
    log T in [-4, 4]."""
    diff_t, target_t = torch.as_tensor(diff, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)

    def nll(log_t: float) -> float:
        z = diff_t / math.exp(log_t)
        return float(-(target_t * torch.nn.functional.logsigmoid(z)
                       + (1 - target_t) * torch.nn.functional.logsigmoid(-z)).mean())

    low, high = -4.0, 4.0
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


def pairwise_metrics(
    head: RewardHead,
    pc: torch.Tensor,
    pr: torch.Tensor,
    target: torch.Tensor | None = None,
    temperature: float = 1.0,
    noise: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one evaluation. ``noise``: an optional per-pair disagreement level to correlate with."""
    pc, pr = pc.float(), pr.float()
    target = torch.ones(pc.shape[0]) if target is None else target.float()
    chosen, rejected = head.mean(pc).numpy(), head.mean(pr).numpy()
    prob = head.prob_pair(pc, pr, temperature).clamp(1e-7, 1 - 1e-7).double().numpy()
    y = target.double().numpy()
    metrics = {
        "accuracy": accuracy(chosen, rejected),
        "margin": float(np.mean(chosen - rejected)),
        "chosen_reward": float(np.mean(chosen)),
        "rejected_reward": float(np.mean(rejected)),
        "nll": float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))),
        "brier": float(np.mean((prob - y) ** 2)),
        "ece": expected_calibration_error(prob, y),
    }
    if head.distributional:
        spread = torch.cat([head.std(pc), head.std(pr)]).numpy()
        metrics["mean_sigma"] = float(spread.mean())
        if noise is not None and len(noise) == len(chosen):
            pair_sigma = np.sqrt(head.std(pc).numpy() ** 2 + head.std(pr).numpy() ** 2)
            known = ~np.isnan(noise)
            if known.sum() > 2 and np.std(noise[known]) > 0 and np.std(pair_sigma[known]) > 0:
                metrics["sigma_noise_corr"] = float(np.corrcoef(pair_sigma[known], noise[known])[0, 1])
    if temperature != 1.0:
        metrics["temperature"] = float(temperature)
    return metrics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their average rank."""
    values, inverse = np.unique(x, return_inverse=True)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else float("nan")


def rating_metrics(head: RewardHead, params: torch.Tensor, scores: torch.Tensor) -> dict[str, float]:
    """Per attribute, over the responses that rate it (scores (N, A), NaN: not rated): root mean squared error,
    Pearson and Spearman correlation of the predicted mean with the rating and, for Gaussian outputs, the mean
    negative log-likelihood of the ratings and the mean predicted sigma."""
    params, scores = params.float(), scores.float()
    means = head.attribute_means(params).double().numpy()
    stds = head.attribute_stds(params)
    stds = None if stds is None else stds.double().numpy()
    truth = scores.double().numpy()
    metrics = {}
    for a, attribute in enumerate(head.attributes):
        known = ~np.isnan(truth[:, a])
        if known.sum() < 2:
            continue
        y, mu, name = truth[known, a], means[known, a], attribute.name
        metrics[f"{name}_rmse"] = float(np.sqrt(np.mean((mu - y) ** 2)))
        metrics[f"{name}_pearson"] = _correlation(mu, y)
        metrics[f"{name}_spearman"] = _correlation(_ranks(mu), _ranks(y))
        if stds is not None:
            sigma = stds[known, a]
            metrics[f"{name}_nll"] = float(np.mean(np.log(2 * np.pi * sigma**2) / 2 + (y - mu) ** 2 / (2 * sigma**2)))
            metrics[f"{name}_sigma"] = float(np.mean(sigma))
    return metrics
