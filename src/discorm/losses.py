"""The named likelihoods a config chooses, one table per config key: ``RANKING_LOSSES`` (``ranking_loss``),
``LIST_WEIGHTINGS`` (``list_weighting``), ``STRENGTH_LOSSES`` (``strength_loss``) and ``RATING_TARGETS``
(``rating_target``). The config's allowed values, its help text, the refusal of a head that cannot honour a choice
and the dispatch of :class:`~discorm.train.loss.PairwiseLoss` all read these tables; adding a loss is one entry here
(or ``TABLE.register(entry)``).

A ranking loss turns each ranked list into comparisons that the head's P(a > b) scores with the pairs
(``comparisons``: every head honours it), or asks the head for its own likelihood of the ranking (``likelihood``:
only the heads that list the loss in their ``ranking_losses``). Tie likelihoods are the head's (head option
``tie_model``).

The tables live here, above model and data and below config and train, because config cannot import discorm.train.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from discorm.errors import ConfigError, check_choice
from discorm.model.heads import HEADS, RewardHead

Head = RewardHead | type[RewardHead]  # a head, or a head class before it is built (the config's check)


@dataclass
class Comparisons:
    """Comparisons of two scored sequences: indices ``a``, ``b`` (M,) into the batch's scores, ``outcomes``
    (M, 3) counts of (a wins, tie, b wins), ``margin`` (M,) or None, ``weights`` (M,) and ``units`` (M,) the
    observations each stands for (1 a label, n annotator votes), and ``keys`` for the head's per-pair weights."""

    a: torch.Tensor
    b: torch.Tensor
    outcomes: torch.Tensor
    margin: torch.Tensor | None
    weights: torch.Tensor
    units: torch.Tensor
    keys: list[str] | None


@dataclass(frozen=True)
class RankedList:
    """A list labelled by a ranking: the index of its first score in the batch, its ``levels`` (K,) (0 best, equal
    levels tie) and where it was read (None: not known)."""

    start: int
    levels: torch.Tensor
    key: str | None


@dataclass(frozen=True)
class Loss:
    """An entry of a table: ``name`` is the config value, ``help`` what it computes (the config's help text)."""

    name: str
    help: str

    @property
    def needs(self) -> str:
        """What a head must have to honour it; empty: every head does."""
        return ""

    def honoured_by(self, head: Head) -> bool:
        return True


@dataclass(frozen=True)
class ListWeighting(Loss):
    """The weight (and units) of each comparison a ranked list makes, from their number C."""

    share: Callable[[int], float]


@dataclass(frozen=True)
class RankingLoss(Loss):
    """The likelihood of ranked lists, from ``comparisons`` (a list and the list weighting -> the comparisons the
    head's P(a > b) scores) and/or ``likelihood`` (the head, the list's params (K, P) and the list -> its negative
    log-likelihood and the observations it stands for), which only a head listing ``name`` in its
    ``ranking_losses`` computes; ``requires`` says which heads those are."""

    comparisons: Callable[[RankedList, ListWeighting], Comparisons] | None = None
    likelihood: Callable[[RewardHead, torch.Tensor, RankedList], tuple[torch.Tensor, int]] | None = None
    requires: str = "a head that lists it in its ranking_losses"

    @property
    def needs(self) -> str:
        return "" if self.likelihood is None else self.requires

    def honoured_by(self, head: Head) -> bool:
        return self.likelihood is None or self.name in head.ranking_losses


@dataclass(frozen=True)
class StrengthLoss(Loss):
    """How a pair's strength enters its likelihood: (strengths (M,), margins (M,) or None, weights (M,),
    strength_margin) -> (margins, weights); ``moves_margin``: through the margin, which some heads cannot honour."""

    apply: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, float], tuple[torch.Tensor | None, torch.Tensor]]
    moves_margin: bool = False

    @property
    def needs(self) -> str:
        return "a head that honours a margin" if self.moves_margin else ""

    def honoured_by(self, head: Head) -> bool:
        return not self.moves_margin or head.supports_margin


@dataclass(frozen=True)
class RatingTarget(Loss):
    """What the rating likelihood of a response rated by several raters reads: ``target`` maps the raters' counts
    per level (R, L) to the counts fitted (the head's likelihood: ``model/heads/ordinal.py``)."""

    target: Callable[[torch.Tensor], torch.Tensor]


