"""The Bradley-Terry reward head: one number per sequence."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from discorm.model.heads.base import ExportSpec, HeadOption, RewardHead, register_head, tie_options
from discorm.model.heads.ordinal import LEVEL_OPTIONS, OrdinalLevels

logger = logging.getLogger(__name__)


@register_head
class ScalarHead(OrdinalLevels, RewardHead):
    """r = w . h. P(c > r) = sigmoid((r_c - r_r - margin) / T), with T = 1 in training and a temperature fitted
    on held-out pairs for calibration. With ``levels``, raters' labels by the ordinal logit link (``ordinal.py``)."""

    kind = "scalar"
    options = (
        HeadOption("bias", False, "scalar: give the value layer a bias (pairwise losses cannot see it; imported "
                   "heads may carry one)"),
        *tie_options(("rao_kupper", "davidson")),
        *LEVEL_OPTIONS,
    )
    export_labels = (1,)
    supports_temperature = True
    ranking_losses = ("plackett_luce", "all_pairs")
    tie_models = ("rao_kupper", "davidson")

    def __init__(self, hidden_size: int, bias: bool = False, levels=(), direction: str = "", **ties):
        super().__init__()
        self.init_ties(**ties)
        self.init_levels(levels, direction)
        self.bias = bias
        self.value = nn.Linear(hidden_size, 1, bias=bias)
        nn.init.normal_(self.value.weight, std=1 / math.sqrt(hidden_size + 1))
        if bias:
            nn.init.zeros_(self.value.bias)

    def forward(self, hidden):
        return self.value(hidden)  # (N, 1)

    def mean(self, params):
        return params[:, 0]

    def log_prob_pair(self, pc, pr, margin=None):
        diff = pc[:, 0] - pr[:, 0]
        if margin is not None:
            diff = diff - margin
        return F.logsigmoid(diff), F.logsigmoid(-diff)

    def prob_pair(self, pc, pr, temperature=1.0):
        return torch.sigmoid((pc[:, 0] - pr[:, 0]) / temperature)

    def log_prob_outcomes(self, pa, pb, margin=None):
        """Rao-Kupper: a win needs d > eta, P(tie) = sigmoid(eta - d) - sigmoid(-eta - d). Davidson:
        (e^(d/2), nu, e^(-d/2)) normalised."""
        diff = pa[:, 0] - pb[:, 0] - (0 if margin is None else margin)
        value = self.tie_value()
        if self.tie_model == "davidson":
            logits = torch.stack([diff / 2, value.log().expand_as(diff), -diff / 2], dim=-1)
            return logits.log_softmax(-1)
        win, loss = F.logsigmoid(diff - value), F.logsigmoid(-diff - value)
        upper = F.logsigmoid(value - diff)  # log P(a does not win) = log(1 - sigmoid(d - eta))
        tie = upper + torch.log1p(-(loss - upper).exp().clamp_max(1 - 1e-7))
        return torch.stack([win, tie, loss], dim=-1)

    def plackett_luce(self, params, levels, weights=None):
        rewards = params[:, 0]
        at_or_below = levels[None, :] >= levels[:, None]  # [i, j]: j is ranked at i's level or below
        denominators = torch.logsumexp(rewards[None, :].masked_fill(~at_or_below, -math.inf), dim=-1)
        nll = (denominators - rewards).sum()
        return nll if weights is None else nll * weights.to(nll).reshape(())

    def export_spec(self, num_labels):
        """The value layer is the score layer; a bias (imported heads) goes to config.discorm_reward_bias and not
        into the logits: a constant no pairwise comparison sees."""
        config = {}
        if self.bias:
            config["discorm_reward_bias"] = float(self.value.bias.detach())
            logger.warning("the value head has a bias (%.4f); it is kept in config.discorm_reward_bias and not "
                           "added to the exported logits.", config["discorm_reward_bias"])
        return ExportSpec(self.value.weight.detach().float(), config, offset=config.get("discorm_reward_bias", 0.0))
