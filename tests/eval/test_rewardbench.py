"""RewardBench v1 and v2 scoring through `discorm eval`, against values computed by hand.

The files are written here; each response ends with its reward (see helpers.text_scores), so every expected
number below is arithmetic on the scores in the rows, done by hand."""

import json
import math

import pytest

from discorm.eval.rewardbench import shared_credit, strict_credit, ties_score, v1_summary
from discorm.eval.runner import EvalOptions, run_evaluation
from tests.eval.helpers import run_dir, text_scores, write_jsonl

V1_PAIRS = [  # (subset, chosen reward, rejected reward)
    ("alpacaeval-easy", 2, 1), ("alpacaeval-easy", 1.5, 0.5), ("alpacaeval-easy", 1, 1),  # a tie: wrong
    ("mt-bench-easy", 3, 1), ("mt-bench-easy", 0, 2),
    ("mt-bench-hard", 1, 0), ("mt-bench-hard", 2, 1),
    ("refusals-dangerous", 0, 1), ("refusals-dangerous", 0.5, 0.7),
    ("xstest-should-respond", 1, 0),
    ("math-prm", 1, 0), ("math-prm", 0.3, 0.3),  # a tie: wrong
    ("hep-python", 1, 0), ("hep-go", 0, 1),
    ("anthropic_helpful", 1, 0), ("anthropic_helpful", 0, 1), ("shp", 1, 0),
    ("anthropic_harmless", 0, 1),  # evaluated, not part of Prior Sets
]

V2_ROWS = [  # (subset, id, chosen rewards, rejected rewards)
    ("Factuality", "0", [2], [1, 0.5, 0.1]), ("Factuality", "1", [1], [1, 0.5, 0.1]),
    ("Precise IF", "2", [0], [1, 2, 3]),
    ("Math", "3", [1], [1, 1, 0.1]), ("Math", "4", [1], [1, 1, 1]),
    ("Safety", "5", [3], [1, 2, 0]),
    ("Focus", "6", [0.5], [1, 0.1, 0.2]),
    ("Ties", "ref:0", [5], [1, 2]), ("Ties", "tied:0", [5, 4.5, 4], [1, 2]),
    ("Ties", "ref:1", [1], [3]), ("Ties", "tied:1", [4, 3], [3.5]),
]


@pytest.fixture
def scored_by_text(monkeypatch):
    monkeypatch.setattr("discorm.eval.runner.score_items", text_scores)


def _evaluate(tiny_llama, tmp_path, sets):
    results = run_evaluation(str(run_dir(tiny_llama, tmp_path)), sets, tmp_path / "out",
                             EvalOptions(show_progress=False, resamples=200), report=False)
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text()) == json.loads(json.dumps(results))
    return results


def test_rewardbench_v1_subsets_sections_and_overall(tiny_llama, tmp_path, scored_by_text):
    rows = [{"prompt": f"question {i}", "chosen": f"yes {c}", "rejected": f"no {r}", "subset": subset, "id": i}
            for i, (subset, c, r) in enumerate(V1_PAIRS)]
    results = _evaluate(tiny_llama, tmp_path, {"rb": write_jsonl(tmp_path / "rb.jsonl", rows)})
    s = results["sets"]["rb"]
    assert s["format"] == "rewardbench" and s["items"] == 18
    subsets = {name: entry["score"] for name, entry in s["subsets"].items()}
    assert subsets == pytest.approx({
        "alpacaeval-easy": 2 / 3, "mt-bench-easy": 1 / 2, "mt-bench-hard": 1.0, "refusals-dangerous": 0.0,
        "xstest-should-respond": 1.0, "math-prm": 1 / 2, "hep-python": 1.0, "hep-go": 0.0,
        "anthropic_helpful": 1 / 2, "shp": 1.0, "anthropic_harmless": 0.0})
    chat = (100 * 2 / 3 + 28 * 1 / 2) / (100 + 28)
    safety = (100 * 0 + 250 * 1) / (100 + 250)
    reasoning = (984 * 1 / 2 + 164 * 1 + 164 * 0) / (984 + 164 + 164)  # math and code weigh the same
    prior = (1 / 2 + 1) / 2
    rb = s["rewardbench"]
    assert rb["sections"] == pytest.approx({"Chat": chat, "Chat Hard": 1.0, "Safety": safety,
                                            "Reasoning": reasoning})
    assert rb["prior_sets"] == pytest.approx(prior)
    assert rb["overall"] == pytest.approx((2 * (chat + 1.0 + safety + reasoning) + prior) / 9)
    assert rb["complete"] and not rb["missing_sections"]
    assert s["accuracy"] == pytest.approx(10 / 18)  # ties are wrong
    lows, highs = s["accuracy_ci"]
    assert lows < 10 / 18 < highs


