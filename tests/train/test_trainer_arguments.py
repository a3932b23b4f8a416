"""The Trainer runs with a copy of the user's arguments; the run records what the user asked for and, under
``discorm_changes``, what DiscoRM changed and why."""

import json

import pytest
import torch

from discorm.config import DataArguments, load_args
from discorm.errors import ConfigError
from discorm.model.reward_model import RewardModel
from discorm.train import arguments as arguments_module
from discorm.train.arguments import CHANGES_KEY, trainer_arguments
from discorm.train.checkpoints import complete_checkpoints
from discorm.train.workflow import run_rm
from tests.train.test_trainer import FEATURES, _config, _scores, _synthetic_file


def test_the_run_records_the_users_save_total_limit_and_best_model_choice(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "pairs.jsonl", n=24)
    run = tmp_path / "run"
    args = load_args(_config(tiny_llama, data, run, max_steps=8, save_strategy="steps", save_steps=2,
                             eval_strategy="steps", eval_steps=2, eval_dataset=str(data), save_total_limit=2,
                             load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False))
    run_rm(*args)
    for folder in (run, run / "checkpoint-8"):
        record = json.loads((folder / "training_args.json").read_text())
        assert record["save_total_limit"] == 2 and record["load_best_model_at_end"] is True
        changes = record[CHANGES_KEY]
        assert changes["save_total_limit"]["asked"] == 2 and changes["save_total_limit"]["used"] is None
        assert changes["load_best_model_at_end"] == {"asked": True, "used": False,
                                                     "why": changes["load_best_model_at_end"]["why"]}
        assert "run directory" in changes["load_best_model_at_end"]["why"]
    # The user's limit still rotates the checkpoints: the best one and the newest stay.
    kept = complete_checkpoints(run)
    state = json.loads((run / "trainer_state.json").read_text())
    assert len(kept) == 2 and str(kept[-1]) == str(run / "checkpoint-8")
    assert state["best_model_checkpoint"] in {str(path) for path in kept}
    # The weights saved are the best checkpoint's.
    best = RewardModel.from_pretrained(state["best_model_checkpoint"]).eval()
    final = RewardModel.from_pretrained(run).eval()
    for got, want in zip(_scores(final, FEATURES)[:2], _scores(best, FEATURES)[:2]):
        torch.testing.assert_close(got, want)
    assert args[2].save_total_limit == 2 and args[2].load_best_model_at_end is True  # the caller's are unchanged


def test_trainer_arguments_is_a_copy_with_each_change_and_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(arguments_module.torch.accelerator, "is_available", lambda: False)
    monkeypatch.setattr(arguments_module, "launched_processes", lambda: 2)
    args = load_args({"output_dir": str(tmp_path), "save_total_limit": 3})[2]
    derived = trainer_arguments(args, DataArguments(group_by_length=True))
    assert derived.asked is args and derived.used is not args
    assert args.save_total_limit == 3 and args.use_cpu is False and args.dataloader_pin_memory is True
    assert args.train_sampling_strategy == "random"
    used = derived.used
    assert (used.save_total_limit, used.use_cpu, used.dataloader_pin_memory, used.train_sampling_strategy) == (
        None, True, False, "group_by_length")
    assert {key: (c["asked"], c["used"]) for key, c in derived.changes.items()} == {
        "save_total_limit": (3, None), "use_cpu": (False, True), "dataloader_pin_memory": (True, False),
        "train_sampling_strategy": ("random", "group_by_length")}
    assert all(c["why"] for c in derived.changes.values())
    assert not derived.loads_best_checkpoint
    record = json.loads(derived.to_json_string())
    assert record["save_total_limit"] == 3 and record["use_cpu"] is False and record[CHANGES_KEY] == derived.changes


def test_unchanged_arguments_are_handed_over_as_they_are(tmp_path, monkeypatch):
    monkeypatch.setattr(arguments_module.torch.accelerator, "is_available", lambda: True)
    args = load_args({"output_dir": str(tmp_path)})[2]
    derived = trainer_arguments(args, DataArguments())
    assert derived.used is args and derived.changes == {}


def test_resuming_with_another_head_is_refused_before_training(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "pairs.jsonl", n=8)
    run = tmp_path / "run"
    config = _config(tiny_llama, data, run, max_steps=2, save_strategy="steps", save_steps=2)
    run_rm(*load_args(config))
    with pytest.raises(ConfigError, match=r"head: scalar.*head: gaussian") as err:
        run_rm(*load_args({**config, "head": "gaussian", "resume_from_checkpoint": "latest"}))
    assert "checkpoint-2" in str(err.value)
    with pytest.raises(ConfigError, match=r"head: scalar.*head: categorical"):
        run_rm(*load_args({**config, "head": "categorical",
                           "resume_from_checkpoint": str(run / "checkpoint-2")}))
