"""The Gaussian reward head: a mean and a variance per sequence."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from discorm.model.heads.base import ExportSpec, HeadOption, RewardHead, register_head, tie_options
from discorm.model.heads.ordinal import LEVEL_OPTIONS, OrdinalLevels

logger = logging.getLogger(__name__)

# Var init so that Phi((mu_c - mu_r) / sqrt(2 var)) ~= sigmoid(mu_c - mu_r): Phi(x / 1.702) ~= sigmoid(x).
_SCALAR_MATCHING_VARIANCE = 1.702**2 / 2
VARIANCE_EPS = 1e-4


@register_head
class GaussianHead(OrdinalLevels, RewardHead):
    """Reward ~ N(mu, var): mu from the value layer, var = softplus(Linear(h)) + eps.

    With independent rewards, P(c > r) = Phi(z), z = (mu_c - mu_r - margin) / sqrt(var_c + var_r); the loss
    -log Phi(z) uses ``torch.special.log_ndtr`` so it stays finite for |z| of 40 and more. With ``levels``, raters'
    labels by the ordinal probit link with the response's own sigma (``ordinal.py``).
    """

    kind = "gaussian"
    options = (
        HeadOption("variance_penalty", 0.0, "gaussian: adds variance_penalty * mean(var_chosen + var_rejected)",
                   low=0.0, saved=False),
        *tie_options(("thurstone",)),
        *LEVEL_OPTIONS,
    )
    tie_models = ("thurstone",)
    distributional = True
    export_labels = (1, 2)
    link = "probit"

    def __init__(self, hidden_size: int, levels=(), direction: str = "", **ties):
        super().__init__()
        self.init_ties(**ties)
        self.init_levels(levels, direction)
        self.value = nn.Linear(hidden_size, 1, bias=False)
        self.variance = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.value.weight, std=1 / math.sqrt(hidden_size + 1))
        self.reset_variance()

    def reset_variance(self) -> None:
        """Start near the variance that makes P(c > r) match the scalar model's (the bias), with weights small
        but not zero: with zero weights no gradient reaches the backbone through the variance, and the backbone
        learns to drop the features that predict noise (benchmarks/bench_calibration.py shows it)."""
        nn.init.normal_(self.variance.weight, std=0.5 / math.sqrt(self.variance.in_features))
        target = _SCALAR_MATCHING_VARIANCE - VARIANCE_EPS
        nn.init.constant_(self.variance.bias, math.log(math.expm1(target)))

    def forward(self, hidden):
        var = F.softplus(self.variance(hidden)) + VARIANCE_EPS
        return torch.cat([self.value(hidden), var], dim=-1)  # (N, 2): mu, var

    def mean(self, params):
        return params[:, 0]

    def link_scale(self, params):  # the probit link's scale: the response's own sigma
        return self.std(params)

    def std(self, params):
        return params[:, 1].sqrt()

    def quantile(self, params, alpha):
        z_alpha = math.sqrt(2) * torch.erfinv(torch.tensor(2 * alpha - 1, dtype=params.dtype))
        return params[:, 0] + z_alpha.to(params.device) * params[:, 1].sqrt()

    def log_prob_pair(self, pc, pr, margin=None):
        diff = pc[:, 0] - pr[:, 0]
        if margin is not None:
            diff = diff - margin
        z = diff / (pc[:, 1] + pr[:, 1]).sqrt()
        return torch.special.log_ndtr(z), torch.special.log_ndtr(-z)

    def log_prob_outcomes(self, pa, pb, margin=None):
        """Thurstone with a tie threshold eta (Glenn-David): X_a - X_b ~ N(d, s^2) is a win above eta, a loss below
        -eta, a tie between."""
        diff = pa[:, 0] - pb[:, 0] - (0 if margin is None else margin)
        spread = (pa[:, 1] + pb[:, 1]).sqrt()
        value = self.tie_value()
        win = torch.special.log_ndtr((diff - value) / spread)
        loss = torch.special.log_ndtr((-diff - value) / spread)
        upper = torch.special.log_ndtr((value - diff) / spread)  # log P(not a win)
        tie = upper + torch.log1p(-(loss - upper).exp().clamp_max(1 - 1e-7))
        return torch.stack([win, tie, loss], dim=-1)

    def regulariser(self, pc, pr, variance_penalty: float = 0.0, **_):
        if not variance_penalty:
            return pc.new_zeros(())
        return variance_penalty * (pc[:, 1] + pr[:, 1]).mean()

    def load_head_state(self, tensors, stored_kind, where):
        """A scalar head seeds the mean; the variance starts fresh."""
        if stored_kind != "scalar":
            return super().load_head_state(tensors, stored_kind, where)
        self.value.load_state_dict({"weight": tensors["value.weight"]})
        self.reset_variance()
        logger.warning("%s holds a scalar head: its value layer seeds the Gaussian mean; the variance is new.", where)

    def export_spec(self, num_labels):
        """num_labels=1: the mean; 2: also the variance logit (var = softplus(logit + bias) + eps)."""
        weight = self.value.weight.detach().float()
        config = {}
        if num_labels == 2:
            weight = torch.cat([weight, self.variance.weight.detach().float()])
            config["discorm_variance_bias"] = float(self.variance.bias.detach())
        variance = {f"variance.{k}": v.detach().contiguous().float() for k, v in self.variance.state_dict().items()}
        return ExportSpec(weight, config, {"discorm_head.safetensors": variance},
                          labels=("reward", "variance_logit")[:num_labels])
