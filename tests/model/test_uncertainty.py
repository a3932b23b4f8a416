"""Epistemic uncertainty: the Laplace posterior, bootstrap ensembles, the reward modes that read them, and runs
that carry them through saving, loading, scoring, serving and export."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from discorm.config import load_args
from discorm.data.tokenize import Encoder
from discorm.errors import ConfigError, ModelError
from discorm.model.heads import CategoricalHead, EnsembleHead, GaussianHead, LaplaceHead, ScalarHead, build_head
from discorm.model.heads.uncertainty import bootstrap_weights, laplace_posterior, mean_readout, with_uncertainty
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import check_reward_options
from discorm.train.loss import PairwiseLoss
from discorm.train.workflow import run_rm


def _logistic_problem(pairs=40, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    phi_c = torch.randn(pairs, dim, generator=generator, dtype=torch.float64)
    phi_r = torch.randn(pairs, dim, generator=generator, dtype=torch.float64)
    return phi_c, phi_r


def test_laplace_posterior_equals_the_inverse_hessian_of_the_log_posterior():
    """Tiny Bradley-Terry logistic problem: the MAP by LBFGS, the Hessian of -log posterior by autograd."""
    phi_c, phi_r = _logistic_problem()
    lam = 0.7

    def objective(w):
        return -F.logsigmoid((phi_c - phi_r) @ w).sum() + 0.5 * lam * w.square().sum()

    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        optimizer.zero_grad()
        loss = objective(w)
        loss.backward()
        return loss

    optimizer.step(closure)
    w_map = w.detach()
    brute = torch.linalg.inv(torch.autograd.functional.hessian(objective, w_map))
    prob = torch.sigmoid((phi_c - phi_r) @ w_map)
    covariance, chosen = laplace_posterior(phi_c, phi_r, prob, w_map, prior_precision=lam)
    assert chosen == lam
    torch.testing.assert_close(covariance.double(), brute, atol=1e-5, rtol=0)
    probe = torch.randn(6, 4, dtype=torch.float64)
    head = LaplaceHead(ScalarHead(4), 4)
    head.set_posterior(covariance, chosen)
    sigma = head.epistemic_std(head(probe.float()))
    torch.testing.assert_close(sigma.double(), torch.einsum("nh,hk,nk->n", probe, brute, probe).sqrt(),
                               atol=1e-5, rtol=0)


def test_prior_precision_maximises_the_marginal_likelihood():
    phi_c, phi_r = _logistic_problem(pairs=60, dim=5, seed=1)
    w = torch.tensor([1.0, -0.5, 0.3, 0.0, 2.0], dtype=torch.float64)
    prob = torch.sigmoid((phi_c - phi_r) @ w)
    _, lam = laplace_posterior(phi_c, phi_r, prob, w)
    z = phi_c - phi_r
    data_term = (z * (prob * (1 - prob))[:, None]).T @ z

    def log_evidence(value):  # the terms of the Laplace evidence that depend on the prior precision
        return (-0.5 * value * float(w.square().sum()) + 2.5 * math.log(value)
                - 0.5 * float(torch.logdet(data_term + value * torch.eye(5, dtype=torch.float64))))

    assert all(log_evidence(lam) > log_evidence(lam * factor) for factor in (0.5, 0.9, 1.1, 2.0))


def test_mean_readout_recovers_a_linear_head():
    head = GaussianHead(6)
    phi = torch.randn(50, 6)
    torch.testing.assert_close(mean_readout(head, phi).float(), head.value.weight[0].detach(), atol=1e-5, rtol=0)


def test_bootstrap_weights_are_a_fixed_poisson_resample():
    keys = [f"data.jsonl:{i}" for i in range(4000)]
    weights = bootstrap_weights(keys, 3)
    assert weights.shape == (4000, 3)
    assert torch.equal(weights, bootstrap_weights(keys, 3))  # the same pair weighs the same every epoch
    assert torch.equal(weights[:10], bootstrap_weights(keys[:10], 3))
    assert float(weights.mean()) == pytest.approx(1.0, abs=0.05)
    assert float((weights == 0).float().mean()) == pytest.approx(math.exp(-1), abs=0.03)
    assert not torch.equal(weights[:, 0], weights[:, 1])  # members resample differently


def _train(head, phi_c, phi_r, keys, steps=30):
    loss_fn = PairwiseLoss(head)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(head(phi_c), head(phi_r), keys=keys).backward()
        optimizer.step()


def test_ensemble_members_differ_under_bootstrap_and_one_member_is_the_single_head():
    phi_c, phi_r = (x.float() for x in _logistic_problem(pairs=32, dim=6, seed=2))
    keys = [f"pairs.jsonl:{i}" for i in range(32)]
    torch.manual_seed(0)
    single = ScalarHead(6)
    torch.manual_seed(0)
    one = with_uncertainty(lambda: ScalarHead(6), 6, "ensemble", 1, bootstrap=False)
    torch.testing.assert_close(one.members[0].value.weight, single.value.weight)
    _train(single, phi_c, phi_r, keys)
    _train(one, phi_c, phi_r, keys)
    torch.testing.assert_close(one.members[0].value.weight, single.value.weight, atol=1e-6, rtol=0)
    probe = torch.randn(5, 6)
    torch.testing.assert_close(one.mean(one(probe)), single.mean(single(probe)), atol=1e-6, rtol=0)
    assert torch.equal(one.epistemic_std(one(probe)), torch.zeros(5))

    torch.manual_seed(0)
    same_start = EnsembleHead([ScalarHead(6) for _ in range(3)], bootstrap=True)
    weight = same_start.members[0].value.weight.detach().clone()
    for member in same_start.members:  # the same start: only the bootstrap can make them differ
        member.value.weight.data.copy_(weight)
    _train(same_start, phi_c, phi_r, keys)
    weights = torch.stack([m.value.weight[0].detach() for m in same_start.members])
    assert float((weights[0] - weights[1]).abs().max()) > 1e-2 and float((weights[1] - weights[2]).abs().max()) > 1e-2
    params = same_start(probe)
    means = torch.stack([m.mean(p) for m, p in zip(same_start.members, same_start.split(params))], -1)
    torch.testing.assert_close(same_start.epistemic_std(params), means.std(-1, correction=0))
    torch.testing.assert_close(same_start.mean(params), means.mean(-1))


def test_ensemble_weighs_every_member_alike_by_per_pair_weights_without_a_bootstrap():
    """Per-pair weights (M,) with no bootstrap columns (no `sources` in the batch, `scaled_bt` strengths or
    `list_weighting: list`): each member's loss is weighted by them, as a single head's would be."""
    torch.manual_seed(0)
    ensemble = EnsembleHead([ScalarHead(4) for _ in range(3)], bootstrap=False)
    pc, pr = ensemble(torch.randn(5, 4)), ensemble(torch.randn(5, 4))
    outcomes = torch.tensor([[1.0, 0, 0]] * 5)
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25])
    expected = torch.stack([m.outcome_loss(a, b, outcomes, None, weights) for m, a, b in
                            zip(ensemble.members, ensemble.split(pc), ensemble.split(pr))]).mean(0)
    torch.testing.assert_close(ensemble.outcome_loss(pc, pr, outcomes, None, weights), expected)


def test_every_reward_mode_by_hand():
    torch.manual_seed(3)
    gauss = EnsembleHead([GaussianHead(4) for _ in range(3)])
    params = gauss(torch.randn(5, 4))
    mu = torch.stack([params[:, 2 * k] for k in range(3)], -1)  # (N, K) member means
    var = torch.stack([params[:, 2 * k + 1] for k in range(3)], -1)
    mean, ep2, al2 = mu.mean(-1), mu.var(-1, correction=0), var.mean(-1)
    total = (ep2 + al2).sqrt()
    torch.testing.assert_close(gauss.reward(params, "mean"), mean)
    torch.testing.assert_close(gauss.reward(params, "lcb", k=2.0), mean - 2.0 * ep2.sqrt())
    torch.testing.assert_close(gauss.reward(params, "uwo", k=0.5), mean - 0.5 * ep2)
    torch.testing.assert_close(gauss.reward(params, "min"), mu.min(-1).values)
    torch.testing.assert_close(gauss.reward(params, "mean_minus_std", k=1.5), mean - 1.5 * total)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.05)))
    torch.testing.assert_close(gauss.reward(params, "lower_quantile", alpha=0.05), mean + z * total)
    assert set(gauss.summary(params)) == {"mean", "sigma", "sigma_aleatoric", "sigma_epistemic"}
    torch.testing.assert_close(gauss.summary(params)["sigma_aleatoric"], al2.sqrt())

    laplace = LaplaceHead(ScalarHead(4), 4)
    laplace.set_posterior(torch.eye(4) * 0.25, 4.0)
    hidden = torch.randn(5, 4)
    params = laplace(hidden)
    sigma = 0.5 * hidden.norm(dim=-1)
    r = hidden @ laplace.member.value.weight[0].detach()
    torch.testing.assert_close(laplace.reward(params, "lcb", k=1.0), r - sigma)
    torch.testing.assert_close(laplace.reward(params, "uwo", k=3.0), r - 3.0 * sigma.square())
    torch.testing.assert_close(laplace.reward(params, "mean_minus_std", k=1.0), r - sigma)  # scalar: all epistemic
    with pytest.raises(NotImplementedError):
        laplace.reward(params, "min")


def test_categorical_entropy_regulariser_is_dpl_s_batch_averaged_form():
    """DPL: 0.1 * sum(p_bar log p_bar) over the atom distribution averaged over the batch (both responses)."""
    torch.manual_seed(4)
    head = CategoricalHead(6, num_atoms=7)
    pc, pr = head(torch.randn(8, 6)), head(torch.randn(8, 6))
    p_bar = torch.cat([pc.softmax(-1), pr.softmax(-1)]).mean(0)
    torch.testing.assert_close(head.regulariser(pc, pr, entropy_coef=0.1), 0.1 * (p_bar * p_bar.log()).sum())


def test_bad_uncertainty_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="ensemble_size=0"):
        load_args({"uncertainty": "ensemble", "ensemble_size": 0, "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="uncertainty='bayes'"):
        load_args({"uncertainty": "bayes", "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="reward_mode='lcb' needs epistemic uncertainty"):
        load_args({"reward_mode": "lcb", "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="reward_mode=min is the worst member of an ensemble"):
        load_args({"uncertainty": "laplace", "reward_mode": "min", "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="temperature_scaling fits one temperature"):
        load_args({"uncertainty": "ensemble", "temperature_scaling": True, "output_dir": str(tmp_path)})
    load_args({"uncertainty": "laplace", "reward_mode": "lcb", "output_dir": str(tmp_path)})  # fine
    load_args({"uncertainty": "ensemble", "reward_mode": "min", "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="--reward-mode='uwo' needs epistemic"):
        check_reward_options("uwo", head=build_head("gaussian", 4), flags=True)
    with pytest.raises(ModelError, match="one scalar head, not an ensemble"):
        with_uncertainty(lambda: ScalarHead(4), 4, "ensemble", 2).load_head_state(
            ScalarHead(4).state_dict(), "scalar", "run")


def _pairs(path, n=24):
    rows = [{"prompt": f"question {i % 6}", "chosen": f"a good answer {i % 5}", "rejected": f"bad {i % 3}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_run(tiny_llama, tmp_path, name, **config):
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": str(_pairs(tmp_path / "pairs.jsonl")),
                      "output_dir": str(tmp_path / name), "max_steps": 3, "finetuning_type": "full",
                      "per_device_train_batch_size": 4, "learning_rate": 1e-3, "use_cpu": True,
                      "save_strategy": "no", "report_to": "none", "disable_tqdm": True, **config})
    run_rm(*args)
    return tmp_path / name


CHATS = [[{"role": "user", "content": "question 1"}, {"role": "assistant", "content": "a good answer 1"}],
         [{"role": "user", "content": "something new"}, {"role": "assistant", "content": "zebra " * 5}]]


@pytest.mark.parametrize("config", [{"uncertainty": "laplace"}, {"uncertainty": "ensemble", "ensemble_size": 3},
                                    {"uncertainty": "laplace", "head": "gaussian"},
                                    {"uncertainty": "ensemble", "ensemble_size": 2, "head": "categorical"}],
                         ids=["laplace", "ensemble", "laplace-gaussian", "ensemble-categorical"])
def test_runs_with_uncertainty_reload_and_score_identically(tiny_llama, tmp_path, config):
    run = _train_run(tiny_llama, tmp_path, "run", **config)
    model = RewardModel.from_pretrained(run)
    stored = json.loads((run / "discorm_config.json").read_text())
    assert stored["uncertainty"] == config["uncertainty"] and model.head.uncertainty == config["uncertainty"]
    first = model.score(CHATS, reward_mode="lcb", reward_k=2.0)
    assert all(r["sigma_epistemic"] > 0 for r in first)
    assert first[0]["reward"] == pytest.approx(first[0]["mean"] - 2.0 * first[0]["sigma_epistemic"], abs=1e-5)
    for r in first:
        assert r["sigma"] ** 2 == pytest.approx(r["sigma_aleatoric"] ** 2 + r["sigma_epistemic"] ** 2, rel=1e-4)
    model.save_pretrained(tmp_path / "resaved")
    assert RewardModel.from_pretrained(tmp_path / "resaved").score(CHATS, reward_mode="lcb", reward_k=2.0) == first
    results = json.loads((run / "eval" / "eval_results.json").read_text()) if (run / "eval").is_dir() else None
    assert results is None  # no held-out set in this config


def test_laplace_prior_is_stored_and_uncertainty_is_reported_by_eval_and_score(tiny_llama, tmp_path):
    from discorm.cli import main

    run = _train_run(tiny_llama, tmp_path, "run", uncertainty="laplace", eval_dataset=str(tmp_path / "pairs.jsonl"))
    head = RewardModel.from_pretrained(run).head
    assert head.fitted and float(head.prior_precision) > 0
    results = json.loads((run / "eval" / "eval_results.json").read_text())["sets"]["heldout"]
    assert results["mean_sigma_epistemic"] > 0 and results["mean_sigma_aleatoric"] == 0.0
    assert "mean σ epistemic" in (run / "eval" / "report.html").read_text()
    prediction = json.loads((run / "eval" / "predictions" / "heldout.jsonl").read_text().splitlines()[0])
    assert len(prediction["sigmas_epistemic"]) == 2
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "question 1", "response": "a good answer"}) + "\n")
    assert main(["score", str(run), "--input", str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "s.jsonl"),
                 "--reward-mode", "uwo", "--reward-k", "1.0"]) == 0
    scored = json.loads((tmp_path / "s.jsonl").read_text())
    assert scored["reward"] == pytest.approx(scored["mean"] - scored["sigma_epistemic"] ** 2, abs=1e-5)


def test_laplace_without_training_pairs_stops_naming_the_key(tiny_llama, tmp_path):
    rows = [{"prompt": f"q {i}", "response": f"a {i}", "score": float(i % 4)} for i in range(8)]
    (tmp_path / "rated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": str(tmp_path / "rated.jsonl"),
                      "head": "regression", "uncertainty": "laplace", "output_dir": str(tmp_path / "o"),
                      "max_steps": 1, "finetuning_type": "full", "use_cpu": True, "save_strategy": "no",
                      "report_to": "none", "disable_tqdm": True})
    with pytest.raises(ConfigError, match="uncertainty: laplace fits its posterior on the training pairs"):
        run_rm(*args)


def test_server_reports_spreads_in_extra_logs(tiny_llama, tmp_path):
    from fastapi.testclient import TestClient

    from discorm.serve.server import create_app

    run = _train_run(tiny_llama, tmp_path, "run", uncertainty="ensemble", ensemble_size=3)
    model = RewardModel.from_pretrained(run)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        texts = [model.tokenizer.apply_chat_template(chat, tokenize=False) for chat in CHATS]
        answer = client.post("/get_reward", json={"query": texts, "reward_mode": "min"}).json()
        assert set(answer["extra_logs"]) == {"mean", "sigma", "sigma_aleatoric", "sigma_epistemic", "quantile_0.1"}
        scored = client.post("/score", json={"inputs": CHATS}).json()
    as_texts, expected = model.score(texts, reward_mode="min"), model.score(CHATS)
    assert answer["rewards"] == pytest.approx([r["reward"] for r in as_texts], abs=1e-5)
    assert answer["extra_logs"]["sigma_epistemic"] == pytest.approx([r["sigma_epistemic"] for r in as_texts], abs=1e-5)
    assert scored["sigmas_epistemic"] == pytest.approx([r["sigma_epistemic"] for r in expected], abs=1e-5)


def test_ensemble_export_gives_the_mean_reward(tiny_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from discorm.cli import main

    run = _train_run(tiny_llama, tmp_path, "run", uncertainty="ensemble", ensemble_size=3)
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported").eval()
    model = RewardModel.from_pretrained(run)
    ids = torch.tensor([Encoder.for_model(model).encode_item(chat) for chat in CHATS[:1]])
    with torch.no_grad():
        logit = float(exported(input_ids=ids).logits[0, 0])
    assert logit == pytest.approx(model.score(CHATS[:1])[0]["mean"], abs=1e-4)
