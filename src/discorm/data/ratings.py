"""Rated rows -> one canonical ``Rated`` record: a response with a score per attribute.

A rated row has ``prompt`` and ``response`` (strings or chat-message lists, optional ``system``) and its scores
either as one column per attribute (``score`` for the regression head) or as a ``scores`` object
``{"helpfulness": 3, "correctness": 4}``. The attributes and their ranges come from the head (config keys
``attributes`` and ``score_range``). An attribute a row does not rate (absent, null or NaN) is masked out of the
loss; a score outside its range, an undeclared key of ``scores`` and an undeclared numeric column are errors
(a misspelt attribute would otherwise be dropped silently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from discorm.data.formats import (
    FormatSpec,
    Message,
    SkipPair,
    _describe,
    _expect,
    _messages,
    _missing,
    _with_system,
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
    """A rating -> float; None and NaN (empty table cells) are 'not rated'."""
    if _missing(value):
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: the score of {name!r} should be a finite number, found {_describe(value)}. Fix "
                        "the row or leave the attribute out.")
    return float(value)


def _read_scores(row: dict, spec: FormatSpec, attributes, where: str) -> list[float]:
    names = [a.name for a in attributes]
    found = {}
    scores = row.get(spec.column("scores"))
    if scores is not None:
        _expect(scores, dict, spec.column("scores"), where)
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


def to_rated(row: dict, spec: FormatSpec, attributes, where: str, rated_heads: tuple[str, ...] = ()) -> Rated:
    """Convert one rated row; raises DataError for wrong types, SkipPair for unusable but well-formed rows.
    ``rated_heads``: the heads that learn from ratings, named when the current head does not."""
    if not attributes:
        rated = ", ".join(rated_heads) or "see `discorm keys`"
        raise DataError(f"{where}: a rated row (prompt, response, scores), but the head learns from pairs only. "
                        f"Use a head that learns from ratings ({rated}), or give pairs (chosen, rejected).")
    prompt = _messages(row[spec.column("prompt")], "prompt", where, "user")
    response = _messages(row[spec.column("response")], "response", where, "assistant")
    prompt = _with_system(prompt, row.get(spec.column("system")), where)
    if not any(m["content"].strip() for m in response):
        raise SkipPair("empty response", f"{where}: empty response")
    scores = _read_scores(row, spec, attributes, where)
    if all(math.isnan(v) for v in scores):
        raise SkipPair("no scores", f"{where}: no attribute is rated ({[a.name for a in attributes]})")
    return Rated(prompt, response, scores, meta={"source": where})
