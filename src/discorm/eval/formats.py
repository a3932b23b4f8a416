"""Evaluation-set formats: one :class:`EvalFormat` entry per format, holding everything that differs between them.

A set's format is the first entry of ``FORMATS`` whose ``detect`` accepts its rows (``pairs`` accepts any);
``rated`` and ``listwise`` are never detected from rows: a set is rated (listwise) when the pair reader returns
rated responses (ranked lists). ``name`` is
the value written as ``"format"`` in eval_results.json. An entry gives the per-item credit rule, an optional
composite subset (scored as a whole, not item by item: RewardBench 2's Ties), an optional summary of the subset
scores (written under its key in the set's results) with the report table that shows it, and how rows become
items (pairs, lists of texts, rated responses). Adding a format is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from discorm.eval.rewardbench import (
    SUBSET_MAPPING,
    TIES,
    V1_SUBSETS,
    shared_credit,
    strict_credit,
    ties_score,
    v1_summary,
    v2_summary,
)

Rows = list[tuple[str, dict]]  # (where the row was read, the row)
KeyPath = tuple  # keys from a set's results down to one number
THIS_MODEL, LONGER = "this model", "pick the longer response"  # the two scorers of a summary table


@dataclass(frozen=True)
class Composite:
    """A subset scored as a whole: ``score(rows, where)`` over rows (item id, scores with the correct ones first,
    number of correct ones)."""

    subset: str
    score: Callable[[list[tuple[str, list[float], int]], str], float]


@dataclass(frozen=True)
class ReportTable:
    """A summary's table in report.html: the columns, one row per scorer (its label and the paths of its numbers in
    the set's results) and a note under the table."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[KeyPath, ...]], ...]
    note: str


@dataclass(frozen=True)
class Summary:
    """Scores computed from the per-subset scores, written under ``key`` in the set's results (the length
    baseline's beside them, under ``length_baseline``) and shown as ``<set> (<label>)`` in report.html."""

    key: str
    label: str
    compute: Callable[[dict[str, float]], dict]
    table: Callable[[dict], ReportTable]  # the set's results -> its table


@dataclass(frozen=True)
class EvalFormat:
    name: str
    detect: Callable[[Rows], bool] | None = None  # None: never detected from rows
    credit: Callable[[list[float]], float] = shared_credit  # an item's scores, the correct ones first -> credit
    composite: Composite | None = None
    summary: Summary | None = None
    text_lists: bool = False  # rows hold lists of chosen and rejected texts (else: pairs read by the pair reader)
    rated: bool = False  # items are rated responses, evaluated by eval/rated.py (else: rankings, eval/results.py)
    listwise: bool = False  # items are ranked lists: best-of-K, rank correlations and ties (eval/results.py)

    def is_composite(self, subset: str | None) -> bool:
        return self.composite is not None and subset == self.composite.subset


def _any_rows(rows: Rows) -> bool:
    return True


def _has_text_lists(rows: Rows) -> bool:
    chosen = rows[0][1].get("chosen")
    return isinstance(chosen, list) and bool(chosen) and all(isinstance(x, str) for x in chosen)


def _has_v1_subsets(rows: Rows) -> bool:
    return "subset" in rows[0][1] and any(row.get("subset") in V1_SUBSETS for _, row in rows)


def _v1_table(results: dict) -> ReportTable:
    def numbers(*base: str) -> tuple[KeyPath, ...]:
        return (*((*base, "sections", section) for section in SUBSET_MAPPING), (*base, "prior_sets"),
                (*base, "overall"))

    missing = results["rewardbench"]["missing_sections"]
    note = ("Sections weight their subsets by RewardBench's EXAMPLE_COUNTS; Overall weights each section 2 and Prior "
            "Sets 1, leaving out absent ones."
            + (f" Missing: {', '.join(missing)} — not comparable with the leaderboard." if missing else ""))
    return ReportTable(("score", *SUBSET_MAPPING, "Prior Sets", "Overall"),
                       ((THIS_MODEL, numbers("rewardbench")), (LONGER, numbers("rewardbench", "length_baseline"))),
                       note)


def _v2_table(results: dict) -> ReportTable:
    subsets = tuple(results["subsets"])

    def numbers(key: str, overall: KeyPath) -> tuple[KeyPath, ...]:
        return (*(("subsets", subset, key) for subset in subsets), overall)

    note = ("Best-of-N: credit 1/(completions tied at the top) when the chosen one is among them; Ties is RewardBench "
            "2's composite score; Overall is the mean of the subset scores.")
    return ReportTable(("score", *subsets, "Overall"),
                       ((THIS_MODEL, numbers("score", ("rewardbench2", "overall"))),
                        (LONGER, numbers("length_baseline", ("rewardbench2", "length_baseline", "overall")))),
                       note)


PAIRS = EvalFormat("pairs", detect=_any_rows)
REWARDBENCH = EvalFormat("rewardbench", detect=_has_v1_subsets, credit=strict_credit,
                         summary=Summary("rewardbench", "RewardBench", v1_summary, _v1_table))
REWARDBENCH2 = EvalFormat("rewardbench2", detect=_has_text_lists, composite=Composite(TIES, ties_score),
                          summary=Summary("rewardbench2", "RewardBench 2", v2_summary, _v2_table), text_lists=True)
RATED = EvalFormat("rated", rated=True)
LISTWISE = EvalFormat("listwise", listwise=True)
FORMATS = (REWARDBENCH2, REWARDBENCH, PAIRS, RATED, LISTWISE)  # in the order detection tries them
BY_NAME = {f.name: f for f in FORMATS}


def detect_format(rows: Rows) -> EvalFormat:
    """The format of a set read as ``rows`` (non-empty): the first entry that accepts them."""
    return next(f for f in FORMATS if f.detect is not None and f.detect(rows))


def format_named(name: str) -> EvalFormat:
    """The entry written as ``"format": name`` in eval_results.json."""
    if name not in BY_NAME:
        raise ValueError(f"unknown evaluation format {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name]
