"""Input formats -> one canonical ``Pair`` record.

Detected from the columns (``formatting: auto``) or chosen explicitly:

- explicit: ``prompt``, ``chosen``, ``rejected`` as strings or lists of chat messages, optional ``system``;
- implicit: only ``chosen`` and ``rejected``, each a whole dialogue (HH-RLHF ``\\n\\nHuman: ... \\n\\nAssistant:``
  text, or message lists); the shared prompt is split off at the last turn boundary both share;
- alpaca / sharegpt: LlamaFactory ranking data sets (``dataset_info.json``), with its column mapping and tags;
- helpsteer3: HelpSteer3-Preference rows (``context``, ``response1``, ``response2``, ``overall_preference``);
- rated: ``prompt``, ``response`` and scores, read into a ``Rated`` record by ``data/ratings.py``;
- listwise / ultrafeedback: a prompt with K >= 2 responses and a ranking, scores or votes, read into a ``Ranked``
  record by ``data/listwise.py``.

Pairs may carry labels beyond "chosen is better": ``margin``, ``soft_label`` (P(chosen preferred)), ``noise``,
``tie: true`` (neither is better; chosen/rejected is then just an order), ``strength`` (how much better chosen is,
on the scale ``strength_scale`` declares: 0 is a tie) and ``votes`` (``{"chosen": 3, "rejected": 1, "tie": 0}``,
annotator counts, trained by a binomial likelihood).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from discorm.errors import DataError

Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str}
ROLES = ("system", "user", "assistant", "tool")

LLAMAFACTORY_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected",
               "system": "system", "history": "history"},
    "sharegpt": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "system": "system"},
}
LLAMAFACTORY_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                     "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
ACCEPTED_FORMATS = (
    "explicit (prompt, chosen, rejected[, system]); implicit (chosen, rejected as whole dialogues); "
    "alpaca ranking (instruction, input, chosen, rejected) and sharegpt ranking (conversations, chosen, rejected) "
    "through a dataset_info.json; rated (prompt, response, and a column per attribute or a `scores` object); "
    "listwise (prompt, responses, and ranking, scores or votes); ultrafeedback (instruction, completions); "
    "helpsteer3 (context, response1, response2, overall_preference)"
)
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


class SkipPair(Exception):
    """A row that is well-formed but unusable; counted under ``reason`` (or an error with strict_data)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class Pair:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    margin: float | None = None
    soft_label: float | None = None
    noise: float | None = None
    strength: float | None = None
    tie: bool | None = None
    votes: tuple[float, float, float] | None = None  # annotators preferring chosen, calling a tie, preferring rejected
    meta: dict = field(default_factory=dict)


@dataclass
class FormatSpec:
    """How to read the rows of one source: the format, the column mapping and (sharegpt) the role tags."""

    name: str
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    margin_column: str = "margin"
    soft_label_column: str = "soft_label"
    noise_column: str = "noise"
    strength_scale: float | None = None  # the largest |strength| a row may give (None: strengths are refused)

    def column(self, key: str) -> str:
        return self.columns.get(key) or LLAMAFACTORY_COLUMNS.get(self.name, {}).get(key) or key


def detect_format(columns: list[str], where: str) -> str:
    present = set(columns)
    if "responses" in present:
        return "listwise"
    if {"instruction", "completions"} <= present:
        return "ultrafeedback"
    if {"response1", "response2", "overall_preference"} <= present:
        return "helpsteer3"
    if {"chosen", "rejected"} <= present:
        if "prompt" in present:
            return "explicit"
        if "instruction" in present:
            return "alpaca"
        return "sharegpt" if "conversations" in present else "implicit"
    if "response" in present:
        return "rated"
    raise DataError(
        f"{where}: cannot tell the data format from the columns {sorted(present)}. Accepted formats: "
        f"{ACCEPTED_FORMATS}. Rename the columns, or map them in a dataset_info.json entry."
    )


def _describe(value) -> str:
    if _missing(value):
        return "an empty value"
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return f"bytes that are not UTF-8 text ({value[:30]!r})"
        return f"bytes ({value[:30]!r}); store the column as UTF-8 strings"
    return f"{type(value).__name__} ({str(value)[:60]!r})"