def test_rewardbench_v1_overall_without_prior_sets_and_with_a_missing_section():
    acc = {"alpacaeval-easy": 0.8, "mt-bench-hard": 0.6, "donotanswer": 0.5, "hep-rust": 0.4}
    summary = v1_summary(acc)
    assert summary["prior_sets"] is None
    assert summary["overall"] == pytest.approx((0.8 + 0.6 + 0.5 + 0.4) / 4)  # the leaderboard's masked mean
    partial = v1_summary({"alpacaeval-easy": 1.0, "mt-bench-easy": 0.0, "shp": 0.5})
    assert partial["sections"] == pytest.approx({"Chat": 100 / 128})
    assert partial["missing_sections"] == ["Chat Hard", "Safety", "Reasoning"] and not partial["complete"]
    assert partial["overall"] == pytest.approx((2 * 100 / 128 + 0.5) / 3)


def test_rewardbench2_best_of_n_ties_and_overall(tiny_llama, tmp_path, scored_by_text):
    rows = [{"id": item_id, "prompt": f"prompt {item_id.split(':')[-1]}", "subset": subset,
             "chosen": [f"good answer {j} {s}" for j, s in enumerate(chosen)],
             "rejected": [f"bad answer {j} {s}" for j, s in enumerate(rejected)]}
            for subset, item_id, chosen, rejected in V2_ROWS]
    results = _evaluate(tiny_llama, tmp_path, {"rb2": write_jsonl(tmp_path / "rb2.jsonl", rows)})
    s = results["sets"]["rb2"]
    assert s["format"] == "rewardbench2"
    ties = (0.30 * 1 / 2 + 0.30 * 1 / 2 + 0.20 * 1 / 2 + 0.20 * 1 / 2
            + 0.01 * (math.tanh(2 / 1 - 1) + math.tanh(-2 / 1 - 1)) / 2)
    expected = {"Factuality": (1 + 1 / 2) / 2, "Precise IF": 0.0, "Math": (1 / 3 + 1 / 4) / 2, "Safety": 1.0,
                "Focus": 0.0, "Ties": ties}
    assert {name: e["score"] for name, e in s["subsets"].items()} == pytest.approx(expected)
    assert ties == pytest.approx(0.4988327, abs=1e-7)
    assert s["rewardbench2"]["overall"] == pytest.approx(sum(expected.values()) / 6)
    assert s["accuracy"] == pytest.approx((1 + 1 / 2 + 0 + 1 / 3 + 1 / 4 + 1 + 0) / 7)  # best-of-N, Ties apart
    records = [json.loads(x) for x in (tmp_path / "out" / s["predictions_file"]).read_text().splitlines()]
    assert [r["credit"] for r in records[:7]] == pytest.approx([1, 1 / 2, 0, 1 / 3, 1 / 4, 1, 0])
    assert all(r["credit"] is None for r in records[7:])


def test_credit_rules_and_ties_with_zero_spread():
    assert strict_credit([1.0, 1.0]) == 0.0 and strict_credit([2.0, 1.0, 1.5]) == 1.0
    assert strict_credit([float("nan"), 0.0]) == 0.0
    assert [shared_credit(s) for s in ([2, 1, .5, .1], [1, 1, .5, .1], [1, 1, 1, .1], [1, 1, 1, 1],
                                       [.5, 1, .1, .2])] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 0])
    # tied:0 has zero spread and a positive gap (margin term tanh(+inf) = 1); family 1 has 0/0 (margin 0) and
    # gaps of 0 (strict: not accurate)
    rows = [("ref:0", [5, 1], 1), ("tied:0", [3, 3, 1], 2), ("ref:1", [5, 5], 1), ("tied:1", [3, 3, 3], 2)]
    assert ties_score(rows) == pytest.approx(0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * (1 + 0) / 2)


def test_plain_pairs_with_subsets_share_ties(tiny_llama, tmp_path, scored_by_text):
    rows = [{"prompt": "q", "chosen": f"a {c}", "rejected": f"b {r}", "subset": subset}
            for subset, c, r in [("x", 1, 0), ("x", 1, 1), ("y", 0, 1), ("y", 2, 1)]]
    results = _evaluate(tiny_llama, tmp_path, {"mine": write_jsonl(tmp_path / "pairs.jsonl", rows)})
    s = results["sets"]["mine"]
    assert s["format"] == "pairs" and "rewardbench" not in s
    assert s["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert {k: v["score"] for k, v in s["subsets"].items()} == pytest.approx({"x": 0.75, "y": 0.5})


def test_ties_rows_need_family_ids(tiny_llama, tmp_path, scored_by_text):
    from discorm.errors import DataError

    rows = [{"id": "7", "prompt": "p", "subset": "Ties", "chosen": ["a 1"], "rejected": ["b 0"]}]
    with pytest.raises(DataError, match="'ref:<k>' or 'tied:<k>'"):
        _evaluate(tiny_llama, tmp_path, {"t": write_jsonl(tmp_path / "t.jsonl", rows)})
