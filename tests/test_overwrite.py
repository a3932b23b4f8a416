"""Nothing a user made is replaced without being asked: training into a trained run, exporting into the run or
over a folder with files; a failed save leaves the previous files; files with a UTF-8 byte-order mark read like
any other."""

import json

import pytest
import torch
import yaml

from discorm.cli import main
from discorm.config import DataArguments, load_args
from discorm.errors import ConfigError, ModelError
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from discorm.train.workflow import run_rm
from tests.conftest import build_datasets, build_model, user_error

ROWS = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(8)]


def _config(tiny_llama, tmp_path, **extra) -> dict:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return {"model_name_or_path": str(tiny_llama), "dataset": str(data), "output_dir": str(tmp_path / "run"),
            "max_steps": 2, "finetuning_type": "full", "use_cpu": True, "report_to": "none", "disable_tqdm": True,
            "save_strategy": "steps", "save_steps": 1, **extra}


def test_training_into_a_trained_run_is_refused_unless_asked(tiny_llama, tmp_path, capsys):
    config = _config(tiny_llama, tmp_path)
    run_rm(*load_args(config))
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config, "learning_rate": 0.5}))
    assert main(["train", str(path)]) == 2
    error = user_error(capsys.readouterr().err)
    assert f"output_dir={str(tmp_path / 'run')!r} already holds a trained run" in error
    assert "overwrite_output_dir: true" in error and "resume_from_checkpoint: latest" in error
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights  # untouched
    run_rm(*load_args({**config, "resume_from_checkpoint": "latest"}))  # continuing it is asked for
    run_rm(*load_args({**config, "learning_rate": 0.5, "overwrite_output_dir": True}))  # so is replacing it
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != weights


def test_export_never_writes_into_its_source_or_over_files_without_force(tiny_llama, tmp_path):
    build_model(tiny_llama).save_pretrained(tmp_path / "run")
    source = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    for into in (tmp_path / "run", tmp_path / "run" / "export"):
        with pytest.raises(ModelError, match="the run directory .* being exported"):
            export_sequence_classification(str(tmp_path / "run"), str(into), dtype="bfloat16")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == source
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="--out .*busy is not empty; .* --force"):
        export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "busy"), force=True)
    assert (tmp_path / "busy" / "config.json").is_file() and not (tmp_path / "busy" / "notes.txt").exists()
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "new"))  # a new folder needs nothing
    assert (tmp_path / "new" / "config.json").is_file()


def test_export_cli_names_force(tiny_llama, tmp_path, capsys):
    build_model(tiny_llama).save_pretrained(tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert "--force" in user_error(capsys.readouterr().err)


def test_a_failed_save_leaves_the_previous_run_files(tiny_llama, tmp_path, monkeypatch):
    model = build_model(tiny_llama)
    model.save_pretrained(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with torch.no_grad():
        next(model.head.parameters()).add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(model.tokenizer), "save_pretrained", disk_full)  # after the weights are written
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "run")
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before and not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".saving")]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_files_with_a_byte_order_mark_read_like_any_other(tiny_llama, tmp_path, suffix):
    if suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
    elif suffix == ".json":
        text = json.dumps(ROWS)
    else:
        text = "prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in ROWS)
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # as Windows tools write it
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    tokenizer = RewardModel.from_pretrained(tiny_llama).tokenizer
    plain_rows, _, _ = build_datasets(DataArguments(dataset=str(plain)), tokenizer)
    marked_rows, _, _ = build_datasets(DataArguments(dataset=str(marked)), tokenizer)
    columns = ("prompt_ids", "chosen_ids", "rejected_ids")
    assert [[r[c] for c in columns] for r in marked_rows] == [[r[c] for c in columns] for r in plain_rows]


def test_a_config_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.5\n", encoding="utf-8-sig")
    assert load_args(str(path))[2].learning_rate == 0.5


def test_do_train_false_is_refused_with_the_evaluation_command(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="discorm eval MODEL --data NAME=PATH"):
        run_rm(*load_args(_config(tiny_llama, tmp_path, do_train=False)))
