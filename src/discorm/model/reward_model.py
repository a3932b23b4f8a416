"""The reward model: a pretrained backbone without its LM head, a pooling rule, and a reward head in float32.

A run directory written by ``save_pretrained`` holds the backbone (``model.safetensors``, full and freeze tuning)
or the LoRA adapter (``adapter_model.safetensors``), the head (``value_head.safetensors``), the tokenizer, and
``discorm_config.json`` (the model's :class:`RewardModelConfig`). Safetensors only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import ModelOutput

from discorm.data.collator import block_positions
from discorm.data.pool import excluded_keys, read_pool_item
from discorm.errors import ModelError
from discorm.model.heads import RewardHead, build_head, with_uncertainty
from discorm.model.inference import evaluating, score_inputs
from discorm.model.loading import (
    HEAD_FILE,
    CheckpointKind,
    Finetuning,
    LoadOptions,
    Uncertainty,
    apply_finetuning,
    checkpoint_kind,
    load_backbone,
    load_vision,
    log_trainable,
    read_checkpoint,
    resolve_model_path,
)
from discorm.model.multimodal import hidden_size, image_token_types, mrope_positions, text_config, uses_mrope
from discorm.model.packed import block_masks, choose_backend, flex_failed, sliding_windows, unsupported_reason
from discorm.model.rm_config import RewardModelConfig
from discorm.model.selection import select_items

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "adapter_config.json")


@dataclass
class RewardModelOutput(ModelOutput):
    """What ``RewardModel.forward`` returns: the reward per sequence and the head's parameters behind it."""

    scores: torch.Tensor | None = None  # (B,) the scalar reward per sequence (per `reward_mode`)
    head_params: torch.Tensor | None = None  # (B, K) the head's distribution parameters
    token_values: torch.Tensor | None = None  # (B, L) the head's mean at every token, when asked for
    pooled: torch.Tensor | None = None  # (B, H) the features the head read (float32)


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
    """Backbone + pooling + head, described by a :class:`RewardModelConfig`. ``forward`` takes a padded batch or a
    packed one (see ``model/packed.py``)."""

    def __init__(self, backbone: nn.Module, head: RewardHead, rm_config: RewardModelConfig, tokenizer=None,
                 attention_backend: str = "auto", vision=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.rm_config = rm_config
        self.tokenizer = tokenizer
        self.vision = vision  # a vision-language model's image inputs (data/vision.py); None: text only
        self.attention_backend = attention_backend  # packed batches: auto, sdpa_split or flex (model/packed.py)
        self._packing_obstacle: str | None = None
        self._packing_checked = False

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pair_blocks: torch.Tensor | None = None,
        score_index: torch.Tensor | None = None,
        return_token_values: bool = False,
        **pixel_inputs: torch.Tensor,
    ) -> RewardModelOutput:
        """Padded: input_ids (B, L) + attention_mask -> B scores. Packed: input_ids (1, N), position_ids (1, N),
        pair_blocks (nblocks, 2 + K), score_index (S,) -> S scores read at those token positions.
        ``pixel_inputs``: a vision-language model's image tensors (``pixel_values``, ``image_grid_thw``, ...; see
        ``data/vision.py``), the images of the row's image tokens in row order."""
        mrope = bool(pixel_inputs) and uses_mrope(self.backbone)
        if mrope:  # Qwen2-VL's M-RoPE numbers image tokens by (time, height, width)
            pixel_inputs["mm_token_type_ids"] = image_token_types(self.config, input_ids)
        if pair_blocks is not None:
            blocks = [tuple(block) for block in pair_blocks.tolist()]
            if mrope:  # (3, 1, N): each branch as in its own row
                position_ids = mrope_positions(self.backbone, input_ids, blocks, pixel_inputs.get("image_grid_thw"))
            hidden = self._packed_hidden(input_ids, position_ids, blocks, pixel_inputs)  # (1, N, H)
            pooled = hidden[0, score_index]  # (S, H): the head runs only where scores are read
        else:
            if attention_mask is not None and position_ids is None and not mrope:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # left padding safe
            hidden = self.backbone(  # M-RoPE: the model numbers its padded rows itself
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **pixel_inputs
            ).last_hidden_state  # (B, L, H)
            pooled = pool(hidden, attention_mask, self.rm_config.pooling)
        with torch.autocast(pooled.device.type, enabled=False):  # the head runs in float32, also under bf16
            pooled = pooled.float()
            params = self.head(pooled)  # (B, K)
            token_values = None
            if return_token_values:
                token_params = self.head(hidden.float().flatten(0, 1))
                token_values = self.head.mean(token_params).view(hidden.shape[:2])
        return RewardModelOutput(scores=self.reward(params), head_params=params, token_values=token_values,
                                 pooled=pooled)

    def _packed_hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor, blocks: list,
                       pixel_inputs: dict) -> torch.Tensor:
        """The backbone's last hidden states (1, N, H) for a packed row, on the backend ``choose_backend`` picks;
        where auto picked FlexAttention and it fails (it compiles on first use), split SDPA computes the row."""
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        backend = choose_backend(self.attention_backend, input_ids.device, needs_grad, self.training)
        if backend == "flex":
            try:
                masks = block_masks(blocks, sliding_windows(text_config(self.config)), input_ids.device)
                return self.backbone(input_ids=input_ids, position_ids=position_ids,
                                     discorm_block_masks=masks, **pixel_inputs).last_hidden_state
            except Exception as err:  # noqa: BLE001 - any compile or kernel failure: split SDPA is exact too
                if self.attention_backend != "auto" or isinstance(err, torch.OutOfMemoryError):
                    raise
                flex_failed(err)
        return self.backbone(input_ids=input_ids, position_ids=position_ids, discorm_blocks=blocks,
                             **pixel_inputs).last_hidden_state

    def reward(self, params: torch.Tensor, mode: str | None = None, alpha: float | None = None,
               k: float | None = None) -> torch.Tensor:
        """(N, K) head params -> (N,) rewards, by the config's reward mode unless one is given for this call.

        With reward normalisation the reward distribution is first shifted and scaled, (X - mean) / std, and the
        mode is taken of that: an affine map with std > 0 commutes with the mean, every quantile and
        mean - k * std, so this is (reward - mean) / std."""
        config = self.rm_config
        reward = self.head.reward(params, mode or config.reward_mode,
                                  config.reward_alpha if alpha is None else alpha, config.reward_k if k is None else k)
        return (reward - config.reward_mean) / config.reward_std

    def summary(self, params: torch.Tensor) -> dict:
        """The head's per-sequence values (see ``RewardHead.summary``), its reward ``mean`` and its spreads
        (``sigma``, ``sigma_aleatoric``, ``sigma_epistemic``) on the scale of the (normalised) reward."""
        values = self.head.summary(params)
        if "mean" in values:
            values["mean"] = (values["mean"] - self.rm_config.reward_mean) / self.rm_config.reward_std
        for name in ("sigma", "sigma_aleatoric", "sigma_epistemic"):
            if name in values:
                values[name] = values[name] / self.rm_config.reward_std
        return values

    # ----------------------------------------------------------------- packing support
    def check_packing(self) -> bool:
        """Whether this backbone runs DiscoRM's packed attention exactly: checked once, by comparing a packed
        forward pass with a padded one on a tiny input. The reason for a refusal is in ``packing_obstacle``."""
        if not self._packing_checked:
            # Under ZeRO-3 the weights are partitioned until the engine runs: the configuration check must do.
            compare = (lambda: None) if is_deepspeed_zero3_enabled() else self._compare_packed_with_padded
            self._packing_obstacle = unsupported_reason(self.backbone) or compare()
            self._packing_checked = True
            if self._packing_obstacle:
                logger.warning("packed batches are off for %s: %s; padded batches are used.",
                               self.config.model_type, self._packing_obstacle)
        return self._packing_obstacle is None

    @property
    def packing_obstacle(self) -> str | None:
        return self._packing_obstacle

    def _compare_packed_with_padded(self) -> str | None:
        """Last-token hidden states of a packed pair block and a plain sequence vs the same padded."""
        generator = torch.Generator().manual_seed(0)
        vocab = min(getattr(text_config(self.config), "vocab_size", 100) or 100, 1000)
        device = next(self.parameters()).device
        prompt, chosen, rejected = (torch.randint(3, vocab, (n,), generator=generator) for n in (3, 2, 5))
        single = torch.randint(3, vocab, (4,), generator=generator)
        blocks = [(0, 3, 2, 5), (10, 0, 4, 0)]
        packed_ids = torch.cat([prompt, chosen, rejected, single]).unsqueeze(0).to(device)
        seqs = [torch.cat([prompt, chosen]), torch.cat([prompt, rejected]), single]
        padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0).to(device)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in seqs], batch_first=True).to(device)
        try:
            with evaluating(self), torch.no_grad():
                packed = self.backbone(input_ids=packed_ids, discorm_blocks=blocks,
                                       position_ids=block_positions(blocks).unsqueeze(0).to(device))
                plain = self.backbone(input_ids=padded, attention_mask=mask,
                                      position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
        except (TypeError, RuntimeError, ValueError) as err:
            return f"the packed forward pass failed ({type(err).__name__}: {err})"
        packed = packed.last_hidden_state[0, [4, 9, 13]].float()
        plain = plain.last_hidden_state[torch.arange(3), mask.sum(-1) - 1].float()
        difference = float((packed - plain).abs().max())
        if difference > 1e-3 * max(1.0, float(plain.abs().max())):
            return f"packed and padded hidden states differ by {difference:.2g} on a test input"
        return None

    # ----------------------------------------------------------------- conveniences
    @property
    def config(self):
        """The backbone's transformers config (the Trainer and PEFT read it)."""
        return self.backbone.config

    @property
    def _no_split_modules(self) -> list[str]:
        """FSDP wrap units, read by Accelerate's auto-wrap policy: the backbone's blocks, and the float32 head as a
        unit of its own (FSDP2 needs one dtype per unit, and the backbone may be bf16)."""
        return [*(getattr(self.backbone, "_no_split_modules", None) or []), type(self.head).__name__]

    @property
    def is_lora(self) -> bool:
        return self.rm_config.is_lora

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        """Checkpoint the backbone's layers. ``kwargs`` are transformers' own (``every_n_layers``, ``offload``),
        passed on; transformers releases before the rename only have ``gradient_checkpointing_enable``."""
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)
        if enable is None:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                        **kwargs)
        else:
            enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
        if self.is_lora:
            self.backbone.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def score(self, inputs, batch_size: int = 8, show_progress: bool = False, reward_mode: str | None = None,
              policy_tokenizer=None, **reward_options) -> list[dict]:
        """Score texts, chat message lists or {"prompt", "response"} dicts (see ``model/inference.py``), each
        encoded as training encodes it. ``reward_mode`` (and ``reward_alpha`` / ``reward_k``) apply to this call
        only. ``policy_tokenizer``: texts were rendered by this tokenizer's chat template; they are read back into
        messages and rendered with the model's own."""
        return score_inputs(self, inputs, batch_size=batch_size, show_progress=show_progress,
                            reward_mode=reward_mode, policy_tokenizer=policy_tokenizer, **reward_options)

    def select(self, pool: list[dict], budget: int, strategy: str = "bald", seed: int = 0,
               exclude: list[dict] = (), batch_size: int = 8, show_progress: bool = False) -> list[dict]:
        """The ``budget`` pool rows to label next, best first, each with its ``acquisition`` score and
        ``preferences`` (``model/selection.py``); pool rows as ``data/pool.py`` reads them (a prompt and
        ``responses``, or ``response_a`` and ``response_b``, no label). ``strategy``: one of
        ``acquisition.STRATEGIES``; ``exclude``: rows (a held-out set, in any pair or list format) whose comparisons are
        never offered."""
        items = [read_pool_item(row, f"pool item {i}") for i, row in enumerate(pool)]
        excluded = excluded_keys([(f"exclude row {i}", row) for i, row in enumerate(exclude)], "exclude")
        return select_items(self, items, budget, strategy, seed, excluded, batch_size, show_progress)

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Backbone (or LoRA adapter) + value_head.safetensors + tokenizer + discorm_config.json, written to a
        temporary folder and then moved into place file by file, so a failed save leaves the previous files.

        ``state_dict``: this module's full state dict as gathered by the Trainer under FSDP / DeepSpeed ZeRO-3
        (keys ``backbone.*`` and ``head.*``); without it, the module's own tensors are saved."""
        out = Path(save_directory)
        if state_dict is None:
            backbone_state, head_state = None, self.head.state_dict()
        else:
            backbone_state = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
            head_state = {k[len("head."):]: v for k, v in state_dict.items() if k.startswith("head.")}
            if not backbone_state or set(head_state) != set(self.head.state_dict()):
                raise ModelError(
                    f"cannot save to {out}: the gathered state dict holds {len(backbone_state)} backbone and "
                    f"{sorted(head_state)} head tensors, not the whole model. Under DeepSpeed ZeRO-3 set "
                    "`stage3_gather_16bit_weights_on_model_save: true`; under FSDP use `state_dict_type: "
                    "FULL_STATE_DICT`."
                )
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".saving-", dir=out) as tmp:
            staged = Path(tmp)
            self.backbone.save_pretrained(staged, state_dict=backbone_state)
            tensors = {name: t.detach().float().contiguous().cpu() for name, t in head_state.items()}
            save_file(tensors, staged / HEAD_FILE, metadata={"head": self.head.kind})
            if self.vision is not None:  # the processor first: its tokenizer files give way to the model's own
                self.vision.save_pretrained(staged)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staged)
            self.rm_config.save(staged)
            written = {p.name for p in staged.iterdir()}
            for stale in (p for pattern in WEIGHT_FILES for p in out.glob(pattern) if p.name not in written):
                stale.unlink()  # the other layout's weights (full vs LoRA, one file vs shards)
            for file in staged.iterdir():
                if file.is_dir():
                    shutil.rmtree(out / file.name, ignore_errors=True)
                os.replace(file, out / file.name)

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load the trained weights of a run directory or checkpoint into this model (same layout)."""
        directory = Path(directory)
        self.head.load_head_state(load_file(str(directory / HEAD_FILE)), self.head.kind, str(directory))
        if self.is_lora:
            set_peft_model_state_dict(self.backbone, load_file(str(directory / "adapter_model.safetensors")))
            return
        index = directory / "model.safetensors.index.json"
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
            "model.safetensors"]
        state = {name: t for shard in shards for name, t in load_file(str(directory / shard)).items()}
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelError(f"{directory} does not match this model: missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}.")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, head: str | None = None, options: LoadOptions | None = None,
                        trainable: bool = False, device: str | torch.device | None = None, quantized: bool = True,
                        uncertainty: Uncertainty | None = None, **config_overrides) -> RewardModel:
        """Load any reward-model checkpoint ``read_checkpoint`` reads: a DiscoRM run directory (or a checkpoint in
        it), a LlamaFactory RM output, a sequence-classification reward checkpoint, a built-in model name or a
        plain pretrained model (a new head). ``uncertainty``: wrap the head for it (default: as the run was
        trained). ``config_overrides`` replace fields of the model's config (e.g. ``reward_mode="lower_quantile"``)."""
        options = options or LoadOptions()
        parts = read_checkpoint(str(path), options, head, trainable, quantized, uncertainty)
        config = replace(parts.config, **config_overrides) if config_overrides else parts.config
        model = cls(parts.backbone, parts.head, config, parts.tokenizer, options.attention_backend, parts.vision)
        if device is not None:
            model.to(device)
        return model.train(trainable)

    @classmethod
    def for_training(cls, path: str, tokenizer, head: str = "scalar", head_options: dict | None = None,
                     finetuning: Finetuning | None = None, options: LoadOptions | None = None,
                     pooling: str = "last", uncertainty: Uncertainty | None = None) -> RewardModel:
        """A fresh head on a pretrained backbone, or a DiscoRM run to continue (its head, or a ``head`` seeded
        from it), with ``finetuning`` applied and the head wrapped for ``uncertainty``; the reward options and
        normalisation start at their defaults."""
        options, finetuning = options or LoadOptions(), finetuning or Finetuning()
        uncertainty = uncertainty or Uncertainty()
        resolved = resolve_model_path(path)
        if checkpoint_kind(resolved) is CheckpointKind.DISCORM:
            model = cls.from_pretrained(resolved, head=head, options=options, trainable=True,
                                        uncertainty=uncertainty)
            if not model.is_lora:
                model.backbone = apply_finetuning(model.backbone, finetuning)
                model.rm_config = replace(model.rm_config, base_model=path, finetuning_type=finetuning.kind)
        else:
            backbone = apply_finetuning(load_backbone(resolved, options), finetuning)
            hidden = hidden_size(backbone.config)
            module = with_uncertainty(lambda: build_head(head, hidden, **(head_options or {})), hidden,
                                      uncertainty.kind, uncertainty.ensemble_size, uncertainty.bootstrap)
            config = RewardModelConfig(head=module.kind, head_options=module.saved_options(), pooling=pooling,
                                       base_model=path, finetuning_type=finetuning.kind,
                                       uncertainty=uncertainty.kind, ensemble_size=uncertainty.ensemble_size)
            model = cls(backbone, module, config, attention_backend=options.attention_backend,
                        vision=load_vision(resolved, options))
        model.tokenizer = tokenizer
        model.attention_backend = options.attention_backend
        quantization = options.quantization or model.rm_config.quantization
        model.rm_config = replace(model.rm_config, quantization=quantization, reward_mode="mean",
                                  reward_alpha=0.1, reward_k=1.0, reward_mean=0.0, reward_std=1.0,
                                  normalized_on=None)  # training moves the rewards
        model.head.requires_grad_(True)
        log_trainable(model)
        return model.train()
