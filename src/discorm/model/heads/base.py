"""The reward-head plug-in interface and its registry.

A head maps pooled hidden states to the parameters of a reward distribution, ``hidden`` (N, H) float32 ->
``params`` (N, K), and defines from them the reward handed to RL, P(chosen > rejected) and its loss. A pair of
param tensors ``pc``, ``pr`` (B, K) gives per-pair probabilities and losses (B,).

The interface has two parts. :class:`RewardDistribution` is what params mean as a reward (mean, spread, quantiles,
the reward modes, the reported values); the uncertainty wrappers (``uncertainty.py``) replace this part.
:class:`RewardHead` adds the rest (options, capability flags, likelihoods and losses, ratings, ties, export), which
the wrappers take from the head they wrap. A head must implement ``forward``, ``mean`` and ``log_prob_pair``
(abstract); everything else has a default.

Every reader (trainer, loss, metrics, scoring, server, export) goes through these methods and flags; none tests a
head's kind. Adding a head is one new file: subclass ``RewardHead``, declare its options and capabilities, and
decorate it with :func:`register_head`.
"""

from __future__ import annotations

import logging
import math
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from discorm.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadOption:
    """One option of a head, declared once with its default. ``saved`` options shape the module and are saved
    with the model; the others (``saved=False``) are loss options read from the current training config."""

    name: str
    default: Any
    help: str
    low: float | None = None
    saved: bool = True
    choices: tuple | None = None
    parse: Callable[[str, Any], Any] | None = None  # checks and normalises a structured value (lists, maps)

    def check(self, value: Any) -> Any:
        if self.parse is not None:
            return self.parse(self.name, value)
        if isinstance(self.default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, type(self.default)) or isinstance(value, bool) != isinstance(self.default, bool):
            raise ConfigError(f"{self.name}={value!r} should be a {type(self.default).__name__} ({self.help}).")
        if self.low is not None and value < self.low:
            raise ConfigError(f"{self.name}={value!r} is out of range; it must be at least {self.low}.")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.name}={value!r} is not valid; allowed values: {', '.join(self.choices)}.")
        return value


