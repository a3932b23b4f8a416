"""The ordinal (cumulative-link) likelihood of several raters' labels: by hand for the logit and probit links, the
cut-points, the categorical head's levels, the majority-label switch and the uncertainty wrappers."""

import json
import math

import pytest
import torch
from scipy.stats import norm

from discorm.config import FinetuningArguments
from discorm.errors import ConfigError
from discorm.losses import RATING_TARGETS
from discorm.model.heads import CategoricalHead, GaussianHead, ScalarHead, build_head, with_uncertainty
from discorm.model.heads.ordinal import CutPoints, cumulative_log_probs, rating_nll
from discorm.model.reward_model import RewardModel
from discorm.train.loss import PairwiseLoss
from tests.conftest import build_model

LEVELS = {"levels": ["safe", "unsure", "unsafe"], "direction": "first_best"}


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _set_cuts(head, theta):
    """Set a head's cut-points to the increasing values ``theta``."""
    gaps = [b - a for a, b in zip(theta, theta[1:])]
    with torch.no_grad():
        head.cuts.first.fill_(theta[0])
        head.cuts.gaps.copy_(torch.tensor([math.log(math.expm1(g)) for g in gaps]))
    torch.testing.assert_close(head.cuts(), torch.tensor(theta))


@pytest.mark.parametrize("link, cdf", [("logit", _sigmoid), ("probit", norm.cdf)])
@pytest.mark.parametrize("per_response", [False, True])
def test_cumulative_link_by_hand(link, cdf, per_response):
    mu = torch.tensor([0.3, -1.2, 2.5], dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0, 1.3], dtype=torch.float64) if per_response else 1.0
    cuts = torch.tensor([-0.5, 0.4, 1.7], dtype=torch.float64)
    log_probs = cumulative_log_probs(mu, scale, cuts, link)
    for n in range(3):
        s = float(scale[n]) if per_response else 1.0
        below = [0.0] + [cdf((float(c) - float(mu[n])) / s) for c in cuts] + [1.0]
        expected = [math.log(b - a) for a, b in zip(below, below[1:])]
        torch.testing.assert_close(log_probs[n], torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_far_from_the_cuts_the_likelihood_stays_finite(link):
    mu = torch.tensor([-60.0, 0.0, 60.0], requires_grad=True)
    log_probs = cumulative_log_probs(mu, 1.0, torch.tensor([-1.0, 1.0]), link)
    assert torch.isfinite(log_probs).all()
    probs = log_probs.detach().exp()
    assert float(probs[0, 0]) == pytest.approx(1.0) and float(probs[2, 2]) == pytest.approx(1.0)  # worst first
    (-log_probs[:, 1].sum()).backward()
    assert torch.isfinite(mu.grad).all()


def test_scalar_head_logit_likelihood_and_direction():
    head = ScalarHead(4, **LEVELS)
    _set_cuts(head, [-0.5, 1.0])
    params = torch.tensor([[0.2], [-2.0]])  # the reward: higher is safer (first_best: 'safe' is the best level)
    p_unsafe, p_at_most_unsure = _sigmoid(-0.5 - 0.2), _sigmoid(1.0 - 0.2)  # worst first: unsafe, unsure, safe
    expected = [1 - p_at_most_unsure, p_at_most_unsure - p_unsafe, p_unsafe]  # declared order: safe, unsure, unsafe
    torch.testing.assert_close(head.level_log_probs(params)[0].exp(), torch.tensor(expected))
    counts = torch.tensor([[45.0, 8.0, 20.0], [1.0, 0.0, 3.0]])
    loss = head.rated_loss(params, counts, torch.ones_like(counts, dtype=torch.bool))
    by_hand = -(45 * math.log(expected[0]) + 8 * math.log(expected[1]) + 20 * math.log(expected[2])) / 73
    assert float(loss[0].detach()) == pytest.approx(by_hand, rel=1e-5)  # the NLL per rating
    assert [a.name for a in head.attributes] == LEVELS["levels"]
    higher = head.level_log_probs(torch.tensor([[3.0]])).exp()[0]
    assert float(higher[0]) > expected[0]  # a higher reward moves raters towards the better end


def test_gaussian_head_probit_likelihood_uses_its_own_sigma():
    head = GaussianHead(4, levels=["1", "2", "3", "4"], direction="last_best")
    _set_cuts(head, [-1.0, 0.0, 1.5])
    params = torch.tensor([[0.5, 0.25], [0.5, 4.0]])  # the same mean, sigma 0.5 and 2
    probs = head.level_log_probs(params).exp()
    for n, sigma in enumerate((0.5, 2.0)):
        below = [0.0] + [norm.cdf((c - 0.5) / sigma) for c in (-1.0, 0.0, 1.5)] + [1.0]
        torch.testing.assert_close(probs[n], torch.tensor([b - a for a, b in zip(below, below[1:])],
                                                          dtype=torch.float), atol=1e-6, rtol=1e-5)
    assert float(probs[1, 0] + probs[1, 3]) > float(probs[0, 0] + probs[0, 3])  # a wide sigma: the extremes


def test_categorical_head_puts_its_atoms_on_the_levels():
    head = CategoricalHead(4, **LEVELS)
    assert head.num_atoms == 3 and head.saved_options()["num_atoms"] == 3
    logits = torch.tensor([[0.0, 1.0, 2.0]])  # atoms worst first: unsafe, unsure, safe
    expected = logits.softmax(-1).flip(-1)
    torch.testing.assert_close(head.level_log_probs(logits).exp(), expected)
    counts = torch.tensor([[2.0, 1.0, 1.0]])
    loss = head.rated_loss(logits, counts, torch.ones_like(counts, dtype=torch.bool))
    assert float(loss) == pytest.approx(float(-(counts * expected.log()).sum() / 4), rel=1e-6)
    assert not hasattr(head, "cuts")


def test_cut_points_stay_ordered_after_training_steps():
    torch.manual_seed(0)
    head = ScalarHead(8, levels=[1, 2, 3, 4, 5], direction="last_best")
    optimiser = torch.optim.Adam(head.parameters(), lr=0.5)
    hidden = torch.randn(32, 8)
    counts = torch.zeros(32, 5)
    counts[:, 0], counts[:, 4] = 5, 5  # nobody uses the middle levels: their cut-points are pushed together
    mask = torch.ones_like(counts, dtype=torch.bool)
    losses = []
    for _ in range(100):
        loss = head.rated_loss(head(hidden), counts, mask).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    cuts = head.cuts().detach()
    assert (cuts[1:] > cuts[:-1]).all()
    assert losses[-1] < losses[0] - 0.5
    assert float(cuts[3] - cuts[0]) < 1.0  # the middle levels shrank (from 3 apart)


def test_cut_points_start_evenly_spaced():
    torch.testing.assert_close(CutPoints(4)(), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(CutPoints(2)(), torch.tensor([0.0]))


def test_a_scale_needs_a_direction_and_distinct_levels():
    with pytest.raises(ConfigError, match=r"levels=\['safe', 'unsafe'\] is a scale without a direction: .* "
                                          r"direction: first_best \('safe' is best\)"):
        FinetuningArguments(head="scalar", head_options={"levels": ["safe", "unsafe"]})
    with pytest.raises(ConfigError, match=r"direction=last_best orders rating levels, and no levels are declared"):
        FinetuningArguments(head="gaussian", head_options={"direction": "last_best"})
    with pytest.raises(ConfigError, match=r"at least two distinct"):
        FinetuningArguments(head="scalar", head_options={"levels": [1, 1.0], "direction": "last_best"})
    head = build_head("scalar", 4, levels="1,2,3", direction="last_best")
    assert head.levels == ["1", "2", "3"]


def test_majority_target_is_one_rating_at_the_most_frequent_level():
    counts = torch.tensor([[45.0, 8.0, 20.0], [3.0, 0.0, 3.0]])
    torch.testing.assert_close(RATING_TARGETS["majority"].target(counts), torch.tensor([[1.0, 0, 0], [0.5, 0, 0.5]]))
    head = ScalarHead(4, **LEVELS)
    params = torch.tensor([[0.7], [-0.3]])
    mask = torch.ones_like(counts, dtype=torch.bool)
    batch = {"scores": counts, "score_mask": mask}
    every = PairwiseLoss(head)(params[:0], params[:0], rated=params, scores=counts, score_mask=mask)
    torch.testing.assert_close(every, head.rated_loss(params, counts, mask).mean())
    majority = PairwiseLoss(head, rating_target="majority").batch_loss(params, batch)
    torch.testing.assert_close(majority, rating_nll(head.level_log_probs(params),
                                                    RATING_TARGETS["majority"].target(counts)).mean())
    assert float(majority) != pytest.approx(float(every))


@pytest.mark.parametrize("kind", ["scalar", "gaussian", "categorical"])
@pytest.mark.parametrize("uncertainty, size", [("ensemble", 3), ("laplace", 1)])
def test_wrapped_heads_train_on_ratings(kind, uncertainty, size):
    torch.manual_seed(0)
    head = with_uncertainty(lambda: build_head(kind, 8, **LEVELS), 8, uncertainty, size)
    assert head.levels == LEVELS["levels"] and [a.name for a in head.attributes] == LEVELS["levels"]
    hidden = torch.randn(16, 8)
    counts = torch.randint(0, 10, (16, 3)).float() + 1
    mask = torch.ones_like(counts, dtype=torch.bool)
    loss_fn = PairwiseLoss(head)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        params = head(hidden)
        loss = loss_fn.batch_loss(params, {"scores": counts, "score_mask": mask})
        first = float(loss) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < first
    summary = head.summary(head(hidden).detach())
    shares = torch.stack(list(summary["levels"].values()), -1)
    torch.testing.assert_close(shares.sum(-1), torch.ones(16))
    torch.testing.assert_close(summary["disagreement"], 1 - shares.max(-1).values)


@pytest.mark.parametrize("kind", ["scalar", "gaussian"])
def test_cut_points_save_and_load_with_the_model(tiny_llama, tmp_path, kind):
    model = build_model(tiny_llama, head=kind, head_options=LEVELS)
    with torch.no_grad():
        model.head.cuts.first.fill_(-0.75)
        model.head.cuts.gaps.fill_(0.3)
    model.save_pretrained(tmp_path / "run")
    loaded = RewardModel.from_pretrained(tmp_path / "run")
    torch.testing.assert_close(loaded.head.cuts(), model.head.cuts())
    assert loaded.head.levels == LEVELS["levels"] and loaded.head.direction == "first_best"
    record = loaded.score([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]])[0]
    assert set(record["levels"]) == set(LEVELS["levels"]) and 0 <= record["disagreement"] <= 2 / 3
    assert sum(record["levels"].values()) == pytest.approx(1.0)


def _vote_rows(n, seed):
    """Responses whose raters say 'unsafe' more often the more times they contain 'bad'."""
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        bad = i % 4
        p_unsafe = 0.1 + 0.25 * bad
        votes = ["unsafe" if float(torch.rand(1, generator=rng)) < p_unsafe else "safe" for _ in range(8)]
        rows.append({"prompt": f"Question {i}", "response": " ".join(["bad"] * bad + ["fine"] * (3 - bad)),
                     "ratings": votes + ["unsure"] * (i % 2)})
    return rows


@pytest.mark.parametrize("target", ["all", "majority"])
def test_discorm_train_on_per_rater_rows(tiny_llama, tmp_path, target):
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    config = {"model_name_or_path": str(tiny_llama), "dataset": write("train.jsonl", _vote_rows(32, 0)),
              "eval_dataset": write("eval.jsonl", _vote_rows(12, 1)), "output_dir": str(tmp_path / "run"),
              "do_train": True, "finetuning_type": "full", "learning_rate": 3e-3, "per_device_train_batch_size": 8,
              "cutoff_len": 64, "save_strategy": "no", "disable_tqdm": True, "seed": 1, "use_cpu": True,
              "max_steps": 4, "head": "scalar", "rating_target": target, **LEVELS}
    results = run_rm(*load_args(config))
    assert results["eval_rated_nll_per_rating"] > 0 and "eval_rated_safe_ece" in results
    model = RewardModel.from_pretrained(tmp_path / "run")
    assert model.head.levels == LEVELS["levels"] and not torch.equal(model.head.cuts(), CutPoints(3)())


def test_the_server_returns_the_level_shares_and_the_disagreement(tiny_llama):
    from fastapi.testclient import TestClient

    from discorm.serve.server import create_app

    model = build_model(tiny_llama, head="categorical", head_options=LEVELS).eval()
    chats = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": text}] for text in ("Hello", "Go")]
    expected = model.score(chats)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        body = client.post("/score", json=chats).json()
    assert body["levels"][1] == pytest.approx(expected[1]["levels"], abs=1e-5)
    assert body["disagreements"] == pytest.approx([r["disagreement"] for r in expected], abs=1e-5)
    assert body["disagreements"][0] == pytest.approx(1 - max(body["levels"][0].values()), abs=1e-6)
