"""Freeze tuning without recomputing the frozen blocks: their output, cached once, feeds the trainable ones.

Under freeze tuning the embeddings and the lower blocks never change, so the hidden states entering the first
trainable block are the same in every epoch. ``cache_frozen_states`` computes them once for a set of tokenized
pairs (packed and prefix-shared, as training runs them) and returns them as one table (T, H) together with
copies of the pairs whose token ids are rows of that table. ``trainable_part`` builds a reward model whose
backbone is the same object graph with its embedding replaced by a lookup into the table and its block list cut
to the trainable blocks; the trainable blocks and the head are shared with the full model, so training one trains
the other. The collators, the packed attention, the Trainer and the loss are unchanged, and the result equals
the full model's (checked on a cached pair when the part is built, and by the tests for scores and gradients).

Decoder models whose positions enter inside the attention (rotary: Llama, Qwen2, Mistral, ...) qualify; models
that add position embeddings to the input (GPT-2) or scale it do not, and the check says so.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from discorm.data.collator import PackedPairCollator, model_inputs
from discorm.errors import ModelError
from discorm.model.inference import evaluating
from discorm.model.loading import transformer_blocks
from discorm.model.reward_model import RewardModel


class _Captured(Exception):
    """Raised by the capture hook: nothing above the frozen blocks needs computing."""


def first_trainable_block(backbone: nn.Module) -> int:
    """Index of the lowest block with a trainable weight; everything below it (embeddings included) must be
    frozen. Equals the number of blocks when only the head trains."""
    blocks = transformer_blocks(backbone)
    trainable = [i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())]
    first = trainable[0] if trainable else len(blocks)
    below = {id(p) for block in list(blocks)[first:] for p in block.parameters()}
    moving = [name for name, p in backbone.named_parameters() if p.requires_grad and id(p) not in below]
    if moving:
        raise ModelError(f"cannot cache the frozen blocks: {moving[0]} trains but lies below or beside the "
                         "trainable top blocks; use finetuning_type: freeze.")
    return first


@torch.no_grad()
def cache_frozen_states(model: RewardModel, examples: list[dict], batch_size: int = 8,
                        show_progress: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """Tokenized pairs -> (states (T, H) float32, pairs whose prompt/chosen/rejected ids are rows of ``states``).

    Each pair runs once as ``[prompt | chosen | rejected]`` (prefix sharing): the prompt rows serve both
    responses, exactly as in a packed training batch."""
    if not model.check_packing():
        raise ModelError(f"cannot cache the frozen blocks of this model: {model.packing_obstacle}.")
    backbone, blocks = model.backbone, transformer_blocks(model.backbone)
    first = first_trainable_block(backbone)
    captured: list[torch.Tensor] = []

    def before_block(module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"])[0])
        raise _Captured

    def after_last(module, args, output):
        captured.append((output[0] if isinstance(output, tuple) else output)[0])
        raise _Captured

    hook = (blocks[first].register_forward_pre_hook(before_block, with_kwargs=True) if first < len(blocks)
            else blocks[-1].register_forward_hook(after_last))
    device = next(model.parameters()).device
    parts, remapped, offset = [], [], 0
    with evaluating(model), _removed(hook):
        for start in tqdm(range(0, len(examples), batch_size), desc="Caching frozen blocks",
                          disable=not show_progress):
            batch = examples[start : start + batch_size]
            inputs = PackedPairCollator(prefix_sharing=True)(batch)
            captured.clear()
            try:
                backbone(input_ids=inputs["input_ids"].to(device), position_ids=inputs["position_ids"].to(device),
                         discorm_blocks=[tuple(b) for b in inputs["pair_blocks"].tolist()])
            except _Captured:
                pass
            parts.append(captured[0].float().cpu())  # (N, H) in packed order
            for (block_start, p, c, r), example in zip(inputs["pair_blocks"].tolist(), batch):
                rows = list(range(offset + block_start, offset + block_start + p + c + r))
                remapped.append({**example, "prompt_ids": rows[:p], "chosen_ids": rows[p : p + c],
                                 "rejected_ids": rows[p + c :]})
            offset += inputs["input_ids"].shape[1]
    return torch.cat(parts), remapped


@contextmanager
def _removed(hook):
    try:
        yield
    finally:
        hook.remove()


def _with_submodule(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` in which the submodule at dotted ``path`` is ``new``; every other submodule is
    shared with ``root``."""
    head, _, rest = path.partition(".")
    clone = copy.copy(root)
    clone._modules = dict(root._modules)
    clone._modules[head] = _with_submodule(root._modules[head], rest, new) if rest else new
    return clone


def trainable_part(model: RewardModel, states: torch.Tensor, check_with: dict | None = None) -> RewardModel:
    """A reward model that reads the cached ``states`` (from ``cache_frozen_states``) instead of running the
    frozen blocks. ``check_with``: an original tokenized pair and its remapped twin, ``{"original", "cached"}``;
    the two models must score them alike or this raises."""
    backbone, blocks = model.backbone, transformer_blocks(model.backbone)
    first = first_trainable_block(backbone)
    path = next(name for name, module in backbone.named_modules() if module is blocks)
    part = _with_submodule(backbone, path, nn.ModuleList(list(blocks)[first:]))
    table = nn.Embedding.from_pretrained(states, freeze=True)
    embedding_path = next(name for name, m in part.named_modules() if m is backbone.get_input_embeddings())
    part = _with_submodule(part, embedding_path, table)
    reduced = RewardModel(part, model.head, model.rm_config, model.tokenizer)
    reduced._packing_checked, reduced._packing_obstacle = True, model.packing_obstacle
    reduced.train(model.training)
    if check_with is not None:
        _check_equal(model, reduced, check_with["original"], check_with["cached"])
    return reduced


@torch.no_grad()
def _check_equal(model: RewardModel, reduced: RewardModel, original: dict, cached: dict) -> None:
    collate = PackedPairCollator(prefix_sharing=True)
    device = next(model.parameters()).device
    with evaluating(model):
        full = model(**model_inputs(collate([original]), device)).head_params
        part = reduced(**model_inputs(collate([cached]), device)).head_params
    difference = float((full - part).abs().max())
    if difference > 1e-4 * max(1.0, float(full.abs().max())):
        raise ModelError(f"the cached frozen blocks do not reproduce this model ({type(model.backbone).__name__}: "
                         f"head outputs differ by {difference:.2g}); it adds or scales something at its input "
                         "(position embeddings?). Train it without the cache.")
