import math

import pytest
import torch

from discorm.errors import ConfigError
from discorm.model.heads import CategoricalHead, EnsembleHead, GaussianHead, ScalarHead
from discorm.model.rm_config import check_reward_options
from tests.conftest import build_model


def _monte_carlo(samples: torch.Tensor, k: float) -> float:
    """-(1/k) log mean exp(-k x) over samples, in float64."""
    x = samples.double()
    return float(-(torch.logsumexp(-k * x, 0) - math.log(len(x))) / k)


def test_gaussian_entropic_reward_is_mu_minus_k_sigma_squared_over_two():
    head = GaussianHead(4)
    params = torch.tensor([[1.0, 4.0], [-0.5, 0.25]])  # (mean, variance): sigma 2 and 0.5
    torch.testing.assert_close(head.reward(params, "entropic", k=0.5), torch.tensor([1.0 - 0.5 * 4.0 / 2,
                                                                                      -0.5 - 0.5 * 0.25 / 2]))
    torch.testing.assert_close(head.reward(params, "entropic", k=0.0), head.mean(params))
    generator = torch.Generator().manual_seed(0)
    draws = 1.0 + 2.0 * torch.randn(2_000_000, generator=generator)
    assert float(head.reward(params[:1], "entropic", k=0.5)) == pytest.approx(_monte_carlo(draws, 0.5), abs=0.02)


def test_categorical_entropic_reward_is_exact_over_the_atoms():
    head = CategoricalHead(4, num_atoms=3, atom_range=1.0)  # atoms -1, 0, 1
    probs = torch.tensor([[0.2, 0.3, 0.5]])
    logits = probs.log()
    by_hand = -math.log(0.2 * math.exp(2.0) + 0.3 + 0.5 * math.exp(-2.0)) / 2.0  # k = 2
    assert float(head.reward(logits, "entropic", k=2.0)) == pytest.approx(by_hand, abs=1e-6)
    draws = head.atoms[torch.multinomial(probs[0], 1_000_000, replacement=True,
                                         generator=torch.Generator().manual_seed(1))]
    assert float(head.reward(logits, "entropic", k=2.0)) == pytest.approx(_monte_carlo(draws, 2.0), abs=0.01)
    assert float(head.reward(logits, "entropic", k=0.0)) == pytest.approx(float(head.mean(logits)), abs=1e-6)
    assert float(head.reward(logits, "entropic", k=1e-4)) == pytest.approx(float(head.mean(logits)), abs=1e-4)
    # very risk-averse: the worst atom with mass, without overflow (exp(1000) is not a float32)
    assert float(head.reward(logits, "entropic", k=1000.0)) == pytest.approx(-1.0 - math.log(0.2) / 1000, abs=1e-5)
    # between the mean and the worst atom, falling with k
    values = [float(head.reward(logits, "entropic", k=k)) for k in (0.1, 0.5, 1.0, 4.0)]
    assert values == sorted(values, reverse=True) and -1.0 < values[-1] < values[0] < float(head.mean(logits))


def test_an_ensembles_entropic_reward_is_its_mixtures_by_monte_carlo():
    torch.manual_seed(3)
    ensemble = EnsembleHead([GaussianHead(4) for _ in range(3)])
    params = ensemble(torch.randn(5, 4))
    k = 0.7
    members = [(m.mean(p), m.std(p)) for m, p in zip(ensemble.members, ensemble.split(params))]
    draws = torch.stack([mu + sigma * torch.randn(400_000, 5, dtype=torch.float64) for mu, sigma in members])
    pick = torch.randint(0, 3, (400_000, 5))  # the mixture: a member uniformly, then its normal
    samples = draws.gather(0, pick.unsqueeze(0)).squeeze(0)
    monte_carlo = -torch.log(torch.exp(-k * samples).mean(0)) / k
    exact = ensemble.reward(params, "entropic", k=k)
    torch.testing.assert_close(exact.double(), monte_carlo, atol=1e-2, rtol=0)
    by_hand = [-math.log(sum(math.exp(-k * (float(mu[i]) - k * float(sigma[i]) ** 2 / 2)) for mu, sigma in members)
                         / 3) / k for i in range(5)]
    torch.testing.assert_close(exact.double(), torch.tensor(by_hand, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.all(exact <= ensemble.mean(params) + 1e-6)
    torch.testing.assert_close(ensemble.reward(params, "entropic", k=0.0), ensemble.mean(params))


def test_entropic_needs_a_spread_and_is_accepted_wherever_reward_modes_are(tiny_llama):
    with pytest.raises(ConfigError, match="reward_mode='entropic' needs a distributional head"):
        check_reward_options("entropic", head=ScalarHead(4))
    with pytest.raises(ConfigError, match="--reward-k=-1"):
        check_reward_options("entropic", k=-1.0, head=GaussianHead(4), flags=True)
    model = build_model(tiny_llama, "freeze", head="categorical", freeze_trainable_layers=0).eval()
    items = [{"prompt": "Hi", "response": "Hello there"}, {"prompt": "Hi", "response": "Go away"}]
    scored = model.score(items, reward_mode="entropic", reward_k=2.0)
    assert [s["reward_mode"] for s in scored] == ["entropic", "entropic"]
    means = model.score(items, reward_mode="mean")
    for entropic, mean in zip(scored, means, strict=True):
        assert entropic["reward"] < mean["reward"]  # risk-averse: below the mean of a spread distribution
