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
from discorm.model.rm_config import RewardModelConfig

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
        logger.info("Imported a LlamaFactory reward model from %s", path)
        return _reward_model(backbone, _as_head(scalar, head, path), tokenizer, path, "llamafactory")

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
        logger.info("Imported a sequence-classification reward model from %s", path)
        return _reward_model(_inner_model(classifier), _as_head(scalar, head, path), tokenizer, path,
                             "sequence_classification")

    backbone = load_backbone(path, model_args)
    kind = head or "scalar"
    logger.warning(
        "%s is a plain pretrained model, not a reward model: its %s head is newly initialised and untrained "
        "(train one with `discorm train`).", path, kind
    )
    with torch.random.fork_rng():  # a reproducible head without touching the caller's random state
        torch.manual_seed(0)
        new_head = build_head(kind, backbone.config.hidden_size)
    return _reward_model(backbone, new_head, tokenizer, model_args.model_name_or_path, "pretrained")


def _reward_model(backbone, head, tokenizer, base_model: str, source: str):
    from discorm.model.reward_model import RewardModel

    config = RewardModelConfig(head=head.kind, head_options=head.saved_options(), base_model=base_model,
                               cutoff_len=getattr(backbone.config, "max_position_embeddings", None),
                               finetuning_type="full", imported_from=source)
    return RewardModel(backbone, head, config, tokenizer)


def _as_head(scalar: ScalarHead, kind: str | None, where: str):
    """The imported scalar head, or another head seeded from it where that head accepts it."""
    if kind in (None, "scalar"):
        return scalar
    head = build_head(kind, scalar.value.in_features)
    head.load_head_state(scalar.state_dict(), "scalar", where)
    return head
