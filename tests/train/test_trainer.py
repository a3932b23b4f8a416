import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.uncertainty import auroc, r_squared
from discorm.config import load_args
from discorm.data.collator import PairwiseDataCollatorWithPadding
from discorm.metrics import accuracy, expected_calibration_error, fit_temperature
from discorm.model.reward_model import RewardModel
from discorm.train.trainer import PairwiseTrainer
from discorm.train.workflow import run_rm
from tests.conftest import build_model

FEATURES = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10], "margin": 0.5, "soft_label": 0.8},
    {"prompt_ids": [11], "chosen_ids": [12, 13, 14], "rejected_ids": [15, 16], "margin": 1.5, "soft_label": 1.0},
]


def _trainer(model, tmp_path, **ft):
    _, _, training_args, finetuning_args = load_args({"output_dir": str(tmp_path), "use_cpu": True, **ft})
    return PairwiseTrainer(model=model, args=training_args, finetuning_args=finetuning_args,
                           data_collator=PairwiseDataCollatorWithPadding(0))


def _scores(model, features):
    batch = PairwiseDataCollatorWithPadding(0)(features)
    with torch.no_grad():
        scores = model(batch["input_ids"], batch["attention_mask"]).scores
    return scores[: len(features)], scores[len(features) :], batch


@pytest.mark.parametrize("variant", ["plain", "margin", "center", "soft"])
def test_loss_matches_hand_computation(tiny_llama, tmp_path, variant):
    model = build_model(tiny_llama).eval()
    c, r, batch = _scores(model, FEATURES)
    options = {"center_rewards_coefficient": 0.01} if variant == "center" else {}
    trainer = _trainer(model, tmp_path, **options)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if variant == "plain" or variant == "center":
        expected = -F.logsigmoid(c - r).mean()
        if variant == "center":
            expected = expected + 0.01 * ((c + r) ** 2).mean()
    elif variant == "margin":
        inputs["margin"] = batch["margin"]
        expected = -F.logsigmoid(c - r - batch["margin"]).mean()
    else:
        inputs["soft_label"] = batch["soft_label"]
        y = batch["soft_label"]
        expected = -(y * F.logsigmoid(c - r) + (1 - y) * F.logsigmoid(r - c)).mean()
    with torch.no_grad():
        loss = trainer.compute_loss(model, inputs)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)


def test_head_learning_rate_gives_the_head_its_own_groups(tiny_llama, tmp_path):
    model = build_model(tiny_llama, "freeze", head="gaussian", freeze_trainable_layers=1)
    trainer = _trainer(model, tmp_path, head="gaussian", learning_rate=1e-3, head_learning_rate=0.5,
                       weight_decay=0.1, optim="sgd", lr_scheduler_type="linear")
    optimizer = trainer.create_optimizer()
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(groups) == len(trainable)
    for name, p in trainable.items():
        assert groups[id(p)]["lr"] == (0.5 if name.startswith("head.") else 1e-3), name
    assert groups[id(model.head.variance.weight)]["weight_decay"] == 0.1  # the Trainer's decay split stays
    assert groups[id(model.head.variance.bias)]["weight_decay"] == 0.0
    batch = PairwiseDataCollatorWithPadding(0)(FEATURES)
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    trainer.compute_loss(model, batch).backward()
    before = {name: (p.detach().clone(), p.grad.clone()) for name, p in trainable.items()}
    optimizer.step()
    for name in ("head.variance.bias", "head.value.weight", "backbone.layers.1.mlp.down_proj.weight"):
        weight, grad = before[name]
        group = groups[id(trainable[name])]
        expected = weight - group["lr"] * (grad + group["weight_decay"] * weight)
        torch.testing.assert_close(trainable[name].detach(), expected, atol=1e-7, rtol=1e-5, msg=name)
    scheduler = trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    optimizer.step()
    scheduler.step()
    rates = sorted({group["lr"] for group in optimizer.param_groups})
    assert len(rates) == 2 and rates[1] / rates[0] == pytest.approx(500) and rates[1] < 0.5
    own = torch.optim.SGD(model.parameters(), lr=0.1)  # an optimizer handed in is left alone
    trainer = PairwiseTrainer(model=model, args=trainer.args, optimizers=(own, None),
                              finetuning_args=load_args({"head": "gaussian", "head_learning_rate": 0.5})[3])
    assert trainer.create_optimizer() is own and len(own.param_groups) == 1


