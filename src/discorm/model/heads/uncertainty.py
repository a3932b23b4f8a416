"""Epistemic uncertainty for any head: a Laplace posterior over a last layer, or an ensemble of heads.

Both wrap a head of any registered kind (its *member*) and keep its interface: the reward distribution's mean is
the member's, and the spread becomes the total sigma^2 = sigma_aleatoric^2 + sigma_epistemic^2, where the
aleatoric part is the member's own spread (zero for the scalar head) and the epistemic part is what the model does
not know about the response.

- :class:`LaplaceHead`: the Laplace posterior of a linear last layer on the pooled features phi, fitted after
  training on the training pairs with the member's pair probabilities as curvature (the Bradley-Terry GGN):
  H = lambda I + sum_pairs p (1 - p) z z^T, z = phi_c - phi_r; sigma_ep(phi) = sqrt(phi^T H^-1 phi). For the
  scalar head this is the exact Laplace posterior of its weights. The prior precision lambda is chosen by
  maximising the marginal likelihood (MacKay's fixed point) unless given. Params gain one column, sigma_ep.
- :class:`EnsembleHead`: K members on the shared backbone (one backbone pass per batch), each trained on its own
  bootstrap resample of the pairs (Poisson(1) weights drawn per pair and member from where the pair was read, so
  a pair keeps its weights across epochs). sigma_ep^2 = Var_k[mean_k]; P(c > r) averages the members'.

Reward modes that use them (``RewardHead.reward``): ``lcb`` mean - k sigma_ep, ``uwo`` mean - k sigma_ep^2, ``min``
the ensemble's worst member; ``lower_quantile`` and ``mean_minus_std`` read the total distribution (a normal with
the total sigma around the member's mean).
"""

from __future__ import annotations

import logging
import math
import zlib

import torch
from torch import nn

from discorm.errors import ConfigError, ModelError
from discorm.model.heads.base import ExportSpec, RewardHead

logger = logging.getLogger(__name__)

UNCERTAINTIES = ("laplace", "ensemble")


def _normal_quantile(alpha: float, like: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2) * torch.erfinv(torch.tensor(2 * alpha - 1, dtype=like.dtype, device=like.device))


class EpistemicHead(RewardHead):
    """What both wrappers share: the member's kind, options and capabilities, and the total distribution."""

    distributional = True
    epistemic = True
    uncertainty = ""

    def __init__(self, member: RewardHead):
        super().__init__()
        self.kind = member.kind  # the wrapped kind: configs, exports and the registry see the member's kind
        self.options = member.options
        self.supports_margin = member.supports_margin
        self.learns_ratings = member.learns_ratings
        self.attributes = member.attributes
        self.member_distributional = member.distributional
        self.export_labels = member.export_labels
        self.ranking_losses, self.tie_models = member.ranking_losses, member.tie_models
        self.tie_model = member.tie_model

    def saved_options(self) -> dict:
        return self.first_member.saved_options()

    @property
    def first_member(self) -> RewardHead:
        raise NotImplementedError

    def std(self, params):
        return (self.aleatoric_std(params).square() + self.epistemic_std(params).square()).sqrt()

    def quantile(self, params, alpha):
        """The alpha-quantile of a normal with the member's mean and the total sigma."""
        return self.mean(params) + _normal_quantile(alpha, params) * self.std(params)

    def member_summary(self, params) -> dict:
        return {}

    def summary(self, params):
        return {**self.member_summary(params), "mean": self.mean(params), "sigma": self.std(params),
                "sigma_aleatoric": self.aleatoric_std(params), "sigma_epistemic": self.epistemic_std(params)}


