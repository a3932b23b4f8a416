"""The numbers of one evaluation set, from the head parameters of its items.

Ranking (the reward under the chosen reward mode): per-item credit by the set format's rule (``eval/formats.py``;
RewardBench v1: strict, a tie is wrong; pairs and RewardBench 2: a tie at the top shares the credit, so a tied pair
counts half), accuracy with a bootstrap interval, per-subset scores (a composite subset, RewardBench 2's Ties: its
composite score), and the format's summary (RewardBench section and overall scores). Probabilities (the head's
P(chosen > rejected), temperature-scaled where the model has a temperature), over every (correct, incorrect)
response pair: NLL, Brier, ECE, the reliability bins, and for distributional heads the mean sigma and its
correlation with a per-pair noise column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from discorm.eval.bias import length_diagnostics
from discorm.eval.sets import EvalSet
from discorm.eval.stats import bootstrap_interval, bootstrap_statistic_interval
from discorm.metrics import expected_calibration_error, pairwise_metrics, reliability_bins

WRONG_SHOWN = 5  # most confidently wrong items kept per set
SCHEMA = 1  # eval_results.json's "discorm_eval" version
RESULTS_FILE, TIMING_FILE, REPORT_FILE = "eval_results.json", "timing.json", "report.html"


@dataclass
class RewardOptions:
    """How a distribution becomes the ranking reward for this evaluation (None: the model's own setting)."""

    mode: str | None = None
    alpha: float | None = None
    k: float | None = None


def ranking(eval_set: EvalSet, scores: list[np.ndarray]) -> dict:
    """Accuracy, per-subset scores and the RewardBench summaries for per-item scores (rewards or lengths)."""
    fmt = eval_set.format
    credit = np.array([np.nan if fmt.is_composite(item.subset) or (fmt.listwise and len(set(item.levels)) == 1)
                       else best_credit(s, item.num_correct) if fmt.listwise else fmt.credit(list(s))
                       for item, s in zip(eval_set.items, scores)])
    subsets = {}
    for name in eval_set.subsets:
        members = [i for i, item in enumerate(eval_set.items) if item.subset == name]
        if fmt.is_composite(name):
            subsets[name] = fmt.composite.score(_composite_rows(eval_set, scores, members),
                                                f"{eval_set.source} ({name})")
        else:
            subsets[name] = float(np.nanmean(credit[members])) if (~np.isnan(credit[members])).any() else None
    out = {"accuracy": float(np.nanmean(credit)) if (~np.isnan(credit)).any() else None,
           "credit": credit, "subsets": subsets}
    if fmt.summary is not None:
        out[fmt.summary.key] = fmt.summary.compute(subsets)
    return out


def _composite_rows(eval_set: EvalSet, scores, members: list[int]) -> list:
    return [(eval_set.items[i].item_id, list(scores[i]), eval_set.items[i].num_correct) for i in members]


def _comparisons(eval_set: EvalSet) -> tuple[list[int], list[int], list[int]]:
    """(item, correct response, incorrect response) for every correct x incorrect response of every item."""
    owner, first, second = [], [], []
    for index, item in enumerate(eval_set.items):
        for c in range(item.num_correct):
            for r in range(item.num_correct, len(item.response_ids)):
                owner.append(index)
                first.append(c)
                second.append(r)
    return owner, first, second


def set_results(model, eval_set: EvalSet, params: list[torch.Tensor], reward: RewardOptions,
                resamples: int, seed: int) -> tuple[dict, list[dict]]:
    """-> (the set's summary for eval_results.json, one prediction record per item)."""
    head, temperature = model.head, model.rm_config.temperature
    rewards = [model.reward(p, reward.mode, reward.alpha, reward.k).double().numpy() for p in params]
    lengths = [np.array([len(r) for r in item.response_ids], dtype=float) for item in eval_set.items]
    num_correct = [item.num_correct for item in eval_set.items]

    model_rank, baseline = ranking(eval_set, rewards), ranking(eval_set, lengths)
    credit = model_rank.pop("credit")
    scored = ~np.isnan(credit)
    summary = {"source": eval_set.source, "format": eval_set.format.name, "items": len(eval_set.items),
               "read": eval_set.read, "dropped": dict(eval_set.dropped), "truncated": eval_set.truncated,
               "accuracy": model_rank["accuracy"],
               "accuracy_ci": list(bootstrap_interval(credit[scored], resamples, seed)) if scored.any() else None}

    owner, first, second = _comparisons(eval_set)
    pc = torch.stack([params[i][c] for i, c in zip(owner, first)])
    pr = torch.stack([params[i][r] for i, r in zip(owner, second)])
    target = torch.tensor([eval_set.items[i].target for i in owner])
    noise = np.array([np.nan if eval_set.items[i].noise is None else eval_set.items[i].noise for i in owner])
    chosen = np.array([rewards[i][c] for i, c in zip(owner, first)])
    rejected = np.array([rewards[i][r] for i, r in zip(owner, second)])
    metrics = pairwise_metrics(head, pc, pr, target, temperature, noise if (~np.isnan(noise)).any() else None,
                               rewards=(chosen, rejected))
    metrics.pop("accuracy")  # the set's own credit rule gives it (above)
    summary.update(metrics)
    prob = head.prob_pair(pc.float(), pr.float(), temperature).double().numpy()
    conf, freq, count = reliability_bins(prob, target.double().numpy())
    summary["reliability"] = {"confidence": conf.tolist(), "frequency": freq.tolist(), "count": count.tolist()}

    summary["subsets"] = {name: _subset_entry(eval_set, name, score, baseline["subsets"][name], credit, rewards,
                                              resamples, seed)
                          for name, score in model_rank["subsets"].items()}
    if eval_set.format.summary is not None:
        key = eval_set.format.summary.key
        summary[key] = {**model_rank[key], "length_baseline": baseline[key]}
    summary["length"] = {**length_diagnostics(rewards, lengths, num_correct, credit),
                         "baseline_accuracy": baseline["accuracy"]}
    if eval_set.format.listwise:
        summary["listwise"] = listwise_metrics(head, eval_set, params, rewards)
    records = _records(model, eval_set, params, rewards, lengths, credit, owner, prob)
    summary["confidently_wrong"] = _confidently_wrong(records)
    return summary, records


def listwise_metrics(head, eval_set: EvalSet, params: list[torch.Tensor], rewards: list[np.ndarray]) -> dict:
    """Ranked lists: best-of-K accuracy (the top reward on a best-ranked response, ties at the top sharing the
    credit; lists whose responses are all tied are left out), the mean Kendall tau-b and Spearman rho of the
    rewards with the reference levels (lists of three or more, with at least two levels), and over the pairs of
    tied responses (equal levels) the tie accuracy (P(tie) the most likely of the head's three outcomes) and, over
    every within-list pair, the calibration of P(tie) (ECE, Brier) -- for heads with a tie model."""
    taus, rhos = [], []
    tie_p, is_tie = [], []
    for item, reward, p in zip(eval_set.items, rewards, params):
        levels = np.array(item.levels)
        if len(set(item.levels)) > 1 and len(reward) > 2:
            taus.append(stats.kendalltau(-levels, reward).statistic)
            rhos.append(stats.spearmanr(-levels, reward).statistic)
        i, j = np.triu_indices(len(levels), 1)
        is_tie.append(levels[i] == levels[j])
        if head.tie_model != "none":
            with torch.no_grad():
                tie_p.append(head.log_prob_outcomes(p[i].float(), p[j].float()).exp().numpy())
    sizes = [len(item.levels) for item in eval_set.items]
    out = {"lists": len(eval_set.items), "mean_k": float(np.mean(sizes)),
           "best_of_k_accuracy": _nanmean([best_credit(r, item.num_correct) for item, r in
                                           zip(eval_set.items, rewards) if len(set(item.levels)) > 1]),
           "kendall_tau": _nanmean(taus), "spearman": _nanmean(rhos), "tie_accuracy": None, "tie_ece": None,
           "tie_brier": None, "ties": int(sum(int(t.sum()) for t in is_tie))}
    if tie_p:
        probs, ties = np.concatenate(tie_p), np.concatenate(is_tie)  # every item has a tie model's outcomes
        if ties.any():
            out["tie_accuracy"] = float((probs[ties].argmax(-1) == 1).mean())
        out["tie_ece"] = expected_calibration_error(probs[:, 1], ties.astype(float))
        out["tie_brier"] = float(np.mean((probs[:, 1] - ties) ** 2))
    return out


def best_credit(scores, num_correct: int) -> float:
    """Best-of-K: the share of the responses tied at the top reward that are best-ranked (the first
    ``num_correct``)."""
    scores = np.asarray(scores, dtype=float)
    top = scores == scores.max()
    return float(top[:num_correct].sum() / top.sum())


def _nanmean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def _subset_entry(eval_set: EvalSet, name: str, score: float, baseline: float, credit: np.ndarray, rewards,
                  resamples: int, seed: int) -> dict:
    members = [i for i, item in enumerate(eval_set.items) if item.subset == name]
    composite = eval_set.format.is_composite(name)
    if composite:
        rows, where = _composite_rows(eval_set, rewards, members), f"{eval_set.source} ({name})"
        statistic = eval_set.format.composite.score
        interval = bootstrap_statistic_interval(lambda idx: statistic([rows[j] for j in idx], where), len(rows),
                                                resamples, seed)
    else:
        interval = bootstrap_interval(credit[members], resamples, seed)
    return {"items": len(members), "score": score, "score_ci": list(interval), "length_baseline": baseline,
            "composite": composite}


def _records(model, eval_set: EvalSet, params, rewards, lengths, credit, owner, prob) -> list[dict]:
    p_first = {}
    for i, p in zip(owner, prob):
        p_first.setdefault(i, float(p))  # P(first chosen > first rejected)
    records = []
    for index, item in enumerate(eval_set.items):
        record = {"index": index, "id": item.item_id, "subset": item.subset, "key": item.key,
                  "num_correct": item.num_correct, "scores": rewards[index].tolist(),
                  "lengths": lengths[index].astype(int).tolist(),
                  "credit": None if np.isnan(credit[index]) else float(credit[index]),
                  "p_chosen": p_first.get(index) if len(item.response_ids) == 2 else None}
        if model.head.distributional:
            record["sigmas"] = model.head.std(params[index]).tolist()
        if model.head.epistemic:
            record["sigmas_aleatoric"] = model.head.aleatoric_std(params[index]).tolist()
            record["sigmas_epistemic"] = model.head.epistemic_std(params[index]).tolist()
        if len(item.response_ids) == 2:  # a pair: its fields by name
            record.update(chosen_score=record["scores"][0], rejected_score=record["scores"][1],
                          correct=bool(rewards[index][0] > rewards[index][1]))
            if "sigmas" in record:
                record.update(chosen_sigma=record["sigmas"][0], rejected_sigma=record["sigmas"][1])
        records.append(record)
    return records


def _confidently_wrong(records: list[dict]) -> list[dict]:
    """Items with no credit, the most confident first: lowest P(chosen preferred), then the largest reward gap."""
    wrong = [r for r in records if r["credit"] == 0.0]
    wrong.sort(key=lambda r: (r["p_chosen"] if r["p_chosen"] is not None else 1.0,
                              r["scores"][0] - max(r["scores"][r["num_correct"]:])))
    return [{"index": r["index"], "p_chosen": r["p_chosen"],
             "reward_gap": r["scores"][0] - max(r["scores"][r["num_correct"]:])} for r in wrong[:WRONG_SHOWN]]