def test_metric_functions():
    assert accuracy(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, -1.0])) == pytest.approx(0.625)
    prob, y = np.array([0.9, 0.6, 0.2]), np.ones(3)
    # symmetrised set: confidences {0.9,0.6,0.2,0.1,0.4,0.8} with outcomes {1,1,1,0,0,0}, each its own bin
    expected = np.mean([0.1, 0.4, 0.8, 0.1, 0.4, 0.8])
    assert expected_calibration_error(prob, y) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    diff = rng.normal(0, 3, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-diff / 2.5))).astype(float)
    assert fit_temperature(diff, labels) == pytest.approx(2.5, rel=0.15)


def test_auroc_and_r_squared_by_hand():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 beats both -> 3 of 4
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert auroc(np.array([1.0, 1.0, 2.0]), np.array([1, 0, 0])) == pytest.approx(0.25)  # a tie counts half
    assert np.isnan(auroc(np.array([1.0, 2.0]), np.array([1, 1])))
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=300), rng.random(300) < 0.3
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in scores[labels] for n in scores[~labels]])
    assert auroc(scores, labels) == pytest.approx(brute)
    # means 0, 1, 2, 3: population variance 1.25; mean predicted variance (1 + 1 + 3 + 3) / 4 = 2
    assert r_squared(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 3.0, 3.0])) == pytest.approx(1.25 / 3.25)
    assert r_squared(np.array([1.0, 3.0]), np.zeros(2)) == 1.0  # no predicted spread: the means explain all
    assert np.isnan(r_squared(np.full(3, 0.5), np.zeros(3)))  # one point reward for all: nothing to explain


def _synthetic_file(path, n=64, seed=0):
    """An easy task: the preferred answer says 'yes', the other 'no'."""
    rng = random.Random(seed)
    words = ["fox", "dog", "moon", "bees", "tea", "chess", "owls", "bread"]
    rows = [{"prompt": " ".join(rng.sample(words, 3)), "chosen": "yes " + rng.choice(words),
             "rejected": "no " + rng.choice(words)} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model_dir, data, out, **extra):
    return {"model_name_or_path": str(model_dir), "dataset": str(data), "output_dir": str(out), "do_train": True,
            "finetuning_type": "full", "learning_rate": 3e-3, "per_device_train_batch_size": 4, "cutoff_len": 64,
            "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True, "seed": 1, "use_cpu": True,
            "lr_scheduler_type": "constant", **extra}


