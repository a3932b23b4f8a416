"""What every input format reads a row with: chat messages, checked values and the column mapping of a source.

The converters of ``data/pairs.py``, ``data/listwise.py`` and ``data/ratings.py`` (and a format a plugin adds) build
their records from these; ``data/formats.py`` picks the converter. Errors name where the row was read (``where``:
file:line or file row N), the column and the value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from discorm.errors import DataError

Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str}
ROLES = ("system", "user", "assistant", "tool")


class SkipPair(Exception):
    """A row that is well-formed but unusable; counted under ``reason`` (or an error with strict_data)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class FormatSpec:
    """How to read the rows of one source: the format's name, the column of each key the format reads (the format's
    own names, renamed by a dataset_info.json entry's ``columns``; made by ``DataFormat.spec``), the role tags
    (sharegpt), the label columns, the strength scale and, for rated rows, the head's attributes (and the heads
    that learn from ratings, named when the head does not)."""

    name: str
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    margin_column: str = "margin"
    soft_label_column: str = "soft_label"
    noise_column: str = "noise"
    strength_scale: float | None = None  # the largest |strength| a row may give (None: strengths are refused)
    attributes: tuple = ()
    rated_heads: tuple[str, ...] = ()

    def column(self, key: str) -> str:
        return self.columns.get(key) or key


def missing(value) -> bool:
    """None, or NaN (how CSV and parquet tables spell an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def describe(value) -> str:
    """A value as an error message shows it: its type and its start (NaN as ``float ('nan')``)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return f"bytes that are not UTF-8 text ({value[:30]!r})"
        return f"bytes ({value[:30]!r}); store the column as UTF-8 strings"
    return f"{type(value).__name__} ({str(value)[:60]!r})"


def expect(value, types, column: str, where: str):
    """``value`` if it is of ``types``, else a DataError naming the column and what was found."""
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(f"{where}: column {column!r} should be {names}, found {describe(value)}. Fix that row "
                        "or drop it.")
    return value


def check_text(text: str, where: str) -> str:
    """The text, if it is valid Unicode (JSON's \\u escapes can make lone surrogates, which cannot be stored)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(f"{where or 'text'}: character {err.start} is a lone surrogate ({text[err.start]!r}), which "
                        "is not valid Unicode; fix the text (or its JSON \\u escapes).") from None
    return text


def read_messages(value, column: str, where: str, default_role: str) -> list[Message]:
    """A string, one message dict, or a list of message dicts -> a list of {"role", "content"} messages."""
    expect(value, (str, list, dict), column, where)
    if isinstance(value, str):
        return [{"role": default_role, "content": check_text(value, where)}]
    items = [value] if isinstance(value, dict) else value
    messages = []
    for item in items:
        expect(item, dict, column, where)
        if "role" not in item or "content" not in item:
            raise DataError(
                f"{where}: messages in column {column!r} need 'role' and 'content' keys, found {sorted(item)}."
            )
        expect(item["content"], str, f"{column}[].content", where)
        if item["role"] not in ROLES:
            raise DataError(
                f"{where}: a message in column {column!r} has role {item['role']!r}; roles must be one of "
                f"{', '.join(ROLES)}. Rename the role in the data."
            )
        messages.append({"role": item["role"], "content": check_text(item["content"], where)})
    return messages


def with_system(prompt: list[Message], system, where: str = "") -> list[Message]:
    """The prompt with a system message first, from a ``system`` column (unless the prompt starts with one)."""
    system = None if missing(system) else expect(system, str, "system", where)
    if system and not (prompt and prompt[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def to_conversation(item, where: str = "input") -> str | tuple[list[Message], list[Message]]:
    """A scoring input -> an already rendered text, or (prompt messages, response messages).

    Accepted: a text; a list of chat messages (the last one is the response); ``{"messages": [...]}``;
    ``{"prompt": text | messages, "response": text | messages}``."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "messages" in item:
        item = item["messages"]
    if isinstance(item, list):
        if not item:
            raise DataError(f"{where}: the message list is empty; give at least the response message.")
        messages = read_messages(item, "messages", where, "assistant")
        return messages[:-1], messages[-1:]
    if isinstance(item, dict) and "prompt" in item and "response" in item:
        response = read_messages(item["response"], "response", where, "assistant")
        if not response:
            raise DataError(f"{where}: the response is an empty message list; give the response text or message.")
        return read_messages(item["prompt"], "prompt", where, "user"), response
    raise DataError(
        f"{where}: cannot score {str(item)[:80]!r}; give a text, a list of chat messages, {{'messages': [...]}} "
        "or {'prompt': ..., 'response': ...}."
    )
