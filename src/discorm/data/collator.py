"""Batches of tokenized pairs -> model inputs.

- ``PairwiseDataCollatorWithPadding``: the plain path. Chosen then rejected stacked on the batch dimension,
  ``input_ids``/``attention_mask`` of shape (2B, L), padded to the longest.
- ``PackedPairCollator``: the fast path. All pairs of the batch in one row (1, N) with no padding; with prefix
  sharing each pair is one block ``[prompt | chosen | rejected]``, without it each sequence is its own block.
  ``score_index`` (2B,) points at the last token of every chosen then every rejected sequence, so the model's
  output has the same layout as the padded path. See ``model/packed.py`` for the attention.

Both carry ``margin`` (B,) and ``soft_label`` (B,) when the data has them (missing values: margin 0, label 1), and
``sources`` (where each example was read, file:line) when the examples have them.

A batch may mix pairs with rated responses (``response_ids`` + ``scores``): the R rated sequences follow the 2B
pair sequences (padded rows, or plain blocks of the packed row), and the batch carries ``scores`` (R, A) and
``score_mask`` (R, A) (False: the attribute is not rated; its score is 0). The model's output is then
[chosen (B) | rejected (B) | rated (R)], and ``sources`` lists the B pairs then the R rated responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from discorm.model.packed import block_positions


def split_features(features: list[dict]) -> tuple[list[dict], list[dict]]:
    """-> (pairs, rated responses), each in batch order."""
    rated = [f for f in features if f.get("response_ids") is not None]
    return [f for f in features if f.get("response_ids") is None], rated


def _rated_extras(rated: list[dict]) -> dict:
    if not rated:
        return {}
    scores = torch.tensor([[math.nan if v is None else v for v in f["scores"]] for f in rated],
                          dtype=torch.float32)  # (R, A), NaN: not rated
    mask = ~scores.isnan()
    return {"scores": scores.nan_to_num(0.0), "score_mask": mask}


def _pair_extras(features: list[dict]) -> dict:
    extras = {}
    for key, missing in (("margin", 0.0), ("soft_label", 1.0)):
        values = [f.get(key) for f in features]
        if any(v is not None for v in values):
            extras[key] = torch.tensor([missing if v is None else v for v in values], dtype=torch.float32)
    return extras


def _sources(pairs: list[dict], rated: list[dict]) -> dict:
    """Where each example was read (file:line), pairs then rated responses; named by training errors."""
    features = pairs + rated
    if any("source" in f for f in features):
        return {"sources": [f.get("source", "?") for f in features]}
    return {}


def on_device(inputs: dict, device) -> dict:
    """A collated batch's tensors on ``device``, ready for a forward pass (``sources``, the labels naming where
    each example was read, left out)."""
    return {k: v.to(device) for k, v in inputs.items() if k != "sources"}


def pad_sequences(seqs: list[list[int]], pad_token_id: int, padding_side: str = "right",
                  pad_to_multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> input_ids, attention_mask, both (len(seqs), L) with L the longest (rounded up)."""
    length = max(len(s) for s in seqs)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if padding_side == "right" else slice(length - len(seq), length)
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids, attention_mask


@dataclass
class PairwiseDataCollatorWithPadding:
    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict:
        pairs, rated = split_features(features)
        seqs = [f["prompt_ids"] + f["chosen_ids"] for f in pairs]
        seqs += [f["prompt_ids"] + f["rejected_ids"] for f in pairs]
        seqs += [f["prompt_ids"] + f["response_ids"] for f in rated]
        input_ids, attention_mask = pad_sequences(seqs, self.pad_token_id, self.padding_side,
                                                  self.pad_to_multiple_of)  # (2B + R, L)
        return {"input_ids": input_ids, "attention_mask": attention_mask, **_pair_extras(pairs),
                **_rated_extras(rated), **_sources(pairs, rated)}


@dataclass
class PackedPairCollator:
    prefix_sharing: bool = True

    def __call__(self, features: list[dict]) -> dict:
        pairs, rated = split_features(features)
        tokens, blocks, chosen_end, rejected_end, rated_end = [], [], [], [], []
        for f in pairs:
            prompt, chosen, rejected = f["prompt_ids"], f["chosen_ids"], f["rejected_ids"]
            start = len(tokens)
            if self.prefix_sharing:
                tokens += prompt + chosen + rejected
                blocks.append((start, len(prompt), len(chosen), len(rejected)))
                chosen_end.append(start + len(prompt) + len(chosen) - 1)
                rejected_end.append(len(tokens) - 1)
            else:
                tokens += prompt + chosen
                blocks.append((start, 0, len(prompt) + len(chosen), 0))
                chosen_end.append(len(tokens) - 1)
                second = len(tokens)
                tokens += prompt + rejected
                blocks.append((second, 0, len(prompt) + len(rejected), 0))
                rejected_end.append(len(tokens) - 1)
        for f in rated:
            blocks.append((len(tokens), 0, len(f["prompt_ids"]) + len(f["response_ids"]), 0))
            tokens += f["prompt_ids"] + f["response_ids"]
            rated_end.append(len(tokens) - 1)
        return {  # score_index first: the Trainer reads the batch size off the first tensor
            "score_index": torch.tensor(chosen_end + rejected_end + rated_end, dtype=torch.long),  # (2B + R,)
            "input_ids": torch.tensor([tokens], dtype=torch.long),  # (1, N)
            "position_ids": block_positions(blocks).unsqueeze(0),  # (1, N)
            "pair_blocks": torch.tensor(blocks, dtype=torch.long),  # (num_blocks, 4)
            **_pair_extras(pairs),
            **_rated_extras(rated),
            **_sources(pairs, rated),
        }
