"""The active-learning benchmark's inner loop on synthetic features with a known preference direction."""

from types import SimpleNamespace

import pytest
import torch

from benchmarks.bench_active_learning import curve, labels_to_reach


@pytest.mark.parametrize("strategy", ["random", "bald", "entropy", "epistemic_std", "diverse_bald"])
def test_the_refitted_last_layer_learns_a_known_direction(strategy):
    generator = torch.Generator().manual_seed(0)
    phi = torch.randn(160, 2, 6, generator=generator, dtype=torch.float64)
    phi[:, 0, 0] += 1.5  # the first response is further along the first feature
    first_wins = torch.rand(160, generator=generator) < 0.7  # which response the label prefers
    phi = torch.where(first_wins[:, None, None], phi, phi.flip(1))
    opts = SimpleNamespace(heldout=60, start=6, step=6, rounds=3, prior=1.0)
    accuracies, labelled = curve(phi, first_wins, strategy, seed=1, opts=opts)
    assert len(accuracies) == 4 and accuracies[-1] > 0.8
    assert len(labelled) == 6 + 3 * 6 == len(set(labelled))  # no pair labelled twice
    heldout = torch.randperm(160, generator=torch.Generator().manual_seed(1))[:60].tolist()
    assert not set(labelled) & set(heldout)  # held-out pairs never enter the pool
    assert curve(phi, first_wins, strategy, seed=1, opts=opts) == (accuracies, labelled)


def test_labels_to_reach_interpolates_between_rounds():
    points = [(0.5, 0.0), (0.6, 0.0), (0.7, 0.0)]
    assert labels_to_reach([50, 100, 150], points, 0.65) == pytest.approx(125)
    assert labels_to_reach([50, 100, 150], points, 0.5) == 50
    assert labels_to_reach([50, 100, 150], points, 0.71) is None
