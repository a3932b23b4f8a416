"""The numbers of one rated evaluation set (responses with a rating per attribute), for a head that predicts
the attributes: per attribute, over the responses that rate it, RMSE, Pearson and Spearman correlation of the
predicted value with the rating and, for Gaussian outputs, the NLL of the ratings and the mean sigma; the same
numbers training reports as ``eval_rated_<attribute>_<metric>`` (``discorm/metrics.py: rating_metrics``)."""

from __future__ import annotations

import math

import torch

from discorm.eval.results import RewardOptions
from discorm.eval.sets import EvalSet
from discorm.metrics import rating_metrics

METRICS = ("rmse", "pearson", "spearman", "nll", "sigma")


def rated_results(model, eval_set: EvalSet, params: list[torch.Tensor], reward: RewardOptions
                  ) -> tuple[dict, list[dict]]:
    """-> (the set's summary for eval_results.json, one prediction record per rated response)."""
    stacked = torch.cat(params)  # one response per item: (N, K)
    ratings = torch.tensor([item.ratings for item in eval_set.items], dtype=torch.float64)  # (N, A), NaN: unrated
    flat = rating_metrics(model.head, stacked, ratings)
    names = [a.name for a in model.head.attributes]
    attributes = {name: {m: flat[f"{name}_{m}"] for m in METRICS if f"{name}_{m}" in flat} for name in names}
    summary = {"source": eval_set.source, "format": eval_set.format.name, "items": len(eval_set.items),
               "read": eval_set.read, "dropped": dict(eval_set.dropped), "truncated": eval_set.truncated,
               "attributes": attributes,
               "rated": {name: int((~ratings[:, a].isnan()).sum()) for a, name in enumerate(names)}}
    rewards = model.reward(stacked, reward.mode, reward.alpha, reward.k).tolist()
    means = model.head.attribute_means(stacked.float()).tolist()
    records = [{"index": i, "key": item.key, "reward": rewards[i], "predicted": dict(zip(names, means[i])),
                "rated": {n: v for n, v in zip(names, item.ratings) if not math.isnan(v)}}
               for i, item in enumerate(eval_set.items)]
    return summary, records
