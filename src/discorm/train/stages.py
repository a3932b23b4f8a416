"""What runs after the gradient steps, with every weight fixed: fitting the attribute weights of a
multi-objective head on pairs (stage 2 of ``combination: learned``) and measuring the reward's mean and standard
deviation on a reference set (``reward_normalization``). Both score a tokenized data set once, packed and
prefix-shared where the model runs that exactly (``serve/scoring.py``)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from discorm.data.loader import split_kinds
from discorm.errors import ConfigError
from discorm.model.reward_model import RewardModel
from discorm.serve.scoring import score_ids, score_pairs

logger = logging.getLogger(__name__)


def _column(dataset, name: str, missing: float) -> torch.Tensor | None:
    if name not in dataset.column_names:
        return None
    return torch.tensor([missing if v is None else v for v in dataset[name]], dtype=torch.float64)


def _eval_mode(model: RewardModel):
    was_training = model.training
    model.eval()
    return was_training


def learn_combination(model: RewardModel, dataset, name: str, batch_size: int = 16) -> list[float]:
    """Fit the head's attribute weights on the pairs of ``dataset`` by maximum likelihood, the backbone and the
    attribute outputs frozen; stores them in the model's config and returns them."""
    pairs, _ = split_kinds(dataset)
    if pairs is None:
        raise ConfigError(f"combination: learned fits the attribute weights on pairs, and {name} has none; add a "
                          "preference data set to `dataset` (e.g. dataset: ratings.jsonl,pairs.jsonl) or set "
                          "combination: fixed with attribute_weights.")
    was_training = _eval_mode(model)
    try:
        params = score_pairs(model, list(pairs), batch_size)  # (P, 2, K)
    finally:
        model.train(was_training)
    weights = model.head.fit_combination(params[:, 0], params[:, 1], _column(pairs, "margin", 0.0),
                                         _column(pairs, "soft_label", 1.0))
    model.rm_config = replace(model.rm_config, head_options=model.head.saved_options())
    names = [a.name for a in model.head.attributes]
    logger.info("attribute weights fitted on %d pairs of %s: %s", len(pairs), name,
                ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
    return weights


def fit_normalization(model: RewardModel, dataset, name: str, batch_size: int = 16) -> tuple[float, float]:
    """Mean and standard deviation of the (mean-mode, unnormalised) reward over every response of ``dataset``
    (both responses of each pair, every rated response); stored in the model's config, so the reward handed out
    becomes (r - mean) / std."""
    pairs, rated = split_kinds(dataset)
    was_training = _eval_mode(model)
    try:
        parts = []
        if pairs is not None:
            parts.append(score_pairs(model, list(pairs), batch_size).flatten(0, 1))  # (2P, K)
        if rated is not None:
            parts.append(score_ids(model, [f["prompt_ids"] + f["response_ids"] for f in rated], batch_size))
    finally:
        model.train(was_training)
    rewards = model.head.reward(torch.cat(parts), "mean").double()
    if len(rewards) < 2 or not rewards.std() > 0:
        raise ConfigError(f"reward_normalization needs responses with different rewards; {name} gives "
                          f"{len(rewards)} response(s) with standard deviation {float(rewards.std()):.3g}.")
    mean, std = float(rewards.mean()), float(rewards.std(correction=0))
    model.rm_config = replace(model.rm_config, reward_mean=mean, reward_std=std,
                              normalized_on=f"{name} ({len(rewards)} responses)")
    logger.info("reward normalisation on %s: mean %.4f, std %.4f over %d responses", name, mean, std, len(rewards))
    return mean, std
