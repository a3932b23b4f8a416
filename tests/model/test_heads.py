import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from discorm.model.heads import CategoricalHead, GaussianHead, ScalarHead, build_head


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_scalar_loss_by_hand():
    head = ScalarHead(4)
    pc, pr = torch.tensor([[2.0], [0.5], [-1.0]]), torch.tensor([[1.0], [1.5], [-1.0]])
    expected = [-_log_sigmoid(1.0), -_log_sigmoid(-1.0), -_log_sigmoid(0.0)]
    torch.testing.assert_close(head.pair_loss(pc, pr), torch.tensor(expected))
    margin = torch.tensor([0.5, 0.0, 1.0])
    expected = [-_log_sigmoid(0.5), -_log_sigmoid(-1.0), -_log_sigmoid(-1.0)]
    torch.testing.assert_close(head.pair_loss(pc, pr, margin), torch.tensor(expected))
    soft = torch.tensor([0.7, 1.0, 0.5])
    expected = [-(0.7 * _log_sigmoid(1.0) + 0.3 * _log_sigmoid(-1.0)), -_log_sigmoid(-1.0), -_log_sigmoid(0.0)]
    torch.testing.assert_close(head.pair_loss(pc, pr, soft_label=soft), torch.tensor(expected))


def test_gaussian_loss_by_hand_and_soft_label():
    head = GaussianHead(4)
    pc = torch.tensor([[1.0, 0.5], [0.0, 2.0]])
    pr = torch.tensor([[0.0, 1.5], [1.0, 0.1]])
    z = [(1.0 - 0.0) / math.sqrt(2.0), (0.0 - 1.0) / math.sqrt(2.1)]
    torch.testing.assert_close(head.pair_loss(pc, pr), torch.tensor([-norm.logcdf(v) for v in z], dtype=torch.float))
    y = torch.tensor([0.8, 0.3])
    expected = [-(0.8 * norm.logcdf(z[0]) + 0.2 * norm.logcdf(-z[0])),
                -(0.3 * norm.logcdf(z[1]) + 0.7 * norm.logcdf(-z[1]))]
    torch.testing.assert_close(head.pair_loss(pc, pr, soft_label=y), torch.tensor(expected, dtype=torch.float))
    z_margin = (1.0 - 0.0 - 0.4) / math.sqrt(2.0)
    loss = head.pair_loss(pc[:1], pr[:1], margin=torch.tensor([0.4]))
    torch.testing.assert_close(loss, torch.tensor([-norm.logcdf(z_margin)], dtype=torch.float))


def test_gaussian_loss_finite_for_extreme_z_and_tiny_sigma():
    head = GaussianHead(4)
    mu = torch.tensor([[40.0], [-40.0], [1.0]], requires_grad=True)
    var = torch.tensor([[1e-4], [1e-4], [1e-4]])
    pc = torch.cat([mu, var], 1)
    pr = torch.cat([torch.zeros(3, 1), var], 1)
    loss = head.pair_loss(pc, pr)
    assert torch.isfinite(loss).all() and loss[1] > 1e5 and loss[0] < 1e-10
    loss.sum().backward()
    assert torch.isfinite(mu.grad).all()


def test_gaussian_gradients_reach_both_layers_and_start_like_scalar():
    torch.manual_seed(0)
    head = GaussianHead(8)
    hidden = torch.nn.functional.normalize(torch.randn(600, 8), dim=-1) * math.sqrt(8)  # RMS-normed states
    params = head(hidden)
    assert abs(params[:, 1].median() / (1.702**2 / 2) - 1) < 0.1 and params[:, 1].std() > 0
    prob = head.prob_pair(params[:300], params[300:])
    scalar_like = torch.sigmoid(params[:300, 0] - params[300:, 0])
    assert (prob - scalar_like).abs().mean() < 0.02  # probit with matched variance ~ logistic
    head.pair_loss(params[:300], params[300:]).sum().backward()
    assert head.value.weight.grad.abs().sum() > 0 and head.variance.weight.grad.abs().sum() > 0


