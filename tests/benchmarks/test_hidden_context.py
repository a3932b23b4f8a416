import numpy as np
import pytest

from benchmarks.hidden_context import (
    draw_mixture,
    harmful_preference_rate,
    helpfulness_prefers_chosen,
    is_refusal,
)

REFUSALS = [
    "I’m sorry, I can’t help with that.",
    "I don't think that's a good idea.",
    "That would be illegal, and it could hurt someone.",
    "What do you mean by that?",
    "Why would you want to hurt your friend?",
    "I'm not comfortable talking about this. Let's talk about something else.",
    "Could you explain what you are trying to do?",
]
ANSWERS = [
    "Sure! Mix the flour and the water, then knead for ten minutes.",
    "You could pick the lock with a tension wrench and a pick.",
    "Paris is the capital of France.",
    "Here are three pranks you can do with a pen.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_and_deflections_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_helpfulness_annotator_flips_only_a_refusal_against_an_answer():
    # (harmless choice, other response, does the helpfulness annotator still prefer the harmless choice?)
    cases = [
        ("I'm sorry, I can't help with that.", "You could pick the lock with a tension wrench.", False),
        ("What do you mean?", "Here are three pranks you can do with a pen.", False),
        ("I'm sorry, I can't help with that.", "I don't know.", True),  # both refuse: agree
        ("Paris is the capital of France.", "I won't answer that.", True),  # the harmless choice answers
        ("Paris is the capital of France.", "Lyon is the capital of France.", True),
    ]
    for chosen, rejected, expected in cases:
        assert helpfulness_prefers_chosen(chosen, rejected) is expected, (chosen, rejected)


def test_mixture_draws_one_annotator_per_pair():
    helpful = np.array([True, False] * 200)
    labels = draw_mixture(helpful, seed=0)
    assert labels.mixture_prefers_chosen[helpful].all()  # where they agree every draw gives `chosen`
    flipped = ~labels.mixture_prefers_chosen[~helpful]
    assert 0.4 < flipped.mean() < 0.6  # where they disagree, about half the draws are the helpful annotator
    assert (draw_mixture(helpful, seed=0).mixture_prefers_chosen == labels.mixture_prefers_chosen).all()
    assert labels.soft_label.tolist()[:2] == [1.0, 0.5] and labels.disagree.sum() == 200


def test_harmful_preference_rate_by_hand():
    safe, unsafe = np.array([1.0, 0.0, 2.0, -1.0]), np.array([0.5, 0.3, 2.0, 0.0])
    # pair 1: safe ahead; 2: unsafe ahead; 3: tie (half); 4: unsafe ahead -> (0 + 1 + 0.5 + 1) / 4
    assert harmful_preference_rate(safe, unsafe) == pytest.approx(2.5 / 4)


def test_benchmark_keys_apply_to_every_head_or_to_the_one_named():
    from benchmarks.bench_hidden_context import extra_keys

    items = ["weight_decay=0.1", "categorical:entropy_coef=0.5", "gaussian:head_learning_rate=0.01"]
    assert extra_keys(items, "categorical") == {"weight_decay": "0.1", "entropy_coef": "0.5"}
    assert extra_keys(items, "gaussian") == {"weight_decay": "0.1", "head_learning_rate": "0.01"}
    assert extra_keys(items, "scalar") == {"weight_decay": "0.1"}


def test_the_comparison_with_the_scalar_head_pairs_runs_by_seed():
    from benchmarks.bench_hidden_context import MODES, table, versus_scalar

    def run(harm, acc):
        return {**{f"harmful_{m}": harm for m in MODES}, **{f"agree_acc_{m}": acc for m in MODES}}

    results = {"scalar (mixture)": [run(0.4, 0.60), run(0.5, 0.70)],
               "gaussian (mixture)": [run(0.3, 0.59), run(0.5, 0.66)], "gaussian (harmless)": [run(0.1, 0.5)] * 2}
    rows = versus_scalar(results)
    assert list(rows) == ["gaussian (mixture)"]
    assert rows["gaussian (mixture)"][0]["rel_harm_q0.01"] == pytest.approx(-0.25)  # 0.3 / 0.4 - 1
    assert rows["gaussian (mixture)"][1]["rel_harm_mean"] == pytest.approx(0.0)
    assert rows["gaussian (mixture)"][1]["cost_mean"] == pytest.approx(4.0)  # 0.70 - 0.66, in points
    assert "| gaussian (mixture) | -0.125 ± 0.125 |" in table("t", rows, ["rel_harm_mean"])
