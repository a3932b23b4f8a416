"""Scoring with a trained reward model, in length-sorted batches, with the chat template it was trained with.

An input is one of: a full text (already rendered; scored as is), a list of chat messages (the last one is the
response), ``{"messages": [...]}``, or ``{"prompt": str | messages, "response": str | messages}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from discorm.data.collator import pad_sequences
from discorm.data.formats import FormatSpec, detect_format, to_pair
from discorm.data.templates import Renderer
from discorm.errors import DataError


def _as_messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


class SequenceEncoder:
    """Inputs -> token ids as the model saw them in training (prompt cut from the left if too long)."""

    def __init__(self, model, max_length: int | None = None):
        if model.tokenizer is None:
            raise DataError("this model directory has no tokenizer; save one next to the weights.")
        self.tokenizer = model.tokenizer
        self.renderer = Renderer(model.tokenizer, model.info.get("template"))
        self.max_length = max_length or model.info.get("cutoff_len") or 4096

    def encode_text(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.max_length :]

    def encode_conversation(self, prompt: list[dict], response: list[dict]) -> list[int]:
        prompt_text = self.renderer.render_prompt(prompt)
        response_text = self.renderer.render_response(prompt, prompt_text, response)
        encode = self.tokenizer
        prompt_ids = encode(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
        response_ids = encode(response_text, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(response_ids) > self.max_length:
            keep = max(self.max_length - len(response_ids), 0)
            prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep else []
            response_ids = response_ids[-self.max_length :]
        return prompt_ids + response_ids

    def __call__(self, item) -> list[int]:
        if isinstance(item, str):
            return self.encode_text(item)
        if isinstance(item, dict) and "messages" in item:
            item = item["messages"]
        if isinstance(item, list):
            if not item or not all(isinstance(m, dict) and "role" in m and "content" in m for m in item):
                raise DataError("a message list needs {'role', 'content'} objects and at least one message.")
            return self.encode_conversation(item[:-1], item[-1:])
        if isinstance(item, dict) and "prompt" in item and "response" in item:
            return self.encode_conversation(_as_messages(item["prompt"], "user"),
                                            _as_messages(item["response"], "assistant"))
        raise DataError(
            f"cannot score {str(item)[:80]!r}: give a text, a list of chat messages, {{'messages': [...]}} or "
            "{'prompt': ..., 'response': ...}."
        )


@torch.no_grad()
def score_ids(model, sequences: list[list[int]], batch_size: int = 8, show_progress: bool = False) -> torch.Tensor:
    """Token id lists -> head params (N, K), computed in length-sorted padded batches, returned in input order."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    pad = (model.tokenizer.pad_token_id if model.tokenizer is not None else None) or 0
    device = next(model.parameters()).device
    out = [None] * len(sequences)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="Scoring", disable=not show_progress):
        index = order[start : start + batch_size]
        input_ids, attention_mask = pad_sequences([sequences[i] for i in index], pad)
        params = model(input_ids.to(device), attention_mask.to(device)).head_params
        for row, i in enumerate(index):
            out[i] = params[row].float().cpu()
    return torch.stack(out) if out else torch.zeros(0, 1)


def describe(model, params: torch.Tensor) -> list[dict]:
    """Head params -> [{"reward", "reward_mode", and "mean"/"sigma" for distributional heads}]."""
    rewards = model.reward(params).tolist()
    records = [{"reward": r, "reward_mode": model.reward_mode} for r in rewards]
    if model.head.kind != "scalar":
        for record, mean, sigma in zip(records, model.head.mean(params).tolist(), model.head.std(params).tolist()):
            record.update(mean=mean, sigma=sigma)
    return records


def score_inputs(model, inputs: list, batch_size: int = 8, show_progress: bool = False,
                 reward_mode: str | None = None) -> list[dict]:
    if reward_mode:
        model.reward_mode = reward_mode
    was_training = model.training
    model.eval()
    encoder = SequenceEncoder(model)
    try:
        params = score_ids(model, [encoder(item) for item in inputs], batch_size, show_progress)
    finally:
        model.train(was_training)
    return describe(model, params)


def score_file(model_dir: str, input_path: str, output_path: str, batch_size: int = 8,
               reward_mode: str | None = None) -> int:
    """Score a file of pairs (any format the data layer reads) or of single responses; writes JSONL."""
    from discorm.data.loader import read_path
    from discorm.model.reward_model import RewardModel

    path = Path(input_path)
    if not path.exists():
        raise DataError(f"{input_path} does not exist; pass a .jsonl/.json/.parquet/.csv file of rows to score.")
    rows = read_path(path)
    model = RewardModel.from_pretrained(model_dir)
    if reward_mode:
        model.reward_mode = reward_mode
    model.eval()
    encoder = SequenceEncoder(model)
    columns = set(rows[0][1])
    if {"chosen", "rejected"} <= columns:
        fmt = detect_format(list(columns), input_path)
        pairs = [to_pair(row, FormatSpec(fmt), where) for where, row in rows]
        seqs = [encoder.encode_conversation(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
        params = score_ids(model, seqs, batch_size, show_progress=True)
        chosen, rejected = describe(model, params[0::2]), describe(model, params[1::2])
        prob = model.head.prob_pair(params[0::2], params[1::2]).tolist()
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
        params = score_ids(model, [encoder(item) for item in items], batch_size, show_progress=True)
        records = [{"index": i, **record} for i, record in enumerate(describe(model, params))]
    with open(output_path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return len(records)
