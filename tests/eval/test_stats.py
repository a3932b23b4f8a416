"""Bootstrap intervals, the paired bootstrap test and Spearman, on synthetic predictions with known answers."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from discorm.eval.bias import length_diagnostics
from discorm.eval.stats import bootstrap_interval, paired_bootstrap
from discorm.metrics import correlation


def test_bootstrap_interval_covers_the_truth_with_the_normal_width_and_is_deterministic():
    rng = np.random.default_rng(1)
    correct = (rng.random(1000) < 0.7).astype(float)
    low, high = bootstrap_interval(correct, resamples=4000, seed=0)
    mean = correct.mean()
    assert low < mean < high and low < 0.7 < high
    normal_width = 2 * 1.96 * np.sqrt(mean * (1 - mean) / len(correct))
    assert high - low == pytest.approx(normal_width, rel=0.1)
    assert bootstrap_interval(correct, resamples=4000, seed=0) == (low, high)
    assert bootstrap_interval(correct, resamples=4000, seed=1) != (low, high)


def test_bootstrap_interval_coverage_is_about_95_percent():
    rng = np.random.default_rng(2)
    covered = sum(low <= 0.6 <= high for low, high in (
        bootstrap_interval((rng.random(200) < 0.6).astype(float), resamples=500, seed=s) for s in range(200)))
    assert 0.89 <= covered / 200 <= 0.99


def test_paired_test_identical_models_give_p_one():
    rng = np.random.default_rng(3)
    credit = (rng.random(300) < 0.65).astype(float)
    test = paired_bootstrap(credit, credit.copy())
    assert test["p_value"] == 1.0 and test["difference"] == 0.0 and test["difference_ci"] == [0.0, 0.0]


def test_paired_test_detects_a_clearly_better_model():
    rng = np.random.default_rng(4)
    base = (rng.random(400) < 0.6).astype(float)
    better = np.where(rng.random(400) < 0.3, 1.0, base)  # fixes about 30% of the mistakes
    test = paired_bootstrap(better, base, seed=0)
    assert test["p_value"] < 0.01 and test["difference"] > 0
    assert test["difference_ci"][0] > 0
    assert test["difference"] == pytest.approx(better.mean() - base.mean())
    assert paired_bootstrap(better, base, seed=0) == test  # seeded: the same numbers every time


def test_paired_test_under_the_null_rejects_about_five_percent():
    rng = np.random.default_rng(5)
    p_values = [paired_bootstrap((rng.random(150) < 0.7).astype(float), (rng.random(150) < 0.7).astype(float),
                                 resamples=400, seed=s)["p_value"] for s in range(200)]
    assert 0.01 <= np.mean(np.array(p_values) < 0.05) <= 0.11
    assert 0.4 <= np.mean(p_values) <= 0.6  # p-values roughly uniform


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 8, 60).astype(float)
    y = x + rng.normal(0, 3, 60)
    assert correlation(x, y, rank=True) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    assert correlation([1, 1, 1, 1], [1, 2, 3, 4], rank=True) is None


def test_length_diagnostics_by_hand():
    # four pairs: (chosen, rejected) rewards and lengths; credit of each pair
    rewards = [np.array([2.0, 1.0]), np.array([0.0, 1.0]), np.array([3.0, 0.0]), np.array([1.0, 2.0])]
    lengths = [np.array([10.0, 5.0]), np.array([3.0, 9.0]), np.array([20.0, 1.0]), np.array([4.0, 4.0])]
    credit = np.array([1.0, 0.0, 1.0, 0.0])
    out = length_diagnostics(rewards, lengths, [1, 1, 1, 1], credit)
    assert out["chosen_longer"] == {"items": 2, "accuracy": 1.0}  # pairs 0 and 2
    assert out["chosen_not_longer"] == {"items": 2, "accuracy": 0.0}  # pair 1 (shorter), pair 3 (same length)
    assert out["chosen_longer_share"] == 0.5
    all_rewards, all_lengths = [2, 1, 0, 1, 3, 0, 1, 2], [10, 5, 3, 9, 20, 1, 4, 4]
    assert out["spearman_reward_length"] == pytest.approx(scipy_stats.spearmanr(all_rewards, all_lengths).statistic)
