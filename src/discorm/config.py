"""The argument dataclasses and how a YAML file plus ``key=value`` overrides become them.

One flat namespace, as in LlamaFactory: every key of every dataclass may appear at the top level of the YAML file
or on the command line; ``transformers.HfArgumentParser`` routes each key to its dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any

import transformers
import yaml

from discorm.data.formats import FORMATTING_CHOICES, describe_formats
from discorm.data.loader import ReadOptions
from discorm.data.templates import CALL_ARGUMENTS, REASONING, REASONING_DEFAULT
from discorm.data.tokenize import DEFAULT_CUTOFF_LEN
from discorm.errors import ConfigError, check_choice, check_range
from discorm.files import read_utf8
from discorm.losses import LIST_WEIGHTINGS, RANKING_LOSSES, RATING_TARGETS, STRENGTH_LOSSES
from discorm.model.builtin import DEFAULT_MODEL
from discorm.model.heads import HEADS, UNCERTAINTIES
from discorm.model.loading import QUANTIZATION_KEYS, Finetuning, LoadOptions, Uncertainty
from discorm.model.packed import ATTENTION_BACKENDS
from discorm.model.rm_config import check_reward_options

logger = logging.getLogger(__name__)

FINETUNING_TYPES = ("full", "lora", "freeze")
POOLINGS = ("last", "first", "mean")
DTYPES = ("auto", "float32", "bfloat16", "float16")
FORMATTINGS = FORMATTING_CHOICES  # auto, then every registered format (data/formats.py), read at each check
COMBINATIONS = ("fixed", "learned")


def _arg(default: Any, help: str, **kwargs):
    """A dataclass field with its help text (read by HfArgumentParser and `discorm keys`)."""
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelArguments:
    """Which backbone and tokenizer to load, and how."""

    model_name_or_path: str = _arg(
        DEFAULT_MODEL,
        f"Backbone: '{DEFAULT_MODEL}' (built-in, fetched and cached on first use), a local model "
        "directory, a DiscoRM run directory, or a Hugging Face Hub id.")
    tokenizer_name_or_path: str | None = _arg(
        None, "Tokenizer to use when it differs from model_name_or_path.")
    trust_remote_code: bool = _arg(
        False, "Allow model code from the Hub to run. Off unless you trust the source.")
    dtype: str = _arg(
        "auto",
        "Weight dtype: auto (float32 on CPU, the checkpoint's dtype on GPU), float32, bfloat16, float16.")
    attn_implementation: str | None = _arg(
        None, "Attention kernel (sdpa, eager, flash_attention_2, ...); default: sdpa when available.")
    cache_dir: str | None = _arg(None, "Where Hub downloads are cached.")
    attention_backend: str = _arg(
        "auto", "Packed batches: auto (FlexAttention on GPUs, split SDPA on CPUs and wherever FlexAttention fails "
        "to compile), sdpa_split, flex (one compiled FlexAttention call per layer; no CPU training).")
    quantization_bit: int | None = _arg(
        None, "Quantize the base with bitsandbytes to 4 or 8 bits and train LoRA adapters on it (QLoRA).")
    quantization_type: str = _arg("nf4", "4-bit quantization data type: nf4 or fp4.")
    double_quantization: bool = _arg(True, "4-bit: also quantize the quantization constants.")

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("quantization_bit", self.quantization_bit, (None, 4, 8))
        check_choice("quantization_type", self.quantization_type, ("nf4", "fp4"))
        check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer_name_or_path or self.model_name_or_path

    def load_options(self) -> LoadOptions:
        quantization = {key: getattr(self, key) for key in QUANTIZATION_KEYS} if self.quantization_bit else None
        return LoadOptions(self.dtype, self.trust_remote_code, self.cache_dir, self.attn_implementation,
                           self.attention_backend, quantization)


@dataclass
class DataArguments:
    """Which preference data to read and how to turn it into token sequences."""

    dataset: str | None = _arg(
        "demo",
        "Training data: 'demo' (built-in pairs), 'demo_rated' (built-in rated responses), a file or folder "
        "(jsonl/json/parquet/csv), a name in dataset_dir/dataset_info.json, or a Hub id; several joined by "
        "commas (pairs and rated rows may mix).")
    eval_dataset: str | None = _arg(
        None, "Evaluation data, same forms as `dataset`; default: the val_size split.")
    dataset_dir: str = _arg("data", "Folder holding a LlamaFactory-style dataset_info.json and data files.")
    formatting: str = _arg(
        "auto",
        f"Input format: auto (detected from the columns), or one of: {describe_formats()}.")
    template: str | None = _arg(
        None,
        "Chat template: default the tokenizer's own; built-ins: chatml, llama3, qwen, raw (plain "
        "concatenation).")
    cutoff_len: int = _arg(
        DEFAULT_CUTOFF_LEN,
        "Max tokens of prompt + response; the prompt is cut first (oldest turns), ends are kept.")
    val_size: float = _arg(0.0, "Held-out share (0 < x < 1) or count (x >= 1) of pairs, split with `seed`.")
    calibration_data: str | None = _arg(
        None,
        "temperature_scaling: pairs to fit the temperature on, same forms as `dataset`; default: a "
        "calibration_size share held out of the training data. Never the evaluation pairs.")
    calibration_size: float = _arg(
        0.1, "temperature_scaling without calibration_data: share (0 < x < 1) or count (x >= 1) of training "
        "pairs held out (not trained on) to fit the temperature.")
    max_samples: int | None = _arg(None, "Use at most this many pairs from each data set (for quick runs).")
    preprocessing_num_workers: int | None = _arg(None, "Processes for tokenization (datasets.map num_proc).")
    strict_data: bool = _arg(
        False, "Turn skippable data problems (empty response, identical pair) into errors.")
    margin_column: str = _arg("margin", "Column with a per-pair margin for the loss, used when present.")
    soft_label_column: str = _arg(
        "soft_label", "Column with the fraction of annotators preferring `chosen`, used when present.")
    noise_column: str = _arg(
        "noise",
        "Column with a per-pair noise/disagreement level; evaluation reports its correlation with the "
        "predicted spread of distributional heads.")
    strength_scale: float | None = _arg(
        None, "The largest |strength| the data's `strength` column may hold (e.g. 3 for -3..3; a negative strength "
        "means rejected is better); a row beyond it stops the load. HelpSteer3 rows use 3.")
    overwrite_cache: bool = _arg(False, "Re-tokenize even if a cached copy exists.")
    pad_to_multiple_of: int | None = _arg(
        None, "Pad padded batches to a multiple of this (e.g. 8 for tensor cores).")
    prefix_sharing: bool = _arg(
        True,
        "In packed batches, run each pair as one block [prompt | chosen | rejected], and each ranked list as one "
        "block [prompt | r_1 | ... | r_K], so the prompt is computed once (exact).")
    packing: bool = _arg(
        True,
        "Pack the pairs of a batch into one row with no padding (exact; decoder models with last-token "
        "pooling; others get padded batches and the log says why). false: padded batches.")
    group_by_length: bool = _arg(
        False,
        "Train on batches of pairs of similar length (the Trainer's length-grouped sampler): cuts padding in"
        " padded batches. Evaluation keeps the data order.")
    normalization_dataset: str | None = _arg(
        None,
        "reward_normalization: the reference set whose responses' rewards get mean 0 and std 1, same forms as "
        "`dataset`; default: the training data.")
    reasoning: str | None = _arg(
        None,
        "What becomes of an assistant's reasoning trace in training, scoring and re-templating (saved with the "
        f"model): strip ({REASONING['strip']}); keep ({REASONING['keep']}); {REASONING_DEFAULT}.")
    chat_template_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Template variables for every conversation (e.g. {enable_thinking: false}); a row's own "
                          "`chat_template_kwargs` override them. Saved with the model."})

    def __post_init__(self):
        check_choice("formatting", self.formatting, FORMATTINGS)
        check_choice("reasoning", self.reasoning, (None, *REASONING))
        if clash := sorted(CALL_ARGUMENTS & set(self.chat_template_kwargs or {})):
            raise ConfigError(f"chat_template_kwargs {clash} name arguments of the template call itself, not "
                              "template variables; rename or drop them.")
        check_range("cutoff_len", self.cutoff_len, low=8)
        check_range("val_size", self.val_size, low=0)
        check_range("calibration_size", self.calibration_size, low=0)
        check_range("max_samples", self.max_samples, low=1)

    def read_options(self) -> ReadOptions:
        rated_heads = tuple(kind for kind, head in HEADS.items() if head.learns_ratings)
        return ReadOptions(self.dataset_dir, self.formatting, self.margin_column, self.soft_label_column,
                           self.noise_column, self.max_samples, self.strict_data, rated_heads, self.strength_scale)


@dataclass
class FinetuningArguments:
    """Which parameters train, which head sits on the backbone, and the pairwise loss."""

    finetuning_type: str = _arg("lora", "full (all weights), lora (PEFT adapters), freeze (last N blocks).")
    lora_rank: int = _arg(8, "LoRA rank r.")
    lora_alpha: int | None = _arg(None, "LoRA alpha; default 2 * lora_rank.")
    lora_dropout: float = _arg(0.0, "LoRA dropout.")
    lora_target: str = _arg(
        "all", "Comma-separated module names for LoRA, or 'all' for every linear layer of the backbone.")
    freeze_trainable_layers: int | None = _arg(
        None, "finetuning_type: freeze: how many of the last transformer blocks train (the head always does); "
        "default 2.")
    head: str | None = _arg(
        None,
        "Reward head: scalar (the default), gaussian (mean + variance), categorical (distribution over atoms), "
        "regression (rated scores), multi_objective (one output per rated attribute, combined into the reward).")
    disco: bool = _arg(False, "Shorthand for head: gaussian (with another head it is refused).")
    pooling: str = _arg(
        "last", "Token whose hidden state is scored: last (last real token), first (BERT-style), mean.")
    head_options: dict = field(
        default_factory=dict,
        metadata={"help": "Options of the chosen head (see 'Head options'); each may also be a top-level key."},
    )
    head_learning_rate: float | None = _arg(
        None,
        "Learning rate of the reward head's parameters (default: learning_rate). A new head on a slowly tuned "
        "backbone needs a larger one for a distributional head's spread to learn.")
    center_rewards_coefficient: float | None = _arg(
        None, "Adds coef * mean((r_chosen + r_rejected)^2) to keep rewards centred.")
    reward_mode: str = _arg(
        "mean",
        "Scalar reward handed out: mean, lower_quantile (alpha-quantile), mean_minus_std (mean - k * std), entropic "
        "(-(1/k) log E[exp(-k * reward)], the exponential-utility certainty equivalent); with "
        "epistemic uncertainty also lcb (mean - k * sigma_epistemic), uwo (mean - k * sigma_epistemic^2) and, for "
        "an ensemble, min (its worst member).")
    reward_alpha: float = _arg(0.1, "lower_quantile: the quantile level alpha.")
    reward_k: float = _arg(1.0, "mean_minus_std and lcb: the number of standard deviations k; uwo: the weight of "
                           "the epistemic variance; entropic: the risk aversion k = 1/beta (0: the mean).")
    uncertainty: str | None = _arg(
        None, "Epistemic uncertainty for any head: laplace (a Laplace posterior over a last layer on the pooled "
        "features, fitted on the training pairs after training) or ensemble (ensemble_size heads on the shared "
        "backbone, each trained on a bootstrap resample of the pairs).")
    ensemble_size: int = _arg(5, "uncertainty: ensemble: the number of heads K.")
    ensemble_bootstrap: bool = _arg(
        True, "uncertainty: ensemble: weigh each pair by a Poisson(1) draw per head (false: every head sees every "
        "pair once; the heads then differ only by their initialisation).")
    laplace_prior_precision: float | None = _arg(
        None, "uncertainty: laplace: the prior precision lambda of the last layer (default: chosen by maximising "
        "the marginal likelihood on the training pairs).")
    temperature_scaling: bool = _arg(
        False, "scalar: fit a temperature on calibration pairs (calibration_data or a held-out share of the "
        "training data, never the evaluation pairs) before reporting calibration.")
    combination: str = _arg(
        "fixed",
        "multi_objective: fixed (attribute_weights from the config; pairs and ratings train together) or learned "
        "(stage 1 trains on the rated rows, stage 2 fits the weights on the pairs of `dataset` with everything "
        "else frozen).")
    rated_loss_weight: float = _arg(
        1.0, "Weight of a rated response's loss against a pair's, when the data mixes both.")
    ranking_loss: str = _arg("auto", RANKING_LOSSES.help())
    list_weighting: str = _arg("comparison", LIST_WEIGHTINGS.help())
    strength_loss: str = _arg("margin", STRENGTH_LOSSES.help())
    strength_margin: float = _arg(1.0, "strength_loss: margin: the reward margin per unit of strength.")
    reward_normalization: bool = _arg(
        False,
        "After training, shift and scale the reward to mean 0 and std 1 on a reference set (normalization_dataset)"
        "; stored with the model and applied by scoring, the server and the export.")
    rating_target: str = _arg("all", RATING_TARGETS.help())
    lora_vision_tower: bool = _arg(
        False, "A vision-language model with lora_target: all: LoRA on the vision tower and projector too (by default "
        "on the language model only).")
    train_vision_tower: bool = _arg(
        False, "A vision-language model's vision tower and projector train in full under finetuning_type: freeze or "
        "lora too (by default it stays as loaded).")
    cache_frozen_trunk: bool = _arg(
        False, "finetuning_type: freeze: compute the frozen blocks' output for the training rows once, before the "
        "first step, and train the top blocks and the head from it in every epoch (the same losses and gradients).")
    cache_frozen_trunk_max_gb: float = _arg(
        4.0, "cache_frozen_trunk: the largest cache allowed, in GB (tokens x hidden size x bytes per value, on the "
        "training device); a larger one is refused before it is built.")

    def __post_init__(self):
        if self.disco and self.head not in (None, "gaussian"):
            raise ConfigError(f"disco: true is shorthand for head: gaussian, and head={self.head!r} asks for another "
                              f"head; remove disco, or set head: gaussian.")
        self.head = "gaussian" if self.disco else self.head or "scalar"
        try:
            self._check()
        except ConfigError as err:
            if self.disco and "gaussian" in str(err):  # the user wrote disco, not head: say where the head came from
                raise ConfigError(f"{err} (disco: true is shorthand for head: gaussian.)") from None
            raise

    def _check(self) -> None:
        check_choice("finetuning_type", self.finetuning_type, FINETUNING_TYPES)
        if self.freeze_trainable_layers is not None and self.finetuning_type != "freeze":
            raise ConfigError(f"freeze_trainable_layers={self.freeze_trainable_layers} applies to finetuning_type: "
                              f"freeze, and finetuning_type={self.finetuning_type!r} would ignore it; remove "
                              "freeze_trainable_layers, or set finetuning_type: freeze.")
        check_choice("head", self.head, tuple(HEADS))
        self.head_options = HEADS[self.head].resolve_options(dict(self.head_options or {}))
        if self.temperature_scaling and not HEADS[self.head].supports_temperature:
            raise ConfigError(f"temperature_scaling applies to heads whose P(chosen > rejected) has a temperature "
                              f"({', '.join(k for k, h in HEADS.items() if h.supports_temperature)}); the "
                              f"{self.head} head is calibrated by its own spread. Remove temperature_scaling.")
        HEADS[self.head].attributes_from(self.head_options)  # a head that reads ratings checks its attributes
        check_choice("combination", self.combination, COMBINATIONS)
        if self.combination == "learned" and not HEADS[self.head].learns_combination:
            raise ConfigError(f"combination=learned fits the weights that combine attributes, which the {self.head} "
                              f"head does not have (heads that do: "
                              f"{', '.join(k for k, h in HEADS.items() if h.learns_combination)}).")
        check_range("rated_loss_weight", self.rated_loss_weight, low=0)
        check_choice("rating_target", self.rating_target, RATING_TARGETS)
        RANKING_LOSSES.check(self.ranking_loss, HEADS[self.head])
        check_choice("list_weighting", self.list_weighting, LIST_WEIGHTINGS)
        check_choice("strength_loss", self.strength_loss, STRENGTH_LOSSES)
        check_range("strength_margin", self.strength_margin, low=0)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("uncertainty", self.uncertainty, (None, *UNCERTAINTIES))
        check_range("ensemble_size", self.ensemble_size, low=1)
        check_range("laplace_prior_precision", self.laplace_prior_precision, low=1e-12)
        if self.uncertainty == "ensemble" and self.temperature_scaling:
            raise ConfigError("temperature_scaling fits one temperature to one head's P(chosen > rejected); an "
                              "ensemble averages its members' probabilities. Remove temperature_scaling, or use "
                              "uncertainty: laplace.")
        if self.uncertainty == "ensemble" and self.combination == "learned":
            raise ConfigError("combination: learned fits one set of attribute weights, and an ensemble has one per "
                              "head; use combination: fixed with uncertainty: ensemble, or uncertainty: laplace.")
        check_reward_options(self.reward_mode, self.reward_alpha, self.reward_k, HEADS[self.head],
                             uncertainty=self.uncertainty)
        check_range("lora_rank", self.lora_rank, low=1)
        check_range("lora_dropout", self.lora_dropout, low=0, high=1)
        check_range("freeze_trainable_layers", self.freeze_trainable_layers, low=0)
        check_range("head_learning_rate", self.head_learning_rate, low=0)
        if self.cache_frozen_trunk and self.finetuning_type != "freeze":
            raise ConfigError(f"cache_frozen_trunk caches the frozen blocks of finetuning_type: freeze, and "
                              f"finetuning_type={self.finetuning_type!r} trains them all. Set finetuning_type: "
                              "freeze, or remove cache_frozen_trunk.")
        check_range("cache_frozen_trunk_max_gb", self.cache_frozen_trunk_max_gb, low=0)
        if self.lora_alpha is None:
            self.lora_alpha = 2 * self.lora_rank

    def uncertainty_config(self) -> Uncertainty:
        size = self.ensemble_size if self.uncertainty == "ensemble" else 1
        return Uncertainty(self.uncertainty, size, self.ensemble_bootstrap)

    def finetuning(self) -> Finetuning:
        layers = self.freeze_trainable_layers
        return Finetuning(self.finetuning_type, self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_target,
                          Finetuning.freeze_trainable_layers if layers is None else layers,
                          lora_vision_tower=self.lora_vision_tower, train_vision_tower=self.train_vision_tower)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """``transformers.TrainingArguments`` with defaults that suit reward models."""

    output_dir: str | None = _arg("saves/discorm", "Where checkpoints and logs go.")
    overwrite_output_dir: bool = _arg(
        False, "Train into an output_dir that already holds a trained model or checkpoints, replacing them (without "
        "it such a folder is refused; resume_from_checkpoint continues it instead).")
    remove_unused_columns: bool = _arg(
        False, "Kept False: the pairwise collator needs every tokenized column.")
    logging_steps: float = _arg(10, "Log every N steps.")
    per_device_train_batch_size: int = _arg(4, "Pairs per device per step.")
    per_device_eval_batch_size: int = _arg(8, "Pairs per device per eval step.")
    ddp_find_unused_parameters: bool | None = _arg(
        False, "DDP: look for parameters without gradients each step (every reward-model parameter gets one).")
    skip_nonfinite_batches: bool = _arg(
        False,
        "A batch whose loss is nan/inf is skipped (no gradient) and counted; false: training stops with an error "
        "naming the step and the batch's data rows.")

    do_train: bool = _arg(True, "Train (run_rm always trains; evaluate a trained model with `discorm eval`).")

    def __post_init__(self):
        # Checked before any data or model is loaded, with the key named (transformers would fail much later).
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            check_range(key, getattr(self, key), low=1)
        for key in ("learning_rate", "weight_decay", "max_grad_norm", "num_train_epochs", "seed"):
            check_range(key, getattr(self, key), low=0)
        check_range("warmup_steps", self.warmup_steps, low=0)
        check_range("max_steps", self.max_steps, low=-1)
        for key in ("logging_steps", "save_steps", "eval_steps"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{key}={value!r} must be above 0 (a step count, or a fraction of the run below 1).")
        if self.do_train and self.max_steps <= 0 and self.num_train_epochs == 0:
            raise ConfigError("num_train_epochs=0 trains nothing; set num_train_epochs above 0 (or max_steps).")
        super().__post_init__()


def check_output_dir(args: TrainingArguments) -> None:
    """Refuse a run that would not train (``do_train: false``), and one that would train into a folder holding a
    trained model or checkpoints, unless asked to replace them (``overwrite_output_dir``) or to continue them
    (``resume_from_checkpoint``)."""
    if not args.do_train:
        raise ConfigError("do_train: false asks only to evaluate; evaluate a trained model with `discorm eval "
                          "MODEL --data NAME=PATH` (Python: discorm.eval.runner.run_evaluation), or remove do_train.")
    out = Path(args.output_dir)
    file = next((path for path in (out, *out.parents) if path.exists() and not path.is_dir()), None)
    if file is not None:
        raise ConfigError(f"output_dir={str(out)!r}: {str(file)!r} is a file, and training writes a folder there; "
                          "choose another output_dir.")
    if args.overwrite_output_dir or args.resume_from_checkpoint or not out.is_dir():
        return
    found = sorted(p.name for p in out.iterdir() if p.name in RUN_FILES or (
        p.is_dir() and p.name.startswith("checkpoint-")))
    if found:
        raise ConfigError(
            f"output_dir={str(out)!r} already holds a trained run ({', '.join(found[:4])}"
            f"{', ...' if len(found) > 4 else ''}), which training would replace. Choose another output_dir, set "
            "overwrite_output_dir: true to replace it, or resume_from_checkpoint: latest to continue it.")


RUN_FILES = ("discorm_config.json", "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
             "value_head.safetensors")


def validate(data_args: DataArguments, finetuning_args: FinetuningArguments, head, train, evaluation) -> None:
    """The checks that need the data and the model together (each section checks its own keys): the attributes of
    a run being continued, the two kinds of data a learned combination needs, margins the head must honour."""
    declared = HEADS[finetuning_args.head].attributes_from(finetuning_args.head_options)
    if head.attributes != declared:
        raise ConfigError(f"the model being continued predicts {[a.name for a in head.attributes]}, the config "
                          f"declares {[a.name for a in declared]}; make `attributes` and `score_range` match the "
                          "run, or train a new head.")
    if finetuning_args.combination == "learned":
        kinds = {"pairs": "chosen_ids", "rated rows": "response_ids"}
        missing = [kind for kind, column in kinds.items()
                   if column not in train.column_names or all(v is None for v in train[column])]
        if missing:
            raise ConfigError(f"combination: learned trains the attributes on rated rows, then fits the weights "
                              f"that combine them on pairs, and {data_args.dataset} has no {missing[0]}; add a "
                              f"{'rated' if missing[0] == 'rated rows' else 'preference'} data set to `dataset` "
                              "(e.g. dataset: ratings.jsonl,pairs.jsonl), or set combination: fixed with "
                              "attribute_weights.")
    if not head.supports_margin and any(d is not None and "margin" in d.column_names for d in (train, evaluation)):
        raise ConfigError(f"the data has a `{data_args.margin_column}` column, which the {head.kind} head cannot "
                          "use; drop the column or set margin_column to a name the data lacks.")
    strengths = any(d is not None and "strength" in d.column_names for d in (train, evaluation))
    if strengths:
        STRENGTH_LOSSES.check(finetuning_args.strength_loss, head)


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch) started for this job."""
    return int(os.environ.get("WORLD_SIZE", "1"))


