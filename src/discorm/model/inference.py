"""Batched inference with a reward model, for training's post-training stages, evaluation, scoring and the
server alike: no gradient, length-sorted batches, results in input order.

``score_ids`` scores token sequences in padded batches; ``score_pairs`` scores tokenized pairs packed with the
prompt computed once wherever ``padded_reason`` finds that the model runs packed batches exactly (the same rule
training's collator choice uses); ``describe`` turns head parameters into the reward and the head's summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from discorm.data.collator import PackedPairCollator, model_inputs, pad_sequences
from discorm.data.retemplate import Retemplater
from discorm.data.tokenize import Encoder
from discorm.model.loading import load_policy_tokenizer


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the block, back in its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def padded_reason(model, packing: bool = True, prefix_sharing: bool = True) -> str | None:
    """Why batches for ``model`` must be padded (None: packed batches are exact for it). One rule for training
    and inference; the model's packing self-check runs only when the configuration allows packing."""
    pooling = model.rm_config.pooling
    if not packing:
        return "packing: false" + (" (prefix sharing needs packed batches)" if prefix_sharing else "")
    if pooling != "last":
        return (f"pooling: {pooling} reads {'every token' if pooling == 'mean' else 'the first token'} of a "
                "sequence, and packed batches hand the head only the last token of each response")
    if not model.check_packing():
        return model.packing_obstacle
    return None


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_ids(model, sequences: list[list[int]], batch_size: int = 8, show_progress: bool = False,
              features: bool = False):
    """Token id lists -> head params (N, K) float32 on the CPU, in padded batches; with ``features`` also the
    pooled features the head read, (N, H)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    pad = (model.tokenizer.pad_token_id if model.tokenizer is not None else None) or 0
    params_out, pooled_out = [None] * len(sequences), [None] * len(sequences)
    with evaluating(model):
        for start in tqdm(range(0, len(order), batch_size), desc="Scoring", disable=not show_progress):
            index = order[start : start + batch_size]
            input_ids, attention_mask = pad_sequences([sequences[i] for i in index], pad)
            out = model(input_ids.to(_device(model)), attention_mask.to(_device(model)))
            for row, i in enumerate(index):
                params_out[i] = out.head_params[row].float().cpu()
                if features:  # copied off the device only when asked for
                    pooled_out[i] = out.pooled[row].cpu()
    params = torch.stack(params_out) if params_out else torch.zeros(0, 1)
    return (params, torch.stack(pooled_out) if pooled_out else torch.zeros(0, 1)) if features else params


@torch.no_grad()
def score_pairs(model, examples: list[dict], batch_size: int = 8, show_progress: bool = False,
                description: str = "Scoring pairs", features: bool = False):
    """Tokenized pairs (prompt_ids, chosen_ids, rejected_ids) -> head params (N, 2, K) as [chosen, rejected],
    float32 on the CPU; with ``features`` also the pooled features the head read, (N, 2, H)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["prompt_ids"]) + len(
        examples[i]["chosen_ids"]) + len(examples[i]["rejected_ids"]))
    packed = padded_reason(model) is None
    params_out, pooled_out = [None] * len(examples), [None] * len(examples)
    with evaluating(model):
        for start in tqdm(range(0, len(order), batch_size), desc=description, disable=not show_progress):
            index = order[start : start + batch_size]
            batch = [examples[i] for i in index]
            if packed:
                inputs = PackedPairCollator(prefix_sharing=True)(batch)
                out = model(**model_inputs(inputs, _device(model)))
                params, pooled = out.head_params, out.pooled
            else:
                seqs = [f["prompt_ids"] + f[key] for key in ("chosen_ids", "rejected_ids") for f in batch]
                params, pooled = score_ids(model, seqs, batch_size=len(seqs), features=True)
            params = params.float().cpu().view(2, len(batch), -1)  # chosen first, then rejected
            pooled = pooled.cpu().view(2, len(batch), -1) if features else None
            for row, i in enumerate(index):
                params_out[i] = params[:, row]
                if features:
                    pooled_out[i] = pooled[:, row]
    params = torch.stack(params_out) if params_out else torch.zeros(0, 2, 1)
    return (params, torch.stack(pooled_out) if pooled_out else torch.zeros(0, 2, 1)) if features else params


def describe(model, params: torch.Tensor, reward_mode: str | None = None, reward_alpha: float | None = None,
             reward_k: float | None = None) -> list[dict]:
    """Head params (N, K) -> per item {"reward", "reward_mode", and the model's summary values (mean, sigma,
    per-attribute values, ...)}; the reward options apply to this call only."""
    mode = reward_mode or model.rm_config.reward_mode
    rewards = model.reward(params, mode, reward_alpha, reward_k).tolist()
    summary = _lists(model.summary(params))
    return [{"reward": r, "reward_mode": mode, **_item(summary, i)} for i, r in enumerate(rewards)]


def _lists(values: dict) -> dict:
    """{name: tensor (N,) or a map of them} -> the same with lists."""
    return {name: _lists(v) if isinstance(v, dict) else v.tolist() for name, v in values.items()}


def _item(values: dict, i: int) -> dict:
    return {name: _item(v, i) if isinstance(v, dict) else v[i] for name, v in values.items()}


def score_inputs(model, inputs: list, batch_size: int = 8, show_progress: bool = False,
                 reward_mode: str | None = None, reward_alpha: float | None = None,
                 reward_k: float | None = None, policy_tokenizer=None) -> list[dict]:
    """Texts, chat message lists, {"messages"} or {"prompt", "response"} -> ``describe`` records; with
    ``policy_tokenizer`` (a tokenizer or its path / name) texts rendered by the policy's chat template are
    re-templated (``data/retemplate.py``)."""
    reader = Retemplater(Encoder.for_model(model), load_policy_tokenizer(policy_tokenizer))
    params = score_ids(model, [reader.encode_item(item, f"input {i}") for i, item in enumerate(inputs)],
                       batch_size, show_progress)
    return describe(model, params, reward_mode, reward_alpha, reward_k)
