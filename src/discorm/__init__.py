"""DiscoRM: pairwise and distributional reward models for LLM alignment."""

from importlib import import_module

__version__ = "0.1.0"

# The public API: everything a user imports is here (and in the docs' API reference); every other module is
# internal and may change. Grouped as the reference page is: model, configuration, training, heads, export, errors.
_EXPORTS = {
    "RewardModel": "discorm.model.reward_model",
    "RewardModelOutput": "discorm.model.reward_model",
    "RewardModelConfig": "discorm.model.rm_config",
    "ModelArguments": "discorm.config",
    "DataArguments": "discorm.config",
    "FinetuningArguments": "discorm.config",
    "TrainingArguments": "discorm.config",
    "load_args": "discorm.config",
    "run_rm": "discorm.train.workflow",
    "PairwiseTrainer": "discorm.train.trainer",
    "PairwiseDataCollatorWithPadding": "discorm.data.collator",
    "PackedPairCollator": "discorm.data.collator",
    "RewardHead": "discorm.model.heads.base",
    "HeadOption": "discorm.model.heads.base",
    "Attribute": "discorm.model.heads.base",
    "ExportSpec": "discorm.model.heads.base",
    "register_head": "discorm.model.heads.base",
    "export_sequence_classification": "discorm.serve.export",
    "DiscoRMError": "discorm.errors",
    "ConfigError": "discorm.errors",
    "DataError": "discorm.errors",
    "ModelError": "discorm.errors",
    "DestinationError": "discorm.errors",
    "TrainingError": "discorm.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import lazily, so `discorm --version` and `discorm env` start without loading torch."""
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'discorm' has no attribute {name!r}")
