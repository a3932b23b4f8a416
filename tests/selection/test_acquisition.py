"""Acquisition scores against brute-force Monte Carlo over the head's posterior, and the batch-aware greedy."""

import pytest
import torch
from torch.special import ndtr

from discorm.errors import ModelError
from discorm.model.acquisition import (
    bald,
    binary_entropy,
    check_strategy,
    difference_std,
    diverse_greedy,
    entropy,
    pair_draws,
    pair_scores,
    tie_break_order,
)
from discorm.model.heads import EnsembleHead, GaussianHead, LaplaceHead, ScalarHead

H, N = 4, 8


def _features(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(N, H, generator=generator), torch.randn(N, H, generator=generator)


def _monte_carlo(p_samples):
    """BALD and entropy from draws p (N, S), each draw weighing alike."""
    mean = p_samples.mean(-1)
    total = binary_entropy(mean)
    return total - binary_entropy(p_samples).mean(-1), total


def _laplace(member):
    torch.manual_seed(1)
    head = LaplaceHead(member, H)
    root = torch.randn(H, H, dtype=torch.float64)
    head.set_posterior(root @ root.T / H + 0.1 * torch.eye(H, dtype=torch.float64), 1.0)
    return head


@pytest.mark.parametrize("kind", ["scalar", "gaussian"])
def test_laplace_bald_and_entropy_match_monte_carlo_over_sampled_last_layers(kind):
    """theta = the last layer's weights, drawn from N(w_MAP, Sigma): 2M draws, rewards recomputed from phi."""
    head = _laplace(ScalarHead(H) if kind == "scalar" else GaussianHead(H))
    phi_a, phi_b = _features()
    with torch.no_grad():
        pa, pb = head(phi_a), head(phi_b)
        probs, weights = pair_draws(head, pa, pb, phi_a, phi_b)
    w_map = head.member.value.weight.double().reshape(-1)  # the mean read-out of both heads
    z = (phi_a - phi_b).double()
    generator = torch.Generator().manual_seed(0)
    chol = torch.linalg.cholesky(head.covariance.double())
    samples = []
    for _ in range(20):
        w = w_map + torch.randn(100_000, H, generator=generator, dtype=torch.float64) @ chol.T  # (S, H)
        diff = z @ w.T  # (N, S): r_a - r_b under each draw (a bias cancels)
        if kind == "scalar":
            samples.append(torch.sigmoid(diff))
        else:
            var = (head.member.std(pa[:, :-1]).square() + head.member.std(pb[:, :-1]).square()).double()
            samples.append(ndtr(diff / var.sqrt()[:, None]))
    mc_bald, mc_entropy = _monte_carlo(torch.cat(samples, -1))
    torch.testing.assert_close(bald(probs, weights), mc_bald, atol=1e-3, rtol=0)
    torch.testing.assert_close(entropy(probs, weights), mc_entropy, atol=1e-3, rtol=0)
    assert bool((mc_bald > 0.01).all())  # the comparison is not trivially 0 = 0
    torch.testing.assert_close(difference_std(head, pa, pb, phi_a, phi_b),
                               torch.einsum("nh,hk,nk->n", z, head.covariance.double(), z).sqrt())


def test_ensemble_bald_and_entropy_match_monte_carlo_over_drawn_members():
    torch.manual_seed(2)
    head = EnsembleHead([ScalarHead(H) for _ in range(5)])
    phi_a, phi_b = _features(1)
    with torch.no_grad():
        pa, pb = head(phi_a), head(phi_b)
        probs, weights = pair_draws(head, pa, pb, phi_a, phi_b)
        member_p = torch.stack([torch.sigmoid(m(phi_a) - m(phi_b))[:, 0] for m in head.members], -1).double()
    drawn = torch.randint(0, 5, (1_000_000,), generator=torch.Generator().manual_seed(0))
    mc_bald, mc_entropy = _monte_carlo(member_p[:, drawn])
    torch.testing.assert_close(bald(probs, weights), mc_bald, atol=1e-3, rtol=0)
    torch.testing.assert_close(entropy(probs, weights), mc_entropy, atol=1e-3, rtol=0)
    member_diff = torch.stack([(m(phi_a) - m(phi_b))[:, 0] for m in head.members], -1).double()
    torch.testing.assert_close(difference_std(head, pa, pb, phi_a, phi_b), member_diff.std(-1, correction=0))


def test_bald_is_zero_where_every_draw_agrees_and_entropy_is_not():
    probs = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.5, 0.9], [0.99, 0.99, 0.99]], dtype=torch.float64)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    scores = bald(probs, weights)
    assert scores[0] == pytest.approx(0, abs=1e-12) and scores[2] == pytest.approx(0, abs=1e-12)
    assert scores[1] == pytest.approx(binary_entropy(torch.tensor(0.5)).item()
                                      - (2 * binary_entropy(torch.tensor(0.1)).item() + 0.6931471805599453) / 3)
    assert entropy(probs, weights)[0] == pytest.approx(0.6931471805599453)  # a coin flip for raters: high entropy


