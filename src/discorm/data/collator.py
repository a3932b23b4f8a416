"""Batches of tokenized pairs, ranked lists and rated responses -> model inputs (:class:`PairBatch`).

``PairwiseDataCollatorWithPadding`` pads every sequence: the plain path, and the test oracle of the fast one.
``PackedPairCollator`` puts a batch in one row with no padding, each prompt one block ``[prompt | r_1 | ... |
r_K]`` whose K response branches share the prompt (``model/packed.py`` computes its attention exactly): a pair is
the block with K = 2, ``[prompt | chosen | rejected]``; a ranked list of K responses is one block of K branches.

Images belong to prompts (an example's ``images``: sources, see ``data/images.py``). A padded batch gives every
sequence its prompt's images (a pair's image is encoded twice, as every trainer that pads does); a packed batch
gives each prompt block its images once, so the vision encoder runs once per image. Either way the batch carries
the model's pixel tensors (``data/vision.py``) under the model's own argument names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import torch

from discorm.data.images import ImagePolicy, load_image
from discorm.errors import DataError

# (start, prompt_len, branch_1_len, ..., branch_K_len) in the packed row; a pair is (start, P, chosen, rejected).
# Rows of one batch are padded with zero-length branches to the longest; a zero-length branch is skipped.
Block = tuple[int, ...]


def block_positions(blocks: list[Block]) -> torch.Tensor:
    """Position ids (N,): 0..P+B1-1 for the prompt and the first branch, then P..P+Bk-1 for every later branch
    (each branch continues the prompt), per block."""
    parts = []
    for _, prompt_len, first, *others in blocks:
        parts.append(torch.arange(prompt_len + first))
        parts += [torch.arange(prompt_len, prompt_len + length) for length in others if length]
    return torch.cat(parts)


def split_features(features: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """-> (pairs, ranked lists, rated responses), each in batch order."""
    lists = [f for f in features if f.get("responses_ids") is not None]
    rated = [f for f in features if f.get("response_ids") is not None]
    pairs = [f for f in features if f.get("response_ids") is None and f.get("responses_ids") is None]
    return pairs, lists, rated


def _rated_extras(rated: list[dict]) -> dict:
    if not rated:
        return {}
    scores = torch.tensor([[math.nan if v is None else v for v in f["scores"]] for f in rated],
                          dtype=torch.float32)  # (R, A), NaN: not rated
    mask = ~scores.isnan()
    return {"scores": scores.nan_to_num(0.0), "score_mask": mask}


PAIR_LABELS = (("margin", 0.0), ("soft_label", 1.0), ("noise", math.nan), ("strength", math.nan), ("tie", 0.0),
               ("votes_chosen", math.nan), ("votes_tie", 0.0), ("votes_rejected", math.nan))


def _pair_extras(features: list[dict]) -> dict:
    extras = {}
    for key, missing in PAIR_LABELS:
        values = [f.get(key) for f in features]
        if any(v is not None for v in values):
            extras[key] = torch.tensor([missing if v is None else v for v in values], dtype=torch.float32)
    return extras


def _list_extras(lists: list[dict]) -> dict:
    """A ranked list's labels: ``list_sizes`` (L,), ``list_levels`` (sum K,) the rank level of each response (0
    best, ties share one; -1 where the list is labelled by votes), ``list_votes`` (V, 5) rows (i, j, wins of i,
    ties, wins of j) with i, j indices into the batch's list responses."""
    if not lists:
        return {}
    sizes, levels, votes, offset = [], [], [], 0
    for f in lists:
        k = len(f["responses_ids"])
        sizes.append(k)
        levels += f.get("levels") or [-1] * k
        votes += [[offset + int(i), offset + int(j), a, t, b] for i, j, a, t, b in (f.get("votes") or [])]
        offset += k
    extras = {"list_sizes": torch.tensor(sizes, dtype=torch.long), "list_levels": torch.tensor(levels)}
    if votes:
        extras["list_votes"] = torch.tensor(votes, dtype=torch.float32)
    return extras


