"""The listwise and tie/strength/vote likelihoods, checked by hand on tiny arrays."""

import itertools
import math

import pytest
import torch

from discorm.config import FinetuningArguments
from discorm.errors import ConfigError
from discorm.model.heads import build_head, with_uncertainty
from discorm.train.loss import PairwiseLoss


def _scalar(**options):
    return build_head("scalar", 4, **options)


def _batch(**labels):
    return {k: torch.tensor(v) for k, v in labels.items()}


def test_plackett_luce_matches_enumeration_of_orderings_for_k3():
    head = _scalar()
    rewards = torch.tensor([[0.3], [-1.2], [2.0]])
    levels = torch.tensor([1, 2, 0])  # ranking: 2, 0, 1
    # P(ranking) by enumeration: exp(r_first) / sum over the rest, over every step; the orderings sum to 1
    def prob(order):
        p, left = 1.0, list(range(3))
        for item in order:
            p *= math.exp(rewards[item, 0]) / sum(math.exp(rewards[j, 0]) for j in left)
            left.remove(item)
        return p
    assert sum(prob(o) for o in itertools.permutations(range(3))) == pytest.approx(1.0)
    assert float(head.plackett_luce(rewards, levels)) == pytest.approx(-math.log(prob((2, 0, 1))), rel=1e-6)


def test_plackett_luce_with_a_tie_shares_the_denominator():
    head = _scalar()
    r = torch.tensor([[0.5], [0.1], [-0.7]])
    levels = torch.tensor([0, 0, 1])
    lse = math.log(sum(math.exp(x) for x in (0.5, 0.1, -0.7)))
    expected = (lse - 0.5) + (lse - 0.1)  # both tied at the top see every response; the last term is 0
    assert float(head.plackett_luce(r, levels)) == pytest.approx(expected, rel=1e-6)


def test_rao_kupper_and_davidson_match_their_formulas():
    pa, pb = torch.tensor([[0.8], [-0.4]]), torch.tensor([[0.1], [0.9]])
    for model, param in (("rao_kupper", 0.7), ("davidson", 1.3)):
        head = _scalar(tie_model=model, tie_param=param)
        probs = head.log_prob_outcomes(pa, pb).exp()
        torch.testing.assert_close(probs.sum(-1), torch.ones(2))
        for row in range(2):
            pi_a, pi_b = math.exp(pa[row, 0]), math.exp(pb[row, 0])
            if model == "rao_kupper":
                theta = math.exp(param)
                win = pi_a / (pi_a + theta * pi_b)
                tie = (theta**2 - 1) * pi_a * pi_b / ((pi_a + theta * pi_b) * (pi_b + theta * pi_a))
            else:
                norm = pi_a + pi_b + param * math.sqrt(pi_a * pi_b)
                win, tie = pi_a / norm, param * math.sqrt(pi_a * pi_b) / norm
            assert float(probs[row, 0]) == pytest.approx(win, rel=1e-5)
            assert float(probs[row, 1]) == pytest.approx(tie, rel=1e-5)


def test_thurstone_ties_for_the_gaussian_head():
    head = build_head("gaussian", 4, tie_model="thurstone", tie_param=0.5)
    pa, pb = torch.tensor([[1.0, 0.5]]), torch.tensor([[0.2, 1.5]])
    probs = head.log_prob_outcomes(pa, pb).exp()[0]
    s, d = math.sqrt(2.0), 0.8
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    assert probs.tolist() == pytest.approx([phi((d - 0.5) / s), phi((0.5 - d) / s) - phi((-0.5 - d) / s),
                                            phi((-d - 0.5) / s)], rel=1e-5)


def test_categorical_atoms_ties():
    head = build_head("categorical", 4, num_atoms=3, atom_range=1.0, tie_model="atoms", tie_param=0.5,
                      learn_tie_param=False)
    pa, pb = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[10.0, -10.0, -10.0]])  # a uniform, b at -1
    probs = head.log_prob_outcomes(pa, pb).exp()[0]
    assert probs.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0], abs=1e-4)
    with pytest.raises(ConfigError, match="learn_tie_param: false"):
        build_head("categorical", 4, tie_model="atoms", learn_tie_param=True)


def test_a_listwise_set_built_from_pairs_gives_the_pairs_loss():
    torch.manual_seed(0)
    head = build_head("gaussian", 4)
    params = head(torch.randn(6, 4))
    pairs_loss = PairwiseLoss(head)(params[:3], params[3:])
    # the same three pairs as lists of K = 2: [chosen, rejected], levels [0, 1]
    interleaved = torch.stack([params[:3], params[3:]], dim=1).flatten(0, 1)
    lists = {"list_sizes": torch.tensor([2, 2, 2]), "list_levels": torch.tensor([0, 1] * 3)}
    for ranking in ("all_pairs",):
        loss = PairwiseLoss(head, ranking_loss=ranking).batch_loss(interleaved, lists)
        torch.testing.assert_close(loss, pairs_loss)
    scalar = _scalar()
    params = scalar(torch.randn(6, 4))
    interleaved = torch.stack([params[:3], params[3:]], dim=1).flatten(0, 1)
    pl = PairwiseLoss(scalar, ranking_loss="plackett_luce").batch_loss(interleaved, lists)
    torch.testing.assert_close(pl, PairwiseLoss(scalar)(params[:3], params[3:]))


