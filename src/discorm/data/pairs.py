"""Pair formats -> one canonical ``Pair`` record (``data/formats.py`` registers them):

- explicit: ``prompt``, ``chosen``, ``rejected`` as strings or lists of chat messages, optional ``system``;
- implicit: only ``chosen`` and ``rejected``, each a whole dialogue (HH-RLHF ``\\n\\nHuman: ... \\n\\nAssistant:``
  text, or message lists); the shared prompt is split off at the last turn boundary both share;
- alpaca / sharegpt: LlamaFactory ranking data sets (``dataset_info.json``), with its column mapping and tags;
- rlaif_v: LlamaFactory's alpaca-style image rows (``question``, ``chosen``, ``rejected``, ``image``; the images
  of every format: ``data/media.py``);
- helpsteer3: HelpSteer3-Preference rows (``context``, ``response1``, ``response2``, ``overall_preference`` from -3
  to 3, negative when response 1 is better): the preferred response first, with a ``strength`` (0: a tie).

Each converter reads the conversation of a row and hands it to :func:`build_pair`, which reads the labels every
pair may carry beyond "chosen is better": ``margin``, ``soft_label`` (P(chosen preferred)), ``noise``, ``tie: true``
(neither is better; chosen/rejected is then just an order), ``strength`` (how much better chosen is, on the scale
``strength_scale`` declares: 0 is a tie) and ``votes`` (``{"chosen": 3, "rejected": 1, "tie": 0}``, annotator
counts, trained by a binomial likelihood).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from discorm.data.rows import (
    PART_IMAGES,
    FormatSpec,
    Message,
    SkipPair,
    describe,
    expect,
    function_call_message,
    message_content,
    missing,
    read_messages,
    with_system,
)
from discorm.errors import DataError

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input"}  # LlamaFactory's names where they differ from the key
RLAIF_V_COLUMNS = {"prompt": "question", "images": "image"}  # LlamaFactory's rlaif_v entry (alpaca with an image)
SHAREGPT_COLUMNS = {"messages": "conversations"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
HELPSTEER3_SCALE = 3.0  # overall_preference runs from -3 to 3
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


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


def _optional_number(row: dict, column: str, where: str, low=None, high=None) -> float | None:
    """An optional label: absent or null is None; NaN and infinities are refused (NaN would read as absent)."""
    value = row.get(column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: column {column!r} should be a finite number, found {describe(value)}. Leave it "
                        "out (or null) where the row has none.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise DataError(f"{where}: column {column!r}={value} is outside [{low}, {high}].")
    return float(value)


def _votes(row: dict, column: str, where: str) -> tuple[float, float, float] | None:
    value = row.get(column)
    if missing(value):
        return None
    counts = expect(value, dict, column, where)
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


def build_pair(row: dict, spec: FormatSpec, where: str, prompt: list[Message], chosen: list[Message],
               rejected: list[Message], labels: dict | None = None) -> Pair:
    """A converted conversation and the row's label columns -> a Pair; ``labels`` (``strength``, ``tie``) are ones
    the converter read from the format's own columns. Raises DataError for bad labels, SkipPair for an empty or
    identical response."""
    labels = labels or {}
    if not any(m["content"].strip() for m in chosen) or not any(m["content"].strip() for m in rejected):
        raise SkipPair("empty response", f"{where}: empty chosen or rejected response")
    if chosen == rejected:
        raise SkipPair("identical chosen/rejected", f"{where}: chosen and rejected are identical")
    tie = labels.get("tie", row.get("tie"))
    if tie is not None and not isinstance(tie, bool):
        raise DataError(f"{where}: column 'tie' should be true or false, found {describe(tie)}.")
    strength = _strength(row, where, spec.strength_scale, labels.get("strength"))
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


def explicit(row: dict, spec: FormatSpec, where: str) -> Pair:
    prompt = read_messages(row[spec.column("prompt")], "prompt", where, "user")
    chosen = read_messages(row[spec.column("chosen")], "chosen", where, "assistant")
    rejected = read_messages(row[spec.column("rejected")], "rejected", where, "assistant")
    return build_pair(row, spec, where, with_system(prompt, row.get(spec.column("system")), where), chosen, rejected)


def implicit(row: dict, spec: FormatSpec, where: str) -> Pair:
    chosen, rejected = row[spec.column("chosen")], row[spec.column("rejected")]
    expect(chosen, (str, list), "chosen", where)
    expect(rejected, (str, list), "rejected", where)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be text or both be message lists.")
    if isinstance(chosen, str):
        if not (_HH_TURN.search(chosen) and _HH_TURN.search(rejected)):
            return build_pair(row, spec, where, [], [{"role": "assistant", "content": chosen}],
                              [{"role": "assistant", "content": rejected}])
        chosen, rejected = parse_hh(chosen), parse_hh(rejected)
        if not chosen or not rejected:
            raise SkipPair("malformed", f"{where}: no Human/Assistant turns found")
    else:
        chosen = read_messages(chosen, "chosen", where, "assistant")
        rejected = read_messages(rejected, "rejected", where, "assistant")
    return build_pair(row, spec, where, *split_shared_prompt(chosen, rejected))


def alpaca(row: dict, spec: FormatSpec, where: str) -> Pair:
    instruction = expect(row.get(spec.column("prompt")) or "", str, spec.column("prompt"), where)
    query = expect(row.get(spec.column("query")) or "", str, spec.column("query"), where)
    prompt = []
    history = spec.column("history")
    for turn in expect(row.get(history) or [], list, history, where):
        if not isinstance(turn, list) or len(turn) != 2 or not all(isinstance(t, str) for t in turn):
            raise DataError(f"{where}: each turn of column {history!r} must be [user text, assistant text], found "
                            f"{describe(turn)}.")
        prompt += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    prompt.append({"role": "user", "content": "\n".join(t for t in (instruction, query) if t)})
    chosen = expect(row.get(spec.column("chosen")), str, spec.column("chosen"), where)
    rejected = expect(row.get(spec.column("rejected")), str, spec.column("rejected"), where)
    return build_pair(row, spec, where, with_system(prompt, row.get(spec.column("system")), where),
                      [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}])


def sharegpt(row: dict, spec: FormatSpec, where: str) -> Pair:
    tags = spec.tags
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["function_tag"]: "assistant", tags["system_tag"]: "system"}

    def convert(message, column):
        expect(message, dict, column, where)
        role, content = message.get(tags["role_tag"]), message.get(tags["content_tag"])
        if role not in roles:
            raise DataError(f"{where}: column {column!r} has role {role!r}; the tags allow {sorted(roles)}.")
        if role == tags["function_tag"]:  # a call of the tools in the row's `tools` column
            return function_call_message(content, column, where)
        text, images = message_content(content, column, where)
        return {"role": roles[role], "content": text, **({PART_IMAGES: images} if images else {})}

    column = spec.column("messages")
    messages = [convert(m, f"{column}[{i}]") for i, m in enumerate(expect(row.get(column), list, column, where))]
    chosen = convert(row.get(spec.column("chosen")), spec.column("chosen"))
    rejected = convert(row.get(spec.column("rejected")), spec.column("rejected"))
    return build_pair(row, spec, where, with_system(messages, row.get(spec.column("system")), where), [chosen],
                      [rejected])


def helpsteer3(row: dict, spec: FormatSpec, where: str) -> Pair:
    """The preferred response first, the strength |overall_preference| and a tie where it is 0."""
    prompt = read_messages(row[spec.column("context")], "context", where, "user")
    first = read_messages(row[spec.column("response1")], "response1", where, "assistant")
    second = read_messages(row[spec.column("response2")], "response2", where, "assistant")
    preference = row[spec.column("overall_preference")]
    if isinstance(preference, bool) or not isinstance(preference, (int, float)) or not math.isfinite(preference):
        raise DataError(f"{where}: overall_preference should be a number from -3 to 3, found "
                        f"{describe(preference)}.")
    chosen, rejected = (first, second) if preference <= 0 else (second, first)
    return build_pair(row, spec, where, prompt, chosen, rejected,
                      {"strength": abs(float(preference)), "tie": preference == 0})
