"""Reward heads: each maps pooled hidden states to the parameters of a reward distribution and defines the
pairwise probability P(chosen > rejected) and its loss.

Shapes: ``hidden`` (N, H) float32 -> ``params`` (N, K). A pair of param tensors ``pc``, ``pr`` (B, K) gives
per-pair probabilities and losses (B,). The trainer only ever calls the methods of ``RewardHead``, so switching
heads is one config key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from discorm.errors import ModelError

# Var init so that Phi((mu_c - mu_r) / sqrt(2 var)) ~= sigmoid(mu_c - mu_r): Phi(x / 1.702) ~= sigmoid(x).
_SCALAR_MATCHING_VARIANCE = 1.702**2 / 2
_VARIANCE_EPS = 1e-4


def soft_label_loss(log_p: torch.Tensor, log_not_p: torch.Tensor, soft_label: torch.Tensor | None) -> torch.Tensor:
    """-[y log P + (1 - y) log(1 - P)] per pair; with no soft label, y = 1 (chosen preferred): -log P."""
    if soft_label is None:
        return -log_p
    return -(soft_label * log_p + (1 - soft_label) * log_not_p)


class RewardHead(nn.Module):
    """Base class; subclasses define ``forward`` (hidden -> params) and the distribution's functionals."""

    kind: str = ""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, K)
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,)
        raise NotImplementedError

    def std(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,)
        return torch.zeros_like(params[:, 0])

    def quantile(self, params: torch.Tensor, alpha: float) -> torch.Tensor:
        return self.mean(params)

    def reward(self, params: torch.Tensor, mode: str = "mean", alpha: float = 0.1, k: float = 1.0) -> torch.Tensor:
        """The scalar handed to RL: mean, the alpha-quantile, or mean - k * std (risk-averse)."""
        if mode == "lower_quantile":
            return self.quantile(params, alpha)
        if mode == "mean_minus_std":
            return self.mean(params) - k * self.std(params)
        return self.mean(params)

    def log_prob_pair(self, pc: torch.Tensor, pr: torch.Tensor, margin: torch.Tensor | None = None):
        """(log P(c > r), log P(r > c)), each (B,)."""
        raise NotImplementedError

    def prob_pair(self, pc: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
        return self.log_prob_pair(pc, pr)[0].exp()

    def pair_loss(self, pc, pr, margin=None, soft_label=None) -> torch.Tensor:
        """Per-pair negative log-likelihood of the observed preference, (B,)."""
        log_p, log_not_p = self.log_prob_pair(pc, pr, margin)
        return soft_label_loss(log_p, log_not_p, soft_label)

    def regulariser(self, pc: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
        return pc.new_zeros(())

    def extra_config(self) -> dict:
        return {}


class ScalarHead(RewardHead):
    """One number per sequence: the Bradley-Terry reward model. P(c > r) = sigmoid(r_c - r_r - margin)."""

    kind = "scalar"

    def __init__(self, hidden_size: int, bias: bool = False):
        super().__init__()
        # No bias by default: the pairwise loss cannot see a constant offset. Imported heads may carry one.
        self.value = nn.Linear(hidden_size, 1, bias=bias)
        nn.init.normal_(self.value.weight, std=1 / math.sqrt(hidden_size + 1))
        if bias:
            nn.init.zeros_(self.value.bias)

    def forward(self, hidden):
        return self.value(hidden)

    def extra_config(self):
        return {"bias": self.value.bias is not None}

    def mean(self, params):
        return params[:, 0]

    def log_prob_pair(self, pc, pr, margin=None):
        diff = pc[:, 0] - pr[:, 0]
        if margin is not None:
            diff = diff - margin
        return F.logsigmoid(diff), F.logsigmoid(-diff)


class GaussianHead(RewardHead):
    """Reward ~ N(mu, var): mu from the value layer, var = softplus(Linear(h)) + eps.

    With independent rewards, P(c > r) = Phi(z), z = (mu_c - mu_r - margin) / sqrt(var_c + var_r); the loss
    -log Phi(z) uses ``torch.special.log_ndtr`` so it stays finite for |z| of 40 and more.
    """

    kind = "gaussian"

    def __init__(self, hidden_size: int, variance_penalty: float = 0.0):
        super().__init__()
        self.value = nn.Linear(hidden_size, 1, bias=False)
        self.variance = nn.Linear(hidden_size, 1)
        self.variance_penalty = variance_penalty
        nn.init.normal_(self.value.weight, std=1 / math.sqrt(hidden_size + 1))
        self.reset_variance()

    def reset_variance(self) -> None:
        """Start near the variance that makes P(c > r) match the scalar model's (the bias), with weights small
        but not zero: with zero weights no gradient reaches the backbone through the variance, and the backbone
        learns to drop the features that predict noise (benchmarks/bench_calibration.py shows it)."""
        nn.init.normal_(self.variance.weight, std=0.5 / math.sqrt(self.variance.in_features))
        target = _SCALAR_MATCHING_VARIANCE - _VARIANCE_EPS
        nn.init.constant_(self.variance.bias, math.log(math.expm1(target)))

    def forward(self, hidden):
        var = F.softplus(self.variance(hidden)) + _VARIANCE_EPS
        return torch.cat([self.value(hidden), var], dim=-1)  # (N, 2): mu, var

    def mean(self, params):
        return params[:, 0]

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

    def regulariser(self, pc, pr):
        if not self.variance_penalty:
            return pc.new_zeros(())
        return self.variance_penalty * (pc[:, 1] + pr[:, 1]).mean()

    def extra_config(self):
        return {"variance_penalty": self.variance_penalty}


class CategoricalHead(RewardHead):
    """Reward is one of K fixed atoms a_1 < ... < a_K with probabilities softmax(Linear(h)).

    P(c > r) = sum_ij p_c(i) p_r(j) [1(a_i > a_j) + 1/2 1(i = j)]: ties on an atom count half. Two-peaked
    distributions (annotators who disagree) are representable, unlike with a Gaussian.
    """

    kind = "categorical"

    def __init__(self, hidden_size: int, num_atoms: int = 11, atom_range: float = 5.0, entropy_coef: float = 0.0):
        super().__init__()
        self.logits = nn.Linear(hidden_size, num_atoms)
        nn.init.normal_(self.logits.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.logits.bias)
        self.atom_range = atom_range
        self.entropy_coef = entropy_coef
        self.register_buffer("atoms", torch.linspace(-atom_range, atom_range, num_atoms), persistent=False)

    def forward(self, hidden):
        return self.logits(hidden)  # (N, K) logits

    def probs(self, params):
        return params.float().softmax(-1)

    def mean(self, params):
        return self.probs(params) @ self.atoms.to(params.device)

    def std(self, params):
        p, atoms = self.probs(params), self.atoms.to(params.device)
        mean = p @ atoms
        return (p @ atoms.square() - mean.square()).clamp_min(0).sqrt()

    def quantile(self, params, alpha):
        cdf = self.probs(params).cumsum(-1)
        index = (cdf < alpha).sum(-1).clamp_max(cdf.shape[-1] - 1)
        return self.atoms.to(params.device)[index]

    def log_prob_pair(self, pc, pr, margin=None):
        p_c, p_r = self.probs(pc), self.probs(pr)
        cdf_r = p_r.cumsum(-1)
        below_r = cdf_r - p_r  # P(r < a_i)
        prob = (p_c * (below_r + 0.5 * p_r)).sum(-1).clamp(1e-30, 1 - 1e-7)
        return prob.log(), torch.log1p(-prob)

    def regulariser(self, pc, pr):
        if not self.entropy_coef:
            return pc.new_zeros(())
        mean_p = torch.cat([self.probs(pc), self.probs(pr)]).mean(0)
        entropy = -(mean_p * mean_p.clamp_min(1e-30).log()).sum()
        return -self.entropy_coef * entropy

    def extra_config(self):
        return {"num_atoms": self.logits.out_features, "atom_range": self.atom_range, "entropy_coef": self.entropy_coef}


def build_head(kind: str, hidden_size: int, **options) -> RewardHead:
    """A head by name with its options (``num_atoms``, ``atom_range``, ``variance_penalty``, ``entropy_coef``)."""
    if kind == "scalar":
        return ScalarHead(hidden_size, bias=options.get("bias", False))
    if kind == "gaussian":
        return GaussianHead(hidden_size, variance_penalty=options.get("variance_penalty", 0.0))
    if kind == "categorical":
        return CategoricalHead(
            hidden_size,
            num_atoms=options.get("num_atoms", 11),
            atom_range=options.get("atom_range", 5.0),
            entropy_coef=options.get("entropy_coef", 0.0),
        )
    raise ModelError(f"unknown head {kind!r}; allowed: scalar, gaussian, categorical.")
