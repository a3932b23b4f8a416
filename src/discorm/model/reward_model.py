"""The reward model: a pretrained backbone without its LM head, a pooling rule, and a reward head in float32.

A run directory written by ``save_pretrained`` holds the backbone (``model.safetensors``, full and freeze tuning)
or the LoRA adapter (``adapter_model.safetensors``), the head (``value_head.safetensors``), the tokenizer, and
``discorm_config.json`` (head, pooling, base model, finetuning type, template). Safetensors only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer
from transformers.utils import ModelOutput

from discorm.config import FinetuningArguments, ModelArguments
from discorm.errors import ModelError
from discorm.model.heads import GaussianHead, RewardHead, build_head
from discorm.model.loading import (
    apply_finetuning,
    load_backbone,
    load_tokenizer,
    log_trainable,
    resolve_model_path,
)
from discorm.model.packed import ATTN_IMPLEMENTATION, block_positions

logger = logging.getLogger(__name__)

DISCORM_CONFIG = "discorm_config.json"
HEAD_FILE = "value_head.safetensors"


@dataclass
class RewardModelOutput(ModelOutput):
    scores: torch.Tensor | None = None  # (B,) the scalar reward per sequence (per `reward_mode`)
    head_params: torch.Tensor | None = None  # (B, K) the head's distribution parameters
    token_values: torch.Tensor | None = None  # (B, L) the head's mean at every token, when asked for


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, L, H) -> (B, H). last: the last real token (right or left padding); first: the first real one;
    mean: the average over real tokens."""
    batch, length, _ = hidden.shape
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(torch.long)
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)
    if how == "first":
        index = mask.argmax(-1)
    else:
        index = length - 1 - mask.flip(-1).argmax(-1)
    return hidden[torch.arange(batch, device=hidden.device), index]


