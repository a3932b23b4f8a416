"""The training objective in one place: the head's pairwise negative log-likelihood (margins, soft labels),
the head's regulariser and reward centring, and for rated responses the head's rating likelihood, with their
coefficients taken from the *current* training config (never from a run being continued)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from discorm.config import FinetuningArguments
from discorm.model.heads import RewardHead, head_class


@dataclass
class PairwiseLoss:
    """pairs = mean_b NLL(pc_b, pr_b; margin_b, y_b) + head regulariser + c * mean((r_c + r_r)^2).

    Scalar head, hard labels: NLL = -logsigmoid(r_c - r_r - margin). A batch of B pairs and R rated responses
    counts every example once: loss = (B * pairs + w * R * mean_r rated_loss_r) / (B + R), w =
    rated_loss_weight; with no rated responses it is `pairs`, with no pairs the mean rated loss (times w)."""

    head: RewardHead
    loss_options: dict = field(default_factory=dict)  # the head's unsaved options (variance_penalty, ...)
    center_rewards_coefficient: float | None = None
    rated_loss_weight: float = 1.0

    @classmethod
    def from_args(cls, head: RewardHead, args: FinetuningArguments) -> PairwiseLoss:
        # the config's options are this head's only when it names this head (`discorm eval` of a run need not)
        options = head_class(head.kind).resolve_options(args.head_options if args.head == head.kind else {})
        loss_options = {o.name: options[o.name] for o in head.options if not o.saved}
        return cls(head, loss_options, args.center_rewards_coefficient, args.rated_loss_weight)

    def __call__(self, pc: torch.Tensor, pr: torch.Tensor, margin: torch.Tensor | None = None,
                 soft_label: torch.Tensor | None = None, rated: torch.Tensor | None = None,
                 scores: torch.Tensor | None = None, score_mask: torch.Tensor | None = None,
                 keys: list[str] | None = None) -> torch.Tensor:
        """pc, pr: (B, K) head params of chosen and rejected; rated (R, K) with scores and score_mask (R, A);
        keys: where each pair was read (the first B entries), for the head's per-pair weights (an ensemble's
        bootstrap) -> scalar loss."""
        count = 0 if rated is None else rated.shape[0]
        if count:
            rated_part = self.rated_loss_weight * self.head.rated_loss(rated, scores, score_mask).mean()
            if not pc.shape[0]:
                return rated_part
        weights = self.head.pair_weights(keys[: pc.shape[0]] if keys else None)
        loss = self.head.pair_loss(pc, pr, margin, soft_label, weights).mean()
        loss = loss + self.head.regulariser(pc, pr, **self.loss_options)
        if self.center_rewards_coefficient:
            rewards = self.head.mean(pc) + self.head.mean(pr)
            loss = loss + self.center_rewards_coefficient * rewards.square().mean()
        if count:
            loss = (pc.shape[0] * loss + count * rated_part) / (pc.shape[0] + count)
        return loss
