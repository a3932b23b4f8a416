"""Reward heads, registered by kind: scalar, gaussian, categorical, multi_objective, regression (see ``base.py``
for the interface); any of them wrapped with epistemic uncertainty (``uncertainty.py``)."""

from discorm.model.heads.base import (
    HEADS,
    Attribute,
    ExportSpec,
    HeadOption,
    RewardHead,
    build_head,
    head_class,
    register_head,
    soft_label_loss,
)

# Registration order is the order heads are listed in (scalar, gaussian, categorical, multi_objective, regression).
# isort: off
from discorm.model.heads.scalar import ScalarHead
from discorm.model.heads.gaussian import GaussianHead
from discorm.model.heads.categorical import CategoricalHead
from discorm.model.heads.multi_objective import MultiObjectiveHead
from discorm.model.heads.regression import RegressionHead
# isort: on
from discorm.model.heads.uncertainty import UNCERTAINTIES, EnsembleHead, LaplaceHead, with_uncertainty

__all__ = [
    "HEADS", "UNCERTAINTIES", "Attribute", "CategoricalHead", "EnsembleHead", "ExportSpec", "GaussianHead",
    "HeadOption", "LaplaceHead", "MultiObjectiveHead", "RegressionHead", "RewardHead", "ScalarHead", "build_head",
    "head_class", "register_head", "soft_label_loss", "with_uncertainty",
]
