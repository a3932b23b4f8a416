"""Per-rater labels of one response: a list of labels or a histogram over declared levels, one canonical record of
counts per level; the errors name the file, the row and the column."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from discorm.config import DataArguments
from discorm.errors import DataError
from discorm.model.heads import ScalarHead
from discorm.model.heads.ordinal import scale_from
from discorm.train.loss import PairwiseLoss
from tests.conftest import build_datasets

LEVELS = scale_from({"levels": ["No", "Unsure", "Yes"], "direction": "first_best"})
CONVERSATION = "A: is it safe?\nB: sure\nA: really?"
LISTS = [{"prompt": CONVERSATION, "response": "Yes.", "ratings": ["No", "Yes", "Unsure", "Yes", "No", "No"]},
         {"prompt": "Hi", "response": "Go away.", "ratings": ["Yes", "Yes", None]}]  # None: a rater gave no answer
HISTOGRAMS = [{"prompt": CONVERSATION, "response": "Yes.", "ratings": {"Yes": 2, "No": 3, "Unsure": 1}},
              {"prompt": "Hi", "response": "Go away.", "ratings": {"Yes": 2}}]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _write(folder, name, rows):
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(tokenizer, folder, dataset, attributes=LEVELS, **kw):
    train, _, summaries = build_datasets(DataArguments(dataset=dataset, dataset_dir=str(folder), cutoff_len=128,
                                                       **kw), tokenizer, attributes=attributes)
    return train, summaries


def test_a_list_and_a_histogram_give_one_record_and_one_loss(tokenizer, tmp_path):
    from_lists, summaries = _load(tokenizer, tmp_path, str(_write(tmp_path, "lists.jsonl", LISTS)))
    from_histograms, _ = _load(tokenizer, tmp_path, str(_write(tmp_path, "hist.jsonl", HISTOGRAMS)))
    assert "2 rows (0 pairs, 2 rated responses) read, 2 kept" in summaries[0]
    assert [ex["scores"] for ex in from_lists] == [[3.0, 1.0, 2.0], [0.0, 0.0, 2.0]]  # in the declared order
    for a, b in zip(from_lists, from_histograms):
        assert (a["prompt_ids"], a["response_ids"], a["scores"]) == (b["prompt_ids"], b["response_ids"], b["scores"])
    assert "A: is it safe?" in tokenizer.decode(from_lists[0]["prompt_ids"])
    head = ScalarHead(4, levels=["No", "Unsure", "Yes"], direction="first_best")
    params = torch.tensor([[0.4], [-1.0]])
    losses = []
    for data in (from_lists, from_histograms):
        scores = torch.tensor(data["scores"])
        with torch.no_grad():
            losses.append(float(PairwiseLoss(head).batch_loss(params, {"scores": scores,
                                                                       "score_mask": ~scores.isnan()})))
    assert losses[0] == losses[1] > 0


def test_numbers_on_a_declared_scale_and_renamed_columns(tokenizer, tmp_path):
    rows = [{"conversation": "Rate me", "response": "ok", "votes": [1, 2, 2.0, 5]}]
    _write(tmp_path, "likert.jsonl", rows)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"likert": {
        "file_name": "likert.jsonl", "formatting": "per_rater",
        "columns": {"prompt": "conversation", "ratings": "votes"}}}))
    scale = scale_from({"levels": [1, 2, 3, 4, 5], "direction": "last_best"})
    train, _ = _load(tokenizer, tmp_path, "likert", attributes=scale)
    assert train[0]["scores"] == [1.0, 2.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "ratings, message",
    [
        (["No", "Maybe"], r"bad.jsonl:2: `ratings` holds the label str \('Maybe'\), which is not a declared level "
                          r"\(\['No', 'Unsure', 'Yes'\]\)\. Add it to `levels:`"),
        ({"No": 3, "maybe": 1}, r"bad.jsonl:2: `ratings` counts the level 'maybe', which is not a declared level"),
        ({"No": 3, "Yes": -1}, r"bad.jsonl:2: `ratings` counts int \('-1'\) raters for 'Yes'; a count is a number "
                               r">= 0"),
        ({}, r"bad.jsonl:2: `ratings` holds no rating \(dict \('\{\}'\)\); give at least one rater's label"),
        ({"No": 0, "Yes": 0}, r"bad.jsonl:2: `ratings` holds no rating"),
        ([], r"bad.jsonl:2: `ratings` holds no rating"),
        ("Yes", r"bad.jsonl:2: column 'ratings' should be list or dict, found str"),
    ],
)
def test_bad_per_rater_rows_name_file_row_and_key(tokenizer, tmp_path, ratings, message):
    path = _write(tmp_path, "bad.jsonl", [LISTS[0], {"prompt": "q", "response": "a", "ratings": ratings}])
    with pytest.raises(DataError, match=message):
        _load(tokenizer, tmp_path, str(path))


def test_per_rater_rows_need_declared_levels(tokenizer, tmp_path):
    path = _write(tmp_path, "r.jsonl", LISTS)
    with pytest.raises(DataError, match=r"r.jsonl:1: `ratings` holds several raters' labels, but the head declares "
                                        r"no rating levels\. Set levels: \[\.\.\.\] and direction"):
        _load(tokenizer, tmp_path, str(path), attributes=())