class LaplaceHead(EpistemicHead):
    """The member, plus sigma_ep from a Laplace posterior covariance over the features (zero until fitted)."""

    uncertainty = "laplace"

    def __init__(self, member: RewardHead, hidden_size: int):
        super().__init__(member)
        self.member = member
        self.supports_temperature = member.supports_temperature  # P(c > r) is the member's
        self.register_buffer("covariance", torch.zeros(hidden_size, hidden_size))  # H^-1
        self.register_buffer("prior_precision", torch.zeros(()))

    @property
    def first_member(self):
        return self.member

    @property
    def fitted(self) -> bool:
        return bool(self.prior_precision > 0)

    def forward(self, hidden):
        # clamped above 0: sqrt has no finite gradient at 0 (the covariance is 0 until it is fitted)
        variance = torch.einsum("nh,hk,nk->n", hidden, self.covariance, hidden).clamp_min(1e-30)
        return torch.cat([self.member(hidden), variance.sqrt().unsqueeze(-1)], dim=-1)  # (N, K + 1)

    @staticmethod
    def _m(params):
        return params[:, :-1]

    def mean(self, params):
        return self.member.mean(self._m(params))

    def aleatoric_std(self, params):
        return self.member.std(self._m(params))

    def epistemic_std(self, params):
        return params[:, -1]

    def member_summary(self, params):
        return self.member.summary(self._m(params))

    def log_prob_pair(self, pc, pr, margin=None):
        return self.member.log_prob_pair(self._m(pc), self._m(pr), margin)

    def prob_pair(self, pc, pr, temperature=1.0):
        return self.member.prob_pair(self._m(pc), self._m(pr), temperature)

    def pair_loss(self, pc, pr, margin=None, soft_label=None, weights=None):
        return self.member.pair_loss(self._m(pc), self._m(pr), margin, soft_label, weights)

    def log_prob_outcomes(self, pa, pb, margin=None):
        return self.member.log_prob_outcomes(self._m(pa), self._m(pb), margin)

    def outcome_loss(self, pa, pb, outcomes, margin=None, weights=None):
        return self.member.outcome_loss(self._m(pa), self._m(pb), outcomes, margin, weights)

    def plackett_luce(self, params, levels, weights=None):
        return self.member.plackett_luce(self._m(params), levels, weights)

    def regulariser(self, pc, pr, **loss_options):
        return self.member.regulariser(self._m(pc), self._m(pr), **loss_options)

    def attribute_means(self, params):
        return self.member.attribute_means(self._m(params))

    def attribute_stds(self, params):
        return self.member.attribute_stds(self._m(params))

    def rated_loss(self, params, scores, mask):
        return self.member.rated_loss(self._m(params), scores, mask)

    def set_posterior(self, covariance: torch.Tensor, prior_precision: float) -> None:
        self.covariance.copy_(covariance.to(self.covariance))
        self.prior_precision.fill_(prior_precision)

    def load_head_state(self, tensors, stored_kind, where):
        """A Laplace run's head file, or a plain one of the member's kind (the posterior is then fitted anew)."""
        tensors = dict(tensors)
        posterior = {name: tensors.pop(name) for name in ("covariance", "prior_precision") if name in tensors}
        member = {k.removeprefix("member."): v for k, v in tensors.items()}
        self.member.load_head_state(member, stored_kind, where)
        if posterior:
            self.set_posterior(posterior["covariance"], float(posterior["prior_precision"]))

    def export_spec(self, num_labels):
        logger.warning("the export carries the mean reward; the Laplace posterior (sigma_epistemic) stays with the "
                       "DiscoRM run directory.")
        return self.member.export_spec(num_labels)


def laplace_posterior(phi_c: torch.Tensor, phi_r: torch.Tensor, prob: torch.Tensor, mean_weight: torch.Tensor,
                      prior_precision: float | None = None, iterations: int = 100) -> tuple[torch.Tensor, float]:
    """The covariance H^-1 (H, H) and the prior precision lambda of the last-layer Laplace posterior.

    phi_c, phi_r: (P, H) pooled features of the training pairs; prob: (P,) the trained head's P(c > r), giving the
    curvature p (1 - p) of each pair's log-likelihood; mean_weight: (H,) the linear read-out of the head's mean
    (the MAP weights), used by the marginal likelihood. ``prior_precision`` None: lambda maximises the marginal
    likelihood, by MacKay's fixed point lambda = gamma / |w|^2, gamma = sum_i e_i / (e_i + lambda) over the
    eigenvalues e_i of the data term."""
    z = (phi_c - phi_r).double()
    weight = (prob.double() * (1 - prob.double())).clamp_min(0)
    data_term = (z * weight[:, None]).T @ z  # (H, H)
    eigenvalues, vectors = torch.linalg.eigh(data_term)
    eigenvalues = eigenvalues.clamp_min(0)
    if prior_precision is None:
        norm = float(mean_weight.double().square().sum())
        if not norm > 0:
            raise ModelError("the head's mean does not depend on the features (zero weights); the Laplace "
                             "posterior's prior cannot be chosen by marginal likelihood: set laplace_prior_precision.")
        lam = 1.0
        for _ in range(iterations):
            gamma = float((eigenvalues / (eigenvalues + lam)).sum())
            new = max(gamma, 1e-6) / norm
            if abs(new - lam) <= 1e-10 * lam:
                lam = new
                break
            lam = new
        prior_precision = lam
    covariance = (vectors / (eigenvalues + prior_precision)) @ vectors.T
    return covariance.float(), float(prior_precision)


