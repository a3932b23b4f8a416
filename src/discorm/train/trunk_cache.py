"""Freeze tuning from a cached frozen trunk: the frozen blocks run once, the trainable ones every epoch.

Under ``finetuning_type: freeze`` the embeddings and the lower blocks never change, so the hidden states entering
the first trainable block are the same in every epoch. ``build_trunk_cache`` computes them once, before the first
step, for every training example, and stores them per example in one table (T, H): example i owns the rows
``offset_i .. offset_i + P + sum(branches)``, laid out ``[prompt | response_1 | ... | response_K]`` (a pair:
``[prompt | chosen | rejected]``; a rated response: ``[prompt | response]``). The training examples are rewritten so
that their token ids are their rows of the table. ``TrunkCache.model`` is a reward model whose backbone is the
same object graph with its embedding replaced by a lookup into the table and its block list cut to the trainable
blocks: the trainable blocks and the head are shared with the full model, so training one trains the other.

Because each example's rows are its own, any batch composition (shuffling, packing with or without prefix
sharing, padding) gives the same losses and gradients as the full model: a frozen block's state of a token depends
only on its own sequence (causal attention, and packed blocks never see each other). The cache is checked against
the full model on the first example; models that add or scale something at the input of the blocks (GPT-2's
position embeddings) are refused by that check. Evaluation runs the full model on the original tokens.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from discorm.data.collator import PackedPairCollator, model_inputs, split_features
from discorm.errors import ConfigError, ModelError
from discorm.model.inference import evaluating
from discorm.model.loading import transformer_blocks
from discorm.model.reward_model import RewardModel

logger = logging.getLogger(__name__)

# An example's token id columns, in the order of its rows in the table (after the prompt).
BRANCHES = ("chosen_ids", "rejected_ids", "responses_ids", "response_ids")


class _Captured(Exception):
    """Raised by the capture hook: nothing above the frozen blocks needs computing."""


@dataclass
class TrunkCache:
    """The frozen blocks' output per token of the training examples, and the reward model that reads it."""

    states: torch.Tensor  # (T, H) the hidden states entering block ``first`` (its input), in the backbone's dtype
    first: int  # the first trainable block (the number of blocks when only the head trains)
    model: RewardModel  # the trainable part, reading ``states`` through its token ids

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()


def first_trainable_block(backbone: nn.Module) -> int:
    """Index of the lowest block with a trainable weight; everything below it (embeddings included) must be
    frozen. Equals the number of blocks when only the head trains."""
    blocks = transformer_blocks(backbone)
    trainable = [i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())]
    first = trainable[0] if trainable else len(blocks)
    above = {id(p) for block in list(blocks)[first:] for p in block.parameters()}
    moving = [name for name, p in backbone.named_parameters() if p.requires_grad and id(p) not in above]
    if moving:
        raise ConfigError(f"cache_frozen_trunk: {moving[0]} trains but lies below or beside the trainable top "
                          "blocks, so the frozen part changes during training. Use finetuning_type: freeze, or "
                          "remove cache_frozen_trunk.")
    return first


def frozen_dropout(backbone: nn.Module, first: int) -> str | None:
    """The first dropout with a nonzero rate below block ``first`` (a module and its rate), or None. With one, the
    frozen part is random in training mode, and a cache of it is not the same computation."""
    blocks = transformer_blocks(backbone)
    above = {id(m) for block in list(blocks)[first:] for m in block.modules()}
    for name, module in backbone.named_modules():
        if id(module) in above:
            continue
        rate = module.p if isinstance(module, nn.Dropout) else getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            return f"{name or type(module).__name__} (rate {rate})"
    return None


def example_length(example: dict) -> int:
    """The number of table rows an example owns: its prompt and every response."""
    return len(example["prompt_ids"]) + sum(len(ids) for ids in _branches(example))


def _branches(example: dict) -> list[list[int]]:
    responses = []
    for key in BRANCHES:
        value = example.get(key)
        if value is not None:
            responses += value if key == "responses_ids" else [value]
    return responses


