"""The over-optimisation benchmark's statistics: the unbiased best-of-n estimator against brute-force enumeration
of every n-subset, and the KL of best-of-n."""

import itertools
import math

import numpy as np
import pytest

from benchmarks.bench_overoptimization import best_of_n, curve, kl_bon


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_n_estimator_equals_enumerating_every_subset(seed):
    rng = np.random.default_rng(seed)
    proxy, gold = rng.normal(size=7), rng.normal(size=7)
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        brute = np.mean([gold[max(subset, key=lambda i: proxy[i])] for subset in subsets])
        assert best_of_n(proxy, gold, n) == pytest.approx(brute, abs=1e-12)
    assert best_of_n(proxy, gold, 1) == pytest.approx(gold.mean())
    assert best_of_n(proxy, gold, 7) == pytest.approx(gold[np.argmax(proxy)])


def test_curve_averages_prompts_and_kl_of_best_of_n():
    proxy = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    gold = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    assert curve(proxy, gold, [1, 3], [0, 1]) == pytest.approx([2.0, 2.0])  # 3 on the first prompt, 1 on the second
    assert curve(proxy, gold, [3], [0]) == [3.0]
    assert kl_bon(1) == 0.0 and kl_bon(4) == pytest.approx(math.log(4) - 0.75)


def test_pick_weights_stay_finite_at_gpu_scale():
    from benchmarks.bench_overoptimization import _pick_weights

    for total, n in [(512, 256), (4096, 2048), (4096, 4096), (4096, 1)]:
        weights = _pick_weights(total, n)
        assert np.isfinite(weights).all() and weights.sum() == pytest.approx(1.0, abs=1e-9)
        assert (weights[: n - 1] == 0).all()  # fewer than n - 1 lower scores: never the maximum of n
    assert _pick_weights(4096, 4096)[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("noise", [0.0, 0.25])
def test_proxy_pairs_are_two_gold_labelled_pairs_per_prompt(noise):
    import torch

    from benchmarks.bench_overoptimization import proxy_pairs

    gold = torch.randn(400 * 3, generator=torch.Generator().manual_seed(0))
    pairs, flipped = proxy_pairs(gold, 400, noise, seed=3)
    assert len(pairs) == 800 and len(flipped) == 800
    per_prompt = {}
    for g, a, b in pairs:
        per_prompt.setdefault(g, set()).add(frozenset((a, b)))
    assert all(len(p) == 2 for p in per_prompt.values())  # two different pairs of each prompt's three samples
    agree = np.array([bool(gold[g * 3 + a] > gold[g * 3 + b]) for g, a, b in pairs])
    assert (agree == ~flipped).all()  # chosen is the gold's preference unless flipped
    assert abs(flipped.mean() - noise) < 0.06
    again, _ = proxy_pairs(gold, 400, noise, seed=3)
    other, _ = proxy_pairs(gold, 400, noise, seed=4)
    assert again == pairs and other != pairs
