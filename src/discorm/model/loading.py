"""Loading the parts of a reward model: tokenizer, backbone (always without its LM head), freeze / LoRA tuning,
quantized bases, and ``read_checkpoint``, the one reader of reward-model checkpoints, which tells the kind of a
checkpoint once (:class:`CheckpointKind`) and builds its parts once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from discorm.data.vision import VisionInputs
from discorm.errors import ConfigError, ModelError
from discorm.model.builtin import BUILTIN_MODELS, DEFAULT_MODEL, builtin_model_dir, pull_builtin_model
from discorm.model.fused_lora import fuse_lora_layers
from discorm.model.heads import RewardHead, ScalarHead, build_head, with_uncertainty
from discorm.model.multimodal import hidden_size, is_multimodal, language_model
from discorm.model.packed import ATTN_IMPLEMENTATION, register_packed_attention
from discorm.model.rm_config import CONFIG_FILE, RewardModelConfig

logger = logging.getLogger(__name__)

HEAD_FILE = "value_head.safetensors"
LLAMAFACTORY_HEAD_FILES = ("value_head.safetensors", "value_head.bin")
QUANTIZATION_KEYS = ("quantization_bit", "quantization_type", "double_quantization")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a backbone: weight dtype (auto: float32 on CPU, the checkpoint's on GPU), remote code, Hub
    cache, attention kernel (None: DiscoRM's packed SDPA where the model supports it), the packed-batch attention
    backend, and a bitsandbytes quantization of the base ({quantization_bit, quantization_type,
    double_quantization}; None: full precision)."""

    dtype: str = "auto"
    trust_remote_code: bool = False
    cache_dir: str | None = None
    attn_implementation: str | None = None
    attention_backend: str = "auto"
    quantization: dict | None = None


@dataclass(frozen=True)
class Finetuning:
    """Which backbone weights train: ``full``, ``freeze`` (the last ``freeze_trainable_layers`` blocks) or
    ``lora`` (PEFT adapters of rank ``lora_rank`` on ``lora_target``: comma-separated module names or "all"; of a
    vision-language model, "all" is the language model's linear layers, and the vision tower's and projector's
    too with ``lora_vision_tower``)."""

    kind: str = "full"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all"
    freeze_trainable_layers: int = 2
    lora_vision_tower: bool = False
    train_vision_tower: bool = False  # freeze / lora: a VLM's vision tower and projector train in full


@dataclass(frozen=True)
class Uncertainty:
    """The head's epistemic uncertainty (``model/heads/uncertainty.py``): ``kind`` None, laplace or ensemble;
    an ensemble's ``ensemble_size`` heads, trained on bootstrap resamples when ``bootstrap``."""

    kind: str | None = None
    ensemble_size: int = 1
    bootstrap: bool = True


class CheckpointKind(str, Enum):
    """What a model directory holds, which decides how it becomes a reward model, and where its score is read
    (``SCORE_AT``: as the trainer that made it reads it)."""

    DISCORM = "discorm"  # a DiscoRM run directory or checkpoint (discorm_config.json)
    LLAMAFACTORY = "llamafactory"  # a LlamaFactory `stage: rm` output (value_head.* with v_head.summary.*)
    SEQUENCE_CLASSIFICATION = "sequence_classification"  # TRL / AutoModelForSequenceClassification, num_labels=1
    PRETRAINED = "pretrained"  # a plain pretrained model: a new, untrained head


SCORE_AT = {  # data/tokenize.py SCORE_POSITIONS; a new head is read as DiscoRM trains it
    CheckpointKind.LLAMAFACTORY: "last_token",  # its value at the last token of its template's whole rendering
    CheckpointKind.SEQUENCE_CLASSIFICATION: "last_non_pad",  # transformers' rule with the classifier's pad_token_id
    CheckpointKind.PRETRAINED: "end_of_turn",
}


@dataclass
class Parts:
    """What a checkpoint reader returns: the pieces ``RewardModel`` is made of."""

    backbone: torch.nn.Module
    head: RewardHead
    config: RewardModelConfig
    tokenizer: PreTrainedTokenizerBase | None = None
    vision: VisionInputs | None = None


# ----------------------------------------------------------------------------- names and paths
def looks_like_path(name: str) -> bool:
    """A name only a local path can have (a Hub id is `name` or `org/name`, without dots or slashes in front)."""
    return (name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or name in (".", "..") or "\\" in name
            or name.count("/") > 1 or name.endswith("/") or (len(name) > 1 and name[1] == ":"))


