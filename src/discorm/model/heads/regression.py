"""The regression head: one rated score per response (a number, or a Gaussian with its own variance)."""

from __future__ import annotations

from discorm.errors import ConfigError
from discorm.model.heads.base import Attribute, register_head
from discorm.model.heads.multi_objective import OUTPUT, SCORE_RANGE, MultiObjectiveHead


@register_head
class RegressionHead(MultiObjectiveHead):
    """The multi-objective head with the single attribute ``score``: trained on pointwise rows (prompt, response,
    score) by squared error or, with ``output: gaussian``, by the Gaussian negative log-likelihood with a predicted
    variance; pairs train it through the same prediction (Bradley-Terry or Thurstone)."""

    kind = "regression"
    options = (OUTPUT, SCORE_RANGE)
    learns_combination = False

    def __init__(self, hidden_size: int, output: str = "scalar", score_range=()):
        super().__init__(hidden_size, attributes=["score"], output=output, score_range=score_range)

    @classmethod
    def attributes_from(cls, options: dict) -> tuple[Attribute, ...]:
        ranges = options.get("score_range") or []
        if isinstance(ranges, dict):
            raise ConfigError(f"score_range={ranges!r}: the regression head has the one attribute `score`; give "
                              "score_range as [low, high].")
        return (Attribute("score", *(ranges or (None, None))),)