ARG_CLASSES = (ModelArguments, DataArguments, TrainingArguments, FinetuningArguments)
Args = tuple[ModelArguments, DataArguments, TrainingArguments, FinetuningArguments]


def _known_keys() -> dict[str, Any]:
    """Every accepted key and its type annotation (head options: the type of their default)."""
    keys = {}
    for cls in ARG_CLASSES:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.init:
                keys[f.name] = hints.get(f.name, f.type)
    for head in HEADS.values():
        for option in head.options:
            keys.setdefault(option.name, type(option.default))
    return keys


def _field_help() -> dict[str, str]:
    """The help of every DiscoRM-declared key (transformers' own keys are documented by transformers)."""
    own = (ModelArguments, DataArguments, FinetuningArguments)
    return {f.name: f.metadata.get("help", "") for cls in own for f in fields(cls)} | {
        name: TrainingArguments.__dataclass_fields__[name].metadata.get("help", "")
        for name in TrainingArguments.__annotations__}


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML / command-line value has the field's type (a bool is not a number; an int is a float)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation in (int, float):
        return isinstance(value, int if annotation is int else (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(item, args[0] if args else Any) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, annotation) if isinstance(annotation, type) else True


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              dict: "a mapping (key: value)", list: "a list", type(None): "null"}
PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
VALUE_KINDS = {bool: "a boolean", int: "an integer", float: "a decimal number", str: "a string", dict: "a mapping",
               list: "a list", type(None): "null"}