def resolve_model_path(name_or_path: str, pull: bool = True) -> str:
    """Built-in names -> their cached directory (fetched if missing); a local path must exist; anything else (a
    Hub id) is returned unchanged."""
    if name_or_path in BUILTIN_MODELS:
        path = builtin_model_dir(name_or_path)
        if path.is_dir():
            return str(path)
        if not pull:
            raise ModelError(f"{name_or_path!r} is not cached; run `discorm models pull {name_or_path}`.")
        return str(pull_builtin_model(name_or_path))
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ModelError(
                f"model path {name_or_path!r} does not exist (looked for {path.resolve()}). Check "
                f"model_name_or_path / tokenizer_name_or_path: a local model directory, a DiscoRM run directory, "
                f"'{DEFAULT_MODEL}', or a Hugging Face Hub id such as 'org/name'."
            )
        return str(path)
    return name_or_path


def _not_loadable(what: str, path: str, err: Exception) -> ModelError:
    """The error for a model or tokenizer that transformers could not load; names a missing local folder."""
    local = "" if Path(path).exists() else (
        f" There is no local folder {path!r} (relative to {Path.cwd()}), so it was looked up on the Hugging Face "
        "Hub.")
    return ModelError(
        f"could not load a {what} from {path!r}: {' '.join(str(err).split())[:300]}.{local} model_name_or_path "
        f"must be '{DEFAULT_MODEL}', a local model directory, a DiscoRM run directory, or a Hub id."
    )


def resolve_dtype(dtype: str) -> torch.dtype | str:
    if dtype == "auto":
        return torch.float32 if not torch.cuda.is_available() else "auto"
    return getattr(torch, dtype)


# ----------------------------------------------------------------------------- tokenizer and backbone
def load_tokenizer(path: str, trust_remote_code: bool = False, cache_dir: str | None = None,
                   required: bool = True) -> PreTrainedTokenizerBase | None:
    """The tokenizer at ``path`` (a built-in name, folder or Hub id), with a pad token; ``required=False``:
    None where there is none."""
    path = resolve_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        if not required:
            return None
        raise _not_loadable("tokenizer", path, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_policy_tokenizer(policy) -> PreTrainedTokenizerBase | None:
    """The policy's tokenizer for re-templating (``data/retemplate.py``): a tokenizer as it is, or one loaded from a
    built-in name, a folder or a Hub id; None stays None."""
    if policy is None or isinstance(policy, PreTrainedTokenizerBase):
        return policy
    try:
        return load_tokenizer(str(policy))
    except ModelError as err:
        raise ModelError(f"--policy-tokenizer / policy_tokenizer {policy!r}: {err}") from None


def load_vision(path: str, options: LoadOptions | None = None, config=None) -> VisionInputs | None:
    """The image processor of a vision-language model at ``path`` (a folder or Hub id; a LoRA run's folder holds
    the processor, ``config`` its base model's config); None for a text-only model."""
    options = options or LoadOptions()
    config = config or _config_or_none(path, options)
    if config is None or not is_multimodal(config):
        return None
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=options.trust_remote_code,
                                                  cache_dir=options.cache_dir)
    except (OSError, ValueError, ImportError, AttributeError) as err:
        raise ModelError(f"{path} is a vision-language model ({config.model_type}) but its processor could not be "
                         f"loaded ({type(err).__name__}: {' '.join(str(err).split())[:200]}). It needs the "
                         "processor files (preprocessor_config.json / processor_config.json) next to the weights; "
                         "families with a video processor (Qwen2-VL, Qwen2.5-VL) also need torchvision installed."
                         ) from None
    if getattr(processor, "image_processor", None) is None or not hasattr(processor, "image_token"):
        raise ModelError(f"{path}: the processor {type(processor).__name__} has no image processor or image token; "
                         "DiscoRM reads images with an image-text-to-text model's own processor.")
    return VisionInputs(processor)


def _config_or_none(path: str, options: LoadOptions):
    """The transformers config at ``path``; None where there is none to read (the loader then says why)."""
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=options.trust_remote_code,
                                          cache_dir=options.cache_dir)
    except (OSError, ValueError):
        return None


def _attn_implementation(path: str, options: LoadOptions, requested: str):
    """DiscoRM's attention on the language model only: a VLM's vision tower attends over whole images with
    plain SDPA."""
    config = _config_or_none(path, options)
    if config is None or not is_multimodal(config):
        return requested
    return {"": "sdpa", "text_config": requested, "vision_config": "sdpa"}