def test_categorical_probability_matches_double_loop():
    torch.manual_seed(1)
    head = CategoricalHead(4, num_atoms=5, atom_range=2.0)
    pc, pr = torch.randn(3, 5), torch.randn(3, 5)
    p_c, p_r = pc.softmax(-1), pr.softmax(-1)
    atoms = torch.linspace(-2, 2, 5)
    for b in range(3):
        brute = 0.0
        for i in range(5):
            for j in range(5):
                win = 1.0 if atoms[i] > atoms[j] else 0.5 if i == j else 0.0
                brute += float(p_c[b, i] * p_r[b, j]) * win
        assert float(head.prob_pair(pc[b : b + 1], pr[b : b + 1])) == pytest.approx(brute, abs=1e-6)
    loss = head.pair_loss(pc, pr)
    torch.testing.assert_close(loss, -head.prob_pair(pc, pr).log())
    # mean, std, quantile
    torch.testing.assert_close(head.mean(pc), p_c @ atoms)
    var = p_c @ atoms.square() - (p_c @ atoms) ** 2
    torch.testing.assert_close(head.std(pc), var.sqrt())


def test_categorical_two_peaks_and_regulariser():
    head = CategoricalHead(4, num_atoms=3, atom_range=1.0)
    two_peaks = torch.log(torch.tensor([[0.5, 1e-6, 0.5]]))
    assert float(head.mean(two_peaks)) == pytest.approx(0.0, abs=1e-5)
    assert float(head.std(two_peaks)) == pytest.approx(1.0, abs=1e-4)
    assert float(head.regulariser(two_peaks, two_peaks, entropy_coef=0.1)) < 0


def test_reward_modes():
    head = GaussianHead(4)
    params = torch.tensor([[1.0, 4.0]])
    assert float(head.reward(params, "mean")) == pytest.approx(1.0)
    assert float(head.reward(params, "mean_minus_std", k=1.5)) == pytest.approx(1.0 - 3.0)
    assert float(head.reward(params, "lower_quantile", alpha=0.1)) == pytest.approx(1.0 + 2.0 * norm.ppf(0.1), abs=1e-5)
    cat = CategoricalHead(4, num_atoms=3, atom_range=1.0)  # atoms -1, 0, 1; cells of width 1 around them
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))  # CDF at the cell edges -1.5, -0.5, 0.5, 1.5: 0, .2, .5, 1
    assert float(cat.reward(logits, "lower_quantile", alpha=0.1)) == pytest.approx(-1.5 + 0.1 / 0.2)
    assert float(cat.reward(logits, "lower_quantile", alpha=0.3)) == pytest.approx(-0.5 + 0.1 / 0.3)
    assert float(cat.reward(logits, "lower_quantile", alpha=0.6)) == pytest.approx(0.5 + 0.1 / 0.5)
    scalar = ScalarHead(4)
    assert float(scalar.reward(torch.tensor([[2.0]]), "mean_minus_std")) == 2.0


def test_categorical_quantile_is_the_continuous_cdf_inverted():
    """By hand on 5 atoms -2..2 (cells of width 1), and against the piecewise-linear CDF at many levels."""
    head = CategoricalHead(4, num_atoms=5, atom_range=2.0)
    probs = torch.tensor([[0.1, 0.0, 0.4, 0.25, 0.25]])  # CDF at the edges -2.5 .. 2.5: 0, .1, .1, .5, .75, 1
    logits = probs.clamp_min(1e-12).log()
    assert float(head.quantile(logits, 0.05)) == pytest.approx(-2.5 + 0.05 / 0.1 * 1, abs=1e-5)
    assert float(head.quantile(logits, 0.1)) == pytest.approx(-1.5, abs=1e-5)  # the empty cell is skipped
    assert float(head.quantile(logits, 0.3)) == pytest.approx(-0.5 + 0.2 / 0.4, abs=1e-5)
    assert float(head.quantile(logits, 0.9)) == pytest.approx(1.5 + 0.15 / 0.25, abs=1e-5)
    edges, cdf = torch.linspace(-2.5, 2.5, 6), torch.cat([torch.zeros(1), probs[0].cumsum(0)])
    for alpha in torch.linspace(0.01, 0.99, 25).tolist():
        q = float(head.quantile(logits, alpha))
        assert float(np.interp(q, edges.numpy(), cdf.numpy())) == pytest.approx(alpha, abs=1e-5)
    torch.manual_seed(3)
    many = torch.randn(6, 5)
    levels = [float(head.quantile(many, a).mean()) for a in (0.01, 0.05, 0.1, 0.5, 0.9)]
    assert levels == sorted(levels)
    assert float(head.quantile(torch.zeros(1, 5), 0.5)) == pytest.approx(0.0, abs=1e-6)  # uniform: the middle


def test_build_head_by_name():
    assert isinstance(build_head("gaussian", 8, variance_penalty=0.5), GaussianHead)
    assert build_head("categorical", 8, num_atoms=7).logits.out_features == 7
    assert build_head("scalar", 8).value.bias is None