def mean_readout(head: RewardHead, phi: torch.Tensor) -> torch.Tensor:
    """(H,) the least-squares linear read-out of the head's mean reward from features phi (N, H): the MAP weights
    for heads whose mean is linear in the features (scalar, Gaussian), a linearisation for the others."""
    with torch.no_grad():
        means = head.mean(head(phi)).double()
    return torch.linalg.lstsq(phi.double(), means.unsqueeze(-1)).solution.squeeze(-1)


# Poisson(1) by inverse CDF: P(X <= k) for k = 0..15 (the rest of the mass, ~1e-13, counts as 16)
_POISSON_CDF = torch.tensor([sum(math.exp(-1) / math.factorial(i) for i in range(k + 1)) for k in range(16)],
                            dtype=torch.float64)


def bootstrap_weights(keys: list[str], members: int) -> torch.Tensor:
    """(B, members) Poisson(1) weights, each a fixed function of the pair's key (where it was read) and the member:
    a pair weighs the same for a member every time it is seen, as in a bootstrap resample of the data."""
    uniform = torch.tensor([[zlib.crc32(f"{k}\x00{key}".encode()) / 2**32 for k in range(members)] for key in keys],
                           dtype=torch.float64)
    return torch.searchsorted(_POISSON_CDF, uniform).float()


