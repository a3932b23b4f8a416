"""`discorm eval` on responses rated by several raters: the level metrics by hand, and the set end to end (the
numbers, their intervals, the predictions, the report's figures and the printed line)."""

import json
import math

import numpy as np
import pytest

from discorm.eval.command import summary_text
from discorm.eval.runner import EvalOptions, flat_metrics, run_evaluation
from discorm.metrics import contested_auroc, level_metrics, share_ece
from tests.conftest import build_model
from tests.eval.helpers import write_jsonl

LEVELS = {"levels": ["No", "Unsure", "Yes"], "direction": "first_best"}


def test_level_metrics_by_hand():
    probs = np.array([[0.8, 0.1, 0.1], [0.5, 0.1, 0.4], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    counts = np.array([[8, 0, 2], [3, 1, 6], [1, 0, 3], [10, 0, 0]], dtype=float)
    metrics = level_metrics(probs, counts, LEVELS["levels"])
    nll = -(8 * math.log(0.8) + 2 * math.log(0.1) + 3 * math.log(0.5) + math.log(0.1) + 6 * math.log(0.4)
            + math.log(0.2) + 3 * math.log(0.6) + 10 * math.log(0.9)) / 34
    assert metrics["nll_per_rating"] == pytest.approx(nll)
    shares = counts / counts.sum(-1, keepdims=True)
    assert metrics["Yes_brier"] == pytest.approx(np.mean((probs[:, 2] - shares[:, 2]) ** 2))
    assert metrics["brier"] == pytest.approx(np.mean(((probs - shares) ** 2).sum(-1)))
    # Yes shares 0.1, 0.4, 0.6, 0.05 fall in bins 1, 4, 6, 0: every bin its own item
    assert metrics["Yes_ece"] == pytest.approx(np.mean(np.abs(probs[:, 2] - shares[:, 2])))
    assert share_ece(np.array([0.12, 0.18]), np.array([0.0, 0.3])) == pytest.approx(0.0)  # one bin, means agree
    # disagreement predicted 0.2, 0.5, 0.4, 0.1; observed 0.2, 0.4, 0.25, 0: the same order
    assert metrics["disagreement_spearman"] == pytest.approx(1.0)
    # contested (minority >= 0.3): items 1 only; its predicted disagreement 0.5 is the highest
    assert metrics["contested_auroc"] == pytest.approx(1.0)
    assert contested_auroc(np.array([0.1, 0.3, 0.3]), np.array([True, False, True])) == pytest.approx(0.25)  # tie: 1/2
    assert math.isnan(contested_auroc(np.array([0.1, 0.3]), np.array([False, False])))


def _rows(n=24, seed=0):
    rng = np.random.default_rng(seed)
    words = ["fox", "dog", "moon", "bees", "tea", "chess"]
    return [{"prompt": "A: " + " ".join(rng.choice(words, 3)), "response": " ".join(rng.choice(words, 1 + i % 4)),
             "ratings": list(rng.choice(["No", "Unsure", "Yes"], 5 + i % 7, p=[0.6, 0.1, 0.3]))} for i in range(n)]


def test_a_set_rated_on_levels_end_to_end(tiny_llama, tmp_path):
    model = build_model(tiny_llama, head="gaussian", head_options=LEVELS).eval()
    model.save_pretrained(tmp_path / "run")
    data = write_jsonl(tmp_path / "votes.jsonl", _rows())
    results = run_evaluation(str(tmp_path / "run"), {"votes": data}, tmp_path / "out",
                             EvalOptions(show_progress=False, resamples=200))
    summary = results["rated_sets"]["votes"]
    assert summary["items"] == 24 and results["sets"] == {}
    levels = summary["levels"]
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions" / "votes.jsonl").read_text().splitlines()]
    probs = np.array([[r["predicted"][k] for k in LEVELS["levels"]] for r in records])
    counts = np.array([[r["rated"][k] for k in LEVELS["levels"]] for r in records])
    assert sum(summary["rated"].values()) == counts.sum() == sum(len(r["ratings"]) for r in _rows())
    assert levels["nll_per_rating"] == pytest.approx(level_metrics(probs, counts, LEVELS["levels"])["nll_per_rating"])
    for key in ("nll_per_rating", "brier", "Yes_ece", "No_brier", "disagreement_spearman"):
        low, high = levels[f"{key}_ci"]
        assert low <= levels[key] <= high, key
    assert sum(levels["reliability"]["Yes"]["count"]) == 24
    assert records[0]["predicted_disagreement"] == pytest.approx(1 - probs[0].max())
    assert flat_metrics(results)["eval_rated_nll_per_rating"] == levels["nll_per_rating"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="rated"' in html and html.count("data:image/png") >= 2 and "disagreement" in html
    assert "votes: 24 rated responses  nll per rating" in summary_text(results, tmp_path / "out")