def remap(example: dict, offset: int) -> dict:
    """The example with its token ids replaced by its rows of the table, starting at ``offset``."""
    out, row = {}, offset + len(example["prompt_ids"])
    out["prompt_ids"] = list(range(offset, row))
    for key in BRANCHES:
        value = example.get(key)
        if value is None:
            continue
        parts = []
        for ids in (value if key == "responses_ids" else [value]):
            parts.append(list(range(row, row + len(ids))))
            row += len(ids)
        out[key] = parts if key == "responses_ids" else parts[0]
    return out


def estimate_bytes(tokens: int, model: RewardModel) -> int:
    """The size of the table: one row of hidden_size values per prompt and response token, in the backbone's dtype."""
    dtype = next(model.backbone.parameters()).dtype
    return tokens * model.config.hidden_size * torch.empty((), dtype=dtype).element_size()


def check_cacheable(model: RewardModel, dataset) -> int:
    """Refuse what the cache cannot reproduce exactly; -> the first trainable block."""
    first = first_trainable_block(model.backbone)
    dropout = frozen_dropout(model.backbone, first)
    if dropout:
        raise ConfigError(f"cache_frozen_trunk: the frozen blocks have dropout ({dropout}), so without the cache "
                          "every epoch sees other frozen states and the cache would not be the same training. Set "
                          "the backbone's dropout to 0 (its config), or remove cache_frozen_trunk.")
    if not model.check_packing():
        raise ConfigError(f"cache_frozen_trunk computes the frozen blocks in packed rows, and this model cannot run "
                          f"them ({model.packing_obstacle}). Remove cache_frozen_trunk.")
    return first


@torch.no_grad()
def build_trunk_cache(model: RewardModel, dataset, batch_size: int = 8, max_gb: float = 4.0):
    """-> (TrunkCache, the dataset with its token ids remapped to table rows). ``dataset``: tokenized examples (a
    ``datasets.Dataset`` or a list of dicts) of pairs, ranked lists or rated responses. The size of the table is
    logged before it is built; past ``max_gb`` it is refused."""
    first = check_cacheable(model, dataset)
    offsets = [0]  # example i owns the rows offsets[i] .. offsets[i + 1]
    for i, example in enumerate(dataset):
        if example.get("images"):
            raise ConfigError(f"cache_frozen_trunk caches text-only training rows, and training row {i} "
                              f"({example.get('source', 'no source')}) has images. Remove cache_frozen_trunk.")
        offsets.append(offsets[-1] + example_length(example))
    tokens = offsets[-1]
    size = estimate_bytes(tokens, model)
    blocks = transformer_blocks(model.backbone)
    logger.info("frozen-trunk cache: %d tokens x hidden size %d, %.3f GB (limit cache_frozen_trunk_max_gb=%g); "
                "blocks 0-%d run once, blocks %d-%d train from it", tokens, model.config.hidden_size, size / 1e9,
                max_gb, first - 1, first, len(blocks) - 1)
    if size > max_gb * 1e9:
        raise ConfigError(f"cache_frozen_trunk would hold {tokens} tokens x {model.config.hidden_size} values = "
                          f"{size / 1e9:.3g} GB, more than cache_frozen_trunk_max_gb={max_gb:g}. Raise "
                          "cache_frozen_trunk_max_gb if the memory is there, train on fewer or shorter rows "
                          "(max_samples, cutoff_len), or remove cache_frozen_trunk.")
    device = next(model.parameters()).device
    states = torch.empty(tokens, model.config.hidden_size, dtype=next(model.backbone.parameters()).dtype,
                         device=device)
    captured: list[torch.Tensor] = []

    def before_block(module, args, kwargs):
        captured.append((args[0] if args else kwargs["hidden_states"])[0])
        raise _Captured

    def after_last(module, args, output):
        captured.append((output[0] if isinstance(output, tuple) else output)[0])
        raise _Captured

    hook = (blocks[first].register_forward_pre_hook(before_block, with_kwargs=True) if first < len(blocks)
            else blocks[-1].register_forward_hook(after_last))
    collate = PackedPairCollator(prefix_sharing=True)
    with evaluating(model), _removed(hook):
        for start in range(0, len(dataset), batch_size):
            batch = [{**dataset[i], "_row": i} for i in range(start, min(start + batch_size, len(dataset)))]
            inputs = model_inputs(collate(batch), device)
            captured.clear()
            try:
                model.backbone(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                               discorm_blocks=[tuple(b) for b in inputs["pair_blocks"].tolist()])
            except _Captured:
                pass
            pairs, lists, rated = split_features(batch)  # the collator's group order
            for block, example in zip(inputs["pair_blocks"].tolist(), pairs + lists + rated):
                row, length = offsets[example["_row"]], example_length(example)
                states[row : row + length] = captured[0][block[0] : block[0] + length]
    cache = TrunkCache(states, first, trainable_part(model, states, first))
    remapped = _remapped(dataset, offsets)
    _check_equal(model, cache.model, dataset[0], remapped[0])
    return cache, remapped