class EnsembleHead(EpistemicHead):
    """K heads of one kind on the shared backbone: params (N, K * P), member k's params at [:, k P : (k + 1) P]."""

    uncertainty = "ensemble"

    def __init__(self, members: list[RewardHead], bootstrap: bool = True):
        super().__init__(members[0])
        self.members = nn.ModuleList(members)
        self.bootstrap = bootstrap
        self.export_labels = (1,) if 1 in members[0].export_labels else ()  # the mean reward only

    @property
    def first_member(self):
        return self.members[0]

    @property
    def size(self) -> int:
        return len(self.members)

    def forward(self, hidden):
        return torch.cat([member(hidden) for member in self.members], dim=-1)

    def split(self, params: torch.Tensor) -> list[torch.Tensor]:
        return list(params.chunk(self.size, dim=-1))

    def member_means(self, params) -> torch.Tensor:  # (N, K)
        return torch.stack([m.mean(p) for m, p in zip(self.members, self.split(params))], dim=-1)

    def mean(self, params):
        return self.member_means(params).mean(-1)

    def epistemic_std(self, params):
        return self.member_means(params).var(-1, correction=0).sqrt()

    def aleatoric_std(self, params):
        stds = torch.stack([m.std(p) for m, p in zip(self.members, self.split(params))], dim=-1)
        return stds.square().mean(-1).sqrt()

    def member_summary(self, params):
        names = [a.name for a in self.attributes]
        return {"attributes": dict(zip(names, self.attribute_means(params).unbind(-1)))} if names else {}

    def worst_member(self, params):
        return self.member_means(params).min(-1).values

    def log_prob_pair(self, pc, pr, margin=None):
        """P(c > r) averaged over the members (the ensemble's predictive probability)."""
        probs = torch.stack([m.log_prob_pair(c, r, margin)[0].exp()
                             for m, c, r in zip(self.members, self.split(pc), self.split(pr))]).mean(0)
        probs = probs.clamp(1e-30, 1 - 1e-7)
        return probs.log(), torch.log1p(-probs)

    def pair_weights(self, keys):
        return bootstrap_weights(keys, self.size) if self.bootstrap and keys else None

    def pair_loss(self, pc, pr, margin=None, soft_label=None, weights=None):
        """Each member's own NLL, weighted by its bootstrap weights (B, K), averaged over the members: (B,)."""
        losses = torch.stack([m.pair_loss(c, r, margin, soft_label)
                              for m, c, r in zip(self.members, self.split(pc), self.split(pr))], dim=-1)
        if weights is not None:
            losses = losses * weights.to(losses)
        return losses.mean(-1)

    def log_prob_outcomes(self, pa, pb, margin=None):
        """The members' outcome probabilities, averaged (the ensemble's predictive distribution)."""
        probs = torch.stack([m.log_prob_outcomes(a, b, margin).exp()
                             for m, a, b in zip(self.members, self.split(pa), self.split(pb))]).mean(0)
        return probs.clamp_min(1e-30).log()

    def outcome_loss(self, pa, pb, outcomes, margin=None, weights=None):
        """Each member's own NLL with its bootstrap weights (M, K), averaged over the members: (M,)."""
        return torch.stack([m.outcome_loss(a, b, outcomes, margin, None if weights is None else weights[:, k])
                            for k, (m, a, b) in enumerate(zip(self.members, self.split(pa), self.split(pb)))]).mean(0)

    def plackett_luce(self, params, levels, weights=None):
        """Each member's ranking NLL with its bootstrap weight (K,), averaged over the members."""
        return torch.stack([m.plackett_luce(p, levels, None if weights is None else weights[k])
                            for k, (m, p) in enumerate(zip(self.members, self.split(params)))]).mean()

    def regulariser(self, pc, pr, **loss_options):
        return torch.stack([m.regulariser(c, r, **loss_options)
                            for m, c, r in zip(self.members, self.split(pc), self.split(pr))]).mean()

    def attribute_means(self, params):
        return torch.stack([m.attribute_means(p) for m, p in zip(self.members, self.split(params))]).mean(0)

    def rated_loss(self, params, scores, mask):
        return torch.stack([m.rated_loss(p, scores, mask) for m, p in zip(self.members, self.split(params))]).mean(0)

    def load_head_state(self, tensors, stored_kind, where):
        if not any(name.startswith("members.") for name in tensors):
            raise ModelError(f"{where} holds one {stored_kind} head, not an ensemble: its members would all start "
                             "alike. Train the ensemble from the backbone (a pretrained model), or drop "
                             "`uncertainty: ensemble`.")
        stored = len({name.split(".")[1] for name in tensors})
        if stored != self.size:
            raise ModelError(f"{where} holds an ensemble of {stored} heads, not {self.size}; set ensemble_size: "
                             f"{stored}.")
        for k, member in enumerate(self.members):
            prefix = f"members.{k}."
            member.load_head_state({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)},
                                   stored_kind, where)

    def export_spec(self, num_labels):
        """The ensemble's mean reward: the average of the members' score layers (exact where each member's mean is
        linear in the features)."""
        if num_labels != 1:
            raise ModelError("an ensemble exports its mean reward only (--num-labels 1).")
        specs = [m.export_spec(1) for m in self.members]
        return ExportSpec(torch.stack([s.weight for s in specs]).mean(0), {"discorm_ensemble_size": self.size},
                          offset=sum(s.offset for s in specs) / self.size)


def with_uncertainty(make_member, hidden_size: int, uncertainty: str | None, ensemble_size: int = 1,
                     bootstrap: bool = True) -> RewardHead:
    """The head ``make_member()`` builds, wrapped for ``uncertainty`` (None: as it is)."""
    if uncertainty is None:
        return make_member()
    if uncertainty == "laplace":
        return LaplaceHead(make_member(), hidden_size)
    if uncertainty == "ensemble":
        if ensemble_size < 1:
            raise ConfigError(f"ensemble_size={ensemble_size} must be at least 1.")
        return EnsembleHead([make_member() for _ in range(ensemble_size)], bootstrap)
    raise ConfigError(f"uncertainty={uncertainty!r} is not valid; use one of {', '.join(UNCERTAINTIES)} (or leave it "
                      "unset).")
