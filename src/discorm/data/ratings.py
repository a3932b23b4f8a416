"""Rated rows -> one canonical ``Rated`` record: a response with a score per attribute, or with the number of
raters who gave each level of a declared scale.

A rated row has ``prompt`` and ``response`` (strings or chat-message lists, optional ``system``) and its scores either
as one column per attribute (``score`` for the regression head) or as a ``scores`` object ``{"helpfulness": 3,
"correctness": 4}``. The attributes and their ranges come from the head (config keys ``attributes`` and
``score_range``). An attribute a row does not rate (absent, or null: an empty table cell) is masked out of the loss; a
score that is NaN or infinite or outside its range, an undeclared key of ``scores`` and an undeclared numeric column are
errors (a misspelt attribute would otherwise be dropped silently).

A per-rater row (format ``per_rater``) gives several raters' labels of its response in a ``ratings`` column: a list
with one label per rater (``["Yes", "No", "Yes"]``, or numbers on the scale) or a histogram (``{"unsafe": 45,
"unsure": 8, "safe": 20}``). The levels are the head's (config keys ``levels`` and ``direction``,
``model/heads/ordinal.py``; a number names the level ``f"{v:g}"``), and both forms become the same record:
``scores`` holds the count of raters per level, in the declared order. A label or histogram key that is not a
declared level, a negative or non-finite count, and a row without any rating are errors.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from discorm.data.rows import (
    FormatSpec,
    Message,
    SkipPair,
    describe,
    expect,
    missing,
    read_messages,
    with_system,
)
from discorm.errors import DataError

# Columns of a rated row that are not scores (the pair columns are read by pairwise rows of a mixed set).
OTHER_COLUMNS = ("prompt", "response", "system", "scores", "chosen", "rejected")


@dataclass
class Rated:
    prompt: list[Message]
    response: list[Message]
    scores: list[float]  # one per attribute, in the head's order; NaN: not rated
    meta: dict = field(default_factory=dict)


def _score(value, name: str, where: str) -> float:
    """A rating -> float; None (an empty table cell) is 'not rated' (NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: the score of {name!r} should be a finite number, found {describe(value)}. Fix "
                        "the row or leave the attribute out.")
    return float(value)


def _read_scores(row: dict, spec: FormatSpec, where: str) -> list[float]:
    attributes = spec.attributes
    names = [a.name for a in attributes]
    found = {}
    scores = row.get(spec.column("scores"))
    if scores is not None:
        expect(scores, dict, spec.column("scores"), where)
        unknown = sorted(set(scores) - set(names))
        if unknown:
            raise DataError(f"{where}: `{spec.column('scores')}` rates unknown attribute(s) {unknown}; the declared "
                            f"attributes are {names}. Add them to `attributes:` in the config, or drop them.")
        found.update({name: _score(value, name, where) for name, value in scores.items()})
    columns = {spec.column(name): name for name in names}
    ignored = {spec.column(c) for c in OTHER_COLUMNS} | {spec.margin_column, spec.soft_label_column,
                                                         spec.noise_column}
    for column, value in row.items():
        if column in columns:
            found.setdefault(columns[column], _score(value, columns[column], where))
        elif column not in ignored and isinstance(value, (int, float)) and not isinstance(value, bool):
            raise DataError(f"{where}: numeric column {column!r} is not a declared attribute ({names}). Add it to "
                            "`attributes:` in the config (a misspelt attribute would be dropped), or drop or rename "
                            "the column.")
    values = [found.get(name, math.nan) for name in names]
    for attribute, value in zip(attributes, values):
        if not math.isnan(value) and not attribute.contains(value):
            raise DataError(f"{where}: {attribute.name}={value:g} is outside score_range [{attribute.low:g}, "
                            f"{attribute.high:g}]. Fix the row, or widen score_range in the config (per attribute: "
                            f"score_range: {{{attribute.name}: [low, high]}}).")
    return values


def _conversation(row: dict, spec: FormatSpec, where: str) -> tuple[list[Message], list[Message]]:
    """The prompt (with the system message) and the rated response of a row; an empty response is skipped."""
    prompt = read_messages(row[spec.column("prompt")], "prompt", where, "user")
    response = read_messages(row[spec.column("response")], "response", where, "assistant")
    prompt = with_system(prompt, row.get(spec.column("system")), where)
    if not any(m["content"].strip() for m in response):
        raise SkipPair("empty response", f"{where}: empty response")
    return prompt, response


def to_rated(row: dict, spec: FormatSpec, where: str) -> Rated:
    """Convert one rated row, read with the head's attributes (``spec.attributes``; ``spec.rated_heads`` are named
    when the head has none); raises DataError for wrong types, SkipPair for unusable but well-formed rows."""
    if not spec.attributes:
        rated = ", ".join(spec.rated_heads) or "see `discorm keys`"
        raise DataError(f"{where}: a rated row (prompt, response, scores), but the head learns from pairs only. "
                        f"Use a head that learns from ratings ({rated}), or give pairs (chosen, rejected).")
    prompt, response = _conversation(row, spec, where)
    scores = _read_scores(row, spec, where)
    if all(math.isnan(v) for v in scores):
        raise SkipPair("no scores", f"{where}: no attribute is rated ({[a.name for a in spec.attributes]})")
    return Rated(prompt, response, scores, meta={"source": where})


def level_name(value) -> str:
    """A level as declared or rated: a string as is, a number as ``f"{v:g}"`` (so 3 and 3.0 are one level)."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _histogram(value: dict, levels: list[str], column: str, where: str) -> dict[str, float]:
    counts = {}
    for key, count in value.items():
        if level_name(key) not in levels:
            raise DataError(f"{where}: `{column}` counts the level {key!r}, which is not a declared level "
                            f"({levels}). Add it to `levels:` in the config, or fix the row.")
        if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count) or count < 0:
            raise DataError(f"{where}: `{column}` counts {describe(count)} raters for {key!r}; a count is a "
                            "number >= 0. Fix the row.")
        counts[level_name(key)] = counts.get(level_name(key), 0) + float(count)
    return counts


def _labels(value: list, levels: list[str], column: str, where: str) -> dict[str, float]:
    for label in value:
        if missing(label):  # a rater who gave no answer
            continue
        if not isinstance(label, (str, int, float)) or isinstance(label, bool) or level_name(label) not in levels:
            raise DataError(f"{where}: `{column}` holds the label {describe(label)}, which is not a declared level "
                            f"({levels}). Add it to `levels:` in the config, or fix the row.")
    return dict(Counter(level_name(label) for label in value if not missing(label)))


def to_rater_counts(row: dict, spec: FormatSpec, where: str) -> Rated:
    """Convert one per-rater row (prompt, response, ratings: a list of labels or a histogram) into a ``Rated``
    response whose scores are the count of raters per declared level (``spec.attributes``)."""
    column = spec.column("ratings")
    levels = [a.name for a in spec.attributes]
    if not levels:
        raise DataError(f"{where}: `{column}` holds several raters' labels, but the head declares no rating levels. "
                        "Set levels: [...] and direction: first_best or last_best (heads scalar, gaussian or "
                        "categorical).")
    prompt, response = _conversation(row, spec, where)
    value = expect(row[column], (list, dict), column, where)
    counts = (_histogram if isinstance(value, dict) else _labels)(value, levels, column, where)
    if sum(counts.values()) <= 0:
        raise DataError(f"{where}: `{column}` holds no rating ({describe(value)}); give at least one rater's label "
                        "or a positive count, or drop the row.")
    return Rated(prompt, response, [counts.get(level, 0.0) for level in levels], meta={"source": where})
