"""Listwise rows, pair ties / strengths / votes and the public layouts (UltraFeedback, HelpSteer3): reading,
errors that name the row and the fix, tokenization, and a run that trains and evaluates on them."""

import json
import math

import pytest
from transformers import AutoTokenizer

from discorm.config import DataArguments, load_args
from discorm.data.formats import FORMATS, convert, detect_format
from discorm.errors import DataError
from discorm.train.workflow import run_rm
from tests.conftest import build_datasets

LIST = {"prompt": "Pick a colour", "responses": ["red", "green", "blue", "plaid"], "ranking": [2, [0, 1], 3]}


@pytest.fixture
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rankings_scores_and_votes_become_levels_and_counts():
    spec = FORMATS["listwise"].spec()
    assert detect_format(list(LIST), "x") == "listwise"
    assert convert(LIST, spec, "f:1").levels == [1, 1, 0, 2]
    scored = convert({**LIST, "ranking": None, "scores": [3, 3.0, 5, 1]}, spec, "f:2")
    assert scored.levels == [1, 1, 0, 2]
    voted = convert({"prompt": "p", "responses": ["a", "b", "c"], "votes": [[0, 1, 2], [1, 0, 2], [0, [1, 2]]]},
                      spec, "f:3")
    assert voted.levels is None and voted.votes[0] == [0, 1, 2.0, 0.0, 1.0] and voted.votes[2] == [1, 2, 2.0, 1.0, 0.0]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "at least 2 responses"),
    ({**LIST, "ranking": [2, [0, 1]]}, "does not cover response\\(s\\) \\[3\\]"),
    ({**LIST, "ranking": [2, 0, 1, 3, 0]}, "names response 0 twice"),
    ({**LIST, "ranking": [2, 0, 1, 7]}, "not a response index 0..3"),
    ({**LIST, "responses": ["red", "green", "red", "x"]}, "response 2 repeats response 0"),
    ({**LIST, "scores": [1, 2, 3, 4]}, "exactly one of the columns"),
    ({"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "1 numbers for 2 responses"),
])
def test_bad_lists_stop_with_the_row_and_the_fix(row, message):
    with pytest.raises(DataError, match=message) as err:
        convert(row, FORMATS["listwise"].spec(), "data.jsonl:7")
    assert "data.jsonl:7" in str(err.value)


def test_pair_ties_strength_and_votes():
    spec = FORMATS["explicit"].spec(strength_scale=3.0)
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert convert({**row, "tie": True}, spec, "f:1").tie is True
    swapped = convert({**row, "strength": -2}, spec, "f:2")
    assert swapped.strength == 2.0 and swapped.chosen[0]["content"] == "b"
    assert convert({**row, "strength": 0}, spec, "f:3").tie is True
    assert convert({**row, "votes": {"chosen": 3, "rejected": 1}}, spec, "f:4").votes == (3.0, 0.0, 1.0)
    with pytest.raises(DataError, match="f:5: strength 4 is outside the declared scale \\[-3, 3\\]"):
        convert({**row, "strength": 4}, spec, "f:5")
    with pytest.raises(DataError, match="no scale is declared; set strength_scale"):
        convert({**row, "strength": 1}, FORMATS["explicit"].spec(), "f:6")
    with pytest.raises(DataError, match="should count annotators"):
        convert({**row, "votes": {"chosen": -1}}, spec, "f:7")


def test_ultrafeedback_and_helpsteer3_layouts_read_unchanged():
    uf = {"instruction": "Say hi", "models": ["m1", "m2", "m3"], "completions": [
        {"response": "hi", "fine-grained_score": 4.5, "annotations": {}},
        {"response": "hello there", "annotations": {"helpfulness": {"Rating": "3"}, "honesty": {"Rating": "N/A"}}},
        {"response": "go away", "fine-grained_score": 1.25}]}
    assert detect_format(list(uf), "x") == "ultrafeedback"
    ranked = convert(uf, FORMATS["ultrafeedback"].spec(), "uf:1")
    assert ranked.levels == [0, 1, 2] and ranked.prompt == [{"role": "user", "content": "Say hi"}]
    hs = {"domain": "general", "context": [{"role": "user", "content": "q"}], "response1": "a", "response2": "b",
          "overall_preference": 2}
    assert detect_format(list(hs), "x") == "helpsteer3"
    pair = convert(hs, FORMATS["helpsteer3"].spec(), "hs:1")
    assert pair.chosen[0]["content"] == "b" and pair.strength == 2.0 and not pair.tie
    assert convert({**hs, "overall_preference": 0}, FORMATS["helpsteer3"].spec(), "hs:2").tie is True


