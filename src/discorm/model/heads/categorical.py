"""The categorical reward head: a distribution over fixed reward atoms."""

from __future__ import annotations

import math

import torch
from torch import nn

from discorm.errors import ConfigError
from discorm.model.heads.base import HeadOption, RewardHead, register_head, tie_options
from discorm.model.heads.ordinal import LEVEL_OPTIONS, OrdinalLevels


@register_head
class CategoricalHead(OrdinalLevels, RewardHead):
    """Reward is one of K fixed atoms a_1 < ... < a_K with probabilities softmax(Linear(h)).

    P(c > r + m) = sum_ij p_c(i) p_r(j) [1(a_i - a_j > m) + 1/2 1(a_i - a_j = m)]: a difference equal to the
    margin m counts half (with m = 0, ties on an atom). Two-peaked distributions (annotators who disagree) are
    representable, unlike with a Gaussian. With ``levels``, the atoms are the levels (worst lowest, num_atoms = the
    number of levels) and P(a rater gives level k) is its atom's probability (``ordinal.py``).
    """

    kind = "categorical"
    options = (
        HeadOption("num_atoms", 11, "categorical: number of reward atoms", low=2),
        HeadOption("atom_range", 5.0, "categorical: atoms are evenly spaced on [-atom_range, atom_range]",
                   low=1e-6),
        HeadOption("entropy_coef", 0.0, "categorical: subtracts entropy_coef * entropy of the batch-mean "
                   "distribution", saved=False),
        *tie_options(("atoms",), learnable=False),
        *LEVEL_OPTIONS,
    )
    distributional = True
    tie_models = ("atoms",)

    def __init__(self, hidden_size: int, num_atoms: int = 11, atom_range: float = 5.0, levels=(), direction: str = "",
                 **ties):
        super().__init__()
        self.init_levels(levels, direction, cuts=False)
        num_atoms = len(self.levels) or num_atoms
        if ties.get("tie_model", "none") != "none" and ties.get("learn_tie_param", False):
            raise ConfigError("tie_model: atoms has a fixed threshold tie_param (a tie: atoms within it), which has no "
                              "gradient to learn from; set learn_tie_param: false.")
        self.init_ties(**ties)
        self.num_atoms, self.atom_range = num_atoms, atom_range
        self.logits = nn.Linear(hidden_size, num_atoms)
        nn.init.normal_(self.logits.weight, std=1 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.logits.bias)
        self.register_buffer("atoms", torch.linspace(-atom_range, atom_range, num_atoms), persistent=False)

    def forward(self, hidden):
        return self.logits(hidden)  # (N, K) logits

    def probs(self, params):
        return params.float().softmax(-1)

    def worst_first_log_probs(self, params):
        return params.float().log_softmax(-1)

    def mean(self, params):
        return self.probs(params) @ self.atoms.to(params.device)

    def std(self, params):
        p, atoms = self.probs(params), self.atoms.to(params.device)
        mean = p @ atoms
        return (p @ atoms.square() - mean.square()).clamp_min(0).sqrt()

    def entropic(self, params, k):
        """Exact over the atoms: -(1 / k) log sum_i p_i exp(-k a_i), as one logsumexp (no overflow for a large k),
        in float64 (dividing by a small k would magnify float32's rounding)."""
        if k == 0:
            return self.mean(params)
        log_p = params.double().log_softmax(-1)
        return (-(log_p - k * self.atoms.to(params.device).double()).logsumexp(-1) / k).float()

    def quantile(self, params, alpha):
        """The alpha-quantile of the continuous reading of the atoms: atom i's mass spread evenly over its cell
        [a_i - d/2, a_i + d/2] (d the atom spacing), so the CDF is piecewise linear and the quantile moves
        smoothly with alpha and with the probabilities instead of jumping from atom to atom. This distribution has
        the same mean as the atoms. With the CDF before cell i F_(i-1) < alpha <= F_i:
        q = a_i - d/2 + d (alpha - F_(i-1)) / p_i."""
        p = self.probs(params)  # (N, K)
        cdf = p.cumsum(-1)
        index = (cdf < alpha).sum(-1, keepdim=True).clamp_max(self.num_atoms - 1)  # (N, 1): the cell reaching alpha
        below, mass = (cdf - p).gather(-1, index), p.gather(-1, index)
        fraction = ((alpha - below) / mass.clamp_min(1e-30)).clamp(0, 1)
        width = 2 * self.atom_range / (self.num_atoms - 1)
        left = self.atoms.to(params.device)[index] - width / 2
        return (left + fraction * width).squeeze(-1)

    def log_prob_pair(self, pc, pr, margin=None):
        p_c, p_r = self.probs(pc), self.probs(pr)
        if margin is None:
            below_r = p_r.cumsum(-1) - p_r  # P(r < a_i)
            prob = (p_c * (below_r + 0.5 * p_r)).sum(-1)
        else:
            atoms = self.atoms.to(pc.device)
            diff = atoms[:, None] - atoms[None, :]  # (K, K): a_i - a_j
            gap = diff - margin.float()[:, None, None]  # (B, K, K)
            tie = gap.abs() < 1e-6 * self.atom_range
            win = (gap > 0).float() * ~tie + 0.5 * tie.float()
            prob = torch.einsum("bi,bj,bij->b", p_c, p_r, win)
        prob = prob.clamp(1e-30, 1 - 1e-7)
        return prob.log(), torch.log1p(-prob)

    def log_prob_outcomes(self, pa, pb, margin=None):
        """Over the atom pairs (a_i, a_j) drawn independently: a tie when |a_i - a_j - margin| <= eta."""
        atoms = self.atoms.to(pa.device)
        gap = (atoms[:, None] - atoms[None, :]).expand(pa.shape[0], -1, -1)  # (M, K, K)
        if margin is not None:
            gap = gap - margin.float()[:, None, None]
        eta = float(self.tie_value()) + 1e-6 * self.atom_range
        outcome = torch.stack([gap > eta, gap.abs() <= eta, gap < -eta], dim=1).float()  # (M, 3, K, K)
        probs = torch.einsum("mi,mj,moij->mo", self.probs(pa), self.probs(pb), outcome)
        return probs.clamp_min(1e-30).log()

    def regulariser(self, pc, pr, entropy_coef: float = 0.0, **_):
        if not entropy_coef:
            return pc.new_zeros(())
        mean_p = torch.cat([self.probs(pc), self.probs(pr)]).mean(0)
        entropy = -(mean_p * mean_p.clamp_min(1e-30).log()).sum()
        return -entropy_coef * entropy
