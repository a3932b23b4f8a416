"""Temperature scaling is fitted on calibration pairs, never on the reported ones, and the calibrated
probabilities are what the run's evaluation (predictions, reliability diagram) and `discorm eval` report."""

import json
import math

import numpy as np
import pytest

import discorm.eval.results as results_module
import discorm.train.stages as stages
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
    setup_trainer, fit, bins = workflow.setup_trainer, stages.fit_temperature, results_module.reliability_bins
    post_training, run_evaluation = stages.post_training, workflow.run_evaluation

    def spy_setup_trainer(model, data, *args, **kwargs):
        seen["trained_on"], seen["reported"] = _pairs(data.train), _pairs(data.evaluation)
        return setup_trainer(model, data, *args, **kwargs)

    def spy_post_training(model, data, *args, **kwargs):
        seen["calibration"] = _pairs(data.calibration)
        return post_training(model, data, *args, **kwargs)

    def spy_fit(diff, target):
        seen["fit_input"] = len(diff)
        return fit(diff, target)

    def spy_bins(prob, target, *args):
        seen["plotted"] = prob
        return bins(prob, target, *args)

    def spy_evaluation(*args, **kwargs):
        results = run_evaluation(*args, **kwargs)
        seen["reported_count"] = results["sets"]["heldout"]["items"]
        return results

    monkeypatch.setattr(workflow, "setup_trainer", spy_setup_trainer)
    monkeypatch.setattr(workflow, "post_training", spy_post_training)
    monkeypatch.setattr(workflow, "run_evaluation", spy_evaluation)
    monkeypatch.setattr(stages, "fit_temperature", spy_fit)
    monkeypatch.setattr(results_module, "reliability_bins", spy_bins)
    return seen


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_temperature_is_fitted_on_held_out_training_pairs_never_on_the_reported_ones(tiny_llama, tmp_path,
                                                                                     spies):
    data = _synthetic_file(tmp_path / "easy.jsonl", n=60)
    out = tmp_path / "out"
    run_rm(*load_args(_config(tiny_llama, data, out, max_steps=8, val_size=12, temperature_scaling=True,
                              calibration_size=0.25)))
    assert spies["reported_count"] == 12 and spies["fit_input"] == len(spies["calibration"]) == 12  # 25% of 48
    assert not spies["calibration"] & spies["reported"]  # never the reported pairs
    assert not spies["calibration"] & spies["trained_on"]  # nor pairs the model trained on
    assert len(spies["trained_on"]) == 36

    temperature = json.loads((out / "discorm_config.json").read_text())["temperature"]
    assert abs(temperature - 1.0) > 1e-3
    lines = _records(out / "eval" / "predictions" / "heldout.jsonl")
    calibrated = [1 / (1 + math.exp(-(x["chosen_score"] - x["rejected_score"]) / temperature)) for x in lines]
    assert [x["p_chosen"] for x in lines] == pytest.approx(calibrated, abs=1e-5)
    assert np.allclose(spies["plotted"], calibrated, atol=1e-5)  # the reliability diagram's probabilities
    results = json.loads((out / "eval" / "eval_results.json").read_text())
    assert results["model"]["temperature"] == pytest.approx(temperature)

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
    from tests.conftest import build_datasets

    data = _synthetic_file(tmp_path / "train.jsonl", n=24)
    held_out = _synthetic_file(tmp_path / "calibration.jsonl", n=10, seed=5)
    evaluation = _synthetic_file(tmp_path / "eval.jsonl", n=8, seed=9)
    run_rm(*load_args(_config(tiny_llama, data, tmp_path / "out", max_steps=4, eval_dataset=str(evaluation),
                              temperature_scaling=True, calibration_data=str(held_out))))
    tokenizer = _tokenizer(tmp_path / "out")
    expected, _, _ = build_datasets(DataArguments(dataset=str(held_out), cutoff_len=64), tokenizer)
    assert spies["calibration"] == _pairs(expected) and spies["fit_input"] == 10
    assert len(spies["trained_on"]) == 24  # nothing held out of the training data


def test_run_rm_only_trains_and_names_discorm_eval_for_evaluation(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "easy.jsonl", n=8)
    config = _config(tiny_llama, data, tmp_path / "out", max_steps=1)
    run_rm(*load_args(config))
    with pytest.raises(ConfigError, match="discorm eval"):
        run_rm(*load_args({**config, "model_name_or_path": str(tmp_path / "out"), "do_train": False,
                           "do_eval": True, "temperature_scaling": True}))


def _tokenizer(run):
    from discorm.model.reward_model import RewardModel

    return RewardModel.from_pretrained(run).tokenizer
