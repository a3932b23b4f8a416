"""The training objective in one place: the head's likelihood of every label a batch carries -- pairs (margins,
soft labels, ties, strengths, votes), ranked lists (Plackett-Luce, or every pair the ranking orders; votes) and
rated responses -- plus the head's regulariser and reward centring, with their coefficients taken from the
*current* training config (never from a run being continued)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from discorm.config import FinetuningArguments
from discorm.data.collator import PairBatch
from discorm.losses import LIST_WEIGHTINGS, RANKING_LOSSES, RATING_TARGETS, STRENGTH_LOSSES, Comparisons, RankedList
from discorm.model.heads import RewardHead, head_class


@dataclass
class PairwiseLoss:
    """loss = sum_m w_m NLL_m / sum_m units_m over every comparison (a pair, or a pair a list orders, or a list's
    Plackett-Luce terms) + head regulariser + c * mean((r_a + r_b)^2).

    Scalar head, hard labels: NLL = -logsigmoid(r_c - r_r - margin), and with plain pairs the loss is their mean. A
    ranked list of K gives K(K-1)/2 comparisons under ``all_pairs`` (each 1/C of a unit with ``list_weighting: list``),
    or K - 1 units of Plackett-Luce likelihood; a pair or list with n annotator votes counts n units. Rated responses:
    loss = (U * comparisons + w * R * mean_r rated_loss_r) / (U + R), U the comparison units, w = rated_loss_weight; a
    response rated by several raters on levels counts one unit (its NLL per rating), fitted to every rater's label or to
    the majority label (``rating_target``). ``ranking_loss``, ``list_weighting`` and ``strength_loss`` name entries of
    the tables in :mod:`discorm.losses`."""

    head: RewardHead
    loss_options: dict = field(default_factory=dict)  # the head's unsaved options (variance_penalty, ...)
    center_rewards_coefficient: float | None = None
    rated_loss_weight: float = 1.0
    ranking_loss: str = "all_pairs"
    list_weighting: str = "comparison"
    strength_loss: str = "margin"
    strength_margin: float = 1.0
    rating_target: str = "all"

    @classmethod
    def from_args(cls, head: RewardHead, args: FinetuningArguments) -> PairwiseLoss:
        # the config's options are this head's only when it names this head (`discorm eval` of a run need not)
        options = head_class(head.kind).resolve_options(args.head_options if args.head == head.kind else {})
        loss_options = {o.name: options[o.name] for o in head.options if not o.saved}
        ranking = head.ranking_losses[0] if args.ranking_loss == "auto" else args.ranking_loss
        return cls(head, loss_options, args.center_rewards_coefficient, args.rated_loss_weight, ranking,
                   args.list_weighting, args.strength_loss, args.strength_margin, args.rating_target)

    def __call__(self, pc: torch.Tensor, pr: torch.Tensor, margin: torch.Tensor | None = None,
                 soft_label: torch.Tensor | None = None, rated: torch.Tensor | None = None,
                 scores: torch.Tensor | None = None, score_mask: torch.Tensor | None = None,
                 keys: list[str] | None = None) -> torch.Tensor:
        """pc, pr: (B, K) head params of chosen and rejected; rated (R, K) with scores and score_mask (R, A);
        keys: where each pair was read, for the head's per-pair weights (an ensemble's bootstrap) -> scalar loss.
        The pairs-and-ratings form of ``batch_loss``."""
        params = torch.cat([pc, pr, *([] if rated is None else [rated])])
        labels = {"margin": margin, "soft_label": soft_label, "scores": scores, "score_mask": score_mask,
                  "sources": keys}
        return self.batch_loss(params, {k: v for k, v in labels.items() if v is not None})

    def batch_loss(self, params: torch.Tensor, batch: PairBatch) -> torch.Tensor:
        """params (S, K) in the collators' score order (see :class:`PairBatch`) and the batch's labels -> the loss."""
        pairs, lists, rated = split_scores(params, batch)
        keys = batch.get("sources")
        count = rated.shape[0]
        if count:
            scores, mask = batch["scores"], batch["score_mask"]
            if self.head.levels:  # counts of raters per level: all of them, or the majority label alone
                scores = RATING_TARGETS[self.rating_target].target(scores.masked_fill(~mask, 0))
            rated_part = self.rated_loss_weight * self.head.rated_loss(rated, scores, mask).mean()
            if not pairs + sum(lists):
                return rated_part
        ranking = RANKING_LOSSES[self.ranking_loss]
        ranked = list(ranked_lists(pairs, lists, batch, keys))
        comparisons = [self.pair_comparisons(pairs, batch, keys, params.device),
                       *(ranking.comparisons(r, LIST_WEIGHTINGS[self.list_weighting]) for r in ranked
                         if ranking.comparisons is not None),
                       vote_comparisons(pairs, lists, batch, keys)]
        comparisons = concat([c for c in comparisons if c is not None and len(c.a)])
        total, units = params.new_zeros(()), params.new_zeros(())
        if comparisons is not None:
            pa, pb = params[comparisons.a], params[comparisons.b]
            weights = self.head.pair_weights(comparisons.keys)
            weights = comparisons.weights if weights is None else comparisons.weights[:, None] * weights.to(params)
            total = self.head.outcome_loss(pa, pb, comparisons.outcomes, comparisons.margin,
                                           None if bool((weights == 1).all()) else weights).sum()
            units = comparisons.units.sum()
        if ranking.likelihood is not None:
            for r in ranked:
                nll, observations = ranking.likelihood(self.head, params[r.start : r.start + len(r.levels)], r)
                total, units = total + nll, units + observations
        loss = total / units
        if comparisons is not None:
            loss = loss + self.head.regulariser(pa, pb, **self.loss_options)
            if self.center_rewards_coefficient:
                rewards = self.head.mean(pa) + self.head.mean(pb)
                loss = loss + self.center_rewards_coefficient * rewards.square().mean()
        if count:
            loss = (units * loss + count * rated_part) / (units + count)
        return loss

    def pair_comparisons(self, pairs: int, batch: PairBatch, keys: list[str] | None,
                         device: torch.device | None = None) -> Comparisons | None:
        """A pair (chosen b, rejected pairs + b): a win of chosen, a soft label, a tie, or annotator votes; a
        strength moves the margin or the pair's weight, as the strength loss says."""
        if not pairs:
            return None
        ones = torch.ones(pairs, device=device)
        soft = batch.get("soft_label", ones)
        outcomes = torch.stack([soft, torch.zeros_like(soft), 1 - soft], dim=-1)
        if "tie" in batch:
            tie = batch["tie"].bool()[:, None]
            outcomes = torch.where(tie, torch.tensor([0.0, 1.0, 0.0], device=outcomes.device), outcomes)
        if "votes_chosen" in batch:
            votes = torch.stack([batch["votes_chosen"], batch["votes_tie"], batch["votes_rejected"]], dim=-1)
            outcomes = torch.where(votes[:, :1].isnan(), outcomes, votes)
        margin, weights = batch.get("margin"), ones
        if "strength" in batch:
            margin, weights = STRENGTH_LOSSES[self.strength_loss].apply(batch["strength"].nan_to_num(0.0), margin,
                                                                        weights, self.strength_margin)
        index = torch.arange(pairs, device=device)
        return Comparisons(index, index + pairs, outcomes, margin, weights, outcomes.sum(-1),
                           keys[:pairs] if keys else None)


