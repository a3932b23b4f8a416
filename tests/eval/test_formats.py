"""The evaluation-format registry (eval/formats.py): detection from rows, the credit rule, the composite subset
and the summary each entry gives, and a new format working through ``ranking`` as one entry."""

import math

import numpy as np
import pytest

from discorm.eval.formats import (
    BY_NAME,
    FORMATS,
    PAIRS,
    RATED,
    REWARDBENCH,
    REWARDBENCH2,
    Composite,
    EvalFormat,
    Summary,
    detect_format,
    format_named,
)
from discorm.eval.results import ranking
from discorm.eval.sets import EvalItem, EvalSet


def _rows(*rows):
    return [(f"f.jsonl:{i + 1}", row) for i, row in enumerate(rows)]


def _set(fmt, subsets, sizes=None):
    """An evaluation set of ``fmt`` with one item per subset name: ``sizes[i]`` responses (default 2)."""
    sizes = sizes or [2] * len(subsets)
    items = [EvalItem([1], [[2]] * k, 1, [], [[]] * k, subset, f"ref:{i}") for i, (subset, k) in
             enumerate(zip(subsets, sizes))]
    return EvalSet("s", "s.jsonl", fmt, items)


def test_registry_names_are_the_serialized_values_and_unique():
    assert [f.name for f in FORMATS] == ["rewardbench2", "rewardbench", "pairs", "rated", "listwise"]
    assert all(format_named(f.name) is f for f in FORMATS) and len(BY_NAME) == len(FORMATS)
    with pytest.raises(ValueError, match="unknown evaluation format 'csv'"):
        format_named("csv")


def test_detection_tries_the_entries_in_order_and_never_detects_rated():
    assert detect_format(_rows({"prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Math"})) is REWARDBENCH2
    assert detect_format(_rows({"prompt": "p", "chosen": "a", "rejected": "b", "subset": "mine"},
                               {"prompt": "q", "chosen": "a", "rejected": "b", "subset": "shp"})) is REWARDBENCH
    assert detect_format(_rows({"prompt": "p", "chosen": "a", "rejected": "b", "subset": "mine"})) is PAIRS
    assert detect_format(_rows({"prompt": "p", "response": "r", "score": 3})) is PAIRS  # the pair reader decides
    assert RATED.detect is None and RATED.rated and not any(f.rated for f in FORMATS if f is not RATED)


def test_credit_rule_composite_and_summary_per_format():
    tie = [np.array([1.0, 1.0])]
    assert ranking(_set(REWARDBENCH, ["shp"]), tie)["accuracy"] == 0.0  # strict: a tie is wrong
    assert ranking(_set(PAIRS, ["shp"]), tie)["accuracy"] == 0.5  # shared: a tie at the top counts half
    assert REWARDBENCH2.is_composite("Ties") and not REWARDBENCH2.is_composite("Math")
    assert not PAIRS.is_composite("Ties") and PAIRS.summary is None and REWARDBENCH.summary.key == "rewardbench"
    out = ranking(_set(REWARDBENCH2, ["Math", "Ties"]), [np.array([2.0, 1.0]), np.array([3.0, 1.0])])
    assert math.isnan(out["credit"][1]) and out["accuracy"] == 1.0  # the composite subset has no per-item credit
    assert out["subsets"]["Ties"] == pytest.approx(0.3) and out["rewardbench2"]["missing_subsets"] == [
        "Factuality", "Precise IF", "Safety", "Focus"]


def test_a_new_format_is_one_entry():
    lowest = EvalFormat("lowest-wins", credit=lambda scores: float(scores[0] < min(scores[1:])),
                        composite=Composite("all", lambda rows, where: float(len(rows))),
                        summary=Summary("spread", "Spread", lambda subsets: {"subsets": len(subsets)},
                                        lambda results: None))
    eval_set = _set(lowest, ["a", "a", "all", "all"], [2, 3, 2, 2])
    out = ranking(eval_set, [np.array([0.0, 1.0]), np.array([2.0, 1.0, 3.0]), np.zeros(2), np.zeros(2)])
    assert out["subsets"] == {"a": 0.5, "all": 2.0} and out["spread"] == {"subsets": 2}
    assert out["accuracy"] == 0.5