def _expect(value, types, column: str, where: str):
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(f"{where}: column {column!r} should be {names}, found {_describe(value)}. Fix that row "
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


def _messages(value, column: str, where: str, default_role: str) -> list[Message]:
    """A string, one message dict, or a list of message dicts -> a list of {"role", "content"} messages."""
    _expect(value, (str, list, dict), column, where)
    if isinstance(value, str):
        return [{"role": default_role, "content": check_text(value, where)}]
    items = [value] if isinstance(value, dict) else value
    messages = []
    for item in items:
        _expect(item, dict, column, where)
        if "role" not in item or "content" not in item:
            raise DataError(
                f"{where}: messages in column {column!r} need 'role' and 'content' keys, found {sorted(item)}."
            )
        _expect(item["content"], str, f"{column}[].content", where)
        if item["role"] not in ROLES:
            raise DataError(
                f"{where}: a message in column {column!r} has role {item['role']!r}; roles must be one of "
                f"{', '.join(ROLES)}. Rename the role in the data."
            )
        messages.append({"role": item["role"], "content": check_text(item["content"], where)})
    return messages


def parse_hh(text: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{"role": "user", ...}, {"role": "assistant", ...}]."""
    parts = _HH_TURN.split(text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def split_shared_prompt(chosen: list[Message], rejected: list[Message]) -> tuple[list, list, list]:
    """The longest common run of whole messages is the prompt; the rest of each dialogue is its response."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    # Both responses must be non-empty and start at an assistant turn (rendered after the generation prompt).
    while shared > 0 and (
        shared == len(chosen) or shared == len(rejected) or chosen[shared]["role"] != "assistant"
    ):
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _missing(value) -> bool:
    """None, or NaN (how CSV and parquet tables spell an empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _with_system(prompt: list[Message], system, where: str = "") -> list[Message]:
    system = None if _missing(system) else _expect(system, str, "system", where)
    if system and not (prompt and prompt[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def _explicit(row: dict, spec: FormatSpec, where: str):
    prompt = _messages(row[spec.column("prompt")], "prompt", where, "user")
    chosen = _messages(row[spec.column("chosen")], "chosen", where, "assistant")
    rejected = _messages(row[spec.column("rejected")], "rejected", where, "assistant")
    return _with_system(prompt, row.get(spec.column("system")), where), chosen, rejected


def _implicit(row: dict, spec: FormatSpec, where: str):
    chosen, rejected = row[spec.column("chosen")], row[spec.column("rejected")]
    _expect(chosen, (str, list), "chosen", where)
    _expect(rejected, (str, list), "rejected", where)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be text or both be message lists.")
    if isinstance(chosen, str):
        if _HH_TURN.search(chosen) and _HH_TURN.search(rejected):
            chosen, rejected = parse_hh(chosen), parse_hh(rejected)
            if not chosen or not rejected:
                raise SkipPair("malformed", f"{where}: no Human/Assistant turns found")
        else:
            return [], [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
    else:
        chosen = _messages(chosen, "chosen", where, "assistant")
        rejected = _messages(rejected, "rejected", where, "assistant")
    return split_shared_prompt(chosen, rejected)


def _alpaca(row: dict, spec: FormatSpec, where: str):
    instruction = _expect(row.get(spec.column("prompt")) or "", str, spec.column("prompt"), where)
    query = _expect(row.get(spec.column("query")) or "", str, spec.column("query"), where)
    prompt = []
    history = spec.column("history")
    for turn in _expect(row.get(history) or [], list, history, where):
        if not isinstance(turn, list) or len(turn) != 2 or not all(isinstance(t, str) for t in turn):
            raise DataError(f"{where}: each turn of column {history!r} must be [user text, assistant text], found "
                            f"{_describe(turn)}.")
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt.append({"role": "user", "content": "\n".join(t for t in (instruction, query) if t)})
    chosen = _expect(row.get(spec.column("chosen")), str, spec.column("chosen"), where)
    rejected = _expect(row.get(spec.column("rejected")), str, spec.column("rejected"), where)
    return (
        _with_system(prompt, row.get(spec.column("system")), where),
        [{"role": "assistant", "content": chosen}],
        [{"role": "assistant", "content": rejected}],
    )


def _sharegpt(row: dict, spec: FormatSpec, where: str):
    tags = {**LLAMAFACTORY_TAGS, **spec.tags}
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "assistant", tags["system_tag"]: "system"}

    def convert(message, column):
        _expect(message, dict, column, where)
        role, content = message.get(tags["role_tag"]), message.get(tags["content_tag"])
        if role not in roles:
            raise DataError(f"{where}: column {column!r} has role {role!r}; the tags allow {sorted(roles)}.")
        return {"role": roles[role], "content": _expect(content, str, column, where)}

    column = spec.column("messages")
    messages = [convert(m, column) for m in _expect(row.get(column), list, column, where)]
    chosen = convert(row.get(spec.column("chosen")), spec.column("chosen"))
    rejected = convert(row.get(spec.column("rejected")), spec.column("rejected"))
    return _with_system(messages, row.get(spec.column("system")), where), [chosen], [rejected]


HELPSTEER3_SCALE = 3.0  # overall_preference runs from -3 to 3


def helpsteer3(row: dict, spec: FormatSpec, where: str) -> tuple[list, list, list, dict]:
    """A HelpSteer3-Preference row -> (prompt, chosen, rejected, labels): the preferred response first, the
    strength |overall_preference| and a tie where it is 0."""
    prompt = _messages(row[spec.column("context")], "context", where, "user")
    first = _messages(row[spec.column("response1")], "response1", where, "assistant")
    second = _messages(row[spec.column("response2")], "response2", where, "assistant")
    preference = row[spec.column("overall_preference")]
    if isinstance(preference, bool) or not isinstance(preference, (int, float)) or not math.isfinite(preference):
        raise DataError(f"{where}: overall_preference should be a number from -3 to 3, found "
                        f"{_describe(preference)}.")
    chosen, rejected = (first, second) if preference <= 0 else (second, first)
    return prompt, chosen, rejected, {"strength": abs(float(preference)), "tie": preference == 0}


_CONVERTERS = {"explicit": _explicit, "implicit": _implicit, "alpaca": _alpaca, "sharegpt": _sharegpt,
               "helpsteer3": helpsteer3}
_REQUIRED = {"explicit": ("prompt", "chosen", "rejected"), "implicit": ("chosen", "rejected"),
             "alpaca": ("prompt", "chosen", "rejected"), "sharegpt": ("messages", "chosen", "rejected"),
             "helpsteer3": ("context", "response1", "response2", "overall_preference"),
             "rated": ("prompt", "response"), "listwise": ("prompt", "responses"),
             "ultrafeedback": ("instruction", "completions")}
FORMATS = tuple(_REQUIRED)  # the pair formats above, "rated" (data/ratings.py), the listwise ones (data/listwise.py)
LISTWISE_FORMATS = ("listwise", "ultrafeedback")


def check_columns(columns: list[str], spec: FormatSpec, where: str) -> None:
    missing = [spec.column(key) for key in _REQUIRED[spec.name] if spec.column(key) not in columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing} for the {spec.name} format; columns found: {sorted(columns)}. "
            f"Accepted formats: {ACCEPTED_FORMATS}."
        )


def _optional_number(row: dict, column: str, where: str, low=None, high=None) -> float | None:
    value = row.get(column)
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: column {column!r} should be a finite number, found {_describe(value)}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise DataError(f"{where}: column {column!r}={value} is outside [{low}, {high}].")
    return float(value)


def _votes(row: dict, column: str, where: str) -> tuple[float, float, float] | None:
    value = row.get(column)
    if _missing(value):
        return None
    counts = _expect(value, dict, column, where)
    unknown = sorted(set(counts) - {"chosen", "rejected", "tie"})
    numbers = [counts.get(key, 0) for key in ("chosen", "tie", "rejected")]
    if unknown or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) or not sum(
            numbers):
        raise DataError(f"{where}: column {column!r} should count annotators, e.g. {{\"chosen\": 3, \"rejected\": 1, "
                        f"\"tie\": 0}} (non-negative integers, not all 0), found {str(value)[:80]!r}.")
    return tuple(float(n) for n in numbers)


def _strength(row: dict, where: str, scale: float | None, given: float | None) -> float | None:
    value = given if given is not None else _optional_number(row, "strength", where)
    if value is None:
        return None
    if scale is None:
        raise DataError(f"{where}: the row has a strength ({value:g}) but no scale is declared; set "
                        "strength_scale (the largest strength, e.g. 3 for -3..3) in the config.")
    if abs(value) > scale:
        raise DataError(f"{where}: strength {value:g} is outside the declared scale [-{scale:g}, {scale:g}]; fix the "
                        "row or raise strength_scale.")
    return value


def to_pair(row: dict, spec: FormatSpec, where: str) -> Pair:
    """Convert one row; raises DataError for wrong types, SkipPair for unusable but well-formed rows."""
    prompt, chosen, rejected, *extra = _CONVERTERS[spec.name](row, spec, where)
    labels = extra[0] if extra else {}
    if not any(m["content"].strip() for m in chosen) or not any(m["content"].strip() for m in rejected):
        raise SkipPair("empty response", f"{where}: empty chosen or rejected response")
    if chosen == rejected:
        raise SkipPair("identical chosen/rejected", f"{where}: chosen and rejected are identical")
    tie = labels.get("tie", row.get("tie"))
    if not _missing(tie) and not isinstance(tie, bool):
        raise DataError(f"{where}: column 'tie' should be true or false, found {_describe(tie)}.")
    scale = HELPSTEER3_SCALE if spec.name == "helpsteer3" and spec.strength_scale is None else spec.strength_scale
    strength = _strength(row, where, scale, labels.get("strength"))
    if strength is not None and strength < 0:  # rejected is the better one: swap, keeping the size
        chosen, rejected, strength = rejected, chosen, -strength
    return Pair(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        margin=_optional_number(row, spec.margin_column, where),
        soft_label=_optional_number(row, spec.soft_label_column, where, 0.0, 1.0),
        noise=_optional_number(row, spec.noise_column, where),
        strength=strength,
        tie=bool(tie) or strength == 0 or None,
        votes=_votes(row, "votes", where),
        meta={"source": where},
    )


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
        messages = _messages(item, "messages", where, "assistant")
        return messages[:-1], messages[-1:]
    if isinstance(item, dict) and "prompt" in item and "response" in item:
        response = _messages(item["response"], "response", where, "assistant")
        if not response:
            raise DataError(f"{where}: the response is an empty message list; give the response text or message.")
        return _messages(item["prompt"], "prompt", where, "user"), response
    raise DataError(
        f"{where}: cannot score {str(item)[:80]!r}; give a text, a list of chat messages, {{'messages': [...]}} "
        "or {'prompt': ..., 'response': ...}."
    )
