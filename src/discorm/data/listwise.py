"""Listwise rows -> one canonical ``Ranked`` record: a prompt, K >= 2 responses and their ranking or votes.

A listwise row has ``prompt`` and ``responses`` (a list of texts or chat-message lists, optional ``system``) and
one label column:

- ``ranking``: response indices best first, a nested list for a tie, e.g. ``[2, [0, 1], 3]``; it covers every
  response exactly once;
- ``scores``: one number per response, higher is better; equal scores are a tie;
- ``votes``: one ranking per annotator (each as ``ranking``); the comparisons are counted over annotators and
  trained by a binomial likelihood.

UltraFeedback's raw rows (``instruction``, ``completions[].response`` with ``fine-grained_score``, else the mean of
``completions[].annotations[*].Rating``) read unchanged as scored lists (HelpSteer3-Preference rows are pairs with a
strength: ``data/pairs.py``). ``data/formats.py`` registers both formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from discorm.data.rows import FormatSpec, Message, SkipPair, describe, expect, missing, read_messages, with_system
from discorm.errors import DataError

LABELS = ("ranking", "scores", "votes")


@dataclass
class Ranked:
    prompt: list[Message]
    responses: list[list[Message]]
    levels: list[int] | None = None  # per response its rank level, 0 best, ties share one; None: votes
    votes: list[list[float]] | None = None  # rows (i, j, wins of i, ties, wins of j), i < j
    meta: dict = field(default_factory=dict)


def levels_from_ranking(ranking, size: int, column: str, where: str) -> list[int]:
    """``[2, [0, 1], 3]`` -> levels ``[1, 1, 0, 2]``; every index once."""
    expect(ranking, list, column, where)
    levels, seen = [None] * size, []
    for level, entry in enumerate(ranking):
        group = entry if isinstance(entry, list) else [entry]
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
                raise DataError(f"{where}: {column} names {index!r}, which is not a response index 0..{size - 1}. "
                                f"Give indices into `responses` (best first, ties as a nested list).")
            if levels[index] is not None:
                raise DataError(f"{where}: {column} names response {index} twice; name each response once.")
            levels[index] = level
            seen.append(index)
    unranked = [i for i, level in enumerate(levels) if level is None]
    if unranked:
        raise DataError(f"{where}: {column} {ranking!r} does not cover response(s) {unranked} of {size}; rank every "
                        "response (ties as a nested list, e.g. [2, [0, 1], 3]).")
    return levels


def levels_from_scores(scores, size: int, column: str, where: str) -> list[int]:
    """Higher score, better level; equal scores share a level."""
    expect(scores, list, column, where)
    if len(scores) != size:
        raise DataError(f"{where}: {column} has {len(scores)} numbers for {size} responses; give one per response.")
    for value in scores:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where}: {column} should hold finite numbers, found {describe(value)}.")
    distinct = sorted(set(scores), reverse=True)
    return [distinct.index(value) for value in scores]


def votes_from_rankings(rankings, size: int, column: str, where: str) -> list[list[float]]:
    """Per-annotator rankings -> per response pair (i, j, annotators preferring i, ties, preferring j)."""
    expect(rankings, list, column, where)
    if not rankings:
        raise DataError(f"{where}: {column} is empty; give one ranking per annotator.")
    counts = {(i, j): [0, 0, 0] for i in range(size) for j in range(i + 1, size)}
    for number, ranking in enumerate(rankings):
        levels = levels_from_ranking(ranking, size, f"{column}[{number}]", where)
        for (i, j), count in counts.items():
            count[0 if levels[i] < levels[j] else 1 if levels[i] == levels[j] else 2] += 1
    return [[i, j, *map(float, count)] for (i, j), count in counts.items()]


def to_ranked(row: dict, spec: FormatSpec, where: str) -> Ranked:
    """Convert one listwise row; raises DataError for bad input, SkipPair for unusable rows."""
    prompt = with_system(read_messages(row[spec.column("prompt")], "prompt", where, "user"),
                          row.get(spec.column("system")), where)
    column = spec.column("responses")
    values = expect(row[column], list, column, where)
    responses = [read_messages(value, f"{column}[{i}]", where, "assistant") for i, value in enumerate(values)]
    labels = [name for name in LABELS if not missing(row.get(spec.column(name)))]
    if len(labels) != 1:
        raise DataError(f"{where}: a listwise row needs exactly one of the columns {list(LABELS)} "
                        f"({'none' if not labels else ' and '.join(labels)} given). Give a ranking (best first), "
                        "one score per response, or per-annotator rankings as votes.")
    label = labels[0]
    return _checked(prompt, responses, label, row[spec.column(label)], spec.column(label), where)


def _checked(prompt, responses, label: str, value, column: str, where: str) -> Ranked:
    size = len(responses)
    if size < 2:
        raise DataError(f"{where}: a listwise row needs at least 2 responses, found {size}. Give K >= 2 responses "
                        "(a single rated response belongs in a rated set).")
    texts = [str(r) for r in responses]
    duplicate = next((i for i, text in enumerate(texts) if text in texts[:i]), None)
    if duplicate is not None:
        raise DataError(f"{where}: response {duplicate} repeats response {texts.index(texts[duplicate])}; each "
                        "response of a list must differ. Remove the duplicate (and its place in the label).")
    if not all(any(m["content"].strip() for m in r) for r in responses):
        raise SkipPair("empty response", f"{where}: an empty response in the list")
    if label == "votes":
        return Ranked(prompt, responses, votes=votes_from_rankings(value, size, column, where),
                      meta={"source": where})
    read = levels_from_ranking if label == "ranking" else levels_from_scores
    levels = read(value, size, column, where)
    if len(set(levels)) == 1:
        raise SkipPair("all tied", f"{where}: every response of the list is tied; it compares nothing")
    return Ranked(prompt, responses, levels=levels, meta={"source": where})


def ultrafeedback(row: dict, spec: FormatSpec, where: str) -> Ranked:
    """Convert one raw UltraFeedback row: its rated completions, scored; an unrated completion takes no part."""
    prompt = [{"role": "user", "content": expect(row[spec.column("instruction")], str, "instruction", where)}]
    completions = expect(row[spec.column("completions")], list, "completions", where)
    responses, scores = [], []
    for number, completion in enumerate(completions):
        expect(completion, dict, f"completions[{number}]", where)
        score = _ultrafeedback_score(completion, f"{where} completions[{number}]")
        if score is None:
            continue  # an unrated completion (every annotation N/A) takes no part
        responses.append(read_messages(completion.get("response"), f"completions[{number}].response", where,
                                   "assistant"))
        scores.append(score)
    return _checked(prompt, responses, "scores", scores, "completions[].fine-grained_score", where)


def _ultrafeedback_score(completion: dict, where: str) -> float | None:
    score = completion.get("fine-grained_score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
            raise DataError(f"{where}: fine-grained_score should be a number, found {describe(score)}. Leave it out "
                            "(or null) to score the completion by its annotations' ratings.")
        return float(score)
    ratings = []
    for aspect, annotation in (completion.get("annotations") or {}).items():
        rating = annotation.get("Rating") if isinstance(annotation, dict) else None
        if isinstance(rating, (int, float)) and not isinstance(rating, bool):
            ratings.append(float(rating))
        elif isinstance(rating, str) and rating.strip().replace(".", "", 1).isdigit():
            ratings.append(float(rating))
        elif rating not in (None, "N/A"):
            raise DataError(f"{where}: annotations.{aspect}.Rating {rating!r} is not a number or N/A.")
    return sum(ratings) / len(ratings) if ratings else None