def _describe(annotation: Any) -> str:
    """A field's type in words: ``int | None`` -> 'an integer or null'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))
    if origin is typing.Literal:
        return " or ".join(map(repr, args))
    if origin in (list, tuple):
        return f"a list of {PLURALS.get(args[0], f'{_describe(args[0])} values')}" if args else "a list"
    if origin is dict:
        return "a mapping (key: value)"
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_types(values: dict, known: dict[str, Any]) -> None:
    """Every given key of an argument dataclass (transformers' TrainingArguments keys included) against the
    field's type, before any dataclass sees it: the error names the key, the value and the expected type."""
    helps, options = _field_help(), _head_option_names()
    for key, value in values.items():
        if key in options:  # a head option: checked by its head (HeadOption.check)
            continue
        annotation = known[key] | bool if key in SWITCHES else known[key]
        if not _matches(value, annotation):
            got = VALUE_KINDS.get(type(value), f"a {type(value).__name__}")
            about = f" {key}: {helps[key]}" if helps.get(key) else ""
            raise ConfigError(f"{key}={value!r} is {got}; {key} takes {_describe(annotation)}.{about}")


def _head_option_names() -> set[str]:
    return {option.name for head in HEADS.values() for option in head.options}


SWITCHES = ("fsdp",)  # typed `str | None` by transformers for legacy strings, but switched on with true


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Turn command-line strings (and YAML's `1e-5`, which YAML reads as a string) into the field's type; a path
    object (Python callers) is its string."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    types = typing.get_args(annotation) or (annotation,)
    if key in SWITCHES and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, str) or str in types:
        if isinstance(value, int) and not isinstance(value, bool) and float in types and int not in types:
            return float(value)
        return value
    if value.lower() in ("none", "null", "~") and type(None) in types:
        return None
    if bool in types:
        if value.lower() in ("true", "yes", "1", "on"):
            return True
        if value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false.")
    for number in (int, float):
        if number in types:
            try:
                return number(value)
            except ValueError:
                if number is int and float in types:
                    continue
                raise ConfigError(f"{key}={value!r} is not a valid {number.__name__}.") from None
    return value


class _DuplicateKey(yaml.YAMLError):
    """A key given twice in one YAML mapping, with the lines (1-based) of both."""

    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(key, lines)
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        lines = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in lines:
                raise _DuplicateKey(key, (lines[key] + 1, key_node.start_mark.line + 1))
            lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path} does not exist; pass the path of a YAML file (see examples/).")
    try:
        data = yaml.load(read_utf8(file, ConfigError), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as err:
        raise ConfigError(f"{path}:{err.lines[1]}: the key {err.key!r} is given twice (lines {err.lines[0]} and "
                          f"{err.lines[1]}), and only one value can hold; keep one.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"{where}: invalid YAML ({getattr(err, 'problem', err)}); fix the syntax there.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value pairs, got a {type(data).__name__}.")
    return data


def parse_overrides(items: list[str]) -> dict:
    """`key=value` strings from the command line -> dict (values stay strings; typed later)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. learning_rate=1e-5).")
        out[key.strip().lstrip("-").replace("-", "_")] = value
    return out


def given_values(config: str | dict | None = None, overrides: list[str] | dict | None = None) -> dict:
    """The keys a YAML file (or dict) and its overrides set, before defaults are filled in (values untyped)."""
    values = dict(_read_yaml(config) if isinstance(config, (str, os.PathLike)) else (config or {}))
    changed = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    layers = values.get("freeze_trainable_layers")
    if (layers is not None and "freeze_trainable_layers" not in changed
            and changed.get("finetuning_type", "freeze") != "freeze"):
        # `discorm train freeze.yaml finetuning_type=lora`: the file's freeze option belongs to the type overridden
        logger.warning("finetuning_type=%s overrides the file's finetuning_type, and its freeze_trainable_layers=%s "
                       "(which applies to finetuning_type: freeze only) is dropped.",
                       changed["finetuning_type"], layers)
        del values["freeze_trainable_layers"]
    values.update(changed)
    return values


def load_args(
    config: str | dict | None = None, overrides: list[str] | dict | None = None, defaults: dict | None = None
) -> Args:
    """Build the four argument dataclasses from defaults, then a YAML file (or dict), then overrides."""
    values = {**(defaults or {}), **given_values(config, overrides)}
    known = _known_keys()
    unknown = [key for key in values if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        source = f" in {config}" if isinstance(config, str) else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''}{source}: {', '.join(hints)}. "
            "Run `discorm train --help-keys` for the full list."
        )
    typed = {key: _coerce(key, value, known[key]) for key, value in values.items()}
    check_types(typed, known)
    options = {key: typed.pop(key) for key in _head_option_names() & set(typed)}
    if options:
        typed["head_options"] = {**(typed.get("head_options") or {}), **options}
    parser = transformers.HfArgumentParser(ARG_CLASSES)
    try:
        model_args, data_args, training_args, finetuning_args = parser.parse_dict(typed)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"invalid configuration: {err}") from None
    return model_args, data_args, training_args, finetuning_args


def reference_markdown() -> str:
    """The config reference (every DiscoRM key with its default and help), as a Markdown table per section."""
    lines = []
    for cls in (ModelArguments, DataArguments, FinetuningArguments, TrainingArguments):
        lines += [f"### `{cls.__name__}`", "", "| key | default | meaning |", "| --- | --- | --- |"]
        for f in fields(cls):
            if cls is TrainingArguments and f.name not in TrainingArguments.__annotations__:
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            help_text = f.metadata.get("help", "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{f.name}` | `{default!r}` | {help_text} |")
        if cls is TrainingArguments:
            lines.append("| ... | | every other `transformers.TrainingArguments` key (learning_rate, "
                         "num_train_epochs, ...) |")
        lines.append("")
    lines += ["### Head options", "",
              "Top-level keys that apply to one head; saved ones are part of the trained model, "
              "the others are loss coefficients read from the current config.", "",
              "| key | head | default | saved | meaning |", "| --- | --- | --- | --- | --- |"]
    for kind, head in HEADS.items():
        for option in head.options:
            lines.append(f"| `{option.name}` | {kind} | `{option.default!r}` | {'yes' if option.saved else 'no'} | "
                         f"{option.help} |")
    lines.append("")
    return "\n".join(lines)
