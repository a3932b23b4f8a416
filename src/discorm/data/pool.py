"""Unlabelled pools for choosing what to label next: rows -> ``PoolItem`` (a prompt and K >= 2 responses).

A pool row has a ``prompt`` (text or chat messages, optional ``system``) and either ``responses`` (a list of K >= 2
texts or message lists; K = 2 is a pair) or ``response_a`` and ``response_b`` (a pair). It carries no label: a row
with a preference (``chosen``/``rejected``, a ranking, scores, votes, a strength...) is already labelled, and an
error. Other keys are the user's and travel with the row unchanged.

Two items are the same comparison when they have the same prompt and the same responses in any order
(``comparison_key``): a pool never offers one comparison twice, and ``excluded_keys`` reads a file of any training
format (a held-out set) into the comparisons it holds, which are never offered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from discorm.data.formats import FORMATS, convert, detect_format
from discorm.data.listwise import LABELS, Ranked
from discorm.data.pairs import Pair
from discorm.data.rows import Message, SkipPair, expect, read_messages, with_system
from discorm.errors import DataError

PAIR_KEYS = ("response_a", "response_b")
LABEL_KEYS = ("chosen", "rejected", *LABELS, "overall_preference", "preference", "label", "soft_label", "strength",
              "tie", "margin")


@dataclass
class PoolItem:
    prompt: list[Message]
    responses: list[list[Message]]
    row: dict  # the row as read: what the selection writes back
    where: str


def is_pool_row(row: dict) -> bool:
    """Whether a row is shaped as a pool item (labelled or not)."""
    return "prompt" in row and ("responses" in row or set(PAIR_KEYS) <= set(row))


def read_pool_item(row: dict, where: str) -> PoolItem:
    """One pool row -> a PoolItem; a DataError names the row and the key for a label, a missing or bad key."""
    expect(row, dict, "row", where)
    labels = [key for key in LABEL_KEYS if row.get(key) is not None]
    if labels:
        raise DataError(f"{where}: the pool item already has a label ({', '.join(repr(k) for k in labels)}); a pool "
                        "holds comparisons still to be labelled. Drop the labelled rows from the pool (pass them "
                        "with --exclude to keep them out), or remove the label keys.")
    if not is_pool_row(row):
        raise DataError(f"{where}: a pool item needs 'prompt' and 'responses' (K >= 2), or 'prompt', 'response_a' "
                        f"and 'response_b'; found the keys {sorted(row)}.")
    prompt = with_system(read_messages(row["prompt"], "prompt", where, "user"), row.get("system"), where)
    if "responses" in row:
        values = expect(row["responses"], list, "responses", where)
        columns = [f"responses[{i}]" for i in range(len(values))]
    else:
        values, columns = [row[key] for key in PAIR_KEYS], list(PAIR_KEYS)
    responses = [read_messages(value, column, where, "assistant") for value, column in zip(values, columns)]
    if len(responses) < 2:
        raise DataError(f"{where}: 'responses' holds {len(responses)} response(s); a pool item compares K >= 2.")
    for i, response in enumerate(responses):
        if not any(m["content"].strip() for m in response):
            raise DataError(f"{where}: {columns[i]} is empty; every response of a pool item needs text.")
        if response in responses[:i]:
            raise DataError(f"{where}: {columns[i]} repeats {columns[responses.index(response)]}; the responses of "
                            "a pool item must differ.")
    return PoolItem(prompt, responses, row, where)


def comparison_key(prompt: list[Message], responses: list[list[Message]]) -> str:
    """The same string for the same prompt and the same responses in any order."""
    return json.dumps([prompt, sorted(json.dumps(r, sort_keys=True) for r in responses)], sort_keys=True)


def excluded_keys(rows: list[tuple[str, dict]], source: str) -> set[str]:
    """The comparisons of ``rows`` (pool rows, or rows of any pair or list training format): their
    ``comparison_key``s. Rows of single rated responses compare nothing and add none; unusable rows are skipped."""
    keys = set()
    for where, row in rows:
        if is_pool_row(row) and not any(row.get(key) is not None for key in LABEL_KEYS):
            item = read_pool_item(row, where)
            keys.add(comparison_key(item.prompt, item.responses))
            continue
        fmt = FORMATS[detect_format(list(row), f"{source} ({where})")]
        try:
            record = convert(row, fmt.spec(), where)
        except SkipPair:
            continue
        if isinstance(record, Pair):
            keys.add(comparison_key(record.prompt, [record.chosen, record.rejected]))
        elif isinstance(record, Ranked):
            keys.add(comparison_key(record.prompt, record.responses))
    return keys
