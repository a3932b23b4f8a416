"""Regression and multi-objective heads: losses, probabilities and combinations against hand computations."""

import math

import pytest
import torch
from scipy.stats import norm

from discorm.config import load_args
from discorm.errors import ConfigError
from discorm.model.heads import MultiObjectiveHead, RegressionHead, build_head


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_regression_scalar_loss_is_squared_error():
    head = RegressionHead(4, score_range=[1.0, 5.0])
    params = torch.tensor([[3.0], [1.5], [4.0]])
    scores = torch.tensor([[4.0], [1.0], [0.0]])
    mask = torch.tensor([[True], [True], [False]])
    torch.testing.assert_close(head.rated_loss(params, scores, mask), torch.tensor([1.0, 0.25, 0.0]))
    assert head.attributes[0].name == "score" and (head.attributes[0].low, head.attributes[0].high) == (1.0, 5.0)
    assert float(head.value.bias) == 3.0  # starts at the middle of the range


def test_regression_gaussian_loss_is_normal_nll():
    head = RegressionHead(4, output="gaussian")
    params = torch.tensor([[2.0, 0.5], [0.0, 4.0]])  # mean, variance
    scores = torch.tensor([[3.0], [-1.0]])
    expected = [-norm.logpdf(3.0, 2.0, math.sqrt(0.5)), -norm.logpdf(-1.0, 0.0, 2.0)]
    loss = head.rated_loss(params, scores, torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float))
    assert head.distributional and float(head.std(params[1:])) == pytest.approx(2.0)


def test_multi_objective_scalar_loss_masks_unrated_attributes():
    head = MultiObjectiveHead(4, attributes=["a", "b", "c"])
    params = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    scores = torch.tensor([[2.0, 0.0, 5.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    # row 0: (1-2)^2 and (3-5)^2 over 2 rated attributes; row 1: (0-2)^2 over 1
    torch.testing.assert_close(head.rated_loss(params, scores, mask), torch.tensor([(1 + 4) / 2, 4.0]))
    scores_with_nan_elsewhere = scores.clone()
    scores_with_nan_elsewhere[~mask] = 1e6  # whatever an unrated cell holds, it does not count
    torch.testing.assert_close(head.rated_loss(params, scores_with_nan_elsewhere, mask), torch.tensor([2.5, 4.0]))


def test_multi_objective_gaussian_loss_and_gradient_with_masks():
    head = MultiObjectiveHead(4, attributes=["a", "b"], output="gaussian")
    params = torch.tensor([[1.0, -1.0, 0.25, 2.0]], requires_grad=True)  # means a, b; variances a, b
    scores, mask = torch.tensor([[2.0, 7.0]]), torch.tensor([[True, False]])
    loss = head.rated_loss(params, scores, mask)
    torch.testing.assert_close(loss, torch.tensor([-norm.logpdf(2.0, 1.0, 0.5)], dtype=torch.float))
    loss.sum().backward()
    assert params.grad[0, 1] == 0 and params.grad[0, 3] == 0  # the unrated attribute gets no gradient
    assert params.grad[0, 0] != 0 and params.grad[0, 2] != 0


def test_multi_objective_combination_reward_and_pairs_by_hand():
    head = MultiObjectiveHead(4, attributes=["a", "b"], attribute_weights=[2.0, -1.0])
    pc, pr = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.5, 1.0]])
    assert float(head.mean(pc)) == pytest.approx(2 * 1.0 - 3.0)
    diff = (2 * 1.0 - 3.0) - (2 * 0.5 - 1.0)
    torch.testing.assert_close(head.pair_loss(pc, pr), torch.tensor([-_log_sigmoid(diff)]))
    torch.testing.assert_close(head.pair_loss(pc, pr, margin=torch.tensor([0.5])),
                               torch.tensor([-_log_sigmoid(diff - 0.5)]))
    assert not head.distributional and float(head.std(pc)) == 0.0

    gauss = MultiObjectiveHead(4, attributes=["a", "b"], output="gaussian", attribute_weights={"a": 0.5, "b": 2.0})
    pc, pr = torch.tensor([[1.0, 3.0, 0.4, 0.1]]), torch.tensor([[0.0, 2.0, 0.2, 0.3]])
    mean_c, var_c = 0.5 * 1.0 + 2 * 3.0, 0.25 * 0.4 + 4 * 0.1
    mean_r, var_r = 0.5 * 0.0 + 2 * 2.0, 0.25 * 0.2 + 4 * 0.3
    assert float(gauss.mean(pc)) == pytest.approx(mean_c) and float(gauss.std(pc)) == pytest.approx(math.sqrt(var_c))
    z = (mean_c - mean_r) / math.sqrt(var_c + var_r)
    torch.testing.assert_close(gauss.pair_loss(pc, pr), torch.tensor([-norm.logcdf(z)], dtype=torch.float))
    q = float(gauss.reward(pc, "lower_quantile", alpha=0.1))
    assert q == pytest.approx(mean_c + norm.ppf(0.1) * math.sqrt(var_c), abs=1e-5)
    summary = gauss.summary(pc)
    assert set(summary) == {"mean", "sigma", "attributes", "attribute_sigmas"}
    assert float(summary["attributes"]["b"][0]) == 3.0
    assert float(summary["attribute_sigmas"]["a"][0]) == pytest.approx(math.sqrt(0.4))


