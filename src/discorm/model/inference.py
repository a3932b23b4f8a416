"""Batched inference with a reward model, for training's post-training stages, evaluation, scoring and the
server alike: no gradient, length-sorted batches, results in input order.

``score_ids`` scores token sequences in padded batches. ``score_groups`` scores K responses to one prompt packed
with the prompt computed once, wherever ``padded_reason`` finds that the model runs packed batches exactly (the
same rule training's collator choice uses); ``score_pairs`` scores pairs (groups of two), ``score_sequences``
token sequences, grouping those that share a prefix (as an RL batch's completions of one prompt do).
``describe`` turns head parameters into the reward and the head's summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs, pad_sequences
from discorm.data.retemplate import Retemplater
from discorm.data.tokenize import Encoder, common_prefix
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


def _pad_id(model) -> int:
    return (model.tokenizer.pad_token_id if model.tokenizer is not None else None) or 0


@torch.no_grad()
def score_ids(model, sequences: list[list[int]], batch_size: int = 8, show_progress: bool = False,
              features: bool = False):
    """Token id lists -> head params (N, K) float32 on the CPU, in padded batches; with ``features`` also the
    pooled features the head read, (N, H)."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    pad = _pad_id(model)
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
def score_groups(model, groups: list[dict], batch_size: int = 8, show_progress: bool = False,
                 description: str = "Scoring", features: bool = False):
    """Tokenized groups of responses to one prompt (``prompt_ids``, ``responses_ids``: K >= 1 lists; ``images``: the
    prompt's image sources, if any) -> head params per group, each (K, P) float32 on the CPU, in input order; with
    ``features`` also the pooled features the head read, each (K, H). Packed, a group is one block whose K branches
    share the prompt (computed once, its images encoded once), wherever ``padded_reason`` finds packing exact for
    the model; else every prompt + response is padded on its own, with the prompt's images."""
    order = sorted(range(len(groups)), key=lambda i: len(groups[i]["prompt_ids"]) + sum(
        map(len, groups[i]["responses_ids"])))
    packed = padded_reason(model) is None
    params_out, pooled_out = [None] * len(groups), [None] * len(groups)
    with evaluating(model):
        for start in tqdm(range(0, len(order), batch_size), desc=description, disable=not show_progress):
            index = order[start : start + batch_size]
            batch = [groups[i] for i in index]
            vision = getattr(model, "vision", None)
            if packed or any(g.get("images") for g in batch):
                rows = [{"prompt_ids": g["prompt_ids"], "responses_ids": g["responses_ids"],
                         "images": g.get("images"), "source": g.get("source", f"input {i}")}
                        for i, g in zip(index, batch)]
                collate = (PackedPairCollator(prefix_sharing=True, vision=vision) if packed else
                           PairwiseDataCollatorWithPadding(_pad_id(model), vision=vision))
                out = model(**model_inputs(collate(rows), _device(model)))
                params, pooled = out.head_params.float().cpu(), out.pooled.cpu() if features else None
            else:
                seqs = [g["prompt_ids"] + r for g in batch for r in g["responses_ids"]]
                params, pooled = score_ids(model, seqs, batch_size=len(seqs), features=True)
            sizes = [len(g["responses_ids"]) for g in batch]
            for i, part in zip(index, params.split(sizes)):
                params_out[i] = part
            if features:
                for i, part in zip(index, pooled.split(sizes)):
                    pooled_out[i] = part
    return (params_out, pooled_out) if features else params_out


MIN_SHARED_PREFIX = 16  # tokens two sequences must share before they are scored as one group


def shared_prefix_groups(sequences: list[list[int]], min_shared: int = MIN_SHARED_PREFIX,
                         images: list | None = None, image_token_id: int | None = None) -> list[tuple[int, list]]:
    """Sequences -> groups (shared prefix length P, member indices) such that every member starts with the same P
    tokens and has at least one token more: what an RL batch of G completions per prompt (rendered as whole texts)
    holds. Sequences are visited in lexicographic order, so those sharing a prefix are neighbours; a sequence joins
    the current group when it shares at least ``min_shared`` tokens and half the group's prefix with it. With
    ``images`` (per sequence its image sources, or None), only sequences with the same images are grouped, and
    only where the shared prefix holds all their image tokens (``image_token_id``)."""
    keys = [_image_key(found) for found in images] if images is not None else [()] * len(sequences)
    floors = [_after_last(sequence, image_token_id) if key else 0 for sequence, key in zip(sequences, keys)]
    order = sorted(range(len(sequences)), key=lambda i: (keys[i], sequences[i]))
    groups: list[tuple[int, list]] = []
    for i in order:
        sequence = sequences[i]
        if groups:
            shared, members = groups[-1]
            common = common_prefix(sequences[members[0]], sequence)
            joined = min(shared, common, len(sequence) - 1)
            if (common >= min_shared and 2 * common >= shared and keys[members[0]] == keys[i]
                    and joined >= floors[i]):
                groups[-1] = (joined, [*members, i])
                continue
        groups.append((len(sequence) - 1, [i]))
    return groups


