"""Scoring with a trained reward model: the tokens come from the model's own encoder (``data/tokenize.py``), so
a conversation is scored on exactly the tokens training would give it.

An input is one of: a full text (already rendered; scored as is), a list of chat messages (the last one is the
response), ``{"messages": [...]}``, or ``{"prompt": str | messages, "response": str | messages}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from discorm.data.collator import PackedPairCollator, on_device, pad_sequences
from discorm.data.formats import FormatSpec, SkipPair, detect_format, to_pair
from discorm.data.tokenize import Encoder
from discorm.errors import DataError


@torch.no_grad()
def score_ids(model, sequences: list[list[int]], batch_size: int = 8, show_progress: bool = False) -> torch.Tensor:
    """Token id lists -> head params (N, K), computed in length-sorted padded batches, returned in input order."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    pad = (model.tokenizer.pad_token_id if model.tokenizer is not None else None) or 0
    device = next(model.parameters()).device
    out = [None] * len(sequences)
    for start in tqdm(range(0, len(order), batch_size), desc="Scoring", disable=not show_progress):
        index = order[start : start + batch_size]
        input_ids, attention_mask = pad_sequences([sequences[i] for i in index], pad)
        params = model(input_ids.to(device), attention_mask.to(device)).head_params
        for row, i in enumerate(index):
            out[i] = params[row].float().cpu()
    return torch.stack(out) if out else torch.zeros(0, 1)


@torch.no_grad()
def score_pairs(model, examples: list[dict], batch_size: int = 8, show_progress: bool = False,
                description: str = "Scoring pairs") -> torch.Tensor:
    """Tokenized pairs (prompt_ids, chosen_ids, rejected_ids) -> head params (N, 2, K) as [chosen, rejected].

    Length-sorted batches, each packed with the prompt shared where the model runs it exactly (padded
    otherwise); returned in input order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["prompt_ids"]) + len(
        examples[i]["chosen_ids"]) + len(examples[i]["rejected_ids"]))
    packed = model.rm_config.pooling == "last" and model.check_packing()
    device = next(model.parameters()).device
    out = [None] * len(examples)
    for start in tqdm(range(0, len(order), batch_size), desc=description, disable=not show_progress):
        index = order[start : start + batch_size]
        batch = [examples[i] for i in index]
        if packed:
            inputs = PackedPairCollator(prefix_sharing=True)(batch)
            params = model(**on_device(inputs, device)).head_params
        else:
            seqs = [f["prompt_ids"] + f[key] for key in ("chosen_ids", "rejected_ids") for f in batch]
            params = score_ids(model, seqs, batch_size=len(seqs))
        params = params.float().cpu().view(2, len(batch), -1)  # chosen first, then rejected
        for row, i in enumerate(index):
            out[i] = params[:, row]
    return torch.stack(out) if out else torch.zeros(0, 2, 1)


def describe(model, params: torch.Tensor, reward_mode: str | None = None, reward_alpha: float | None = None,
             reward_k: float | None = None) -> list[dict]:
    """Head params -> [{"reward", "reward_mode", and the model's summary values (mean, sigma, per-attribute
    values ...)}]."""
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
                 reward_k: float | None = None) -> list[dict]:
    """Score a list of inputs; the reward options apply to this call only (the model is left unchanged)."""
    was_training = model.training
    model.eval()
    encoder = Encoder.for_model(model)
    try:
        params = score_ids(model, [encoder.encode_item(item, f"input {i}") for i, item in enumerate(inputs)],
                           batch_size, show_progress)
    finally:
        model.train(was_training)
    return describe(model, params, reward_mode, reward_alpha, reward_k)


def score_file(model_dir: str, input_path: str, output_path: str, batch_size: int = 8,
               reward_mode: str | None = None, reward_alpha: float | None = None,
               reward_k: float | None = None) -> int:
    """Score a file of pairs (any format the data layer reads) or of single responses; writes JSONL."""
    from discorm.data.loader import read_path
    from discorm.model.reward_model import RewardModel

    path = Path(input_path)
    if not path.exists():
        raise DataError(f"{input_path} does not exist; pass a .jsonl/.json/.parquet/.csv file of rows to score.")
    rows = read_path(path)
    from discorm.serve.validation import check_reward_options

    model = RewardModel.from_pretrained(model_dir).eval()
    check_reward_options(reward_mode, reward_alpha, model.head)
    encoder = Encoder.for_model(model)
    options = {"reward_mode": reward_mode, "reward_alpha": reward_alpha, "reward_k": reward_k}
    columns = set(rows[0][1])
    if {"chosen", "rejected"} <= columns:
        spec = FormatSpec(detect_format(list(columns), input_path))
        examples = []
        for where, row in rows:
            try:
                pair = to_pair(row, spec, where)
            except SkipPair as skip:
                raise DataError(f"{skip}; a pair to score needs two different, non-empty responses.") from None
            encoded = encoder.encode(pair.prompt, [pair.chosen, pair.rejected], where)
            examples.append({"prompt_ids": encoded.prompt_ids, "chosen_ids": encoded.response_ids[0],
                             "rejected_ids": encoded.response_ids[1]})
        params = score_pairs(model, examples, batch_size, show_progress=True)
        chosen, rejected = describe(model, params[:, 0], **options), describe(model, params[:, 1], **options)
        prob = model.head.prob_pair(params[:, 0], params[:, 1], model.rm_config.temperature).tolist()
        records = [{"index": i, "chosen": c, "rejected": r, "p_chosen": p}
                   for i, (c, r, p) in enumerate(zip(chosen, rejected, prob))]
    else:
        items = []
        for where, row in rows:
            if "text" in row:
                items.append(row["text"])
            elif "messages" in row or ("prompt" in row and "response" in row):
                items.append(row)
            else:
                raise DataError(f"{where}: expected 'text', 'messages', 'prompt'+'response' or 'chosen'+'rejected' "
                                f"columns, found {sorted(row)}.")
        params = score_ids(model, [encoder.encode_item(item, where) for item, (where, _) in zip(items, rows)],
                           batch_size, show_progress=True)
        records = [{"index": i, **record} for i, record in enumerate(describe(model, params, **options))]
    with open(output_path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return len(records)