def test_lists_tokenize_with_one_shared_prompt(tokenizer, tmp_path):
    _write(tmp_path / "lists.jsonl", [LIST, {**LIST, "prompt": "Another", "ranking": [0, 1, 2, 3]}])
    train, _, summaries = build_datasets(DataArguments(dataset=str(tmp_path / "lists.jsonl")), tokenizer)
    assert len(train) == 2 and len(train[0]["responses_ids"]) == 4 and train[0]["levels"] == [1, 1, 0, 2]
    assert "2 rows (0 pairs, 2 ranked lists)" in summaries[0] and "shared prompt saves" in summaries[0]


def _demo_lists(path, n, seed):
    """Lists of 3 from the built-in demo's kinds: a correct answer best, its wrong twin next, an evasion last."""
    from discorm.data import demo

    rows = demo.BUILTIN["demo"]("train")[seed : seed + n]
    evasive = "I'd rather not get into that right now."
    return _write(path, [{"prompt": r["prompt"], "responses": [r["rejected"], r["chosen"], evasive],
                          "ranking": [1, 0, 2]} for r in rows if evasive not in (r["chosen"], r["rejected"])])


@pytest.mark.parametrize("head, extra", [("scalar", {}), ("gaussian", {"tie_model": "thurstone"})])
def test_training_and_evaluation_on_lists(tiny_llama, tmp_path, head, extra):
    train = _demo_lists(tmp_path / "train.jsonl", 24, 0)
    heldout = _demo_lists(tmp_path / "heldout.jsonl", 8, 100)
    rows = [json.loads(line) for line in heldout.read_text().splitlines()]
    rows[0]["ranking"] = [[1, 0], 2]  # one tie, for the tie metrics
    _write(heldout, rows)
    config = {"model_name_or_path": str(tiny_llama), "dataset": str(train), "eval_dataset": str(heldout),
              "output_dir": str(tmp_path / "out"), "finetuning_type": "full", "learning_rate": 3e-3,
              "per_device_train_batch_size": 4, "cutoff_len": 64, "max_steps": 4, "save_strategy": "no",
              "disable_tqdm": True, "use_cpu": True, "head": head, **extra}
    metrics = run_rm(*load_args(config))
    results = json.loads((tmp_path / "out" / "eval" / "eval_results.json").read_text())
    listwise = results["sets"]["heldout"]["listwise"]
    assert results["sets"]["heldout"]["format"] == "listwise" and listwise["lists"] == len(rows)
    assert 0 <= listwise["best_of_k_accuracy"] <= 1 and -1 <= listwise["kendall_tau"] <= 1
    assert listwise["ties"] == 1
    assert (listwise["tie_accuracy"] is not None) == (head == "gaussian")
    assert math.isfinite(metrics["eval_accuracy"])


def test_dataset_info_entries_name_the_listwise_layouts(tokenizer, tmp_path):
    _write(tmp_path / "uf.jsonl", [{"instruction": "q", "completions": [
        {"response": "a", "fine-grained_score": 2.0}, {"response": "b", "fine-grained_score": 4.0}]}])
    _write(tmp_path / "ranked.jsonl", [{"question": "q", "answers": ["x", "y", "z"], "ranking": [1, 0, 2]}])
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "uf": {"file_name": "uf.jsonl", "ranking": True, "formatting": "ultrafeedback"},
        "mine": {"file_name": "ranked.jsonl", "ranking": True, "formatting": "listwise",
                 "columns": {"prompt": "question", "responses": "answers"}}}))
    train, _, summaries = build_datasets(DataArguments(dataset="uf,mine", dataset_dir=str(tmp_path)), tokenizer)
    assert sorted(train["levels"]) == [[1, 0], [1, 0, 2]] and "2 ranked lists" in summaries[0]


