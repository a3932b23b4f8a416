"""The active-learning benchmark's inner loop on synthetic features with a known preference direction."""

from types import SimpleNamespace

import pytest
import torch

from benchmarks.bench_active_learning import curve


@pytest.mark.parametrize("strategy", ["random", "bald", "entropy", "epistemic_std"])
def test_the_refitted_last_layer_learns_a_known_direction(strategy):
    generator = torch.Generator().manual_seed(0)
    phi = torch.randn(160, 2, 6, generator=generator, dtype=torch.float64)
    phi[:, 0, 0] += 1.5  # the chosen response is further along the first feature
    opts = SimpleNamespace(heldout=60, start=6, step=6, rounds=3, prior=1.0)
    accuracies = curve(phi, strategy, seed=1, opts=opts)
    assert len(accuracies) == 4 and accuracies[-1] > 0.8
    assert curve(phi, strategy, seed=1, opts=opts) == accuracies
