"""Batches of tokenized pairs and rated responses -> model inputs (:class:`PairBatch`).

``PairwiseDataCollatorWithPadding`` pads every sequence: the plain path, and the test oracle of the fast one.
``PackedPairCollator`` puts a batch in one row with no padding, each pair one block ``[prompt | chosen |
rejected]`` with prefix sharing (``model/packed.py`` computes its attention exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import torch

Block = tuple[int, int, int, int]  # (start, prompt_len, chosen_len, rejected_len) in the packed row


def block_positions(blocks: list[Block]) -> torch.Tensor:
    """Position ids (N,): 0..P+C-1 for prompt + chosen, then P..P+R-1 for rejected, per block."""
    parts = []
    for _, prompt_len, chosen_len, rejected_len in blocks:
        parts.append(torch.arange(prompt_len + chosen_len))
        parts.append(torch.arange(prompt_len, prompt_len + rejected_len))
    return torch.cat(parts)


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
    for key, missing in (("margin", 0.0), ("soft_label", 1.0), ("noise", math.nan)):
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


class PairBatch(TypedDict, total=False):
    """A collated batch, as both collators make it (B pairs, R rated responses, S = 2B + R scored sequences).

    Model inputs, padded: ``input_ids``, ``attention_mask`` (S, L). Packed: ``input_ids``, ``position_ids``
    (1, N), ``pair_blocks`` (blocks, 4) rows of (start, prompt, chosen, rejected) lengths, ``score_index`` (S,)
    the token each score is read at. Either way the scores come out as [chosen (B) | rejected (B) | rated (R)].
    Labels: ``margin``, ``soft_label``, ``noise`` (B,) where the data has them (missing: 0, 1, NaN);
    ``scores``, ``score_mask`` (R, A) for rated
    responses. ``sources`` (B + R strings): where each example was read, for error messages."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    pair_blocks: torch.Tensor
    score_index: torch.Tensor
    margin: torch.Tensor
    soft_label: torch.Tensor
    noise: torch.Tensor
    scores: torch.Tensor
    score_mask: torch.Tensor
    sources: list[str]


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pair_blocks", "score_index")


def model_inputs(batch: PairBatch, device: torch.device | str | None = None) -> dict:
    """The model's inputs of a batch (see :class:`PairBatch`), on ``device`` when given."""
    return {k: batch[k] if device is None else batch[k].to(device) for k in MODEL_INPUTS if k in batch}


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
    """Padded batches: every pair as two sequences, prompt + chosen and prompt + rejected, then the rated
    responses, padded to the longest ((2B + R, L)). The plain twin of :class:`PackedPairCollator`."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> PairBatch:
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
    """Packed batches: the pairs (and rated responses) of a batch in one row with no padding, each pair as one
    block ``[prompt | chosen | rejected]`` with ``prefix_sharing`` (the prompt computed once) or as two
    sequences without it; exact, the padded collator is its test oracle."""

    prefix_sharing: bool = True

    def __call__(self, features: list[dict]) -> PairBatch:
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
