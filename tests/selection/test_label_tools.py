"""Label Studio and Argilla at both ends: the selection written as their import schemas, their exports (two
annotators each) read back as pair votes, and a run trained on them."""

import json

import pytest
from transformers import AutoTokenizer

from discorm.config import load_args
from discorm.data.annotations import argilla_records, from_argilla, from_label_studio, label_studio_tasks
from discorm.data.formats import FORMATS, detect_format
from discorm.data.rows import SkipPair
from discorm.errors import DataError
from discorm.train.workflow import run_rm
from tests.conftest import build_datasets

SELECTED = [{"prompt": "Is the sea salty?", "responses": ["Yes, about 3.5% salt.", "No."], "id": 7,
             "acquisition": 0.25, "preferences": [{"a": 0, "b": 1, "p": 0.6, "p_std": 0.1}]},
            {"prompt": [{"role": "user", "content": "hi"}], "response_a": "hello", "response_b": "go away",
             "system": "be kind", "acquisition": 0.125, "preferences": [{"a": 0, "b": 1, "p": 0.9, "p_std": 0.0}]}]


def _label_studio_export(tasks, answers):
    """Tasks as Label Studio exports them (JSON), each annotated by two people with choices A / B / Tie."""
    return [{"id": number + 1, "data": task["data"], "annotations": [
        {"id": 10 * number + k, "completed_by": k + 1, "was_cancelled": False,
         "result": [{"from_name": "preference", "to_name": "prompt", "type": "choices",
                     "value": {"choices": [answer]}}]} for k, answer in enumerate(pair)]}
        for number, (task, pair) in enumerate(zip(tasks, answers))]


def _argilla_export(records, answers):
    """Records as Argilla's records.to_json writes them, two users answering the label question `preference`."""
    return [{"id": str(number), "fields": record["fields"], "metadata": record["metadata"], "suggestions": {},
             "responses": {"preference": [{"value": answer, "user_id": f"user-{k}"} for k, answer in enumerate(pair)]},
             "vectors": {}, "status": "completed", "_server_id": None}
            for number, (record, pair) in enumerate(zip(records, answers))]


def test_selection_is_written_as_label_studio_tasks_and_argilla_records():
    tasks = label_studio_tasks(SELECTED)
    assert tasks[0] == {"data": {"id": 7, "prompt": "Is the sea salty?", "response_a": "Yes, about 3.5% salt.",
                                 "response_b": "No.", "acquisition": 0.25, "p_a": 0.6, "p_a_std": 0.1}}
    assert tasks[1]["data"]["system"] == "be kind" and tasks[1]["data"]["prompt"] == SELECTED[1]["prompt"]
    records = argilla_records(SELECTED)
    assert records[1] == {"fields": {"prompt": [{"role": "user", "content": "hi"}], "response_a": "hello",
                                     "response_b": "go away", "system": "be kind"},
                          "metadata": {"acquisition": 0.125, "p_a": 0.9, "p_a_std": 0.0}}
    with pytest.raises(DataError, match="compares 3 responses; Label Studio and Argilla are written for pairs"):
        label_studio_tasks([dict(SELECTED[0], responses=["a", "b", "c"])])


def test_exports_with_two_annotators_read_back_as_votes():
    exported = _label_studio_export(label_studio_tasks(SELECTED), [("A", "A"), ("B", "Tie")])
    assert detect_format(list(exported[0]), "export") == "label_studio"
    spec = FORMATS["label_studio"].spec()
    first, second = (from_label_studio(task, spec, f"task {i}") for i, task in enumerate(exported))
    assert first.votes == (2.0, 0.0, 0.0)
    assert first.chosen == [{"role": "assistant", "content": "Yes, about 3.5% salt."}]
    assert second.votes == (0.0, 1.0, 1.0)
    assert second.prompt == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    records = _argilla_export(argilla_records(SELECTED), [("B", "B"), (["response_a", "response_b"], "tie")])
    assert detect_format(list(records[0]), "export") == "argilla"
    spec = FORMATS["argilla"].spec()
    assert from_argilla(records[0], spec, "record 0").votes == (0.0, 0.0, 2.0)
    assert from_argilla(records[1], spec, "record 1").votes == (1.0, 1.0, 0.0)