def load_backbone(path: str, options: LoadOptions | None = None) -> PreTrainedModel:
    """The base transformer without any LM head (``AutoModel``): a reward model never computes vocab logits."""
    options = options or LoadOptions()
    kwargs = dict(dtype=resolve_dtype(options.dtype), trust_remote_code=options.trust_remote_code,
                  cache_dir=options.cache_dir)
    if options.quantization:
        kwargs["quantization_config"] = quantization_config(**options.quantization)
    attn = options.attn_implementation
    try:
        if attn is None:
            register_packed_attention()
            try:
                backbone = AutoModel.from_pretrained(
                    path, attn_implementation=_attn_implementation(path, options, ATTN_IMPLEMENTATION), **kwargs)
            except ValueError as err:
                if "attn" not in str(err) and "attention" not in str(err):
                    raise
                logger.warning("%s does not support DiscoRM's SDPA attention (%s); packing and prefix sharing are "
                               "off.", path, str(err).splitlines()[0][:200])
                backbone = AutoModel.from_pretrained(path, **kwargs)
        else:
            backbone = AutoModel.from_pretrained(path, attn_implementation=attn, **kwargs)
    except OSError as err:
        raise _not_loadable("model", path, err) from None
    except ImportError as err:
        raise ModelError(f"quantization_bit={options.quantization['quantization_bit']} needs bitsandbytes "
                         f"({err}); install it with `pip install 'discorm[quant]'`, or remove quantization_bit."
                         ) from None
    if options.quantization:
        keep_cpu_4bit_trainable(backbone)
    return backbone


def quantization_config(quantization_bit: int, quantization_type: str = "nf4",
                        double_quantization: bool = True) -> BitsAndBytesConfig:
    """bitsandbytes settings for a quantized base (QLoRA): NF4 with double quantization by default."""
    if quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization_type,
                              bnb_4bit_use_double_quant=double_quantization, bnb_4bit_compute_dtype=compute)