def _sources(pairs: list[dict], lists: list[dict], rated: list[dict]) -> dict:
    """Where each example was read (file:line), pairs, lists then rated responses; named by training errors."""
    features = pairs + lists + rated
    if any("source" in f for f in features):
        return {"sources": [f.get("source", "?") for f in features]}
    return {}


class PairBatch(TypedDict, total=False):
    """A collated batch, as both collators make it (B pairs, L ranked lists of K_l responses, R rated responses;
    S = 2B + sum K_l + R scored sequences).

    Model inputs, padded: ``input_ids``, ``attention_mask`` (S, L). Packed: ``input_ids``, ``position_ids``
    (1, N), ``pair_blocks`` (blocks, 2 + max K) rows of (start, prompt, branch lengths...), ``score_index`` (S,)
    the token each score is read at. Either way the scores come out as [chosen (B) | rejected (B) | list
    responses (sum K_l) | rated (R)]. Pair labels (B,) where the data has them: ``margin`` (missing: 0),
    ``soft_label`` (1), ``noise`` (NaN), ``strength`` (NaN), ``tie`` (0/1), ``votes_chosen``, ``votes_tie``,
    ``votes_rejected`` (NaN: no votes). List labels: ``list_sizes``, ``list_levels``, ``list_votes`` (see
    ``_list_extras``). ``scores``, ``score_mask`` (R, A) for rated responses. ``sources`` (B + L + R strings):
    where each example was read, for error messages."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    pair_blocks: torch.Tensor
    score_index: torch.Tensor
    margin: torch.Tensor
    soft_label: torch.Tensor
    noise: torch.Tensor
    strength: torch.Tensor
    tie: torch.Tensor
    votes_chosen: torch.Tensor
    votes_tie: torch.Tensor
    votes_rejected: torch.Tensor
    list_sizes: torch.Tensor
    list_levels: torch.Tensor
    list_votes: torch.Tensor
    scores: torch.Tensor
    score_mask: torch.Tensor
    sources: list[str]


MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pair_blocks", "score_index")
PIXEL_INPUTS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes")  # as families name them


def model_inputs(batch: PairBatch, device: torch.device | str | None = None) -> dict:
    """The model's inputs of a batch (see :class:`PairBatch`), on ``device`` when given."""
    return {k: batch[k] if device is None else batch[k].to(device) for k in MODEL_INPUTS + PIXEL_INPUTS
            if k in batch}


def _images(feature: dict) -> list[tuple]:
    """An example's images as (source, where) pairs, named for error messages."""
    where = feature.get("source", "?")
    return [(image, f"{where} image {i + 1}") for i, image in enumerate(feature.get("images") or [])]


def _pixel_inputs(vision, rows: list[list[tuple]]) -> dict:
    """(source, where) images per model row -> the model's pixel tensors; each source is opened once per batch."""
    if not any(rows):
        return {}
    if vision is None:
        where = next(where for row in rows for _, where in row)
        raise DataError(f"{where}: the example has images but the collator has no image processor; build it with "
                        "the vision-language model's inputs (vision=model.vision).")
    opened: dict = {}

    def open_once(image, where: str):
        key = image if isinstance(image, str) else id(image)  # a path or data URI, or a PIL image from Python
        if key not in opened:
            opened[key] = load_image(image, where, CHECKED_IMAGES)
        return opened[key]

    return vision.pixel_inputs([[open_once(image, where) for image, where in row] for row in rows])


# Every image that reaches a batch was checked where it was read, under the reader's policy (the data reader's, or
# the server's --max-image-pixels / --max-image-bytes), so the collator does not judge its size a second time.
CHECKED_IMAGES = ImagePolicy(max_pixels=2**62, max_bytes=2**62)


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


