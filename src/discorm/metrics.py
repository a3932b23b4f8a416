"""The numbers training and evaluation report, from head parameters: pairwise accuracy, margins, NLL, Brier, ECE and the
reliability bins, the predicted spread of distributional heads, per-attribute rating metrics, the numbers of several
raters' labels on levels, and the temperature fit. Inputs are the head params of chosen and rejected, ``(B, K)`` each,
and the target probability ``y`` that chosen is preferred (1, or a soft label)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize, stats

from discorm.model.heads import RewardHead


def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs whose chosen reward is higher; ties count as half."""
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def reliability_bins(prob: np.ndarray, target: np.ndarray, bins: int = 15) -> list[np.ndarray]:
    """(mean confidence, observed frequency, count) per non-empty bin of the symmetrised set
    {(p, y)} U {(1 - p, 1 - y)}, which does not depend on which response is listed first."""
    conf = np.concatenate([prob, 1 - prob])
    outcome = np.concatenate([target, 1 - target])
    index = np.clip((conf * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    seen = count > 0
    mean_conf = np.bincount(index, weights=conf, minlength=bins)[seen] / count[seen]
    frequency = np.bincount(index, weights=outcome, minlength=bins)[seen] / count[seen]
    return [mean_conf, frequency, count[seen]]


def expected_calibration_error(prob: np.ndarray, target: np.ndarray, bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N |mean confidence_b - mean outcome_b| over the reliability bins."""
    conf, frequency, count = reliability_bins(prob, target, bins)
    return float(np.sum(count * np.abs(conf - frequency)) / max(count.sum(), 1))


def fit_temperature(diff: np.ndarray, target: np.ndarray) -> float:
    """T minimising the NLL of sigmoid(diff / T) on held-out pairs (scalar head), over log T in [-4, 4]."""
    diff_t, target_t = torch.as_tensor(diff, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)

    def nll(log_t: float) -> float:
        z = diff_t / math.exp(log_t)
        return float(-(target_t * F.logsigmoid(z) + (1 - target_t) * F.logsigmoid(-z)).mean())

    found = optimize.minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-8})
    return math.exp(found.x)


def correlation(a, b, rank: bool = False) -> float | None:
    """Pearson's (``rank``: Spearman's) correlation; None with fewer than 2 points or a constant side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float((stats.spearmanr if rank else stats.pearsonr)(a, b).statistic)


def pairwise_metrics(head: RewardHead, pc: torch.Tensor, pr: torch.Tensor, target: torch.Tensor | None = None,
                     temperature: float = 1.0, noise: np.ndarray | None = None,
                     rewards: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """All metrics of one evaluation. ``rewards``: the (chosen, rejected) rewards under the model's reward mode,
    which ``accuracy`` and ``margin`` rank by (default: the head's mean); ``accuracy_mean`` always ranks by the
    mean. ``noise``: an optional per-pair disagreement level to correlate with the predicted spread."""
    pc, pr = pc.float(), pr.float()
    target = torch.ones(pc.shape[0]) if target is None else target.float()
    mean_c, mean_r = head.mean(pc).numpy(), head.mean(pr).numpy()
    chosen, rejected = (mean_c, mean_r) if rewards is None else rewards
    prob = head.prob_pair(pc, pr, temperature).clamp(1e-7, 1 - 1e-7).double().numpy()
    y = target.double().numpy()
    metrics = {
        "accuracy": accuracy(chosen, rejected),
        "accuracy_mean": accuracy(mean_c, mean_r),
        "margin": float(np.mean(chosen - rejected)),
        "chosen_reward": float(np.mean(chosen)),
        "rejected_reward": float(np.mean(rejected)),
        "nll": float(-np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))),
        "brier": float(np.mean((prob - y) ** 2)),
        "ece": expected_calibration_error(prob, y),
    }
    if head.distributional:
        sigma_c, sigma_r = head.std(pc).numpy(), head.std(pr).numpy()
        metrics["mean_sigma"] = float(np.concatenate([sigma_c, sigma_r]).mean())
        if noise is not None and len(noise) == len(chosen):
            known = ~np.isnan(noise)
            corr = correlation(np.sqrt(sigma_c**2 + sigma_r**2)[known], noise[known])
            if corr is not None:
                metrics["sigma_noise_corr"] = corr
    if head.epistemic:
        for part in ("aleatoric", "epistemic"):
            spread = getattr(head, f"{part}_std")
            metrics[f"mean_sigma_{part}"] = float(torch.cat([spread(pc), spread(pr)]).mean())
    if temperature != 1.0:
        metrics["temperature"] = float(temperature)
    return metrics


def rating_metrics(head: RewardHead, params: torch.Tensor, scores: torch.Tensor) -> dict[str, float]:
    """Per attribute, over the responses that rate it (scores (N, A), NaN: not rated): root mean squared error,
    Pearson and Spearman correlation of the predicted mean with the rating and, for Gaussian outputs, the mean
    negative log-likelihood of the ratings and the mean predicted sigma. A head with rating levels: the numbers of
    ``level_metrics`` (scores are counts of raters per level)."""
    params, scores = params.float(), scores.float()
    if head.levels:
        counts = scores.nan_to_num(0.0).double().numpy()
        return level_metrics(head.attribute_means(params).detach().double().numpy(), counts, head.levels)
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
        for key, rank in (("pearson", False), ("spearman", True)):
            value = correlation(mu, y, rank)
            metrics[f"{name}_{key}"] = float("nan") if value is None else value
        if stds is not None:
            sigma = stds[known, a]
            metrics[f"{name}_nll"] = float(np.mean(np.log(2 * np.pi * sigma**2) / 2 + (y - mu) ** 2 / (2 * sigma**2)))
            metrics[f"{name}_sigma"] = float(np.mean(sigma))
    return metrics


CONTESTED = 0.3  # an item is contested when at least this share of its raters differ from the majority


def share_reliability(predicted: np.ndarray, observed: np.ndarray, bins: int = 10) -> list[np.ndarray]:
    """(mean predicted share, mean observed share, count) per non-empty bin of the predicted share of one level
    (predicted, observed (N,) in [0, 1])."""
    index = np.clip((predicted * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    seen = count > 0
    mean = [np.bincount(index, weights=v, minlength=bins)[seen] / count[seen] for v in (predicted, observed)]
    return [mean[0], mean[1], count[seen]]


def share_ece(predicted: np.ndarray, observed: np.ndarray, bins: int = 10) -> float:
    """ECE of a predicted share: sum_b |B_b|/N |mean predicted_b - mean observed_b| over the bins."""
    mean_predicted, mean_observed, count = share_reliability(predicted, observed, bins)
    return float(np.sum(count * np.abs(mean_predicted - mean_observed)) / max(count.sum(), 1))


def disagreement(shares: np.ndarray) -> np.ndarray:
    """1 - the largest share, (N,) from (N, L): the share of raters who differ from the majority."""
    return 1 - shares.max(-1)


def entropy(shares: np.ndarray) -> np.ndarray:
    """The entropy (nats) of each row of shares (N, L)."""
    return -np.sum(np.where(shares > 0, shares * np.log(np.clip(shares, 1e-300, None)), 0.0), -1)


def level_metrics(probs: np.ndarray, counts: np.ndarray, levels) -> dict[str, float]:
    """The numbers of responses rated by several raters on levels: probs (N, L) the predicted share of each level,
    counts (N, L) the raters per level. ``nll_per_rating``: -sum n log p / sum n over all ratings; per level
    ``<level>_ece`` and ``<level>_brier`` of the predicted share against the observed share; ``brier`` the mean
    over responses of sum_k (p_k - q_k)^2; ``disagreement_spearman`` (1 - the largest share) and
    ``entropy_spearman`` between predicted and observed; ``contested_auroc``: the predicted disagreement ranking
    the contested responses (a minority share >= 0.3) above the others (NaN when only one kind is present)."""
    shares = counts / counts.sum(-1, keepdims=True)
    log_p = np.log(np.clip(probs, 1e-300, None))
    metrics = {"nll_per_rating": float(-(counts * log_p).sum() / counts.sum()),
               "brier": float(np.mean(((probs - shares) ** 2).sum(-1)))}
    for k, level in enumerate(levels):
        metrics[f"{level}_ece"] = share_ece(probs[:, k], shares[:, k])
        metrics[f"{level}_brier"] = float(np.mean((probs[:, k] - shares[:, k]) ** 2))
    for name, measure in (("disagreement", disagreement), ("entropy", entropy)):
        value = correlation(measure(probs), measure(shares), rank=True)
        metrics[f"{name}_spearman"] = float("nan") if value is None else value
    metrics["contested_auroc"] = contested_auroc(disagreement(probs), disagreement(shares) >= CONTESTED)
    return metrics


def contested_auroc(score: np.ndarray, contested: np.ndarray) -> float:
    """The area under the ROC curve of ``score`` for the contested items: the Mann-Whitney U of the contested
    against the others over their product of counts (NaN when only one kind is present)."""
    n_pos, n_neg = int(contested.sum()), int((~contested).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float(stats.mannwhitneyu(score[contested], score[~contested]).statistic / (n_pos * n_neg))
