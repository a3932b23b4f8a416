"""DiscoRM: pairwise and distributional reward models for LLM alignment."""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "RewardModel": "discorm.model.reward_model",
    "RewardModelOutput": "discorm.model.reward_model",
    "ModelArguments": "discorm.config",
    "DataArguments": "discorm.config",
    "FinetuningArguments": "discorm.config",
    "TrainingArguments": "discorm.config",
    "load_args": "discorm.config",
    "run_rm": "discorm.train.workflow",
    "PairwiseTrainer": "discorm.train.trainer",
    "PairwiseDataCollatorWithPadding": "discorm.data.collator",
    "PackedPairCollator": "discorm.data.collator",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import lazily, so `discorm --version` and `discorm env` start without loading torch."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'discorm' has no attribute {name!r}")
