"""The numbers of one rated evaluation set, for a head that predicts the attributes: per attribute, over the
responses that rate it, RMSE, Pearson and Spearman correlation of the predicted value with the rating and, for
Gaussian outputs, the NLL of the ratings and the mean sigma; the same numbers training reports as
``eval_rated_<attribute>_<metric>`` (``discorm/metrics.py: rating_metrics``).

A set of responses rated by several raters on levels, for a head with those levels (``model/heads/ordinal.py``),
is evaluated by the predicted share of raters per level against the observed share (``metrics.level_metrics``):
the NLL per rating, the ECE and Brier score of each level's share, the Spearman correlation of the predicted and
observed disagreement and the AUROC of the predicted disagreement for contested responses, each with its percentile
bootstrap interval over responses (``<metric>_ci``), and the reliability bins of each level's share."""

from __future__ import annotations

import math

import numpy as np
import torch

from discorm.eval.results import RewardOptions
from discorm.eval.sets import EvalSet
from discorm.eval.stats import DEFAULT_RESAMPLES, bootstrap_statistics_intervals
from discorm.metrics import disagreement, level_metrics, rating_metrics, share_reliability

METRICS = ("rmse", "pearson", "spearman", "nll", "sigma")


def rated_results(model, eval_set: EvalSet, params: list[torch.Tensor], reward: RewardOptions,
                  resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[dict, list[dict]]:
    """-> (the set's summary for eval_results.json, one prediction record per rated response)."""
    stacked = torch.cat(params)  # one response per item: (N, K)
    ratings = torch.tensor([item.ratings for item in eval_set.items], dtype=torch.float64)  # (N, A), NaN: unrated
    names = [a.name for a in model.head.attributes]
    summary = {"source": eval_set.source, "format": eval_set.format.name, "items": len(eval_set.items),
               "read": eval_set.read, "dropped": dict(eval_set.dropped), "truncated": eval_set.truncated,
               "attributes": {},
               "rated": {name: int((~ratings[:, a].isnan()).sum()) for a, name in enumerate(names)}}
    rewards = model.reward(stacked, reward.mode, reward.alpha, reward.k).tolist()
    means = model.head.attribute_means(stacked.float()).detach()
    if model.head.levels:
        probs, counts = means.double().numpy(), ratings.nan_to_num(0.0).numpy()
        summary["rated"] = {name: float(counts[:, k].sum()) for k, name in enumerate(names)}
        summary["levels"] = level_summary(probs, counts, names, resamples, seed)
        predicted, observed = disagreement(probs), disagreement(counts / counts.sum(-1, keepdims=True))
        records = [{"index": i, "key": item.key, "reward": rewards[i], "predicted": dict(zip(names, probs[i].tolist())),
                    "rated": dict(zip(names, counts[i].tolist())), "predicted_disagreement": float(predicted[i]),
                    "observed_disagreement": float(observed[i])} for i, item in enumerate(eval_set.items)]
        return summary, records
    flat = rating_metrics(model.head, stacked, ratings)
    summary["attributes"] = {name: {m: flat[f"{name}_{m}"] for m in METRICS if f"{name}_{m}" in flat}
                             for name in names}
    records = [{"index": i, "key": item.key, "reward": rewards[i], "predicted": dict(zip(names, means[i].tolist())),
                "rated": {n: v for n, v in zip(names, item.ratings) if not math.isnan(v)}}
               for i, item in enumerate(eval_set.items)]
    return summary, records


def level_summary(probs: np.ndarray, counts: np.ndarray, names: list[str], resamples: int = DEFAULT_RESAMPLES,
                  seed: int = 0) -> dict:
    """``level_metrics`` of probs and counts (N, L), each with its bootstrap interval over responses
    (``<metric>_ci``), and the reliability bins of each level's share (``reliability``: {level: {predicted,
    observed, count}})."""
    metrics = level_metrics(probs, counts, names)
    keys = list(metrics)

    def statistic(index):
        resampled = level_metrics(probs[index], counts[index], names)
        return [resampled[key] for key in keys]

    intervals = bootstrap_statistics_intervals(statistic, len(probs), resamples, seed)
    out = {**metrics, **{f"{key}_ci": list(interval) for key, interval in zip(keys, intervals)}}
    shares = counts / counts.sum(-1, keepdims=True)
    out["reliability"] = {name: dict(zip(("predicted", "observed", "count"),
                                         (b.tolist() for b in share_reliability(probs[:, k], shares[:, k]))))
                          for k, name in enumerate(names)}
    return out
