"""The training objective in one place: the head's pairwise negative log-likelihood (margins, soft labels),
the head's regulariser and reward centring, with their coefficients taken from the *current* training config
(never from a run being continued)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from discorm.config import FinetuningArguments
from discorm.model.heads import RewardHead


@dataclass
class PairwiseLoss:
    """loss = mean_b NLL(pc_b, pr_b; margin_b, y_b) + head regulariser + c * mean((r_c + r_r)^2).

    Scalar head, hard labels: NLL = -logsigmoid(r_c - r_r - margin)."""

    head: RewardHead
    loss_options: dict = field(default_factory=dict)  # the head's unsaved options (variance_penalty, ...)
    center_rewards_coefficient: float | None = None

    @classmethod
    def from_args(cls, head: RewardHead, args: FinetuningArguments) -> PairwiseLoss:
        options = type(head).resolve_options(args.head_options)
        loss_options = {o.name: options[o.name] for o in head.options if not o.saved}
        return cls(head, loss_options, args.center_rewards_coefficient)

    def __call__(self, pc: torch.Tensor, pr: torch.Tensor, margin: torch.Tensor | None = None,
                 soft_label: torch.Tensor | None = None) -> torch.Tensor:
        """pc, pr: (B, K) head params of chosen and rejected -> scalar loss."""
        loss = self.head.pair_loss(pc, pr, margin, soft_label).mean()
        loss = loss + self.head.regulariser(pc, pr, **self.loss_options)
        if self.center_rewards_coefficient:
            rewards = self.head.mean(pc) + self.head.mean(pr)
            loss = loss + self.center_rewards_coefficient * rewards.square().mean()
        return loss
