"""Reward heads, registered by kind: scalar, gaussian, categorical (see ``base.py`` for the interface)."""

from discorm.model.heads.base import (
    HEADS,
    ExportSpec,
    HeadOption,
    RewardHead,
    build_head,
    head_class,
    register_head,
    soft_label_loss,
)

# Registration order is the order heads are listed in (scalar, gaussian, categorical).
# isort: off
from discorm.model.heads.scalar import ScalarHead
from discorm.model.heads.gaussian import GaussianHead
from discorm.model.heads.categorical import CategoricalHead
# isort: on

__all__ = [
    "HEADS", "CategoricalHead", "ExportSpec", "GaussianHead", "HeadOption", "RewardHead", "ScalarHead",
    "build_head", "head_class", "register_head", "soft_label_loss",
]