def test_all_pairs_counts_each_comparison_once_and_list_weighting():
    head = _scalar()
    r = torch.tensor([[1.0], [0.0], [-2.0], [0.5]])
    lists = {"list_sizes": torch.tensor([4]), "list_levels": torch.tensor([0, 2, 3, 1])}
    nll = lambda a, b: -math.log(1 / (1 + math.exp(-(a - b))))  # noqa: E731
    order = [1.0, 0.5, 0.0, -2.0]
    expected = sum(nll(order[i], order[j]) for i in range(4) for j in range(i + 1, 4)) / 6
    for weighting in ("comparison", "list"):  # one list: both weightings give the mean over its 6 comparisons
        loss = PairwiseLoss(head, ranking_loss="all_pairs", list_weighting=weighting).batch_loss(r, lists)
        assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_pair_ties_strength_and_votes():
    head = _scalar(tie_model="rao_kupper", tie_param=1.0)
    pc, pr = torch.tensor([[0.4], [1.0], [0.2]]), torch.tensor([[0.0], [1.5], [0.9]])
    params = torch.cat([pc, pr])
    log_p = head.log_prob_outcomes(pc, pr)
    batch = _batch(tie=[0.0, 1.0, 0.0], votes_chosen=[math.nan, math.nan, 2.0], votes_tie=[0.0, 0.0, 1.0],
                   votes_rejected=[math.nan, math.nan, 3.0])
    expected = -(log_p[0, 0] + log_p[1, 1] + 2 * log_p[2, 0] + log_p[2, 1] + 3 * log_p[2, 2]) / (1 + 1 + 6)
    torch.testing.assert_close(PairwiseLoss(head).batch_loss(params, batch), expected)

    plain = _scalar()  # no tie model: a tie is half a win for each side
    tie = PairwiseLoss(plain).batch_loss(params[[0, 3]], _batch(tie=[1.0]))
    d = 0.4
    assert float(tie) == pytest.approx(-0.5 * math.log(1 / (1 + math.exp(-d))) - 0.5 * math.log(1 / (1 + math.exp(d))))

    strength = _batch(strength=[2.0, math.nan, 0.5])
    margin = PairwiseLoss(plain, strength_margin=0.5).batch_loss(params, strength)
    torch.testing.assert_close(margin, PairwiseLoss(plain)(pc, pr, margin=torch.tensor([1.0, 0.0, 0.25])))
    scaled = PairwiseLoss(plain, strength_loss="scaled_bt").batch_loss(params, strength)
    per_pair = plain.pair_loss(pc, pr)
    torch.testing.assert_close(scaled, (per_pair * torch.tensor([2.0, 1.0, 0.5])).sum() / 3)


def test_list_votes_are_a_binomial_likelihood():
    head = _scalar()
    r = torch.tensor([[0.3], [-0.1], [0.8]])
    votes = torch.tensor([[0, 1, 2.0, 0.0, 1.0], [0, 2, 0.0, 0.0, 3.0], [1, 2, 1.0, 0.0, 2.0]])
    loss = PairwiseLoss(head).batch_loss(r, {"list_sizes": torch.tensor([3]), "list_levels": torch.tensor([-1] * 3),
                                             "list_votes": votes})
    logsig = lambda x: math.log(1 / (1 + math.exp(-x)))  # noqa: E731
    expected = -(2 * logsig(0.4) + 1 * logsig(-0.4) + 3 * logsig(0.5) + 1 * logsig(-0.9) + 2 * logsig(0.9)) / 9
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_ensemble_and_laplace_take_list_losses():
    torch.manual_seed(0)
    lists = {"list_sizes": torch.tensor([3]), "list_levels": torch.tensor([1, 0, 2]), "sources": ["f:1"]}
    for kind in ("ensemble", "laplace"):
        head = with_uncertainty(lambda: build_head("scalar", 4, tie_model="davidson"), 4, kind, 3, True)
        features = torch.randn(3, 4)
        for ranking in ("plackett_luce", "all_pairs"):
            params = head(features)
            loss = PairwiseLoss(head, ranking_loss=ranking).batch_loss(params, lists)
            assert loss.isfinite() and loss > 0
            loss.backward()


def test_heads_refuse_what_they_cannot_honour():
    with pytest.raises(ConfigError, match="plackett_luce needs a head with a logistic"):
        FinetuningArguments(head="gaussian", ranking_loss="plackett_luce")
    with pytest.raises(ConfigError, match="tie_model does not apply to the regression head"):
        FinetuningArguments(head="regression", head_options={"tie_model": "rao_kupper"})
    with pytest.raises(ConfigError, match="not valid; allowed values: none, thurstone"):
        FinetuningArguments(head="gaussian", head_options={"tie_model": "davidson"})


def test_learned_tie_parameter_trains_and_saves(tiny_llama, tmp_path):
    from tests.conftest import build_model

    model = build_model(tiny_llama, "full", head="scalar", head_options={"tie_model": "rao_kupper"})
    assert "head.tie_log" in dict(model.named_parameters())
    model.save_pretrained(tmp_path)
    from discorm.model.reward_model import RewardModel

    loaded = RewardModel.from_pretrained(str(tmp_path))
    assert loaded.head.tie_model == "rao_kupper" and float(loaded.head.tie_value()) == pytest.approx(1.0)


def test_an_ensemble_weighs_each_members_plackett_luce_by_its_own_bootstrap_weight():
    torch.manual_seed(0)
    head = with_uncertainty(lambda: build_head("scalar", 4), 4, "ensemble", 3, True)
    params = head(torch.randn(3, 4)).detach()
    levels = torch.tensor([1, 0, 2])
    weights = head.pair_weights(["f:7"])[0]  # (3,) Poisson draws for this list
    expected = torch.stack([m.plackett_luce(p, levels) * w for m, p, w in
                            zip(head.members, head.split(params), weights)]).mean() / 2  # K - 1 = 2 units
    loss = PairwiseLoss(head, ranking_loss="plackett_luce").batch_loss(
        params, {"list_sizes": torch.tensor([3]), "list_levels": levels, "sources": ["f:7"]})
    torch.testing.assert_close(loss, expected)