def vote_comparisons(pairs: int, lists: list[int], batch: PairBatch, keys: list[str] | None) -> Comparisons | None:
    """The counted comparisons of every list labelled by annotator votes."""
    if "list_votes" not in batch:
        return None
    votes = batch["list_votes"]
    i, j = votes[:, 0].long() + 2 * pairs, votes[:, 1].long() + 2 * pairs
    counts = votes[:, 2:]
    owner = torch.bucketize(votes[:, 0].long().cpu(), torch.tensor(lists).cumsum(0), right=True)
    return Comparisons(i, j, counts, None, torch.ones(len(i)), counts.sum(-1),
                       None if not keys else [f"{keys[pairs + int(o)]}#{int(a)}>{int(b)}"
                                              for o, a, b in zip(owner, votes[:, 0], votes[:, 1])])


def ranked_lists(pairs: int, lists: list[int], batch: PairBatch, keys: list[str] | None):
    """Every list labelled by a ranking, with where it was read."""
    for number, start, level in ranked_spans(pairs, lists, batch):
        yield RankedList(start, level, keys[pairs + number] if keys else None)


def ranked_spans(pairs: int, lists: list[int], batch: PairBatch):
    """(list number, its first score's index, its levels (K,)) of every list labelled by a ranking (not votes)."""
    start = 2 * pairs
    for number, size in enumerate(lists):
        level = batch["list_levels"][start - 2 * pairs : start - 2 * pairs + size]
        if bool((level >= 0).all()):
            yield number, start, level
        start += size


def ordered_rewards(head: RewardHead, params: torch.Tensor, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's mean rewards of (the better, the worse) response of every comparison with a winner that a
    pair or a ranked list makes, for the training accuracy."""
    pairs, lists, _ = split_scores(params, batch)
    rewards = head.mean(params)
    better, worse = [rewards[:pairs]], [rewards[pairs : 2 * pairs]]
    for _, start, level in ranked_spans(pairs, lists, batch):
        i, j = torch.triu_indices(len(level), len(level), 1, device=level.device)
        i, j = i[level[i] != level[j]], j[level[i] != level[j]]
        first_better = level[i] < level[j]
        better.append(rewards[start + torch.where(first_better, i, j)])
        worse.append(rewards[start + torch.where(first_better, j, i)])
    return torch.cat(better), torch.cat(worse)


def split_scores(params: torch.Tensor, batch: PairBatch) -> tuple[int, list[int], torch.Tensor]:
    """-> (number of pairs B, list sizes, rated params (R, K)) of params laid out as [chosen (B) | rejected (B) |
    list responses | rated (R)]."""
    rated = batch["scores"].shape[0] if "scores" in batch else 0
    lists = batch["list_sizes"].tolist() if "list_sizes" in batch else []
    pairs = (params.shape[0] - rated - sum(lists)) // 2
    return pairs, lists, params[params.shape[0] - rated :]


def concat(parts: list[Comparisons]) -> Comparisons | None:
    if not parts:
        return None
    device = parts[0].outcomes.device

    def cat(name):
        return torch.cat([getattr(p, name).to(device) for p in parts])

    margins = [p.margin for p in parts]
    margin = None if all(m is None for m in margins) else torch.cat(
        [torch.zeros(len(p.a), device=device) if m is None else m for p, m in zip(parts, margins)])
    keys = None if any(p.keys is None for p in parts) else [k for p in parts for k in p.keys]
    return Comparisons(cat("a"), cat("b"), cat("outcomes"), margin, cat("weights"), cat("units"), keys)