def test_training_learns_an_easy_task(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "easy.jsonl")
    results = run_rm(*load_args(_config(tiny_llama, data, tmp_path / "out", max_steps=30, eval_dataset=str(data))))
    assert results["eval_accuracy"] >= 0.9
    log = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "accuracy", "elapsed", "remaining"} <= set(log[0])
    for name in ("training_loss.png", "eval_accuracy.png", "eval/calibration.png", "eval/eval_results.json"):
        assert (tmp_path / "out" / name).is_file(), name


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_resume_from_checkpoint_matches_uninterrupted_run(tiny_llama, tmp_path, finetuning_type):
    data = _synthetic_file(tmp_path / "easy.jsonl")
    common = dict(max_steps=12, save_strategy="steps", save_steps=6, finetuning_type=finetuning_type,
                  lr_scheduler_type="linear", lora_rank=4)
    run_rm(*load_args(_config(tiny_llama, data, tmp_path / "a", **common)))
    run_rm(*load_args(_config(tiny_llama, data, tmp_path / "b", **common,
                              resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-6"))))

    def last_loss(run):
        history = json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h and h["step"] == 12][0]

    assert abs(last_loss("a") - last_loss("b")) < 1e-5
    a = RewardModel.from_pretrained(tmp_path / "a").eval()
    b = RewardModel.from_pretrained(tmp_path / "b").eval()
    ca, _, _ = _scores(a, FEATURES)
    cb, _, _ = _scores(b, FEATURES)
    torch.testing.assert_close(ca, cb, atol=1e-5, rtol=0)
    # every checkpoint is a loadable run directory
    RewardModel.from_pretrained(tmp_path / "a" / "checkpoint-6")


def test_predictions_match_model_scores(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "easy.jsonl", n=24)
    evaluation = _synthetic_file(tmp_path / "eval.jsonl", n=10, seed=3)
    run_rm(*load_args(_config(tiny_llama, data, tmp_path / "out", max_steps=4, eval_dataset=str(evaluation))))
    model = RewardModel.from_pretrained(tmp_path / "out").eval()
    lines = [json.loads(x) for x in (tmp_path / "out" / "eval" / "predictions" / "heldout.jsonl").read_text(
    ).splitlines()]
    assert len(lines) == 10 and [x["index"] for x in lines] == list(range(10))
    from discorm.config import DataArguments
    from tests.conftest import build_datasets

    _, eval_set, _ = build_datasets(DataArguments(dataset=str(data), eval_dataset=str(evaluation), cutoff_len=64),
                                    model.tokenizer)
    chosen, rejected, _ = _scores(model, list(eval_set))
    assert np.allclose([x["chosen_score"] for x in lines], chosen.numpy(), atol=1e-5)
    assert np.allclose([x["rejected_score"] for x in lines], rejected.numpy(), atol=1e-5)
    assert [x["correct"] for x in lines] == (chosen > rejected).tolist()
    # evaluating the run directory again gives the same accuracy
    from discorm.eval.runner import EvalOptions, run_evaluation

    results = run_evaluation(str(tmp_path / "out"), {"again": str(evaluation)}, tmp_path / "eval",
                             EvalOptions(show_progress=False, resamples=200), report=False)
    assert results["sets"]["again"]["accuracy"] == pytest.approx(np.mean([x["correct"] for x in lines]))


def test_cli_errors_are_one_paragraph(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {tiny_llama}\nlearning_rat: 1e-4\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'learning_rate'" in err and "Traceback" not in err and err.count("\n") == 1
    config.write_text(f"model_name_or_path: {tiny_llama}\ndataset: {tmp_path}/missing.jsonl\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err and "not found" in err and "Traceback" not in err


def test_distributional_metrics_report_sigma_and_its_noise_correlation():
    from discorm.metrics import pairwise_metrics
    from discorm.model.heads import GaussianHead

    head = GaussianHead(4)
    noise = np.linspace(0.1, 3.0, 50)
    pc = torch.stack([torch.ones(50), torch.as_tensor(noise, dtype=torch.float) ** 2], 1)
    pr = torch.stack([torch.zeros(50), torch.full((50,), 0.01)], 1)
    metrics = pairwise_metrics(head, pc, pr, noise=noise)
    assert metrics["sigma_noise_corr"] > 0.95 and metrics["mean_sigma"] > 0
    assert metrics["accuracy"] == 1.0 and 0 < metrics["ece"] < 1
    # the scalar head reports no spread
    from discorm.model.heads import ScalarHead

    assert "mean_sigma" not in pairwise_metrics(ScalarHead(4), pc[:, :1], pr[:, :1])


def test_noise_column_reaches_evaluation(tiny_llama, tmp_path):
    rows = [{"prompt": "q", "chosen": f"yes {i}", "rejected": f"no {i}", "noise": float(i % 5)} for i in range(16)]
    data = tmp_path / "noisy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = run_rm(*load_args(_config(tiny_llama, data, tmp_path / "out", max_steps=2, head="gaussian",
                                        eval_dataset=str(data))))
    assert "eval_sigma_noise_corr" in results and "eval_mean_sigma" in results


def test_temperature_scaling_and_cli_eval(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    data = _synthetic_file(tmp_path / "easy.jsonl", n=32)
    results = run_rm(*load_args(_config(tiny_llama, data, tmp_path / "out", max_steps=6, eval_dataset=str(data),
                                        temperature_scaling=True)))
    info = json.loads((tmp_path / "out" / "discorm_config.json").read_text())
    assert info["temperature"] > 0 and results["eval_temperature"] == pytest.approx(info["temperature"])
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {tmp_path / 'out'}\ndataset: {data}\noutput_dir: {tmp_path / 'ev'}\n"
                      "use_cpu: true\n")
    assert main(["eval", str(config)]) == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "ece:" in out
