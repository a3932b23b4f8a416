"""Epistemic uncertainty for any head: a Laplace posterior over a last layer, or an ensemble of heads.

Both wrap a head of any registered kind (its *member*) and keep its interface: they replace the reward distribution
(``RewardDistribution``) and take the rest from the member automatically (``EpistemicHead``). The mean is the
member's, and the spread becomes the total sigma^2 = sigma_aleatoric^2 + sigma_epistemic^2, where the
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

Reward modes that use them (``RewardDistribution.reward``): ``lcb`` mean - k sigma_ep, ``uwo`` mean - k sigma_ep^2,
``min`` the ensemble's worst member; ``lower_quantile`` and ``mean_minus_std`` read the total distribution (a normal
with the total sigma around the member's mean).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import zlib
from abc import abstractmethod
from typing import ClassVar

import torch
from torch import nn

from discorm.errors import ConfigError, ModelError
from discorm.model.heads.base import PARAMS_ARGUMENTS, ExportSpec, RewardDistribution, RewardHead
from discorm.model.heads.ordinal import level_summary

logger = logging.getLogger(__name__)

UNCERTAINTIES = ("laplace", "ensemble")


def _normal_quantile(alpha: float, like: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2) * torch.erfinv(torch.tensor(2 * alpha - 1, dtype=like.dtype, device=like.device))


class EpistemicHead(RewardDistribution, nn.Module):
    """What both wrappers share: a reward distribution over their members' params, and the member's head for the
    rest.

    A wrapper implements ``forward`` and the distribution (``RewardDistribution``: the member's mean, the total
    sigma^2 = sigma_aleatoric^2 + sigma_epistemic^2); the few other methods whose meaning changes are overridden
    in each wrapper. Every other attribute of the head interface -- kind, options, capability flags, likelihoods,
    losses, ratings -- is not written here but found on the members by ``__getattr__``: a method runs on every
    member, each given its own part of the params (arguments named as in ``PARAMS_ARGUMENTS``), and the members'
    results are averaged; a flag or option is the first member's. A method or flag added to ``RewardHead``
    reaches the wrappers without a change here."""

    distributional = True
    epistemic = True
    uncertainty: ClassVar[str] = ""

    @property
    @abstractmethod
    def heads(self) -> list[RewardHead]:
        """The wrapped heads (one for Laplace)."""

    @abstractmethod
    def member_arguments(self, name: str, value, method: str) -> list:
        """Each member's part of the argument ``name`` of the member method ``method`` (one entry per member): its
        params for a params argument."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # nn.Module keeps the wrapper's parameters, buffers and submodules
        except AttributeError:
            if name.startswith("_") or not self.__dict__.get("_modules"):  # private, or no member yet
                raise
        first = self.heads[0]
        try:
            value = getattr(first, name)
        except AttributeError:
            raise AttributeError(f"neither {type(self).__name__} nor its {first.kind} head has an attribute "
                                 f"{name!r}") from None
        if not (inspect.ismethod(value) and value.__self__ is first):
            return value  # a flag, an option, a class method: the same for every member

        @functools.wraps(value)
        def delegated(*args, **kwargs):
            return self.each_member(name, *args, **kwargs)

        return delegated

    def each_member(self, name: str, *args, **kwargs):
        """The member method ``name`` run on each member with its part of the arguments (``member_arguments``);
        the mean of the results over the members, or their common value where they are not tensors."""
        bound = inspect.signature(getattr(self.heads[0], name)).bind(*args, **kwargs)
        parts = {arg: self.member_arguments(arg, value, name) for arg, value in bound.arguments.items()
                 if value is not None}
        results = []
        for k, head in enumerate(self.heads):
            bound.arguments.update({arg: values[k] for arg, values in parts.items()})
            results.append(getattr(head, name)(*bound.args, **bound.kwargs))
        first = results[0]
        if len(results) == 1:
            return first
        if isinstance(first, torch.Tensor):
            return torch.stack(results).mean(0)
        if isinstance(first, (type(None), bool, int, float, str, list, dict)) and all(r == first for r in results):
            return first
        raise ModelError(f"the {self.uncertainty} wrapper cannot combine its members' {name} "
                         f"({type(first).__name__}); give it its own {name} method (heads/uncertainty.py).")

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
    """The member, plus sigma_ep from a Laplace posterior covariance over the features (zero until fitted). Params
    are the member's with one more column, sigma_ep; every member method reads the member's columns."""

    uncertainty = "laplace"

    def __init__(self, member: RewardHead, hidden_size: int):
        super().__init__()
        self.member = member
        self.register_buffer("covariance", torch.zeros(hidden_size, hidden_size))  # H^-1
        self.register_buffer("prior_precision", torch.zeros(()))

    @property
    def heads(self):
        return [self.member]

    def member_arguments(self, name, value, method):
        return [value[:, :-1] if name in PARAMS_ARGUMENTS else value]

    @property
    def fitted(self) -> bool:
        return bool(self.prior_precision > 0)

    def forward(self, hidden):
        # clamped above 0: sqrt has no finite gradient at 0 (the covariance is 0 until it is fitted)
        variance = torch.einsum("nh,hk,nk->n", hidden, self.covariance, hidden).clamp_min(1e-30)
        return torch.cat([self.member(hidden), variance.sqrt().unsqueeze(-1)], dim=-1)  # (N, K + 1)

    def mean(self, params):
        return self.member.mean(params[:, :-1])

    def aleatoric_std(self, params):
        return self.member.std(params[:, :-1])

    def epistemic_std(self, params):
        return params[:, -1]

    def member_summary(self, params):
        return self.member.summary(params[:, :-1])

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