class RewardModel(nn.Module):
    """Backbone + pooling + head. ``forward`` takes a padded batch or a packed one (see ``model/packed.py``)."""

    def __init__(self, backbone: nn.Module, head: RewardHead, pooling: str = "last", tokenizer=None, info=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self.tokenizer = tokenizer
        self.info = dict(info or {})
        self.reward_mode = self.info.get("reward_mode", "mean")
        self.reward_alpha = self.info.get("reward_alpha", 0.1)
        self.reward_k = self.info.get("reward_k", 1.0)
        self._packing_ok: bool | None = None

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pair_blocks: torch.Tensor | None = None,
        score_index: torch.Tensor | None = None,
        return_token_values: bool = False,
        **unused,
    ) -> RewardModelOutput:
        """Padded: input_ids (B, L) + attention_mask -> B scores. Packed: input_ids (1, N), position_ids (1, N),
        pair_blocks (nblocks, 4), score_index (S,) -> S scores read at those token positions."""
        if pair_blocks is not None:
            blocks = [tuple(block) for block in pair_blocks.tolist()]
            hidden = self.backbone(
                input_ids=input_ids, position_ids=position_ids, discorm_blocks=blocks
            ).last_hidden_state  # (1, N, H)
            pooled = hidden[0, score_index]  # (S, H): the head runs only where scores are read
        else:
            if attention_mask is not None and position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # left padding safe
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state  # (B, L, H)
            pooled = pool(hidden, attention_mask, self.pooling)
        params = self.head(pooled.float())  # (B, K), float32 whatever the backbone dtype
        token_values = None
        if return_token_values:
            token_params = self.head(hidden.float().flatten(0, 1))
            token_values = self.head.mean(token_params).view(hidden.shape[:2])
        return RewardModelOutput(scores=self.reward(params), head_params=params, token_values=token_values)

    def reward(self, params: torch.Tensor) -> torch.Tensor:
        return self.head.reward(params, self.reward_mode, self.reward_alpha, self.reward_k)

    # ----------------------------------------------------------------- packing support
    @property
    def supports_packing(self) -> bool:
        """True when this backbone runs the packed attention exactly (checked once on a tiny input)."""
        if self._packing_ok is None:
            self._packing_ok = self._check_packing()
        return self._packing_ok

    def _check_packing(self) -> bool:
        config = self.config
        if getattr(config, "_attn_implementation", None) != ATTN_IMPLEMENTATION:
            return False
        generator = torch.Generator().manual_seed(0)
        vocab = min(getattr(config, "vocab_size", 100) or 100, 1000)
        device = next(self.parameters()).device
        prompt, chosen, rejected = (torch.randint(3, vocab, (n,), generator=generator) for n in (3, 2, 5))
        single = torch.randint(3, vocab, (4,), generator=generator)
        blocks = [(0, 3, 2, 5), (10, 0, 4, 0)]
        packed_ids = torch.cat([prompt, chosen, rejected, single]).unsqueeze(0)
        seqs = [torch.cat([prompt, chosen]), torch.cat([prompt, rejected]), single]
        padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                packed = self(
                    packed_ids.to(device),
                    position_ids=block_positions(blocks).unsqueeze(0).to(device),
                    pair_blocks=torch.tensor(blocks, device=device),
                    score_index=torch.tensor([4, 9, 13], device=device),
                ).head_params
                plain = self(padded.to(device), attention_mask=mask.to(device)).head_params
            ok = torch.allclose(packed, plain, rtol=1e-3, atol=1e-3)
        except (TypeError, RuntimeError, ValueError) as err:
            logger.warning("packed attention failed on %s: %s", type(self.backbone).__name__, err)
            ok = False
        finally:
            self.train(was_training)
        if not ok:
            logger.warning(
                "%s does not honour DiscoRM's packed attention (e.g. a bidirectional encoder); packing and "
                "prefix sharing are turned off and padded batches are used.", config.model_type
            )
        return ok

    # ----------------------------------------------------------------- conveniences
    @property
    def config(self):
        return self.backbone.config

    @property
    def is_lora(self) -> bool:
        return self.info.get("finetuning_type") == "lora"

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        if self.is_lora:
            self.backbone.enable_input_require_grads()

    def score(self, inputs, batch_size: int = 8, show_progress: bool = False, **kwargs) -> list[dict]:
        """Score texts, chat message lists or {"prompt", "response"} dicts; see ``discorm.serve.scoring``."""
        from discorm.serve.scoring import score_inputs

        return score_inputs(self, inputs, batch_size=batch_size, show_progress=show_progress, **kwargs)

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Backbone (or LoRA adapter) + value_head.safetensors + tokenizer + discorm_config.json."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        tensors = {name: t.detach().contiguous().cpu() for name, t in self.head.state_dict().items()}
        save_file(tensors, out / HEAD_FILE, metadata={"head": self.head.kind})
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out)
        info = {**self.info, "head": self.head.kind, "head_options": self.head.extra_config(), "pooling": self.pooling}
        (out / DISCORM_CONFIG).write_text(json.dumps(info, indent=2, sort_keys=True))

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load the trained weights of a run directory or checkpoint into this model (same layout)."""
        directory = Path(directory)
        load_head_weights(self.head, load_file(str(directory / HEAD_FILE)), self.head.kind, str(directory))
        if self.is_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.backbone, load_file(str(directory / "adapter_model.safetensors")))
            return
        index = directory / "model.safetensors.index.json"
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
            "model.safetensors"]
        state = {name: t for shard in shards for name, t in load_file(str(directory / shard)).items()}
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"{directory} does not match this model: missing {missing[:3]}, unexpected {unexpected[:3]}.")

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        head: str | None = None,
        model_args: ModelArguments | None = None,
        trainable: bool = False,
        device: str | torch.device | None = None,
        **reward_options,
    ) -> RewardModel:
        """Load a DiscoRM run directory (or a checkpoint in it), a LlamaFactory RM output directory, a
        sequence-classification reward checkpoint, or a built-in model name."""
        from discorm.model.importers import import_foreign

        model_args = model_args or ModelArguments(model_name_or_path=str(path))
        path = resolve_model_path(str(path))
        info_file = Path(path, DISCORM_CONFIG)
        if not info_file.is_file():
            model = import_foreign(path, model_args, head)
        else:
            info = json.loads(info_file.read_text())
            model = cls._load_run_dir(Path(path), info, model_args, head, trainable)
        for key, value in reward_options.items():
            setattr(model, key, value)
            model.info[key] = value
        if device is not None:
            model.to(device)
        return model.train(trainable)

    @classmethod
    def _load_run_dir(cls, path: Path, info: dict, model_args, head: str | None, trainable: bool) -> RewardModel:
        if info.get("finetuning_type") == "lora":
            from peft import PeftModel

            base_args = ModelArguments(**{**vars(model_args), "model_name_or_path": info["base_model"]})
            base = load_backbone(resolve_model_path(info["base_model"]), base_args)
            backbone = PeftModel.from_pretrained(base, path, is_trainable=trainable)
        else:
            backbone = load_backbone(str(path), model_args)
        stored = info.get("head", "scalar")
        head = head or stored
        head_module = build_head(head, backbone.config.hidden_size, **info.get("head_options", {}))
        tensors = load_file(str(path / HEAD_FILE))
        load_head_weights(head_module, tensors, stored, str(path))
        tokenizer = AutoTokenizer.from_pretrained(path) if Path(path, "tokenizer_config.json").is_file() else None
        return cls(backbone, head_module, info.get("pooling", "last"), tokenizer, {**info, "head": head})

    @classmethod
    def for_training(
        cls, model_args: ModelArguments, finetuning_args: FinetuningArguments, tokenizer=None
    ) -> RewardModel:
        """A fresh head on a pretrained backbone (or a DiscoRM run to continue), with the finetuning applied."""
        tokenizer = tokenizer or load_tokenizer(model_args)
        path = resolve_model_path(model_args.model_name_or_path)
        head_options = {
            "num_atoms": finetuning_args.num_atoms,
            "atom_range": finetuning_args.atom_range,
            "variance_penalty": finetuning_args.variance_penalty,
            "entropy_coef": finetuning_args.entropy_coef,
        }
        if Path(path, DISCORM_CONFIG).is_file():
            model = cls.from_pretrained(path, head=finetuning_args.head, model_args=model_args, trainable=True)
            if not model.is_lora:
                model.backbone = apply_finetuning(model.backbone, finetuning_args)
            base_model = model.info.get("base_model", path) if model.is_lora else model_args.model_name_or_path
        else:
            backbone = apply_finetuning(load_backbone(path, model_args), finetuning_args)
            head = build_head(finetuning_args.head, backbone.config.hidden_size, **head_options)
            model = cls(backbone, head, finetuning_args.pooling, tokenizer)
            base_model = model_args.model_name_or_path
        model.tokenizer = tokenizer
        model.info.update(
            base_model=base_model,
            finetuning_type="lora" if model.is_lora else finetuning_args.finetuning_type,
            reward_mode=finetuning_args.reward_mode,
            reward_alpha=finetuning_args.reward_alpha,
            reward_k=finetuning_args.reward_k,
        )
        model.head.requires_grad_(True)
        log_trainable(model)
        return model.train()


def load_head_weights(head: RewardHead, tensors: dict, stored_kind: str, where: str) -> None:
    """Load head tensors; a scalar checkpoint may seed a Gaussian head (fresh variance), nothing else mixes."""
    if stored_kind == head.kind:
        head.load_state_dict(tensors)
        return
    if stored_kind == "scalar" and isinstance(head, GaussianHead):
        head.value.load_state_dict({"weight": tensors["value.weight"]})
        head.reset_variance()
        logger.warning("%s holds a scalar head: its value layer seeds the Gaussian mean; the variance is new.", where)
        return
    raise ModelError(
        f"{where} holds a {stored_kind!r} head, which cannot be loaded as a {head.kind!r} head: the "
        f"{stored_kind} parameters do not determine the {head.kind} ones (only scalar -> gaussian is possible). "
        f"Load it with head={stored_kind!r}, or train a new {head.kind} head from it."
    )
