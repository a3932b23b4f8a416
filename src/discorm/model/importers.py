"""Bring reward models trained elsewhere (or plain pretrained LMs) into DiscoRM.

- A LlamaFactory ``stage: rm`` output directory: full weights or a LoRA adapter (trained on the causal-LM class),
  plus ``value_head.safetensors`` / ``value_head.bin`` with ``v_head.summary.weight`` / ``.bias``.
- A TRL / ``AutoModelForSequenceClassification`` reward checkpoint (``num_labels=1``; its ``score`` layer).
- A plain pretrained model: a new, untrained scalar head (with a warning).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from discorm.errors import ModelError
from discorm.model.heads import ScalarHead, build_head
from discorm.model.loading import load_backbone, resolve_dtype, resolve_model_path

logger = logging.getLogger(__name__)


def _tokenizer(path: str, model_args):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_args.trust_remote_code)
    except (OSError, ValueError):
        return None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _llamafactory_value_head(path: Path) -> dict | None:
    if (path / "value_head.safetensors").is_file():
        tensors = load_file(str(path / "value_head.safetensors"))
    elif (path / "value_head.bin").is_file():
        tensors = torch.load(path / "value_head.bin", map_location="cpu", weights_only=True)
    else:
        return None
    return tensors if "v_head.summary.weight" in tensors else None


def _scalar_head_from(weight: torch.Tensor, bias: torch.Tensor | None) -> ScalarHead:
    head = ScalarHead(weight.shape[-1], bias=bias is not None)
    head.value.weight.data.copy_(weight.reshape(1, -1).float())
    if bias is not None:
        head.value.bias.data.copy_(bias.reshape(1).float())
    return head


def _inner_model(model):
    """The base transformer of a *ForCausalLM / *ForSequenceClassification model (drops the LM/score head)."""
    return getattr(model, model.base_model_prefix)


def import_foreign(path: str, model_args, head: str | None):
    from discorm.model.reward_model import RewardModel

    root = Path(path)
    value_head = _llamafactory_value_head(root) if root.is_dir() else None
    tokenizer = _tokenizer(path, model_args)
    if value_head is not None:
        if (root / "adapter_config.json").is_file():
            from peft import PeftModel

            base_name = json.loads((root / "adapter_config.json").read_text())["base_model_name_or_path"]
            causal = AutoModelForCausalLM.from_pretrained(
                resolve_model_path(base_name), dtype=resolve_dtype(model_args.dtype)
            )
            merged = PeftModel.from_pretrained(causal, path).merge_and_unload()
            backbone = _inner_model(merged)
            tokenizer = tokenizer or _tokenizer(resolve_model_path(base_name), model_args)
        else:
            backbone = load_backbone(path, model_args)
        scalar = _scalar_head_from(value_head["v_head.summary.weight"], value_head.get("v_head.summary.bias"))
        info = {"base_model": path, "finetuning_type": "full", "imported_from": "llamafactory"}
        logger.info("Imported a LlamaFactory reward model from %s", path)
        return RewardModel(backbone, _maybe_gaussian(scalar, head), "last", tokenizer, info)

    config_file = root / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") or [] if config_file.is_file() else []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        classifier = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(model_args.dtype))
        if classifier.config.num_labels != 1:
            raise ModelError(
                f"{path} is a sequence classifier with num_labels={classifier.config.num_labels}; a reward "
                "checkpoint has num_labels=1."
            )
        score = classifier.score if hasattr(classifier, "score") else classifier.classifier
        scalar = _scalar_head_from(score.weight.data, getattr(score, "bias", None))
        info = {"base_model": path, "finetuning_type": "full", "imported_from": "sequence_classification"}
        logger.info("Imported a sequence-classification reward model from %s", path)
        return RewardModel(_inner_model(classifier), _maybe_gaussian(scalar, head), "last", tokenizer, info)

    backbone = load_backbone(path, model_args)
    kind = head or "scalar"
    logger.warning(
        "%s is a plain pretrained model, not a reward model: its %s head is newly initialised and untrained "
        "(train one with `discorm train`).", path, kind
    )
    with torch.random.fork_rng():  # a reproducible head without touching the caller's random state
        torch.manual_seed(0)
        new_head = build_head(kind, backbone.config.hidden_size)
    info = {"base_model": model_args.model_name_or_path, "finetuning_type": "full"}
    return RewardModel(backbone, new_head, "last", tokenizer, info)


def _maybe_gaussian(scalar: ScalarHead, head: str | None):
    if head in (None, "scalar"):
        return scalar
    if head == "gaussian":
        gaussian = build_head("gaussian", scalar.value.in_features)
        gaussian.value.weight.data.copy_(scalar.value.weight.data)
        logger.warning("an imported scalar head seeds the Gaussian mean; the variance head is new.")
        return gaussian
    raise ModelError(f"an imported scalar reward model cannot be loaded with head={head!r}; use scalar or gaussian.")
