"""Temperature scaling is fitted on calibration pairs, never on the reported ones, and the calibrated
probabilities are what predictions.jsonl, the reliability diagram and `discorm eval` report."""

import json
import math

import numpy as np
import pytest

import discorm.train.workflow as workflow
from discorm.config import load_args
from discorm.errors import ConfigError
from discorm.train.workflow import run_rm
from tests.train.test_trainer import _config, _synthetic_file


def _pairs(dataset) -> set:
    return {(tuple(e["prompt_ids"]), tuple(e["chosen_ids"]), tuple(e["rejected_ids"])) for e in dataset}


@pytest.fixture
def spies(monkeypatch):
    seen = {}
    fit_temperature, fit, bins = workflow._fit_temperature, workflow.fit_temperature, workflow.reliability_bins

    def spy_fit_temperature(trainer, calibration_set, model):
        seen["calibration"], seen["trained_on"] = _pairs(calibration_set), _pairs(trainer.train_dataset or [])
        return fit_temperature(trainer, calibration_set, model)

    def spy_fit(diff, target):
        seen["fit_input"] = len(diff)
        return fit(diff, target)

    def spy_bins(prob, target, *args):
        seen["plotted"] = prob
        return bins(prob, target, *args)

    def spy_predictions(trainer, dataset, output_dir, prefix="predict"):
        seen["reported"] = _pairs(dataset)
        return write_predictions(trainer, dataset, output_dir, prefix)

    write_predictions = workflow._write_predictions
    monkeypatch.setattr(workflow, "_fit_temperature", spy_fit_temperature)
    monkeypatch.setattr(workflow, "fit_temperature", spy_fit)
    monkeypatch.setattr(workflow, "reliability_bins", spy_bins)
    monkeypatch.setattr(workflow, "_write_predictions", spy_predictions)
    return seen


def test_temperature_is_fitted_on_held_out_training_pairs_never_on_the_reported_ones(tiny_llama, tmp_path,
                                                                                     spies):
    data = _synthetic_file(tmp_path / "easy.jsonl", n=60)
    out = tmp_path / "out"
    run_rm(*load_args(_config(tiny_llama, data, out, max_steps=8, val_size=12, temperature_scaling=True,
                              calibration_size=0.25)))
    assert len(spies["reported"]) == 12 and spies["fit_input"] == len(spies["calibration"]) == 12  # 25% of 48
    assert not spies["calibration"] & spies["reported"]  # never the reported pairs
    assert not spies["calibration"] & spies["trained_on"]  # nor pairs the model trained on
    assert len(spies["trained_on"]) == 36

    temperature = json.loads((out / "discorm_config.json").read_text())["temperature"]
    assert abs(temperature - 1.0) > 1e-3
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    calibrated = [1 / (1 + math.exp(-(x["chosen_score"] - x["rejected_score"]) / temperature)) for x in lines]
    assert [x["p_chosen"] for x in lines] == pytest.approx(calibrated, abs=1e-5)
    assert np.allclose(spies["plotted"], calibrated, atol=1e-5)  # the reliability diagram's probabilities
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_temperature"] == pytest.approx(temperature)

    # `discorm eval` on the run reports the same calibrated probabilities
    from discorm.eval.runner import EvalOptions, run_evaluation

    evaluated = run_evaluation(str(out), {"easy": str(data)}, tmp_path / "ev",
                               EvalOptions(show_progress=False, resamples=200), report=False)
    assert evaluated["model"]["temperature"] == pytest.approx(temperature)
    records = [json.loads(x) for x in (tmp_path / "ev" / "predictions" / "easy.jsonl").read_text().splitlines()]
    for record in records:
        gap = record["chosen_score"] - record["rejected_score"]
        assert record["p_chosen"] == pytest.approx(1 / (1 + math.exp(-gap / temperature)), abs=1e-5)


def test_calibration_data_is_used_when_given(tiny_llama, tmp_path, spies):
    from discorm.config import DataArguments
    from discorm.data.loader import build_datasets
    from discorm.model.reward_model import RewardModel

    data = _synthetic_file(tmp_path / "train.jsonl", n=24)
    held_out = _synthetic_file(tmp_path / "calibration.jsonl", n=10, seed=5)
    evaluation = _synthetic_file(tmp_path / "eval.jsonl", n=8, seed=9)
    run_rm(*load_args(_config(tiny_llama, data, tmp_path / "out", max_steps=4, eval_dataset=str(evaluation),
                              temperature_scaling=True, calibration_data=str(held_out))))
    tokenizer = RewardModel.from_pretrained(tmp_path / "out").tokenizer
    expected, _, _ = build_datasets(DataArguments(dataset=str(held_out), cutoff_len=64), tokenizer)
    assert spies["calibration"] == _pairs(expected) and spies["fit_input"] == 10
    assert len(spies["trained_on"]) == 24  # nothing held out of the training data


def test_evaluation_only_temperature_scaling_needs_calibration_data(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "easy.jsonl", n=8)
    config = _config(tiny_llama, data, tmp_path / "out", max_steps=1)
    run_rm(*load_args(config))
    with pytest.raises(ConfigError, match="calibration_data"):
        run_rm(*load_args({**config, "model_name_or_path": str(tmp_path / "out"), "do_train": False,
                           "do_eval": True, "temperature_scaling": True}))
