"""Training on rated and mixed data, the learned combination, reward normalisation, and the round trips of a
multi-objective model through save/load, scoring, export and the server."""

import json
import math
import random
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from discorm.config import load_args
from discorm.data.collator import PairwiseDataCollatorWithPadding
from discorm.data.tokenize import Encoder
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from discorm.train.trainer import PairwiseTrainer, split_batch
from discorm.train.workflow import run_rm
from tests.conftest import build_model

WORDS = ["fox", "dog", "moon", "bees", "tea", "chess", "owls", "bread"]


def _rated_rows(n, seed):
    """Attribute `a`: 'yes' answers are good; `b`: long answers are good; `b` is rated on half the rows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good, length = rng.random() < 0.5, rng.randrange(1, 4)
        row = {"prompt": " ".join(rng.sample(WORDS, 2)),
               "response": ("yes " if good else "no ") + " ".join(rng.choice(WORDS) for _ in range(length)),
               "a": 4 if good else 0}
        if rng.random() < 0.5:
            row["b"] = length
        rows.append(row)
    return rows


def _pair_rows(n, seed):
    rng = random.Random(seed)
    return [{"prompt": " ".join(rng.sample(WORDS, 2)), "chosen": "yes " + rng.choice(WORDS),
             "rejected": "no " + rng.choice(WORDS)} for _ in range(n)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model_dir, tmp_path, **extra):
    rated = _write(tmp_path / "rated.jsonl", _rated_rows(48, 0))
    pairs = _write(tmp_path / "pairs.jsonl", _pair_rows(24, 1))
    evaluation = _write(tmp_path / "eval.jsonl", _rated_rows(16, 2) + [])
    return {"model_name_or_path": str(model_dir), "dataset": f"{rated},{pairs}",
            "eval_dataset": f"{evaluation},{_write(tmp_path / 'eval_pairs.jsonl', _pair_rows(12, 3))}",
            "output_dir": str(tmp_path / "run"), "do_train": True, "finetuning_type": "full", "learning_rate": 3e-3,
            "per_device_train_batch_size": 8, "cutoff_len": 64, "logging_steps": 1, "save_strategy": "no",
            "disable_tqdm": True, "seed": 1, "use_cpu": True, "lr_scheduler_type": "constant", "max_steps": 12,
            "head": "multi_objective", "attributes": ["a", "b"], "score_range": {"a": [0, 4], "b": [0, 4]},
            **extra}


def test_mixed_batch_loss_counts_every_example_once(tiny_llama, tmp_path):
    options = {"attributes": ["a", "b"], "output": "gaussian"}
    model = build_model(tiny_llama, head="multi_objective", head_options=options).eval()
    _, _, training_args, ft = load_args({"output_dir": str(tmp_path), "use_cpu": True, "head": "multi_objective",
                                         "rated_loss_weight": 2.0, **options})
    trainer = PairwiseTrainer(model=model, args=training_args, finetuning_args=ft,
                              data_collator=PairwiseDataCollatorWithPadding(0))
    features = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]},
                {"prompt_ids": [10], "response_ids": [11, 12], "scores": [1.0, math.nan]},
                {"prompt_ids": [13, 14], "response_ids": [15], "scores": [0.5, 2.0]}]
    batch = PairwiseDataCollatorWithPadding(0)(features)
    with torch.no_grad():
        params = model(batch["input_ids"], batch["attention_mask"]).head_params
        loss = trainer.compute_loss(model, batch)
    pc, pr, rated = split_batch(params, 2)
    pair = model.head.pair_loss(pc, pr).mean()
    mu, var = rated[:, :2], rated[:, 2:]
    nll = 0.5 * (torch.log(2 * math.pi * var) + (mu - torch.tensor([[1.0, 0.0], [0.5, 2.0]])) ** 2 / var)
    per_row = torch.stack([nll[0, 0], (nll[1, 0] + nll[1, 1]) / 2])
    torch.testing.assert_close(loss, (1 * pair + 2.0 * 2 * per_row.mean()) / 3, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def trained_run(tiny_llama, tmp_path_factory):
    """A Gaussian multi-objective model: stage 1 on ratings, stage 2 weights on pairs, normalised rewards."""
    tmp_path = tmp_path_factory.mktemp("mo")
    config = _config(tiny_llama, tmp_path, output="gaussian", combination="learned", reward_normalization=True)
    results = run_rm(*load_args(config))
    return tmp_path, results


def test_two_stage_training_with_normalisation(trained_run):
    tmp_path, results = trained_run
    stored = json.loads((tmp_path / "run" / "discorm_config.json").read_text())
    assert stored["head"] == "multi_objective" and stored["head_options"]["attributes"] == ["a", "b"]
    weights = stored["head_options"]["attribute_weights"]
    assert weights != [0.5, 0.5] and sum(abs(w) for w in weights) == pytest.approx(1.0)  # fitted, L1-normalised
    assert stored["reward_std"] > 0 and stored["normalized_on"].endswith("(96 responses)")  # 48 rated + 2 x 24
    for key in ("eval_accuracy", "eval_rated_a_rmse", "eval_rated_a_spearman", "eval_rated_b_nll",
                "eval_rated_a_sigma"):
        assert key in results, key
    predictions = tmp_path / "run" / "eval" / "predictions" / "heldout_eval.jsonl"
    lines = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert len(lines) == 16 and set(lines[0]["predicted"]) == {"a", "b"} and "a" in lines[0]["rated"]
    # the trainer logged stage 1 only on rated rows: 48 rows / 8 per step = 6 steps per epoch
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["num_train_epochs"] == 2


def _training_responses(tmp_path):
    rated = [{"prompt": r["prompt"], "response": r["response"]} for r in _rated_rows(48, 0)]
    pairs = _pair_rows(24, 1)
    return rated + [{"prompt": p["prompt"], "response": p[k]} for p in pairs for k in ("chosen", "rejected")]


def test_normalised_rewards_on_the_reference_set_are_standard(trained_run):
    tmp_path, _ = trained_run
    model = RewardModel.from_pretrained(tmp_path / "run").eval()
    rewards = torch.tensor([r["reward"] for r in model.score(_training_responses(tmp_path))], dtype=torch.float64)
    assert abs(float(rewards.mean())) < 1e-4 and float(rewards.std(correction=0)) == pytest.approx(1.0, abs=1e-4)
    # risk-aware modes apply to the normalised distribution
    records = model.score(_training_responses(tmp_path)[:3], reward_mode="lower_quantile", reward_alpha=0.1)
    plain = model.score(_training_responses(tmp_path)[:3])
    for risk, mean in zip(records, plain):
        assert risk["reward"] == pytest.approx(mean["mean"] - 1.2815516 * mean["sigma"], abs=1e-4)
        assert mean["reward"] == pytest.approx(mean["mean"], abs=1e-6)


def test_save_load_export_round_trips_keep_attributes_and_constants(trained_run, tmp_path):
    run, _ = trained_run
    model = RewardModel.from_pretrained(run / "run").eval()
    items = _training_responses(run)[:5]
    records = model.score(items)
    assert set(records[0]["attributes"]) == {"a", "b"} and set(records[0]["attribute_sigmas"]) == {"a", "b"}
    model.save_pretrained(tmp_path / "again")
    again = RewardModel.from_pretrained(tmp_path / "again").eval()
    assert again.rm_config == model.rm_config and again.score(items) == records

    export_sequence_classification(str(run / "run"), str(tmp_path / "export"), num_labels=3, multi_label=True)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["discorm_attributes"] == ["a", "b"] and config["id2label"]["1"] == "a"
    assert config["discorm_labels"] == ["reward", "a", "b"]
    norm = config["discorm_reward_normalization"]
    assert norm["mean"] == pytest.approx(model.rm_config.reward_mean) and norm["std"] == model.rm_config.reward_std
    assert config["std"] == 1.0 and config["mean"] == config["discorm_reward_shift"]  # OpenRLHF's keys
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    encoder = Encoder.for_model(model)
    for item, record in zip(items, records):
        with torch.no_grad():
            logits = classifier(input_ids=torch.tensor([encoder.encode_item(item)])).logits[0]
        assert float(logits[0]) - config["discorm_reward_shift"] == pytest.approx(record["reward"], abs=1e-4)
        for index, name in enumerate(["a", "b"]):
            value = float(logits[1 + index]) + config["discorm_attribute_bias"][index]
            assert value == pytest.approx(record["attributes"][name], abs=1e-4)
    assert (tmp_path / "export" / "discorm_head.safetensors").is_file()


def test_server_reports_attributes_and_normalised_rewards(trained_run):
    from fastapi.testclient import TestClient

    from discorm.serve.server import create_app

    run, _ = trained_run
    model = RewardModel.from_pretrained(run / "run").eval()
    items = _training_responses(run)[:3]
    expected = model.score(items)
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        body = client.post("/score", json=items).json()
    assert body["rewards"] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
    assert body["attributes"][1]["a"] == pytest.approx(expected[1]["attributes"]["a"], abs=1e-5)
    assert len(body["attribute_sigmas"]) == 3 and len(body["sigmas"]) == 3


def test_regression_on_mixed_data_with_fixed_combination_and_eval_cli(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    rows = [{"prompt": r["prompt"], "response": r["response"], "score": r["a"]} for r in _rated_rows(40, 4)]
    data = _write(tmp_path / "points.jsonl", rows)
    config = {**_config(tiny_llama, tmp_path, head="regression", score_range=[0, 4], max_steps=6),
              "dataset": f"{data},{tmp_path / 'pairs.jsonl'}", "eval_dataset": str(data)}
    config.pop("attributes")
    results = run_rm(*load_args(config))
    assert "eval_rated_score_spearman" in results and "eval_accuracy" not in results
    model = RewardModel.from_pretrained(tmp_path / "run")
    assert model.head.kind == "regression" and model.rm_config.normalized_on is None
    spec = tmp_path / "eval.yaml"
    spec.write_text(f"model_name_or_path: {tmp_path / 'run'}\ndataset: {data}\noutput_dir: {tmp_path / 'ev'}\n"
                    "use_cpu: true\n")
    assert main(["eval", str(spec)]) == 0
    assert re.search(r"points: 40 rated responses  score rmse \d\.\d{4} spearman -?\d\.\d{4}", capsys.readouterr().out)
    evaluated = json.loads((tmp_path / "ev" / "eval-points" / "eval_results.json").read_text())
    assert evaluated["sets"] == {} and evaluated["rated_sets"]["points"]["rated"] == {"score": 40}
    for metric in ("rmse", "pearson", "spearman"):  # the eval suite's numbers are training's held-out numbers
        assert evaluated["rated_sets"]["points"]["attributes"]["score"][metric] == pytest.approx(
            results[f"eval_rated_score_{metric}"], abs=1e-4)
    predictions = (tmp_path / "ev" / "eval-points" / "predictions" / "points.jsonl").read_text().splitlines()
    assert len(predictions) == 40 and set(json.loads(predictions[0])) >= {"reward", "predicted", "rated"}
    assert 'id="rated"' in (tmp_path / "ev" / "eval-points" / "report.html").read_text()


def test_version_2_run_directory_loads_without_normalisation(tiny_llama, tmp_path):
    model = build_model(tiny_llama, head="gaussian").eval()
    model.save_pretrained(tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "discorm_config.json").read_text())
    for key in ("reward_mean", "reward_std", "normalized_on"):
        stored.pop(key)
    stored["version"] = 2
    (tmp_path / "run" / "discorm_config.json").write_text(json.dumps(stored))
    loaded = RewardModel.from_pretrained(tmp_path / "run").eval()
    assert loaded.rm_config.reward_std == 1.0 and loaded.rm_config.normalized_on is None
    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    assert loaded.score(chats) == model.score(chats)


def test_mixed_batches_name_the_source_of_every_example(tiny_llama, tmp_path):
    from discorm.data.collator import PackedPairCollator
    from discorm.model.heads import HEADS
    from discorm.train.workflow import tokenize

    config = _config(tiny_llama, tmp_path)
    _, data_args, _, ft = load_args(config)
    tokenizer = build_model(tiny_llama).tokenizer
    attributes = HEADS[ft.head].attributes_from(ft.head_options)
    dataset, _ = tokenize(data_args.dataset, data_args, tokenizer, attributes=attributes)
    rated_first, pair_first = dataset[0], dataset[len(dataset) - 1]
    assert rated_first["source"] == f"{tmp_path / 'rated.jsonl'}:1"
    assert pair_first["source"] == f"{tmp_path / 'pairs.jsonl'}:24"
    for collator in (PairwiseDataCollatorWithPadding(0), PackedPairCollator()):
        batch = collator([rated_first, pair_first])  # pairs first in the batch, then rated responses
        assert batch["sources"] == [pair_first["source"], rated_first["source"]]


def test_periodic_evaluation_on_a_mixed_set_reports_pairs_and_ratings(tiny_llama, tmp_path):
    config = _config(tiny_llama, tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2)
    results = run_rm(*load_args(config))
    logged = [entry for entry in json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
              if any(key.startswith("eval_") for key in entry)]
    assert [e["step"] for e in logged if "eval_pairs_accuracy" in e] == [2, 4]
    assert [e["step"] for e in logged if "eval_rated_a_spearman" in e] == [2, 4]
    assert "eval_accuracy" in results and "eval_rated_a_rmse" in results


@pytest.mark.parametrize("kind", ["rated", "pairs"])
def test_learned_combination_needs_rated_rows_and_pairs_before_training(tiny_llama, tmp_path, kind):
    from discorm.errors import ConfigError

    config = _config(tiny_llama, tmp_path, combination="learned")
    config["dataset"] = str(tmp_path / f"{kind}.jsonl")
    missing = "pairs" if kind == "rated" else "rated rows"
    with pytest.raises(ConfigError, match=f"has no {missing}; add a"):
        run_rm(*load_args(config))
    assert not (tmp_path / "run" / "trainer_state.json").exists()  # stopped before training