def test_pairwise_tag_cancelled_and_unanswered_annotations():
    task = _label_studio_export(label_studio_tasks(SELECTED[:1]), [("A", "B")])[0]
    task["annotations"][0]["result"] = [{"from_name": "pairwise", "type": "pairwise", "value": {"selected": "right"}}]
    task["annotations"][1]["was_cancelled"] = True
    spec = FORMATS["label_studio"].spec()
    assert from_label_studio(task, spec, "task 1").votes == (0.0, 0.0, 1.0)
    task["annotations"] = []
    with pytest.raises(SkipPair, match="no annotator answered"):
        from_label_studio(task, spec, "task 1")
    task["annotations"] = _label_studio_export(label_studio_tasks(SELECTED[:1]), [("Maybe",)])[0]["annotations"]
    with pytest.raises(DataError, match=r"task 1: annotations\[0\].result.value is 'Maybe'; an answer is A, B"):
        from_label_studio(task, spec, "task 1")
    record = _argilla_export(argilla_records(SELECTED[:1]), [("A",)])[0]
    del record["fields"]["response_b"]
    with pytest.raises(DataError, match="record 0: fields has no response_b"):
        from_argilla(record, FORMATS["argilla"].spec(), "record 0")


def _train(tiny_llama, dataset, out, **config):
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": dataset, "output_dir": str(out),
                      "max_steps": 2, "finetuning_type": "full", "per_device_train_batch_size": 4,
                      "learning_rate": 1e-3, "use_cpu": True, "save_strategy": "no", "report_to": "none",
                      "disable_tqdm": True, **config})
    return run_rm(*args)


def test_round_trip_select_label_studio_and_argilla_then_train_on_the_votes(tiny_llama, tmp_path):
    from discorm.cli import main

    labelled = [{"prompt": f"question {i % 6}", "chosen": f"a good answer {i % 5}", "rejected": f"bad {i % 3}"}
                for i in range(24)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    _train(tiny_llama, str(tmp_path / "pairs.jsonl"), tmp_path / "run", uncertainty="laplace", max_steps=3)
    pool = [{"prompt": f"new question {i}", "responses": [f"first answer {i}", f"second {i % 4} reply"]}
            for i in range(10)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    for fmt, export in (("label-studio", _label_studio_export), ("argilla", _argilla_export)):
        out = tmp_path / f"{fmt}.json"
        assert main(["select", str(tmp_path / "run"), "--pool", str(tmp_path / "pool.jsonl"), "--budget", "6",
                     "--out", str(out), "--format", fmt]) == 0
        written = json.loads(out.read_text())
        assert len(written) == 6
        answers = [("A", "A"), ("A", "B"), ("B", "B"), ("Tie", "A"), ("A", "A"), ("B", "A")]
        (tmp_path / f"{fmt}-export.json").write_text(json.dumps(export(written, answers)))
    exports = f"{tmp_path / 'label-studio-export.json'},{tmp_path / 'argilla-export.json'}"
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": exports, "output_dir": str(tmp_path / "o")})
    train, _, summaries = build_datasets(args[1], AutoTokenizer.from_pretrained(tiny_llama))
    assert "12 pairs read, 12 kept" in summaries[0]
    votes = sorted((row["votes_chosen"], row["votes_tie"], row["votes_rejected"]) for row in train)
    assert votes == sorted([(2, 0, 0), (1, 0, 1), (0, 0, 2), (1, 1, 0), (2, 0, 0), (1, 0, 1)] * 2)
    metrics = _train(tiny_llama, exports, tmp_path / "relabelled")
    assert metrics["train_loss"] > 0