@pytest.mark.parametrize("output", ["scalar", "gaussian"])
def test_fit_combination_recovers_the_weights_that_made_the_pairs(output):
    torch.manual_seed(0)
    head = MultiObjectiveHead(4, attributes=["a", "b", "c"], output=output)
    true = torch.tensor([2.0, -1.0, 0.5])
    means = torch.randn(4000, 2, 3)
    variance = torch.full((4000, 2, 3), 0.25)
    params = torch.cat([means, variance], -1) if output == "gaussian" else means
    utility = means @ true
    # Bradley-Terry labels from the true weights (probit for Gaussians, with the head's own variance)
    if output == "scalar":
        p_first = torch.sigmoid(utility[:, 0] - utility[:, 1])
    else:
        p_first = torch.distributions.Normal(0, 1).cdf(
            (utility[:, 0] - utility[:, 1]) / torch.sqrt(2 * 0.25 * true.square().sum()))
    first = torch.rand(4000) < p_first
    pc = torch.where(first[:, None], params[:, 0], params[:, 1])
    pr = torch.where(first[:, None], params[:, 1], params[:, 0])
    fitted = torch.tensor(head.fit_combination(pc, pr))
    expected = true if output == "scalar" else true / true.abs().sum()
    torch.testing.assert_close(fitted, expected, atol=0.15 * expected.abs().max(), rtol=0)
    assert head.saved_options()["attribute_weights"] == pytest.approx(fitted.tolist())


def test_options_are_checked_with_clear_errors():
    _, _, _, ft = load_args({"head": "multi_objective", "attributes": "helpfulness,correctness",
                             "score_range": {"helpfulness": [0, 4]}, "output": "gaussian"})
    assert ft.head_options["attributes"] == ["helpfulness", "correctness"]
    head = build_head("multi_objective", 8, **ft.head_options)
    assert [(a.name, a.low, a.high) for a in head.attributes] == [("helpfulness", 0.0, 4.0),
                                                                   ("correctness", None, None)]
    with pytest.raises(ConfigError, match=r"needs `attributes: \[name, ...\]`"):
        load_args({"head": "multi_objective"})
    with pytest.raises(ConfigError, match=r"score_range names \['verbosity'\], which are not attributes"):
        load_args({"head": "multi_objective", "attributes": ["a"], "score_range": {"verbosity": [0, 4]}})
    with pytest.raises(ConfigError, match=r"attribute_weights has 1 weights for 2 attributes"):
        build_head("multi_objective", 8, attributes=["a", "b"], attribute_weights=[1.0])
    with pytest.raises(ConfigError, match="name other columns of a rated row"):
        load_args({"head": "multi_objective", "attributes": ["prompt", "b"]})
    with pytest.raises(ConfigError, match=r"output='normal' is not valid; allowed values: scalar, gaussian"):
        load_args({"head": "regression", "output": "normal"})
    with pytest.raises(ConfigError, match="score_range.*low must be below high"):
        load_args({"head": "regression", "score_range": [5, 1]})
    with pytest.raises(ConfigError, match="combination=learned .* the regression head does not have"):
        load_args({"head": "regression", "combination": "learned"})
    with pytest.raises(ConfigError, match="attributes does not apply to the scalar head"):
        load_args({"head": "scalar", "attributes": ["a"]})


def test_saved_options_rebuild_the_same_head():
    head = build_head("multi_objective", 8, attributes=["a", "b"], score_range=[1, 5], output="gaussian",
                      attribute_weights={"b": 1.0})
    again = build_head("multi_objective", 8, **head.saved_options())
    assert again.saved_options() == head.saved_options() and again.weights.tolist() == [0.0, 1.0]
    regression = build_head("regression", 8, output="gaussian", score_range=[0, 10])
    assert build_head("regression", 8, **regression.saved_options()).attributes == regression.attributes
