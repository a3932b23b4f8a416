"""What runs after the gradient steps, with every weight fixed, each a function: fitting the attribute weights of a
multi-objective head on pairs (stage 2 of ``combination: learned``), fitting the Laplace posterior of the last layer
on the training pairs (``uncertainty: laplace``), measuring the reward's mean and standard deviation on a reference
set (``reward_normalization``) and fitting a temperature on calibration pairs (``temperature_scaling``). Each stores
its result in the model (its config or its head); the data is scored with ``model/inference.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from discorm.data.loader import split_kinds
from discorm.errors import ConfigError
from discorm.metrics import fit_temperature
from discorm.model.heads.uncertainty import laplace_posterior, mean_readout
from discorm.model.inference import score_ids, score_pairs
from discorm.model.reward_model import RewardModel

logger = logging.getLogger(__name__)


@dataclass
class Scored:
    """The head params of a tokenized data set, computed once with every weight fixed: its pairs (rows and
    params (P, 2, K)) and its rated responses (params (R, K)); None where it has none or they were not asked for.
    Stage 2 changes only the weights that combine the attributes, not the params, so the normalisation that
    follows it reuses them."""

    pairs: object = None
    pair_params: torch.Tensor | None = None
    rated_params: torch.Tensor | None = None


def score_dataset(model: RewardModel, dataset, batch_size: int = 16, rated: bool = True) -> Scored:
    """Score the pairs (packed, prefix-shared where exact) and, with ``rated``, the rated responses of a tokenized
    data set, without gradient."""
    pairs, rated_rows = split_kinds(dataset)
    pair_params = None if pairs is None else score_pairs(model, list(pairs), batch_size)
    rated_params = None
    if rated and rated_rows is not None:
        rated_params = score_ids(model, [f["prompt_ids"] + f["response_ids"] for f in rated_rows], batch_size)
    return Scored(pairs, pair_params, rated_params)


def _column(dataset, name: str, missing: float) -> torch.Tensor | None:
    if name not in dataset.column_names:
        return None
    return torch.tensor([missing if v is None else v for v in dataset[name]], dtype=torch.float64)


def learn_combination(model: RewardModel, scored: Scored, name: str) -> list[float]:
    """Fit the head's attribute weights on the scored pairs of ``name`` by maximum likelihood, the backbone and
    the attribute outputs frozen; stores them in the model's config and returns them."""
    if scored.pairs is None:
        raise ConfigError(f"combination: learned fits the attribute weights on pairs, and {name} has none; add a "
                          "preference data set to `dataset` (e.g. dataset: ratings.jsonl,pairs.jsonl) or set "
                          "combination: fixed with attribute_weights.")
    params, pairs = scored.pair_params, scored.pairs
    weights = model.head.fit_combination(params[:, 0], params[:, 1], _column(pairs, "margin", 0.0),
                                         _column(pairs, "soft_label", 1.0))
    model.rm_config = replace(model.rm_config, head_options=model.head.saved_options())
    names = [a.name for a in model.head.attributes]
    logger.info("attribute weights fitted on %d pairs of %s: %s", len(pairs), name,
                ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
    return weights


def fit_normalization(model: RewardModel, scored: Scored, name: str) -> tuple[float, float]:
    """Mean and standard deviation of the (mean-mode, unnormalised) reward over every scored response (both
    responses of each pair, every rated response); stored in the model's config, so the reward handed out
    becomes (r - mean) / std."""
    parts = [] if scored.pair_params is None else [scored.pair_params.flatten(0, 1)]  # (2P, K)
    parts += [] if scored.rated_params is None else [scored.rated_params]  # (R, K)
    rewards = model.head.reward(torch.cat(parts), "mean").double()
    if len(rewards) < 2 or not rewards.std() > 0:
        raise ConfigError(f"reward_normalization needs responses with different rewards; {name} gives "
                          f"{len(rewards)} response(s) with standard deviation {float(rewards.std()):.3g}.")
    mean, std = float(rewards.mean()), float(rewards.std(correction=0))
    model.rm_config = replace(model.rm_config, reward_mean=mean, reward_std=std,
                              normalized_on=f"{name} ({len(rewards)} responses)")
    logger.info("reward normalisation on %s: mean %.4f, std %.4f over %d responses", name, mean, std, len(rewards))
    return mean, std


def ordered_pairs(dataset) -> list[dict]:
    """The pairs of a tokenized data set, and every (better, worse) pair of responses its ranked lists order."""
    pairs, _ = split_kinds(dataset)
    found = list(pairs) if pairs is not None else []
    if "responses_ids" in dataset.column_names:
        lists = dataset.filter(lambda ids, levels: ids is not None and levels is not None,
                               input_columns=["responses_ids", "levels"])
        for row in lists:
            levels, responses = row["levels"], row["responses_ids"]
            found += [{"prompt_ids": row["prompt_ids"], "chosen_ids": responses[i], "rejected_ids": responses[j]}
                      for i in range(len(levels)) for j in range(len(levels)) if levels[i] < levels[j]]
    return found


def fit_laplace(model: RewardModel, dataset, name: str, batch_size: int = 16,
                prior_precision: float | None = None) -> float:
    """Fit the Laplace posterior of the head's last layer on the pairs of a tokenized data set (one pass over their
    pooled features, see ``model/heads/uncertainty.py``); stores it in the head and returns the prior precision."""
    pairs = ordered_pairs(dataset)
    if not pairs:
        raise ConfigError(f"uncertainty: laplace fits its posterior on the training pairs, and {name} has none; add "
                          "preference pairs or ranked lists to `dataset`, or use uncertainty: ensemble.")
    params, pooled = score_pairs(model, pairs, batch_size, description="Laplace posterior", features=True)
    head = model.head
    prob = head.prob_pair(params[:, 0], params[:, 1])
    readout = mean_readout(head.member, pooled.flatten(0, 1))
    covariance, prior_precision = laplace_posterior(pooled[:, 0], pooled[:, 1], prob, readout, prior_precision)
    head.set_posterior(covariance, prior_precision)
    logger.info("Laplace posterior on %d pairs of %s: prior precision %.4g", len(pairs), name, prior_precision)
    return prior_precision


def fit_calibration(model: RewardModel, scored: Scored) -> float:
    """Fit the head's temperature on the scored calibration pairs (NLL of their soft labels, 1 where none);
    stores it in the model's config and returns it."""
    params = scored.pair_params
    diff = (model.head.mean(params[:, 0]) - model.head.mean(params[:, 1])).double().numpy()
    target = _column(scored.pairs, "soft_label", 1.0)
    temperature = fit_temperature(diff, target.numpy() if target is not None else np.ones_like(diff))
    model.rm_config = replace(model.rm_config, temperature=temperature)
    logger.info("temperature scaling: T = %.3f on %d calibration pairs", temperature, len(diff))
    return temperature


def post_training(model: RewardModel, data, data_args, finetuning_args, batch_size: int) -> None:
    """The stages a config asks for, in order: the learned combination, the Laplace posterior (on the training
    pairs), the reward normalisation (on ``data.reference``, else the training data), the temperature (on
    ``data.calibration``). The training data is scored once for the combination and the normalisation (stage 2
    leaves the attribute outputs as they are)."""
    from_train = finetuning_args.reward_normalization and data.reference is None
    scored = None
    if finetuning_args.combination == "learned":
        scored = score_dataset(model, data.train, batch_size, rated=from_train)
        learn_combination(model, scored, data_args.dataset)
    if finetuning_args.uncertainty == "laplace":
        fit_laplace(model, data.train, data_args.dataset, batch_size, finetuning_args.laplace_prior_precision)
    if finetuning_args.reward_normalization:
        if data.reference is not None:
            scored = score_dataset(model, data.reference, batch_size)
        elif scored is None:
            scored = score_dataset(model, data.train, batch_size)
        fit_normalization(model, scored, data_args.normalization_dataset or data_args.dataset)
    if data.calibration is not None:
        fit_calibration(model, score_dataset(model, data.calibration, batch_size, rated=False))
