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