def _remapped(dataset, offsets: list[int]):
    if isinstance(dataset, list):
        return [{**example, **remap(example, offsets[i])} for i, example in enumerate(dataset)]
    return dataset.map(lambda example, i: remap(example, offsets[i]), with_indices=True, keep_in_memory=True,
                       desc="Remapping to the frozen-trunk cache")


@contextmanager
def _removed(hook):
    try:
        yield
    finally:
        hook.remove()


class _Rows(nn.Module):
    """The embedding of the trainable part: token ids are rows of the cached states. Ids past the table (a
    padded batch's pad id) read row 0; padding is masked, so its value never reaches a score."""

    def __init__(self, states: torch.Tensor):
        super().__init__()
        self.states = states

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.states[input_ids.clamp_max(self.states.shape[0] - 1)]  # (..., L) -> (..., L, H)


def _with_submodule(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` in which the submodule at dotted ``path`` is ``new``; every other submodule is
    shared with ``root``."""
    head, _, rest = path.partition(".")
    clone = copy.copy(root)
    clone._modules = dict(root._modules)
    clone._modules[head] = _with_submodule(root._modules[head], rest, new) if rest else new
    return clone


def trainable_part(model: RewardModel, states: torch.Tensor, first: int) -> RewardModel:
    """A reward model that reads ``states`` instead of running blocks below ``first``; its blocks from ``first``
    on and its head are the full model's own modules."""
    backbone, blocks = model.backbone, transformer_blocks(model.backbone)
    path = next(name for name, module in backbone.named_modules() if module is blocks)
    part = _with_submodule(backbone, path, nn.ModuleList(list(blocks)[first:]))
    embedding = next(name for name, m in part.named_modules() if m is backbone.get_input_embeddings())
    part = _with_submodule(part, embedding, _Rows(states))
    reduced = RewardModel(part, model.head, model.rm_config, model.tokenizer, model.attention_backend)
    reduced._packing_checked, reduced._packing_obstacle = True, model.packing_obstacle
    return reduced


@torch.no_grad()
def _check_equal(model: RewardModel, reduced: RewardModel, original: dict, cached: dict) -> None:
    collate = PackedPairCollator(prefix_sharing=True)
    device = next(model.parameters()).device
    with evaluating(model), evaluating(reduced):
        full = model(**model_inputs(collate([original]), device)).head_params
        part = reduced(**model_inputs(collate([cached]), device)).head_params
    difference = float((full - part).abs().max())
    if difference > 1e-4 * max(1.0, float(full.abs().max())):
        raise ModelError(f"cache_frozen_trunk: the cached frozen blocks do not reproduce this model "
                         f"({type(model.backbone).__name__}: head outputs differ by {difference:.2g}); it adds or "
                         "scales something at the input of its blocks (position embeddings?). Remove "
                         "cache_frozen_trunk.")