def test_preview_shows_a_list_and_laplace_fits_on_its_comparisons(tiny_llama, tmp_path, capsys):
    from discorm.cli import main
    from discorm.train.stages import ordered_pairs

    data = _write(tmp_path / "lists.jsonl", [LIST, {**LIST, "prompt": "Again", "ranking": [0, 1, 2, 3]}])
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {tiny_llama}\ndataset: {data}\ncutoff_len: 64\n")
    assert main(["data", "preview", str(config), "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "list 0: prompt" in out and "--- response 3 (rank level 2)" in out and "2 ranked lists" in out
    train, _, _ = build_datasets(DataArguments(dataset=str(data)), AutoTokenizer.from_pretrained(tiny_llama))
    assert len(ordered_pairs(train)) == 5 + 6  # [2, [0, 1], 3]: 5 ordered pairs; a strict ranking of 4: 6


def test_a_list_labelled_by_votes_is_evaluated_by_net_wins():
    from discorm.eval.sets import levels_from_votes

    votes = [[0, 1, 2.0, 0.0, 1.0], [0, 2, 3.0, 0.0, 0.0], [1, 2, 1.0, 1.0, 1.0]]  # net wins 4, -1, -3
    assert levels_from_votes(votes, 3) == [0, 1, 2]
    assert levels_from_votes([[0, 1, 1.0, 0.0, 1.0]], 2) == [0, 0]


def test_pairs_with_ties_and_strengths_train_and_evaluate_as_lists_of_two(tiny_llama, tmp_path):
    from discorm.data import demo

    rows = demo.graded_rows("train")[:24]
    assert any(r["strength"] == 0 for r in rows) and any(r["strength"] < 0 for r in rows)
    train, heldout = _write(tmp_path / "t.jsonl", rows), _write(tmp_path / "h.jsonl", demo.graded_rows("test")[:12])
    config = {"model_name_or_path": str(tiny_llama), "dataset": str(train), "eval_dataset": str(heldout),
              "output_dir": str(tmp_path / "out"), "finetuning_type": "full", "per_device_train_batch_size": 4,
              "cutoff_len": 64, "max_steps": 3, "save_strategy": "no", "disable_tqdm": True, "use_cpu": True,
              "strength_scale": 3, "tie_model": "rao_kupper", "strength_loss": "scaled_bt"}
    metrics = run_rm(*load_args(config))
    results = json.loads((tmp_path / "out" / "eval" / "eval_results.json").read_text())["sets"]["heldout"]
    ties = sum(r["strength"] == 0 for r in demo.graded_rows("test")[:12])
    assert results["format"] == "listwise" and results["listwise"]["ties"] == ties > 0
    assert results["listwise"]["tie_accuracy"] is not None and math.isfinite(metrics["eval_best_of_k_accuracy"])
    assert results["length"]["chosen_longer"]["items"] + results["length"]["chosen_not_longer"]["items"] == 12 - ties


def test_periodic_evaluation_of_lists_only_is_refused_naming_the_fix(tiny_llama, tmp_path):
    from discorm.errors import ConfigError

    data = _write(tmp_path / "lists.jsonl", [LIST, {**LIST, "prompt": "Again"}])
    config = {"model_name_or_path": str(tiny_llama), "dataset": str(data), "eval_dataset": str(data),
              "output_dir": str(tmp_path / "out"), "finetuning_type": "full", "max_steps": 1, "use_cpu": True,
              "eval_strategy": "steps", "eval_steps": 1, "save_strategy": "no", "cutoff_len": 64}
    with pytest.raises(ConfigError, match="Set eval_strategy: no, or add pairs to eval_dataset"):
        run_rm(*load_args(config))