class LossTable(dict):
    """The entries one config key chooses from, by name, in the order registered; an unknown name is refused
    naming the key. ``auto``: the key also takes ``auto``, the first of the head's ``ranking_losses``."""

    def __init__(self, key: str, intro: str, entries: tuple[Loss, ...], auto: bool = False):
        super().__init__()
        self.key, self.intro, self.auto = key, intro, auto
        for entry in entries:
            self.register(entry)

    def register(self, entry: Loss) -> Loss:
        """Make ``entry`` a value of the key (``pop(name)`` removes it again)."""
        if entry.name in self.choices():
            raise ValueError(f"{self.key} {entry.name!r} is already registered")
        self[entry.name] = entry
        return entry

    def __missing__(self, name: str):
        check_choice(self.key, name, tuple(self))

    def choices(self) -> tuple[str, ...]:
        return ("auto", *self) if self.auto else tuple(self)

    def help(self) -> str:
        """The key's help text: every entry, what it computes and, when not every head can, the heads that do."""
        described = []
        for name, entry in self.items():
            heads = honouring(entry)
            limit = f"; needs {entry.needs}: {', '.join(heads)}" if len(heads) < len(HEADS) else ""
            described.append(f"{name} ({entry.help}{limit})")
        if self.auto:
            firsts: dict[str, list[str]] = {}
            for kind, head in HEADS.items():
                firsts.setdefault(head.ranking_losses[0], []).append(kind)
            described.append("auto (the head's first: " +
                              "; ".join(f"{name} for {', '.join(kinds)}" for name, kinds in firsts.items()) + ")")
        return f"{self.intro}: {', '.join(described[:-1])} or {described[-1]}."

    def check(self, name: str, head: Head) -> None:
        """Refuse, naming the key, a name not registered or a loss the head cannot honour."""
        check_choice(self.key, name, self.choices())
        if name == "auto" or self[name].honoured_by(head):
            return
        usable = " or ".join(n for n, e in self.items() if e.honoured_by(head))
        raise ConfigError(f"{self.key}={name}: {name} needs {self[name].needs} "
                          f"({', '.join(honouring(self[name])) or 'none'}), "
                          f"and the {head.kind} head is not one. Use {self.key}: {usable}"
                          f"{' (or auto)' if self.auto else ''}.")


def honouring(entry: Loss) -> list[str]:
    """The kinds of the registered heads that honour ``entry``."""
    return [kind for kind, head in HEADS.items() if entry.honoured_by(head)]


# ---------------------------------------------------------------------------------------------- the built-ins
def all_pairs(ranked: RankedList, weighting: ListWeighting) -> Comparisons:
    """Every pair of the list once, the better one first (or a tie): K(K-1)/2 comparisons."""
    level = ranked.levels
    i, j = torch.triu_indices(len(level), len(level), 1, device=level.device)
    outcomes = torch.stack([level[i] < level[j], level[i] == level[j], level[i] > level[j]], -1).float()
    share = torch.full((len(i),), weighting.share(len(i)))
    keys = None if ranked.key is None else [f"{ranked.key}#{a}>{b}" for a, b in zip(i.tolist(), j.tolist())]
    return Comparisons(ranked.start + i, ranked.start + j, outcomes, None, share, share, keys)


def plackett_luce(head: RewardHead, params: torch.Tensor, ranked: RankedList) -> tuple[torch.Tensor, int]:
    """The head's Plackett-Luce likelihood of the ranking (ties share their level's denominator), weighed by the
    head's weight of the list (an ensemble's per member); K - 1 observations."""
    weight = head.pair_weights([ranked.key] if ranked.key else None)  # None, or (1, members)
    return head.plackett_luce(params, ranked.levels, None if weight is None else weight[0]), len(ranked.levels) - 1


def strength_as_margin(strength: torch.Tensor, margin: torch.Tensor | None, weights: torch.Tensor, per_unit: float):
    """P(chosen > rejected + per_unit * strength): the strength adds to the pair's margin."""
    return strength * per_unit + (0 if margin is None else margin), weights


def strength_as_weight(strength: torch.Tensor, margin: torch.Tensor | None, weights: torch.Tensor, per_unit: float):
    """The pair's loss times its strength; a tie (strength 0) weighs 1."""
    return margin, torch.where(strength > 0, strength, weights)


LIST_WEIGHTINGS = LossTable("list_weighting", "How the comparisons of a ranked list weigh (ranking_loss: all_pairs)", (
    ListWeighting("comparison", "each comparison weighs 1: a list of 4 weighs 6 pairs", lambda count: 1.0),
    ListWeighting("list", "each list weighs 1 in all", lambda count: 1.0 / count),
))

RANKING_LOSSES = LossTable("ranking_loss", "Ranked lists", (
    RankingLoss("plackett_luce", "the likelihood of the whole ranking", likelihood=plackett_luce,
                requires="a head with a logistic P(a > b)"),
    RankingLoss("all_pairs", "the head's P(a > b) -- Bradley-Terry, Thurstone for a Gaussian -- over every pair the "
                "ranking orders, each counted once", comparisons=all_pairs),
), auto=True)

STRENGTH_LOSSES = LossTable("strength_loss", "Pairs with a `strength`", (
    StrengthLoss("margin", "P(chosen > rejected + strength_margin * strength)", strength_as_margin, moves_margin=True),
    StrengthLoss("scaled_bt", "the pair's loss times its strength: NeMo-Aligner's scaled_bt", strength_as_weight),
))


def majority_label(counts: torch.Tensor) -> torch.Tensor:
    """(R, L) counts -> one rating per response at its most frequent level (a tie shared evenly between the tied
    levels): the label a data set keeps when it stores the majority vote."""
    top = counts == counts.max(-1, keepdim=True).values
    return top.float() / top.sum(-1, keepdim=True)


RATING_TARGETS = LossTable("rating_target", "Responses rated by several raters on declared levels", (
    RatingTarget("all", "the likelihood of every rater's label", lambda counts: counts),
    RatingTarget("majority", "the majority label alone, one rating per response: the baseline that drops the "
                 "disagreement", majority_label),
))