def _image_key(images) -> tuple:
    """Which images a sequence holds, comparable: a source text as itself, a PIL image by its identity."""
    return tuple(image if isinstance(image, str) else f"object {id(image)}" for image in images or ())


def _after_last(sequence: list[int], token_id: int | None) -> int:
    """The length of the shortest prefix holding every ``token_id`` of the sequence."""
    return max((i + 1 for i, token in enumerate(sequence) if token == token_id), default=0)


@torch.no_grad()
def score_sequences(model, sequences: list[list[int]], batch_size: int = 8, show_progress: bool = False,
                    features: bool = False):
    """Token sequences -> head params (N, K) float32 on the CPU, in input order, like ``score_ids``; where packing
    is exact for the model, sequences sharing a prefix (``shared_prefix_groups``) are scored as one block whose
    prefix is computed once, about ``batch_size`` sequences per forward pass. A sequence whose prompt holds images
    (``data/tokenize.ImageTokens``) is scored with them; padded, each such sequence has its images."""
    images = [getattr(sequence, "images", None) for sequence in sequences]
    padded = padded_reason(model) is not None
    if not any(images) and (padded or not sequences):
        return score_ids(model, sequences, batch_size, show_progress, features)
    if padded:  # every sequence alone, with its images
        groups = [(0, [i]) for i in range(len(sequences))]
    else:
        groups = shared_prefix_groups(sequences, images=images,
                                      image_token_id=getattr(getattr(model, "vision", None), "image_token_id", None))
    blocks = [{"prompt_ids": sequences[members[0]][:shared], "images": images[members[0]],
               "responses_ids": [sequences[i][shared:] for i in members]} for shared, members in groups]
    params_out, pooled_out = [None] * len(sequences), [None] * len(sequences)
    chunk, chunks = [], []
    for number in range(len(groups)):  # about batch_size sequences per pass
        chunk.append(number)
        if sum(len(groups[g][1]) for g in chunk) >= batch_size:
            chunks.append(chunk)
            chunk = []
    chunks += [chunk] if chunk else []
    for chunk in tqdm(chunks, desc="Scoring", disable=not show_progress):
        found = score_groups(model, [blocks[g] for g in chunk], batch_size=len(chunk), features=features)
        params, pooled = found if features else (found, [None] * len(chunk))
        for g, group_params, group_pooled in zip(chunk, params, pooled):
            for row, i in enumerate(groups[g][1]):
                params_out[i] = group_params[row]
                pooled_out[i] = None if group_pooled is None else group_pooled[row]
    params = torch.stack(params_out)
    return (params, torch.stack(pooled_out)) if features else params


def score_pairs(model, examples: list[dict], batch_size: int = 8, show_progress: bool = False,
                description: str = "Scoring pairs", features: bool = False):
    """Tokenized pairs (prompt_ids, chosen_ids, rejected_ids; images where the prompt has them) -> head params
    (N, 2, K) as [chosen, rejected], float32 on the CPU; with ``features`` also the pooled features the head read,
    (N, 2, H). A pair is the group of two responses (``score_groups``)."""
    groups = [{"prompt_ids": e["prompt_ids"], "responses_ids": [e["chosen_ids"], e["rejected_ids"]],
               "images": e.get("images"), "source": e.get("source", f"pair {i}")} for i, e in enumerate(examples)]
    found = score_groups(model, groups, batch_size, show_progress, description, features)
    params, pooled = found if features else (found, None)
    params = torch.stack(params) if params else torch.zeros(0, 2, 1)
    if not features:
        return params
    return params, torch.stack(pooled) if pooled else torch.zeros(0, 2, 1)


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
    """Texts, chat message lists, {"messages"} or {"prompt", "response"} (a prompt may hold images: image parts, or
    the dict's ``"images"``; paths relative to the working folder) -> ``describe`` records; with
    ``policy_tokenizer`` (a tokenizer or its path / name) texts rendered by the policy's chat template are
    re-templated (``data/retemplate.py``). Items sharing a prompt are scored as groups (``score_sequences``)."""
    reader = Retemplater(Encoder.for_model(model), load_policy_tokenizer(policy_tokenizer))
    params = score_sequences(model, [reader.encode_item(item, f"input {i}") for i, item in enumerate(inputs)],
                             batch_size, show_progress)
    return describe(model, params, reward_mode, reward_alpha, reward_k)
