"""Several raters' labels of one response on an ordered scale of levels, fitted by their likelihood.

A head built with ``levels`` (e.g. ``[safe, unsure, unsafe]``) and a ``direction`` (which end is better) predicts
the share of raters who would give each level. The scalar and Gaussian heads do it by a cumulative link on their
reward mu: with the levels ordered from worst (0) to best (L - 1) and learned, ordered cut-points
theta_0 < ... < theta_(L-2),

    P(level <= k) = F((theta_k - mu) / s),   P(level = k) = F((theta_k - mu) / s) - F((theta_(k-1) - mu) / s),

with F the logistic function and s = 1 for the scalar head (logit link), and F the standard normal CDF with s the
response's own sigma for the Gaussian head (probit link): a rater's judgement is a draw from N(mu, sigma^2) cut at
the thetas, so a polarising response (large sigma) and a consensus-middling one (small sigma, mu in the middle)
get different rating distributions. The categorical head puts its atoms on the levels directly (P(level = k) =
p_k). The cut-points are parameters of the head (theta_0 and softplus gaps, so they stay ordered) and are saved
with it.

Ratings arrive as rated responses whose ``scores`` are the count of raters per level, in the declared order
(``data/ratings.py``); a head's ``attributes`` are then its levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from discorm.data.ratings import level_name
from discorm.errors import ConfigError
from discorm.model.heads.base import Attribute, HeadOption

DIRECTIONS = ("first_best", "last_best")


def _parse_levels(key: str, value) -> list[str]:
    """`[safe, unsure, unsafe]`, `[1, 2, 3, 4, 5]` or "a,b,c" -> distinct level names; [] (no scale)."""
    if value in ([], (), None, ""):
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{key}={value!r} should be the ordered list of rating levels, e.g. [safe, unsure, unsafe] "
                          "or [1, 2, 3, 4, 5].")
    names = [level_name(v) for v in value]
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"{key}={list(value)!r}: give at least two distinct, non-empty levels.")
    return names


LEVELS = HeadOption("levels", [], "scalar, gaussian, categorical: the ordered levels of per-rater labels (e.g. "
                    "[safe, unsure, unsafe] or [1, 2, 3, 4, 5]); the head learns the share of raters per level. "
                    "Needs direction", parse=_parse_levels)
DIRECTION = HeadOption("direction", "", "levels: which end of the scale is better (a higher reward): first_best or "
                       "last_best", choices=("", *DIRECTIONS))
LEVEL_OPTIONS = (LEVELS, DIRECTION)


def scale_from(options: dict) -> tuple[Attribute, ...]:
    """The levels of a head built with these options, as its attributes (a count of raters each, >= 0); a scale
    without a direction (or a direction without a scale) is refused."""
    levels, direction = _parse_levels("levels", options.get("levels")), options.get("direction") or ""
    if levels and not direction:
        raise ConfigError(f"levels={levels} is a scale without a direction: say which end is better, direction: "
                          f"first_best ({levels[0]!r} is best) or direction: last_best ({levels[-1]!r} is best).")
    if direction and not levels:
        raise ConfigError(f"direction={direction} orders rating levels, and no levels are declared; add levels: "
                          "[worst, ..., best] (or the reverse), or remove direction.")
    return tuple(Attribute(name, 0.0, None) for name in levels)


def _log_diff_sigmoid(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(u) - sigmoid(l)) for u > l: sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - e^(l - u))."""
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1((lower - upper).clamp_max(-1e-12)))


