"""Acquisition scores: how much labelling a comparison (a, b) would teach the model, from one scoring pass.

A pool item is a pair (a, b), or a list of K responses (scored as the mean over its K (K - 1) / 2 pairs, so lists
of different sizes compare on one scale). The label is y = [a > b]; p_theta = P(a > b | theta) is the head's
likelihood under parameters theta. The posterior over theta is read from the head:

- ``LaplaceHead``: the last layer's Gaussian posterior. The mean reward is linear in it, so the reward difference
  shifts by eps ~ N(0, sigma_d^2), sigma_d^2 = z^T Sigma z, z = phi_a - phi_b (Sigma the posterior covariance, phi
  the pooled features): the two rewards' epistemic errors are correlated, and near-identical responses have
  sigma_d ~ 0 even when each reward alone is uncertain. p_theta = the member's P(a > b + margin) with margin =
  -eps; E over eps by Gauss-Hermite quadrature (``QUADRATURE_NODES`` nodes, exact up to ~1e-6 for
  sigma_d below ~10 reward units).
- ``EnsembleHead``: theta is one of the K members, each with weight 1 / K.
- any other head: one theta (no epistemic uncertainty): BALD and sigma_d are 0 and refused by ``check_strategy``.

From draws ``probs`` (N, S) with weights ``weights`` (S,) (summing to 1):

- ``entropy``: H[E_theta p_theta], the total uncertainty of the predictive P(a > b); H(p) = -p ln p - (1-p) ln(1-p).
- ``bald``: the mutual information between y and theta, H[E_theta p_theta] - E_theta H[p_theta] (nats): what the
  model does not know, without the part that raters themselves cannot decide (p_theta ~ 0.5 for every theta).
- ``epistemic_std``: sigma_d, the epistemic standard deviation of the reward difference r_a - r_b.
- ``random``: a uniform draw per item from the seed.
- ``diverse_bald``: BALD, chosen greedily with a diversity discount (``diverse_greedy``): an item close (cosine of
  centred features) to one already chosen counts less, an exact duplicate nothing.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import torch

from discorm.errors import ModelError
from discorm.model.heads.uncertainty import EnsembleHead, LaplaceHead

EPISTEMIC = ("bald", "epistemic_std", "diverse_bald")  # strategies that need a posterior over the head
STRATEGIES = ("random", "bald", "entropy", "epistemic_std", "diverse_bald")
QUADRATURE_NODES = 64


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -p ln p - (1 - p) ln(1 - p) in nats, elementwise; 0 at p = 0 and p = 1."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def check_strategy(strategy: str, head) -> None:
    """A strategy that exists and that ``head`` can compute; a ModelError naming the fix otherwise."""
    if strategy not in STRATEGIES:
        raise ModelError(f"strategy {strategy!r} is not an acquisition strategy; use one of {', '.join(STRATEGIES)}.")
    if strategy in EPISTEMIC and not isinstance(head, (LaplaceHead, EnsembleHead)):
        raise ModelError(f"strategy {strategy!r} reads the model's epistemic uncertainty, and this model has none "
                         f"(its {head.kind} head has no posterior). Train it with `uncertainty: laplace` (or "
                         "`uncertainty: ensemble`), or choose strategy entropy or random.")


def pair_draws(head, pa: torch.Tensor, pb: torch.Tensor, phi_a: torch.Tensor, phi_b: torch.Tensor,
               nodes: int = QUADRATURE_NODES, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """P(a > b | theta) for posterior draws theta: (probs (N, S), weights (S,)), float64.

    pa, pb: (N, P) head params of the two sides; phi_a, phi_b: (N, H) the pooled features the head read (Laplace
    only). Laplace: S = ``nodes`` Gauss-Hermite nodes x_s of N(0, 1), eps_s = sigma_d x_s; ensemble: S = K members;
    otherwise S = 1, the head's own P(a > b) (at the model's fitted ``temperature``)."""
    if isinstance(head, EnsembleHead):
        probs = [m.prob_pair(a, b) for m, a, b in zip(head.members, head.split(pa), head.split(pb))]
        return torch.stack(probs, -1).double(), torch.full((head.size,), 1 / head.size, dtype=torch.float64)
    if isinstance(head, LaplaceHead):
        x, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-x^2 / 2)
        x, w = torch.from_numpy(x), torch.from_numpy(w / w.sum())
        eps = difference_std(head, pa, pb, phi_a, phi_b)[:, None] * x[None, :]  # (N, S)
        n, s = eps.shape
        a, b = (t[:, :-1].double().repeat_interleave(s, 0) for t in (pa, pb))
        log_p = head.member.log_prob_pair(a, b, margin=-eps.reshape(-1))[0]
        return log_p.exp().reshape(n, s), w
    return head.prob_pair(pa, pb, temperature).double()[:, None], torch.ones(1, dtype=torch.float64)


def difference_std(head, pa: torch.Tensor, pb: torch.Tensor, phi_a: torch.Tensor, phi_b: torch.Tensor) -> torch.Tensor:
    """(N,) sigma_d, the epistemic standard deviation of r_a - r_b: sqrt(z^T Sigma z), z = phi_a - phi_b
    (Laplace); the population standard deviation of mu_a,k - mu_b,k over the members (ensemble); 0 otherwise."""
    if isinstance(head, LaplaceHead):
        z = (phi_a - phi_b).double()
        return torch.einsum("nh,hk,nk->n", z, head.covariance.to(z), z).clamp_min(0).sqrt()  # on the CPU, in float64
    if isinstance(head, EnsembleHead):
        return (head.member_means(pa) - head.member_means(pb)).double().std(-1, correction=0)
    return torch.zeros(pa.shape[0], dtype=torch.float64)


def entropy(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) H[E_theta p_theta] from draws (N, S) and weights (S,)."""
    return binary_entropy(probs @ weights)