def _sequences(pairs: list[dict], lists: list[dict], rated: list[dict]) -> list[tuple[list[int], list[list[int]]]]:
    """Every scored sequence as (prompt, responses) groups, in the score order of :class:`PairBatch`: the chosen
    responses of the pairs, their rejected ones, the responses of each list, the rated responses."""
    return ([(f["prompt_ids"], [f["chosen_ids"]]) for f in pairs] + [(f["prompt_ids"], [f["rejected_ids"]])
                                                                     for f in pairs]
            + [(f["prompt_ids"], f["responses_ids"]) for f in lists]
            + [(f["prompt_ids"], [f["response_ids"]]) for f in rated])


def _labels(pairs: list[dict], lists: list[dict], rated: list[dict]) -> dict:
    return {**_pair_extras(pairs), **_list_extras(lists), **_rated_extras(rated), **_sources(pairs, lists, rated)}


@dataclass
class PairwiseDataCollatorWithPadding:
    """Padded batches: every pair as two sequences, prompt + chosen and prompt + rejected, then each list's K
    responses and the rated responses, each prompt + response, padded to the longest ((S, L)). The plain twin of
    :class:`PackedPairCollator`."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "right"
    vision: object | None = None  # a vision-language model's image inputs (data/vision.VisionInputs)

    def __call__(self, features: list[dict]) -> PairBatch:
        pairs, lists, rated = split_features(features)
        seqs = [prompt + response for prompt, responses in _sequences(pairs, lists, rated) for response in responses]
        input_ids, attention_mask = pad_sequences(seqs, self.pad_token_id, self.padding_side,
                                                  self.pad_to_multiple_of)  # (S, L)
        owners = pairs + pairs + [f for f in lists for _ in f["responses_ids"]] + rated  # each sequence's example
        pixels = _pixel_inputs(self.vision, [_images(f) for f in owners])
        return {"input_ids": input_ids, "attention_mask": attention_mask, **pixels, **_labels(pairs, lists, rated)}


@dataclass
class PackedPairCollator:
    """Packed batches: a batch in one row with no padding; exact, the padded collator is its test oracle. With
    ``prefix_sharing`` every prompt is one block whose K response branches share it (a pair's two, a list's K: the
    prompt computed once); without it every sequence is a block of its own, (start, 0, prompt + response)."""

    prefix_sharing: bool = True
    vision: object | None = None  # a vision-language model's image inputs (data/vision.VisionInputs)

    def __call__(self, features: list[dict]) -> PairBatch:
        pairs, lists, rated = split_features(features)
        groups = [(f["prompt_ids"], [f["chosen_ids"], f["rejected_ids"]], f) for f in pairs]
        groups += [(f["prompt_ids"], f["responses_ids"], f) for f in lists]
        groups += [(f["prompt_ids"], [f["response_ids"]], f) for f in rated]
        tokens, blocks, ends, images = [], [], [], []  # ends: per group, the last token of each response
        for prompt, responses, feature in groups:
            shared = self.prefix_sharing and len(responses) > 1
            group_ends = []
            for first, response in enumerate(responses):
                if shared and first:
                    tokens += response
                    blocks[-1].append(len(response))
                else:
                    blocks.append([len(tokens), len(prompt), len(response)] if shared
                                  else [len(tokens), 0, len(prompt) + len(response)])
                    tokens += prompt + response
                    images += _images(feature)  # each copy of the prompt: its images once
                group_ends.append(len(tokens) - 1)
            ends.append(group_ends)
        pair_ends = ends[: len(pairs)]
        order = [e[0] for e in pair_ends] + [e[1] for e in pair_ends] + [i for e in ends[len(pairs):] for i in e]
        width = max(4, *(len(b) for b in blocks))
        blocks = [b + [0] * (width - len(b)) for b in blocks]
        return {  # score_index first: the Trainer reads the batch size off the first tensor
            "score_index": torch.tensor(order, dtype=torch.long),  # (S,)
            "input_ids": torch.tensor([tokens], dtype=torch.long),  # (1, N)
            "position_ids": block_positions(blocks).unsqueeze(0),  # (1, N)
            "pair_blocks": torch.tensor(blocks, dtype=torch.long),  # (num_blocks, 2 + max K)
            **_pixel_inputs(self.vision, [images]),  # one row: every block's images in row order
            **_labels(pairs, lists, rated),
        }