def test_identical_responses_have_no_epistemic_spread_under_laplace():
    head = _laplace(ScalarHead(H))
    phi_a, _ = _features()
    with torch.no_grad():
        pa = head(phi_a)
    scores = pair_scores("bald", head, pa, pa, phi_a, phi_a)
    assert scores["score"].abs().max() < 1e-12 and torch.allclose(scores["p"], torch.full((N,), 0.5).double())


def test_strategies_needing_a_posterior_are_refused_for_a_plain_head():
    with pytest.raises(ModelError, match="uncertainty: laplace"):
        check_strategy("bald", ScalarHead(H))
    with pytest.raises(ModelError, match="not an acquisition strategy; use one of random, bald"):
        check_strategy("uncertainty", ScalarHead(H))
    check_strategy("entropy", ScalarHead(H))
    check_strategy("diverse_bald", EnsembleHead([ScalarHead(H), ScalarHead(H)]))


def test_ties_break_by_the_seed_deterministically():
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5])
    first = tie_break_order(scores, seed=3).tolist()
    assert first == tie_break_order(scores, seed=3).tolist()
    assert set(first[:3]) == {1, 2, 3} and first[3:] == [0, 4]
    assert len({tuple(tie_break_order(scores, seed=s).tolist()[:3]) for s in range(10)}) > 1


def test_diverse_greedy_skips_an_exact_duplicate_that_top_k_would_pick_twice():
    scores = torch.tensor([0.9, 0.9, 0.5, 0.4, 0.1], dtype=torch.float64)  # items 0 and 1 are one comparison
    features = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
    assert set(tie_break_order(scores, 0)[:2].tolist()) == {0, 1}  # plain BALD spends 2 labels on it
    chosen = diverse_greedy(scores, features, budget=3, seed=0)
    assert chosen[0] in (0, 1) and chosen[1:] == [2, 3]
    assert diverse_greedy(scores, features, budget=5, seed=0)[-1] in (0, 1)  # the duplicate comes last
    assert diverse_greedy(scores, features, budget=3, seed=0) == chosen


def _eager_greedy(scores, features, budget, seed):
    """The obvious twin of diverse_greedy: every gain from every chosen item, one item at a time."""
    f = features.float() - features.float().mean(0)
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    rank = torch.empty(len(scores), dtype=torch.long)
    rank[tie_break_order(scores, seed)] = torch.arange(len(scores))
    chosen = []
    for _ in range(budget):
        gains = []
        for i in range(len(scores)):
            if i in chosen:
                continue
            closest = max([float(f[i] @ f[j]) for j in chosen], default=0.0)
            gains.append((-float(scores[i]) * (1 - max(closest, 0.0)), int(rank[i]), i))
        chosen.append(min(gains)[2])
    return chosen


@pytest.mark.parametrize("seed", range(4))
def test_diverse_greedy_takes_what_the_item_by_item_greedy_takes(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(60, generator=generator, dtype=torch.float64)
    scores[:10] = scores[10:20]  # ties
    features = torch.randn(60, 5, generator=generator)
    features[20:25] = features[:5]  # duplicates
    assert diverse_greedy(scores, features, 25, seed) == _eager_greedy(scores, features, 25, seed)
