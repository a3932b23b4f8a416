"""Rendering + tokenization + truncation designed for reward models.

Each pair becomes ``prompt_ids``, ``chosen_ids`` and ``rejected_ids``: the model sees ``prompt + chosen`` and
``prompt + rejected`` and its score is read at the last token of each (the end-of-turn token).

Truncation to ``cutoff_len`` keeps that last token: first the oldest prompt turns are dropped (the system message
and the last user turn stay), then the prompt is cut from the left down to a quarter of the budget, and only then
are responses cut, in the middle, keeping their start and their final token. A pair whose chosen and rejected
become identical is dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from discorm.data.formats import Message, Pair
from discorm.data.templates import Renderer
from discorm.errors import DataError

SKIP_REASONS = ("empty response", "identical chosen/rejected", "truncated to identical", "malformed")


@dataclass
class DataStats:
    """What happened to the pairs of a data set, for the one-line summary."""

    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens of every sequence (prompt + response)
    pair_tokens: int = 0  # tokens of [prompt | chosen | rejected]
    padded_tokens: int = 0  # tokens of prompt + chosen and prompt + rejected, run separately

    @property
    def kept(self) -> int:
        return self.read - sum(self.dropped.values())

    def summary(self, name: str = "data") -> str:
        drops = ", ".join(f"{reason} {self.dropped.get(reason, 0)}" for reason in SKIP_REASONS)
        text = f"{name}: {self.read} pairs read, {self.kept} kept; dropped: {drops}; truncated {self.truncated}"
        if self.lengths:
            p50, p90, p99 = np.percentile(self.lengths, [50, 90, 99]).round().astype(int)
            text += f"; tokens per sequence p50 {p50}, p90 {p90}, p99 {p99}, max {max(self.lengths)}"
        if self.padded_tokens:
            text += f"; shared prompt saves {1 - self.pair_tokens / self.padded_tokens:.0%} of tokens"
        return text


def _drop_oldest_turn(prompt: list[Message]) -> list[Message] | None:
    """Remove the oldest non-system turn (a user message and the replies up to the next user message)."""
    start = 1 if prompt and prompt[0]["role"] == "system" else 0
    users = [i for i, m in enumerate(prompt) if m["role"] == "user" and i >= start]
    if len(users) < 2:
        return None
    return prompt[:start] + prompt[users[1] :]


def _cut_response(ids: list[int], budget: int) -> list[int]:
    """Keep the start and the final (end-of-turn) token."""
    if len(ids) <= budget:
        return ids
    return ids[: max(budget - 1, 0)] + ids[-1:]


class PairTokenizer:
    """Pair -> token ids with RM-aware truncation; collects DataStats."""

    def __init__(self, tokenizer, renderer: Renderer, cutoff_len: int, strict: bool = False):
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.cutoff_len = cutoff_len
        self.strict = strict

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def __call__(self, pair: Pair, stats: DataStats) -> dict | None:
        where = pair.meta.get("source", "")
        prompt = pair.prompt
        prompt_text = self.renderer.render_prompt(prompt)
        chosen = self.encode(self.renderer.render_response(prompt, prompt_text, pair.chosen, where))
        rejected = self.encode(self.renderer.render_response(prompt, prompt_text, pair.rejected, where))
        prompt_ids = self.encode(prompt_text)
        longest = max(len(chosen), len(rejected))
        truncated = False
        while len(prompt_ids) + longest > self.cutoff_len:
            shorter = _drop_oldest_turn(prompt)
            if shorter is None:
                break
            prompt, truncated = shorter, True
            prompt_text = self.renderer.render_prompt(prompt)
            prompt_ids = self.encode(prompt_text)
        if len(prompt_ids) + longest > self.cutoff_len:
            truncated = True
            keep = max(self.cutoff_len - longest, min(len(prompt_ids), self.cutoff_len // 4))
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
            budget = self.cutoff_len - len(prompt_ids)
            chosen, rejected = _cut_response(chosen, budget), _cut_response(rejected, budget)
        if truncated:
            stats.truncated += 1
        if chosen == rejected:
            reason = "truncated to identical" if truncated else "identical chosen/rejected"
            raise_or_count(stats, reason, f"{where}: chosen and rejected are identical as tokens", self.strict)
            return None
        stats.lengths += [len(prompt_ids) + len(chosen), len(prompt_ids) + len(rejected)]
        stats.pair_tokens += len(prompt_ids) + len(chosen) + len(rejected)
        stats.padded_tokens += 2 * len(prompt_ids) + len(chosen) + len(rejected)
        example = {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected,
                   "length": len(prompt_ids) + longest}
        if pair.margin is not None:
            example["margin"] = pair.margin
        if pair.soft_label is not None:
            example["soft_label"] = pair.soft_label
        if pair.noise is not None:
            example["noise"] = pair.noise
        return example


def raise_or_count(stats: DataStats, reason: str, detail: str, strict: bool) -> None:
    """Count a skipped pair; with strict_data, stop instead."""
    if strict:
        raise DataError(f"{detail} (strict_data is on; fix the row or set strict_data: false to skip it).")
    stats.dropped[reason] += 1
