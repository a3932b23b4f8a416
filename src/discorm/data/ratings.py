"""Rated rows -> one canonical ``Rated`` record: a response with a score per attribute.

A rated row has ``prompt`` and ``response`` (strings or chat-message lists, optional ``system``) and its scores
either as one column per attribute (``score`` for the regression head) or as a ``scores`` object
``{"helpfulness": 3, "correctness": 4}``. The attributes and their ranges come from the head (config keys
``attributes`` and ``score_range``). An attribute a row does not rate (absent, or null: an empty table cell) is
masked out of the loss; a score that is NaN or infinite or outside its range, an undeclared key of ``scores`` and
an undeclared numeric column are errors (a misspelt attribute would otherwise be dropped silently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from discorm.data.rows import FormatSpec, Message, SkipPair, describe, expect, read_messages, with_system
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


def to_rated(row: dict, spec: FormatSpec, where: str) -> Rated:
    """Convert one rated row, read with the head's attributes (``spec.attributes``; ``spec.rated_heads`` are named
    when the head has none); raises DataError for wrong types, SkipPair for unusable but well-formed rows."""
    if not spec.attributes:
        rated = ", ".join(spec.rated_heads) or "see `discorm keys`"
        raise DataError(f"{where}: a rated row (prompt, response, scores), but the head learns from pairs only. "
                        f"Use a head that learns from ratings ({rated}), or give pairs (chosen, rejected).")
    prompt = read_messages(row[spec.column("prompt")], "prompt", where, "user")
    response = read_messages(row[spec.column("response")], "response", where, "assistant")
    prompt = with_system(prompt, row.get(spec.column("system")), where)
    if not any(m["content"].strip() for m in response):
        raise SkipPair("empty response", f"{where}: empty response")
    scores = _read_scores(row, spec, where)
    if all(math.isnan(v) for v in scores):
        raise SkipPair("no scores", f"{where}: no attribute is rated ({[a.name for a in spec.attributes]})")
    return Rated(prompt, response, scores, meta={"source": where})