def _log_diff_ndtr(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(u) - Phi(l)) for u > l, computed in the tail where both are small (Phi(u) - Phi(l) = Phi(-l) -
    Phi(-u) when l > 0), so it stays finite far from the middle."""
    flip = lower > 0
    upper, lower = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log(-torch.expm1((log_lower - log_upper).clamp_max(-1e-12)))


def cumulative_log_probs(mu: torch.Tensor, scale: torch.Tensor | float, cuts: torch.Tensor,
                         link: str = "logit") -> torch.Tensor:
    """log P(level = k), (N, L), levels worst first: mu (N,), scale s (N,) or a number, cuts (L - 1,) increasing;
    P(level <= k) = F((theta_k - mu) / s), F logistic (``logit``) or the standard normal CDF (``probit``)."""
    inf = torch.full_like(mu, math.inf)[:, None]
    z = (cuts.to(mu)[None, :] - mu[:, None]) / (scale[:, None] if isinstance(scale, torch.Tensor) else scale)
    upper, lower = torch.cat([z, inf], -1), torch.cat([-inf, z], -1)  # (N, L): the bounds of each level
    return _log_diff_ndtr(upper, lower) if link == "probit" else _log_diff_sigmoid(upper, lower)


class CutPoints(nn.Module):
    """L - 1 ordered cut-points theta_k = theta_0 + sum_(j <= k) softplus(g_j): any values of the parameters keep
    them increasing. They start evenly spaced on [-spread, spread] (one apart for two cuts)."""

    def __init__(self, levels: int, spread: float = 1.0):
        super().__init__()
        count = levels - 1
        gap = 2 * spread / (count - 1) if count > 1 else 1.0
        self.first = nn.Parameter(torch.tensor(-spread if count > 1 else 0.0))
        self.gaps = nn.Parameter(torch.full((count - 1,), math.log(math.expm1(gap))))

    def forward(self) -> torch.Tensor:  # (L - 1,)
        return torch.cat([self.first[None], self.first + F.softplus(self.gaps).cumsum(0)])


def rating_nll(log_probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per response, the negative log-likelihood of its raters' labels divided by their number (the NLL per
    rating): -sum_k n_k log P(level = k) / sum_k n_k, (N,); log_probs and counts (N, L)."""
    counts = counts.to(log_probs)
    nll = -torch.where(counts > 0, counts * log_probs, torch.zeros_like(log_probs)).sum(-1)
    return nll / counts.sum(-1).clamp_min(1e-12)


class OrdinalLevels:
    """What the scalar, Gaussian and categorical heads share to learn several raters' labels (mixed in before
    ``RewardHead``): the levels and direction options, the cut-points, the rated likelihood and the summary. A
    head sets ``link`` and ``link_scale`` (the cumulative-link heads) or overrides ``worst_first_log_probs``."""

    link = "logit"
    direction = ""

    @classmethod
    def attributes_from(cls, options: dict) -> tuple[Attribute, ...]:
        return scale_from(options)

    def init_levels(self, levels: list[str] | None = None, direction: str = "", cuts: bool = True) -> None:
        self.attributes = scale_from({"levels": levels, "direction": direction})
        self.levels, self.direction = [a.name for a in self.attributes], direction
        if self.levels and cuts:
            self.cuts = CutPoints(len(self.levels))

    def link_scale(self, params: torch.Tensor) -> torch.Tensor | float:
        return 1.0

    def worst_first_log_probs(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N, L), worst level first
        return cumulative_log_probs(self.mean(params), self.link_scale(params), self.cuts(), self.link)

    def level_log_probs(self, params: torch.Tensor) -> torch.Tensor:
        """log P(a rater gives level k), (N, L), levels in the declared order."""
        if not self.levels:
            raise NotImplementedError(f"the {self.kind} head has no rating levels (levels: [...])")
        log_probs = self.worst_first_log_probs(params.float())
        return log_probs.flip(-1) if self.direction == "first_best" else log_probs

    def attribute_means(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N, L): the predicted shares
        return self.level_log_probs(params).exp()

    def rated_loss(self, params: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The NLL per rating of each response's raters (``rating_nll``), (N,): scores (N, L) the count of
        raters per level; a level a row leaves out (mask False) counts 0."""
        return rating_nll(self.level_log_probs(params), scores.masked_fill(~mask, 0))

    def summary(self, params: torch.Tensor) -> dict:
        """With levels: the predicted share of raters per level and the disagreement, 1 - the largest share."""
        out = super().summary(params)
        if self.levels:
            out.update(level_summary(self.levels, self.level_log_probs(params).exp()))
        return out


def level_summary(levels: list[str], probs: torch.Tensor) -> dict:
    """The scoring fields of a predicted rating distribution probs (N, L): ``levels`` {name: share} and
    ``disagreement`` 1 - max share (0: every rater agrees)."""
    return {"levels": dict(zip(levels, probs.unbind(-1))), "disagreement": 1 - probs.max(-1).values}
