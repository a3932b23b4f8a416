"""``RewardModelConfig``: the one typed description a reward model carries, saved as ``discorm_config.json``.

Trainer, metrics, scoring, server and export read it instead of re-deriving facts from the weights or the
training arguments. Version 1 files (DiscoRM 0.1.0, no ``version`` key) are migrated on load; version 2 to 4 files
lack only fields that have defaults (the reward normalisation; where the score is read; the reasoning rule and the
template variables).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from discorm.data.templates import REASONING
from discorm.data.tokenize import SCORE_POSITIONS
from discorm.errors import ConfigError, ModelError, check_range
from discorm.files import read_json, write_text
from discorm.model.heads import head_class

CONFIG_FILE = "discorm_config.json"
VERSION = 5
REWARD_MODES = ("mean", "lower_quantile", "mean_minus_std", "lcb", "uwo", "min", "entropic")


def check_reward_options(mode: str | None = None, alpha: float | None = None, k: float | None = None,
                         head=None, flags: bool = False, uncertainty: str | None = None) -> None:
    """The one rule for the options that turn a reward distribution into one number, wherever they are given
    (config, ``discorm eval``, ``discorm score``, a server request): a known mode, a head with a spread when the
    mode needs one (lcb and uwo: epistemic uncertainty; min: an ensemble), a quantile level inside (0, 1) and
    k >= 0. ``None``: not given. ``uncertainty``: the one a head class (``head``) will be wrapped with. Raises
    ConfigError naming the key, as a command-line flag (``--reward-alpha``) with ``flags``."""

    def name(key: str) -> str:
        return f"--{key.replace('_', '-')}" if flags else key

    if mode is not None and mode not in REWARD_MODES:
        raise ConfigError(f"{name('reward_mode')}={mode!r} is not valid; use one of {', '.join(REWARD_MODES)}.")
    if mode not in (None, "mean") and head is not None:
        kind = uncertainty or head.uncertainty
        epistemic = head.epistemic or bool(kind)
        if mode == "min" and kind != "ensemble":
            raise ConfigError(f"{name('reward_mode')}=min is the worst member of an ensemble; this model has "
                              f"{kind or 'no epistemic uncertainty'}. Train with `uncertainty: ensemble`, or use "
                              "lcb or uwo.")
        if mode in ("lcb", "uwo") and not epistemic:
            raise ConfigError(f"{name('reward_mode')}={mode!r} needs epistemic uncertainty (sigma_epistemic), which "
                              f"this model's {head.kind} head does not have; train with `uncertainty: laplace` or "
                              "`uncertainty: ensemble`, or use mean.")
        if not (head.distributional or epistemic):
            raise ConfigError(f"{name('reward_mode')}={mode!r} needs a distributional head; this model's "
                              f"{head.kind} head has no spread, so use mean.")
    for key, value in (("reward_alpha", alpha), ("reward_k", k)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ConfigError(f"{name(key)}={value!r} must be a finite number.")
    check_range(name("reward_alpha"), alpha, low=1e-6, high=1 - 1e-6)
    check_range(name("reward_k"), k, low=0)


@dataclass
class RewardModelConfig:
    """The typed description a model carries of itself, saved as ``discorm_config.json`` next to the weights:
    the head and its saved options, pooling and where the score is read, template and cutoff, the reward mode, the
    temperature, the normalisation and the epistemic uncertainty. Every reader (trainer, scoring, server, export)
    asks it."""

    head: str = "scalar"
    head_options: dict = field(default_factory=dict)  # the head's saved options (num_atoms, ...)
    pooling: str = "last"
    # which token of a rendered conversation the score is read at (data/tokenize.py SCORE_POSITIONS): DiscoRM's own
    # end_of_turn, or an imported model's own rule (last_token: LlamaFactory; last_non_pad: transformers' classifiers)
    score_at: str = "end_of_turn"
    pad_token_id: int | None = None  # last_non_pad: the id the score is never read at (the classifier's pad)
    template: str | None = None  # chat template it was trained with (None: the tokenizer's own)
    cutoff_len: int | None = None  # token budget of prompt + response, as in training
    reward_mode: str = "mean"
    reward_alpha: float = 0.1
    reward_k: float = 1.0
    temperature: float = 1.0  # fitted on held-out pairs by temperature scaling (scalar head)
    base_model: str | None = None  # what the backbone (or the LoRA adapter's base) was loaded from
    finetuning_type: str = "full"
    imported_from: str | None = None  # llamafactory, sequence_classification, pretrained
    quantization: dict | None = None  # QLoRA: the ModelArguments quantization_* values of the base
    # reward_normalization: the reward handed out is (r - reward_mean) / reward_std, measured on `normalized_on`
    reward_mean: float = 0.0
    reward_std: float = 1.0
    normalized_on: str | None = None
    uncertainty: str | None = None  # epistemic uncertainty: laplace or ensemble (model/heads/uncertainty.py)
    ensemble_size: int = 1
    reasoning: str | None = None  # data/templates.py REASONING: what became of reasoning traces (None: the template's)
    chat_template_kwargs: dict = field(default_factory=dict)  # the run's template variables
    version: int = VERSION

    def __post_init__(self):
        if self.reward_mode not in REWARD_MODES:
            raise ModelError(f"reward_mode={self.reward_mode!r} is not one of {', '.join(REWARD_MODES)}.")
        if self.score_at not in SCORE_POSITIONS:
            raise ModelError(f"score_at={self.score_at!r} is not one of {', '.join(SCORE_POSITIONS)}; restore "
                             f"{CONFIG_FILE}.")
        if self.reasoning is not None and self.reasoning not in REASONING:
            raise ModelError(f"reasoning={self.reasoning!r} is not one of {', '.join(REASONING)} or null; restore "
                             f"{CONFIG_FILE}.")
        if not self.reward_std > 0:
            raise ModelError(f"reward_std={self.reward_std!r} must be positive; delete the normalisation fields "
                             "(reward_mean, reward_std, normalized_on) or train again.")

    @property
    def is_lora(self) -> bool:
        return self.finetuning_type == "lora"

    def save(self, directory: str | Path) -> None:
        write_text(Path(directory, CONFIG_FILE), json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> RewardModelConfig:
        file = Path(directory, CONFIG_FILE)
        data = read_json(file, ModelError, fix="restore the file")
        if not isinstance(data, dict):
            raise ModelError(f"{file}: expected a JSON object, found {type(data).__name__}.")
        return cls.from_dict(data, str(file))

    @classmethod
    def from_dict(cls, data: dict, where: str = CONFIG_FILE) -> RewardModelConfig:
        data = dict(data)
        version = data.pop("version", 1)
        if not isinstance(version, int) or version > VERSION:
            raise ModelError(
                f"{where}: version {version!r} was written by a newer DiscoRM than this one (reads up to "
                f"{VERSION}); upgrade discorm."
            )
        if version == 1:
            data = _migrate_v1(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known - {'version'})}.")
        missing = [name for name in ("head", "finetuning_type") if name not in data]
        if missing:
            raise ModelError(f"{where}: missing field(s) {missing}; the run directory is incomplete.")
        return cls(**data)


def _migrate_v1(data: dict) -> dict:
    """0.1.0 stored the loss coefficients with the head options and had no version."""
    data = dict(data)
    options = data.get("head_options") or {}
    cls = head_class(data.get("head", "scalar"))
    data["head_options"] = {k: v for k, v in options.items() if cls.option(k) is not None and cls.option(k).saved}
    return data