PER_LIST_WEIGHTS = {"plackett_luce"}  # member methods whose ``weights`` weigh one list, not each pair


class EnsembleHead(EpistemicHead):
    """K heads of one kind on the shared backbone: params (N, K * P), member k's params at [:, k P : (k + 1) P].
    A ``weights`` argument with one column per member (the bootstrap, ``pair_weights``: (M, K) per pair, (K,) per
    list) gives member k its column k; weights without a bootstrap ((M,) or ()) weigh every member alike."""

    uncertainty = "ensemble"
    supports_temperature = False  # P(c > r) averages the members': no one temperature scales it
    learns_combination = False  # each member would have its own attribute weights, and the model saves one set

    def __init__(self, members: list[RewardHead], bootstrap: bool = True):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.bootstrap = bootstrap

    @property
    def heads(self):
        return list(self.members)

    def member_arguments(self, name, value, method):
        if name in PARAMS_ARGUMENTS:
            return self.split(value)
        # bootstrap weights hold a last dimension of K members: (M, K) per pair, (K,) for the one list of
        # plackett_luce; without a bootstrap, (M,) or () weigh every member alike
        if name == "weights" and value.dim() == (1 if method in PER_LIST_WEIGHTS else 2):
            return list(value.unbind(-1))
        return [value] * self.size

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def export_labels(self) -> tuple[int, ...]:
        return (1,) if 1 in self.members[0].export_labels else ()  # the mean reward only

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
        if self.levels:  # the members' mixture of rating distributions
            return level_summary(self.levels, self.attribute_means(params))
        return {"attributes": dict(zip(names, self.attribute_means(params).unbind(-1)))} if names else {}

    def worst_member(self, params):
        return self.member_means(params).min(-1).values

    def entropic(self, params, k):
        """Exact for the members' mixture: E[exp(-k R)] is the members' average of theirs, each exp(-k e_m) with
        e_m the member's entropic reward, so -(1/k) log mean_m exp(-k e_m); k = 0 is the mean."""
        if k == 0:
            return self.mean(params)
        each = torch.stack([m.entropic(p, k) for m, p in zip(self.members, self.split(params))], dim=-1)
        return -(torch.logsumexp(-k * each.double(), -1) - math.log(self.size)).div(k).to(each.dtype)

    def log_prob_pair(self, pc, pr, margin=None):
        """P(c > r) averaged over the members (the ensemble's predictive probability)."""
        probs = torch.stack([m.log_prob_pair(c, r, margin)[0].exp()
                             for m, c, r in zip(self.members, self.split(pc), self.split(pr))]).mean(0)
        probs = probs.clamp(1e-30, 1 - 1e-7)
        return probs.log(), torch.log1p(-probs)

    def prob_pair(self, pc, pr, temperature=1.0):
        if temperature != 1.0:
            raise ValueError("an ensemble has no temperature scaling")
        return self.log_prob_pair(pc, pr)[0].exp()

    def pair_weights(self, keys):
        return bootstrap_weights(keys, self.size) if self.bootstrap and keys else None

    def log_prob_outcomes(self, pa, pb, margin=None):
        """The members' outcome probabilities, averaged (the ensemble's predictive distribution)."""
        probs = torch.stack([m.log_prob_outcomes(a, b, margin).exp()
                             for m, a, b in zip(self.members, self.split(pa), self.split(pb))]).mean(0)
        return probs.clamp_min(1e-30).log()

    def attribute_stds(self, params):
        """The members' spreads of each attribute, combined as ``aleatoric_std`` combines theirs."""
        stds = [m.attribute_stds(p) for m, p in zip(self.members, self.split(params))]
        return None if stds[0] is None else torch.stack(stds).square().mean(0).sqrt()

    def fit_combination(self, pc, pr, margin=None, soft_label=None):
        raise ModelError("combination: learned fits one set of attribute weights, and an ensemble has one per head; "
                         "use combination: fixed with uncertainty: ensemble, or uncertainty: laplace.")

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
                     bootstrap: bool = True) -> RewardHead | EpistemicHead:
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