def keep_cpu_4bit_trainable(backbone: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at their first no-grad forward pass into a
    layout whose backward drops the LoRA gradients (and corrupts merges); keep the trainable layout."""
    for module in backbone.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def transformer_blocks(backbone: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks (layers / h / encoder.layer): the longest ModuleList of the backbone."""
    lists = [m for m in language_model(backbone).modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ModelError(f"cannot find the transformer blocks of {type(backbone).__name__} for freeze tuning.")
    return max(lists, key=len)


def apply_finetuning(backbone: PreTrainedModel, finetuning: Finetuning) -> torch.nn.Module:
    """Set requires_grad (full / freeze) or wrap in PEFT LoRA; returns the backbone to use."""
    quantized = getattr(backbone, "is_quantized", False)
    if quantized and finetuning.kind != "lora":
        raise ConfigError(f"finetuning_type={finetuning.kind!r} cannot train a quantized base (quantization_bit "
                          "is set): its weights are frozen integers. Use finetuning_type: lora (QLoRA).")
    if finetuning.kind == "full":
        backbone.requires_grad_(True)
        return backbone
    if finetuning.kind == "freeze":
        backbone.requires_grad_(False)
        blocks = transformer_blocks(backbone)
        if finetuning.freeze_trainable_layers > len(blocks):
            raise ModelError(
                f"freeze_trainable_layers={finetuning.freeze_trainable_layers} but the model has only {len(blocks)} "
                "blocks; use a value between 0 and that."
            )
        for block in list(blocks)[len(blocks) - finetuning.freeze_trainable_layers :]:
            block.requires_grad_(True)
        for name in _vision_parts(backbone, finetuning):
            getattr(backbone, name).requires_grad_(True)
        return backbone
    if quantized:
        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    if finetuning.lora_target != "all":
        targets = [t.strip() for t in finetuning.lora_target.split(",")]
    elif is_multimodal(backbone.config) and not finetuning.lora_vision_tower:
        inside = {id(m) for m in language_model(backbone).modules()}
        targets = [name for name, m in backbone.named_modules() if isinstance(m, torch.nn.Linear) and id(m) in inside]
    else:
        targets = "all-linear"
    saved = _vision_parts(backbone, finetuning)
    config = LoraConfig(r=finetuning.lora_rank, lora_alpha=finetuning.lora_alpha,
                        lora_dropout=finetuning.lora_dropout, target_modules=targets, modules_to_save=saved or None)
    try:
        model = get_peft_model(backbone, config)
    except ValueError as err:
        raise ModelError(f"lora_target={finetuning.lora_target!r} does not fit this model: {err}") from None
    fuse_lora_layers(model)
    return model


def _vision_parts(backbone: torch.nn.Module, finetuning: Finetuning) -> list[str]:
    """The names of the modules beside the language model (vision tower, projector) that ``train_vision_tower``
    trains in full."""
    if not finetuning.train_vision_tower:
        return []
    if not is_multimodal(backbone.config):
        raise ConfigError(f"train_vision_tower: true needs a vision-language model, and {type(backbone).__name__} "
                          "has no vision tower; remove train_vision_tower.")
    text = language_model(backbone)
    return [name for name, child in backbone.named_children() if child is not text]


def log_trainable(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable params: %s / %s (%.4f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return trainable, total


# ----------------------------------------------------------------------------- reading checkpoints
def _architectures(path: Path) -> list[str]:
    file = path / "config.json"
    return (json.loads(file.read_text()).get("architectures") or []) if file.is_file() else []


def _llamafactory_head(path: Path) -> dict | None:
    for name in LLAMAFACTORY_HEAD_FILES:
        file = path / name
        if file.is_file():
            tensors = load_file(str(file)) if file.suffix == ".safetensors" else torch.load(
                file, map_location="cpu", weights_only=True)
            return tensors if "v_head.summary.weight" in tensors else None
    return None


def checkpoint_kind(path: str) -> CheckpointKind:
    """The kind of the checkpoint at ``path`` (a resolved local folder or a Hub id), told from its files."""
    root = Path(path)
    if (root / CONFIG_FILE).is_file():
        return CheckpointKind.DISCORM
    if root.is_dir() and _llamafactory_head(root) is not None:
        return CheckpointKind.LLAMAFACTORY
    if any(a.endswith("ForSequenceClassification") for a in _architectures(root)):
        return CheckpointKind.SEQUENCE_CLASSIFICATION
    return CheckpointKind.PRETRAINED


def read_checkpoint(path: str, options: LoadOptions | None = None, head: str | None = None,
                    trainable: bool = False, quantized: bool = True, uncertainty: Uncertainty | None = None) -> Parts:
    """The parts of the reward model at ``path``, whatever its kind. ``head``: the head to build (default: the
    checkpoint's own; another kind is seeded from it where that head accepts it). ``uncertainty``: how to wrap
    the head of a DiscoRM run (default: as it was trained). A QLoRA run loads on its quantized base unless
    ``quantized`` is False (e.g. to merge the adapter)."""
    options = options or LoadOptions()
    given, path = path, resolve_model_path(path)
    kind = checkpoint_kind(path)
    if kind is CheckpointKind.PRETRAINED and Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise ModelError(f"{given} is a folder but not a model: a DiscoRM run folder holds {CONFIG_FILE} with the "
                         "weights and the tokenizer, an exported or Hugging Face checkpoint config.json. Pass the "
                         "run's output_dir (or a checkpoint-N folder in it).")
    if kind is CheckpointKind.DISCORM:
        return _read_discorm(Path(path), options, head, trainable, quantized, uncertainty)
    tokenizer = load_tokenizer(path, options.trust_remote_code, options.cache_dir, required=False)
    if kind is CheckpointKind.PRETRAINED:
        backbone = load_backbone(path, options)
        logger.warning("%s is a plain pretrained model, not a reward model: its %s head is newly initialised and "
                       "untrained (train one with `discorm train`).", path, head or "scalar")
        with torch.random.fork_rng():  # a reproducible head without touching the caller's random state
            torch.manual_seed(0)
            new_head = build_head(head or "scalar", hidden_size(backbone.config))
        parts = _foreign(backbone, new_head, tokenizer, given, kind)
        return replace(parts, vision=load_vision(path, options))
    pad_token_id = None
    if kind is CheckpointKind.LLAMAFACTORY:
        backbone, tokenizer = _llamafactory_backbone(Path(path), options, tokenizer)
        tensors = _llamafactory_head(Path(path))
        weight, bias = tensors["v_head.summary.weight"], tensors.get("v_head.summary.bias")
    else:
        classifier = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(options.dtype))
        if classifier.config.num_labels != 1:
            raise ModelError(f"{path} is a sequence classifier with num_labels={classifier.config.num_labels}; a "
                             "reward checkpoint has num_labels=1.")
        if not isinstance(getattr(classifier, "score", None), torch.nn.Linear):
            raise ModelError(f"{path} is a {type(classifier).__name__}, whose head reads its first token through "
                             "a pooler; DiscoRM imports classifiers that read the last token with a linear `score` "
                             "layer (Llama, Qwen, Mistral, Gemma, GPT-2, ...). Score it with transformers, or train "
                             "a DiscoRM head on its backbone (`pooling: first`).")
        score = classifier.score
        backbone, weight, bias = _inner_model(classifier), score.weight.data, score.bias
        pad_token_id = classifier.config.get_text_config().pad_token_id
    logger.info("Imported a %s reward model from %s", kind.value.replace("_", "-"), path)
    return _foreign(backbone, _head_from_scalar(weight, bias, head, path), tokenizer, given, kind, pad_token_id)


def _read_discorm(path: Path, options: LoadOptions, head: str | None, trainable: bool, quantized: bool,
                  uncertainty: Uncertainty | None) -> Parts:
    config = RewardModelConfig.load(path)
    if config.quantization and quantized:
        options = replace(options, quantization=config.quantization)
    if config.is_lora:
        base = load_backbone(resolve_model_path(config.base_model), options)
        backbone = PeftModel.from_pretrained(base, path, is_trainable=trainable)
        fuse_lora_layers(backbone)
    else:
        backbone = load_backbone(str(path), options)
    kind, hidden = head or config.head, hidden_size(backbone.config)
    want = uncertainty or Uncertainty(config.uncertainty, config.ensemble_size)
    module = with_uncertainty(
        lambda: build_head(kind, hidden, **(config.head_options if kind == config.head else {})), hidden, want.kind,
        want.ensemble_size, want.bootstrap)
    module.load_head_state(_stored_head(path, config, want), config.head, str(path))
    tokenizer = load_tokenizer(str(path)) if (path / "tokenizer_config.json").is_file() else None
    config = replace(config, head=kind, head_options=module.saved_options(), uncertainty=want.kind,
                     ensemble_size=want.ensemble_size if want.kind == "ensemble" else 1)
    return Parts(backbone, module, config, tokenizer, load_vision(str(path), options, backbone.config))


def _stored_head(path: Path, config: RewardModelConfig, want: Uncertainty) -> dict[str, torch.Tensor]:
    """The head tensors of a run, as a head wrapped for ``want`` reads them: a Laplace run's member alone where
    the posterior is not wanted (it is fitted again after training)."""
    tensors = load_file(str(path / HEAD_FILE))
    if config.uncertainty == "laplace" and want.kind != "laplace":
        return {k.removeprefix("member."): v for k, v in tensors.items() if k not in ("covariance", "prior_precision")}
    if config.uncertainty == "ensemble" and want.kind != "ensemble":
        raise ModelError(f"{path} holds an ensemble of {config.ensemble_size} {config.head} heads; continue or load it "
                         f"with uncertainty: ensemble and ensemble_size: {config.ensemble_size}.")
    return tensors


def _llamafactory_backbone(path: Path, options: LoadOptions, tokenizer):
    """Full weights, or a LoRA adapter trained on the causal-LM class (merged into its base)."""
    if not (path / "adapter_config.json").is_file():
        return load_backbone(str(path), options), tokenizer
    base_name = resolve_model_path(json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
    causal = AutoModelForCausalLM.from_pretrained(base_name, dtype=resolve_dtype(options.dtype))
    merged = PeftModel.from_pretrained(causal, str(path)).merge_and_unload()
    return _inner_model(merged), tokenizer or load_tokenizer(base_name, required=False)


def _inner_model(model):
    """The base transformer of a *ForCausalLM / *ForSequenceClassification model (drops the LM/score head)."""
    return getattr(model, model.base_model_prefix)


def _head_from_scalar(weight: torch.Tensor, bias: torch.Tensor | None, kind: str | None, where: str) -> RewardHead:
    """An imported value layer as a scalar head, or as another head seeded from it where that head accepts it."""
    scalar = ScalarHead(weight.shape[-1], bias=bias is not None)
    scalar.value.weight.data.copy_(weight.reshape(1, -1).float())
    if bias is not None:
        scalar.value.bias.data.copy_(bias.reshape(1).float())
    if kind in (None, "scalar"):
        return scalar
    head = build_head(kind, scalar.value.in_features)
    head.load_head_state(scalar.state_dict(), "scalar", where)
    return head


def _foreign(backbone, head: RewardHead, tokenizer, path: str, kind: CheckpointKind,
             pad_token_id: int | None = None) -> Parts:
    config = RewardModelConfig(head=head.kind, head_options=head.saved_options(), base_model=path,
                               cutoff_len=getattr(backbone.config, "max_position_embeddings", None),
                               finetuning_type="full", imported_from=kind.value, score_at=SCORE_AT[kind],
                               pad_token_id=pad_token_id)
    return Parts(backbone, head, config, tokenizer)