def bald(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) H[E_theta p_theta] - E_theta H[p_theta], clamped at 0 (it is >= 0 up to rounding)."""
    return (entropy(probs, weights) - binary_entropy(probs) @ weights).clamp_min(0)


def spread(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) the posterior standard deviation of P(a > b): sqrt(E_theta (p_theta - E p)^2)."""
    mean = probs @ weights
    return ((probs - mean[:, None]).square() @ weights).sqrt()


def list_pairs(size: int) -> list[tuple[int, int]]:
    """The K (K - 1) / 2 pairs (i, j), i < j, of a list of ``size`` responses, in the order scores are reported."""
    return list(combinations(range(size), 2))


def pair_scores(strategy: str, head, pa, pb, phi_a, phi_b, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Per pair (N,): ``score`` (the strategy's; 0 for random, whose draw is per item), ``p`` (predictive
    P(a > b)) and ``p_std`` (its posterior spread). Arguments as ``pair_draws``."""
    probs, weights = pair_draws(head, pa, pb, phi_a, phi_b, temperature=temperature)
    scores = {"bald": bald, "diverse_bald": bald, "entropy": entropy}
    if strategy == "epistemic_std":
        score = difference_std(head, pa, pb, phi_a, phi_b)
    elif strategy in scores:
        score = scores[strategy](probs, weights)
    else:
        score = torch.zeros(pa.shape[0], dtype=torch.float64)
    return {"score": score, "p": probs @ weights, "p_std": spread(probs, weights)}


def tie_break_order(scores: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices by score, highest first; equal scores in an order drawn from ``seed`` (deterministic)."""
    shuffled = torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))
    order = torch.sort(scores[shuffled], descending=True, stable=True).indices
    return shuffled[order]


def diverse_greedy(scores: torch.Tensor, features: torch.Tensor, budget: int, seed: int = 0) -> list[int]:
    """Greedy batch selection: repeatedly take the item maximising score_i * (1 - max(0, max_j cos(f_i, f_j))),
    j over the items taken so far, f the features (N, D) centred on the pool's mean (cosines in float32). An exact
    duplicate of a chosen item gains 0 and comes only after every item with a positive gain. Ties as
    ``tie_break_order``. One (N, D) matrix-vector product per item taken: O(budget N D)."""
    f = features.float() - features.float().mean(0)
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rank = torch.empty(len(scores), dtype=torch.float64)
    rank[tie_break_order(scores, seed)] = torch.arange(len(scores), dtype=torch.float64)
    closest = torch.zeros(len(scores), dtype=torch.float64)  # max cosine to a chosen item
    taken = torch.zeros(len(scores), dtype=torch.bool)
    chosen = []
    for _ in range(min(budget, len(scores))):
        gain = torch.where(taken, -math.inf, scores.double() * (1 - closest.clamp_min(0)))
        pick = int(torch.where(gain == gain.max(), rank, math.inf).argmin())  # the best gain, ties by rank
        chosen.append(pick)
        taken[pick] = True
        closest = torch.maximum(closest, (f @ f[pick]).double())
    return chosen