@dataclass(frozen=True)
class Attribute:
    """One rated quality a head predicts (``helpfulness``, or ``score`` for plain regression) and the range its
    ratings must lie in (``None``: unbounded)."""

    name: str
    low: float | None = None
    high: float | None = None

    def contains(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class ExportSpec:
    """How a head becomes a sequence-classification checkpoint: the ``score`` weight (num_labels, H), extra
    ``config.json`` entries, and extra safetensors files written next to the model. Label 0 is always the mean
    reward less ``offset``, a constant the bias-free score layer cannot carry (the head's biases)."""

    weight: torch.Tensor
    config: dict = field(default_factory=dict)
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    offset: float = 0.0
    labels: tuple[str, ...] = ("reward",)  # the name of each label (row of ``weight``), config.discorm_labels


TIE_MODELS = {
    "rao_kupper": "P(a > b) = sigmoid(d - eta), P(b > a) = sigmoid(-d - eta), the rest a tie (theta = e^eta)",
    "davidson": "P(a > b), P(tie), P(b > a) in proportion to e^(d/2), nu, e^(-d/2)",
    "thurstone": "P(a > b) = Phi((d - eta) / s), P(b > a) = Phi((-d - eta) / s), the rest a tie (Glenn-David)",
    "atoms": "a tie when the two atoms drawn lie within eta of each other (P(a > b) the rest of P(X_a > X_b))",
}  # d = mu_a - mu_b - margin; s the spread of X_a - X_b; the tie parameter is eta (nu for davidson)


def tie_options(models: tuple[str, ...], learnable: bool = True) -> tuple[HeadOption, ...]:
    """The tie options of a head whose P(a > b) extends to a tie by ``models`` (``TIE_MODELS``)."""
    return (
        HeadOption("tie_model", "none", "ties (tie: true, equal ranks, strength 0): their likelihood, "
                   f"{' or '.join(models)}; none: a tie counts as half a win for each side", choices=("none", *models)),
        HeadOption("tie_param", 1.0, "tie_model: the tie parameter (eta, or nu for davidson), its starting value "
                   "when learned", low=1e-6),
        HeadOption("learn_tie_param", learnable, "tie_model: learn the tie parameter with the head (false: keep "
                   "tie_param)"),
    )


def split_ties(outcomes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 3) counts of (a wins, tie, b wins) -> (wins of a, wins of b), a tie counting half to each."""
    return outcomes[:, 0] + 0.5 * outcomes[:, 1], outcomes[:, 2] + 0.5 * outcomes[:, 1]


# The names of the arguments that carry head params, in every method of the interface: a wrapper finds them by name
# and hands each member its own part (``uncertainty.py``).
PARAMS_ARGUMENTS = ("params", "pc", "pr", "pa", "pb")


def soft_label_loss(log_p: torch.Tensor, log_not_p: torch.Tensor, soft_label: torch.Tensor | None) -> torch.Tensor:
    """-[y log P + (1 - y) log(1 - P)] per pair; with no soft label, y = 1 (chosen preferred): -log P."""
    if soft_label is None:
        return -log_p
    return -(soft_label * log_p + (1 - soft_label) * log_not_p)


class RewardDistribution(metaclass=ABCMeta):  # not ABC: its empty __slots__ would stop FSDP2 swapping the class
    """The reward distribution that head params (N, K) describe; every method maps them to (N,) values. A head
    implements ``mean`` and, when ``distributional``, ``std`` and ``quantile``; the rest has defaults built on
    them. The uncertainty wrappers implement this part over their members and take everything else from them."""

    distributional: ClassVar[bool] = False  # has a spread: std, quantiles, risk-aware reward modes
    epistemic: ClassVar[bool] = False  # knows its epistemic uncertainty (heads/uncertainty.py): lcb, uwo reward modes

    @abstractmethod
    def mean(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,): the reward
        ...

    def std(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,)
        return torch.zeros_like(params[:, 0])

    def quantile(self, params: torch.Tensor, alpha: float) -> torch.Tensor:  # (N, K) -> (N,)
        return self.mean(params)

    def aleatoric_std(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,): the spread of the outcome
        return self.std(params)

    def epistemic_std(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,): what the model does not know
        return torch.zeros_like(params[:, 0])

    def worst_member(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N,): the lowest ensemble member
        raise NotImplementedError(f"the {self.kind} head is not an ensemble")

    def entropic(self, params: torch.Tensor, k: float) -> torch.Tensor:  # (N, K) -> (N,)
        """The entropic (exponential-utility) reward with risk aversion k = 1 / beta, the certainty equivalent
        -beta log E[exp(-R / beta)]: for a normal R, mu - k sigma^2 / 2 (exact), read here with ``mean`` and
        ``std`` (the Laplace wrapper's predictive too); the categorical head and the ensemble (a mixture of its
        members) compute it exactly for themselves. k = 0 is the mean."""
        return self.mean(params) - 0.5 * k * self.std(params).square()

    def reward(self, params: torch.Tensor, mode: str = "mean", alpha: float = 0.1, k: float = 1.0) -> torch.Tensor:
        """The scalar handed to RL: mean, the alpha-quantile, mean - k * std (risk-averse), the entropic reward
        -(1 / k) log E[exp(-k R)] (``entropic``), and with epistemic uncertainty lcb (mean - k * sigma_ep), uwo
        (mean - k * sigma_ep^2) or min (the worst ensemble member)."""
        if mode == "lower_quantile":
            return self.quantile(params, alpha)
        if mode == "mean_minus_std":
            return self.mean(params) - k * self.std(params)
        if mode == "entropic":
            return self.entropic(params, k)
        if mode == "lcb":
            return self.mean(params) - k * self.epistemic_std(params)
        if mode == "uwo":
            return self.mean(params) - k * self.epistemic_std(params).square()
        if mode == "min":
            return self.worst_member(params)
        return self.mean(params)

    def summary(self, params: torch.Tensor) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """Per-sequence values reported next to the reward by scoring and the server, each (N,) or a map of
        them. ``mean`` and ``sigma`` describe the reward's distribution (normalised with the reward); other
        entries (per-attribute values) keep their own units."""
        if not self.distributional:
            return {}
        return {"mean": self.mean(params), "sigma": self.std(params)}


class RewardHead(RewardDistribution, nn.Module):
    """Base class of every head: the distribution of :class:`RewardDistribution`, and what a head adds to it.

    Must implement: ``forward`` (hidden (N, H) -> params (N, K)), ``mean`` and ``log_prob_pair``; a
    ``distributional`` head also ``std`` and ``quantile``. By capability: ``attributes_from``,
    ``attribute_means`` and ``rated_loss`` (``learns_ratings``), ``fit_combination`` (``learns_combination``),
    ``log_prob_outcomes`` (``tie_models``), ``plackett_luce`` (``"plackett_luce"`` in ``ranking_losses``),
    ``export_spec`` (``export_labels``). Defaults: the options, ``prob_pair``, ``pair_loss`` and ``outcome_loss``
    from ``log_prob_pair``, no regulariser, no per-pair weights, and loading a head of the same kind. A method that
    reads params names them as in ``PARAMS_ARGUMENTS``."""

    kind: ClassVar[str] = ""
    options: ClassVar[tuple[HeadOption, ...]] = ()
    export_labels: ClassVar[tuple[int, ...]] = ()  # num_labels a sequence-classification export can carry
    supports_margin: ClassVar[bool] = True  # honours a per-pair margin column
    supports_temperature: ClassVar[bool] = False  # P(c > r) can be temperature-scaled after training
    learns_ratings: ClassVar[bool] = False  # learns from rated responses (rated_loss, attributes_from)
    learns_combination: ClassVar[bool] = False  # combines attributes with weights fitted on pairs (fit_combination)
    ranking_losses: ClassVar[tuple[str, ...]] = ("all_pairs",)  # likelihoods of a ranking it computes; first: auto
    tie_models: ClassVar[tuple[str, ...]] = ()  # tie likelihoods it computes (TIE_MODELS), with tie_options
    tie_model: str = "none"
    uncertainty: ClassVar[str] = ""  # laplace or ensemble for the wrappers (heads/uncertainty.py)
    attributes: tuple[Attribute, ...] = ()  # rated qualities it predicts; empty: it learns from pairs only
    levels: tuple[str, ...] | list[str] = ()  # the rating levels whose share of raters it predicts (ordinal.py)

    # ------------------------------------------------------------------ what every head implements
    @abstractmethod
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, H) -> (N, K)
        ...

    @abstractmethod
    def log_prob_pair(self, pc: torch.Tensor, pr: torch.Tensor, margin: torch.Tensor | None = None):
        """(log P(c > r + margin), log P(not that)), each (B,)."""

    # ------------------------------------------------------------------ options
    @classmethod
    def option(cls, name: str) -> HeadOption | None:
        return next((o for o in cls.options if o.name == name), None)

    @classmethod
    def resolve_options(cls, values: dict, saved_only: bool = False) -> dict:
        """Declared defaults updated with ``values`` (checked); unknown names are an error."""
        for name in values:
            if cls.option(name) is None:
                owners = [kind for kind, other in HEADS.items() if other.option(name) is not None]
                where = f" it is an option of the {' and '.join(owners)} head" if owners else ""
                allowed = ", ".join(o.name for o in cls.options) or "none"
                raise ConfigError(
                    f"{name} does not apply to the {cls.kind} head (head={cls.kind});{where or ' unknown option'}. "
                    f"Options of the {cls.kind} head: {allowed}."
                )
        resolved = {o.name: o.check(values[o.name]) if o.name in values else o.default for o in cls.options}
        if saved_only:
            return {name: value for name, value in resolved.items() if cls.option(name).saved}
        return resolved

    def saved_options(self) -> dict:
        """The options that shape this module, as stored in the model's config."""
        return {o.name: getattr(self, o.name) for o in self.options if o.saved}

    # ------------------------------------------------------------------ rated responses
    @classmethod
    def attributes_from(cls, options: dict) -> tuple[Attribute, ...]:
        """The attributes a head built with these (resolved) options predicts, known before it is built: the
        data layer reads rated rows with them."""
        return ()

    def attribute_means(self, params: torch.Tensor) -> torch.Tensor:  # (N, K) -> (N, A)
        raise NotImplementedError(f"the {self.kind} head predicts no attributes")

    def attribute_stds(self, params: torch.Tensor) -> torch.Tensor | None:  # (N, K) -> (N, A), None: no spread
        return None

    def rated_loss(self, params: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-response negative log-likelihood of its ratings, (N,): params (N, K), scores and mask (N, A);
        each response's loss is the mean over its rated attributes (mask True)."""
        raise NotImplementedError(f"the {self.kind} head does not learn from ratings")

    def fit_combination(self, pc: torch.Tensor, pr: torch.Tensor, margin: torch.Tensor | None = None,
                        soft_label: torch.Tensor | None = None) -> list[float]:
        """Fit the weights that combine the attributes into one reward on pairs of params (B, K) with everything
        else fixed; returns them (saved with the model)."""
        raise NotImplementedError(f"the {self.kind} head has no attribute weights to fit")

    # ------------------------------------------------------------------ pairs
    def prob_pair(self, pc: torch.Tensor, pr: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        if temperature != 1.0:
            raise ValueError(f"the {self.kind} head has no temperature scaling")
        return self.log_prob_pair(pc, pr)[0].exp()

    def pair_loss(self, pc, pr, margin=None, soft_label=None, weights=None) -> torch.Tensor:
        """Per-pair negative log-likelihood of the observed preference, (B,); ``weights`` (B,): per-pair
        weights (an ensemble takes them per member, (B, K))."""
        log_p, log_not_p = self.log_prob_pair(pc, pr, margin)
        loss = soft_label_loss(log_p, log_not_p, soft_label)
        return loss if weights is None else loss * weights.to(loss)

    # ------------------------------------------------------------------ ties, rankings, votes
    def init_ties(self, tie_model: str = "none", tie_param: float = 1.0, learn_tie_param: bool = True) -> None:
        """Called by heads with ``tie_options``: the tie parameter, stored as its log (a parameter when learned)."""
        self.tie_model, self.tie_param, self.learn_tie_param = tie_model, tie_param, learn_tie_param
        if tie_model != "none":
            value = torch.tensor(math.log(tie_param))
            if learn_tie_param:
                self.tie_log = nn.Parameter(value)
            else:
                self.register_buffer("tie_log", value)

    def tie_value(self) -> torch.Tensor:
        return self.tie_log.float().exp()

    def log_prob_outcomes(self, pa: torch.Tensor, pb: torch.Tensor, margin: torch.Tensor | None = None):
        """(M, 3): log P(a > b), log P(tie), log P(b > a) under the head's tie model."""
        raise NotImplementedError(f"the {self.kind} head has no tie model (tie_model: none)")

    def outcome_loss(self, pa, pb, outcomes, margin=None, weights=None) -> torch.Tensor:
        """Per-comparison negative log-likelihood, (M,): ``outcomes`` (M, 3) counts (a wins, tie, b wins) -- one
        label is a count of 1, annotator votes a count each (a binomial, or with ties a trinomial likelihood).
        Without a tie model a tie counts as half a win for each side. ``weights``: as for ``pair_loss``."""
        if self.tie_model == "none":
            wins, losses = split_ties(outcomes)
            count = wins + losses
            soft = None if bool((losses == 0).all()) else wins / count
            scale = count if weights is None else count.view(-1, *[1] * (weights.dim() - 1)) * weights
            return self.pair_loss(pa, pb, margin, soft, None if bool((scale == 1).all()) else scale)
        log_p = self.log_prob_outcomes(pa, pb, margin)
        loss = -torch.where(outcomes > 0, outcomes * log_p, torch.zeros_like(log_p)).sum(-1)
        return loss if weights is None else loss * weights.to(loss)

    def plackett_luce(self, params: torch.Tensor, levels: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
        """The negative log-likelihood of one ranking of K responses (params (K, P), levels (K,), 0 best), a
        scalar; ties share the denominator of their level (Breslow). ``weights``: the list's weight (an
        ensemble: one per member)."""
        raise NotImplementedError(f"the {self.kind} head has no Plackett-Luce likelihood")

    def pair_weights(self, keys: list[str] | None) -> torch.Tensor | None:
        """Per-pair loss weights from where each pair was read (None: every pair weighs 1)."""
        return None

    def regulariser(self, pc: torch.Tensor, pr: torch.Tensor, **loss_options) -> torch.Tensor:
        """A scalar added to the mean pair loss; ``loss_options`` are the head's unsaved options."""
        return pc.new_zeros(())

    # ------------------------------------------------------------------ weights in and out
    def load_head_state(self, tensors: dict, stored_kind: str, where: str) -> None:
        """Load saved head tensors; a head may accept another kind's (see GaussianHead), else it is an error."""
        if stored_kind != self.kind:
            raise ModelError(
                f"{where} holds a {stored_kind!r} head, which cannot be loaded as a {self.kind!r} head: the "
                f"{stored_kind} parameters do not determine the {self.kind} ones. Load it with "
                f"head={stored_kind!r}, or train a new {self.kind} head from it."
            )
        self.load_state_dict(tensors)

    def export_spec(self, num_labels: int) -> ExportSpec:
        raise NotImplementedError


HEADS: dict[str, type[RewardHead]] = {}


def register_head(cls: type[RewardHead]) -> type[RewardHead]:
    """Class decorator: make a head available by its ``kind`` (config key ``head``)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} needs a non-empty `kind`")
    if HEADS.get(cls.kind, cls) is not cls:
        raise ValueError(f"a head of kind {cls.kind!r} is already registered ({HEADS[cls.kind].__name__})")
    HEADS[cls.kind] = cls
    return cls


def head_class(kind: str) -> type[RewardHead]:
    if kind not in HEADS:
        raise ModelError(f"unknown head {kind!r}; registered heads: {', '.join(HEADS)}.")
    return HEADS[kind]


def build_head(kind: str, hidden_size: int, **options) -> RewardHead:
    """A head by kind; ``options`` may hold any of its declared options (loss options are accepted and left to
    the loss)."""
    cls = head_class(kind)
    return cls(hidden_size, **cls.resolve_options(options, saved_only=True))
