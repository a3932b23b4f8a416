"""Rated and multi-attribute rows: every file format, masks for unrated attributes, errors, mixed batches."""

import json
import math

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from discorm.config import DataArguments
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.data.loader import split_kinds
from discorm.errors import DataError
from discorm.model.heads import Attribute, RegressionHead
from tests.conftest import build_datasets, build_model

ATTRIBUTES = (Attribute("helpfulness", 0, 4), Attribute("correctness", 0, 4))
MULTI = [
    {"prompt": "What is 2 + 2?", "response": "4", "helpfulness": 4, "correctness": 4},
    {"prompt": "Tell me about bees.", "response": "Bees make honey.", "helpfulness": 3},  # correctness not rated
    {"prompt": "Hi", "response": "Go away.", "helpfulness": 0, "correctness": None},
]
POINTWISE = [{"prompt": "What is 2 + 2?", "response": "5", "score": 1.5},
             {"prompt": [{"role": "user", "content": "Hi"}], "response": "Hello!", "system": "Be kind.", "score": 9}]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _write(folder, name, rows):
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    elif name.endswith(".parquet"):
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    return path


def _load(tokenizer, folder, dataset, attributes=ATTRIBUTES, **kw):
    args = DataArguments(dataset=dataset, dataset_dir=str(folder), cutoff_len=128, **kw)
    train, _, summaries = build_datasets(args, tokenizer, attributes=attributes)
    return train, summaries


def _examples(train):
    return [(ex["prompt_ids"], ex["response_ids"], [None if math.isnan(v) else v for v in ex["scores"]])
            for ex in train]


FORMS = [(form, suffix) for form in ("columns", "scores object")
         for suffix in (".jsonl", ".json", ".parquet", ".csv", "folder", "dataset_info")
         if (form, suffix) != ("scores object", ".csv")]  # a CSV cell holds no object: see the test after this one


@pytest.mark.parametrize(("form", "suffix"), FORMS)
def test_multi_attribute_rows_load_in_every_format(tokenizer, tmp_path, form, suffix):
    rows = MULTI
    if form == "scores object":
        rows = [{"prompt": r["prompt"], "response": r["response"],
                 "scores": {k: r[k] for k in ("helpfulness", "correctness") if k in r}} for r in rows]
    reference, summaries = _load(tokenizer, tmp_path, str(_write(tmp_path, "ref.jsonl", MULTI)))
    assert "3 rows (0 pairs, 3 rated responses) read, 3 kept" in summaries[0]
    expected = _examples(reference)
    assert [e[2] for e in expected] == [[4, 4], [3, None], [0, None]]  # unrated attributes are masked
    folder = tmp_path / "data"
    folder.mkdir()
    if suffix == "folder":
        _write(folder, "a.jsonl", rows[:1])
        _write(folder, "b.parquet", rows[1:])
        name = str(folder)
    elif suffix == "dataset_info":
        renamed = [{("question" if k == "prompt" else k): v for k, v in r.items()} for r in rows]
        _write(folder, "rated.jsonl", renamed)
        (folder / "dataset_info.json").write_text(json.dumps(
            {"my_ratings": {"file_name": "rated.jsonl", "formatting": "rated", "columns": {"prompt": "question"}}}))
        name = "my_ratings"
    else:
        name = str(_write(folder, f"rated{suffix}", rows))
    train, _ = _load(tokenizer, folder, name)
    assert _examples(train) == expected


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_pointwise_rows_load_for_the_regression_head(tokenizer, tmp_path, suffix):
    rows = POINTWISE if suffix in (".jsonl", ".json") else [
        {"prompt": "What is 2 + 2?", "response": "5", "score": 1.5}, {"prompt": "Hi", "response": "Hello!", "score": 9}]
    attributes = RegressionHead.attributes_from({"score_range": [0, 10]})
    train, _ = _load(tokenizer, tmp_path, str(_write(tmp_path, f"p{suffix}", rows)), attributes)
    assert [ex["scores"] for ex in train] == [[1.5], [9.0]]
    assert tokenizer.decode(train[0]["response_ids"]).startswith("5")
    if suffix == ".jsonl":
        assert "Be kind." in tokenizer.decode(train[1]["prompt_ids"])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "response": "a", "helpfulness": 7}, r"bad.jsonl:2: helpfulness=7 is outside score_range "
                                                           r"\[0, 4\]\. Fix the row, or widen score_range"),
        ({"prompt": "q", "response": "a", "scores": {"correctness": -1}}, r"bad.jsonl:2: correctness=-1 is outside"),
        ({"prompt": "q", "response": "a", "helpfulnes": 3}, r"bad.jsonl:2: numeric column 'helpfulnes' is not a "
                                                          r"declared attribute \(\['helpfulness', 'correctness'\]\)"
                                                          r"\. Add it to `attributes:`"),
        ({"prompt": "q", "response": "a", "scores": {"verbosity": 1}}, r"bad.jsonl:2: `scores` rates unknown "
                                                                      r"attribute\(s\) \['verbosity'\]"),
        ({"prompt": "q", "response": "a", "helpfulness": "high"}, r"bad.jsonl:2: the score of 'helpfulness' should "
                                                                 r"be a finite number, found str"),
        ({"prompt": "q", "response": "a", "scores": {"helpfulness": float("inf")}},
         r"bad.jsonl:2: the score of 'helpfulness' should be a finite number, found float \('inf'\)"),
        ({"prompt": "q", "response": "a", "helpfulness": 3, "system": 7}, r"bad.jsonl:2: column 'system' should be "
                                                                        r"str, found int"),
    ],
)
def test_bad_rated_rows_name_file_row_and_fix(tokenizer, tmp_path, row, message):
    path = _write(tmp_path, "bad.jsonl", [MULTI[0], row])
    with pytest.raises(DataError, match=message):
        _load(tokenizer, tmp_path, str(path))


def test_a_scores_object_in_a_csv_cell_is_refused(tokenizer, tmp_path):
    """CSV files rate with one column per attribute: a `scores` column (its cells are text) stops the load, naming
    the row and the column, instead of being read as no ratings."""
    path = tmp_path / "rated.csv"
    path.write_text('prompt,response,scores\n"What is 2 + 2?",four,"{""helpfulness"": 4}"\n')
    with pytest.raises(DataError, match=r"rated.csv.*column 'scores' should be dict, found"):
        _load(tokenizer, tmp_path, str(path))


def test_out_of_range_in_a_table_names_the_row(tokenizer, tmp_path):
    path = _write(tmp_path, "bad.parquet", [MULTI[0], {**MULTI[1], "helpfulness": 4.5}])
    with pytest.raises(DataError, match=r"bad.parquet row 1: helpfulness=4.5 is outside score_range"):
        _load(tokenizer, tmp_path, str(path))
    path = _write(tmp_path, "bad.csv", [{"prompt": "q", "response": "a", "helpfulness": 1, "quality": 2}])
    with pytest.raises(DataError, match=r"bad.csv row 0: numeric column 'quality' is not a declared attribute"):
        _load(tokenizer, tmp_path, str(path))


def test_rated_rows_need_a_head_that_learns_from_ratings(tokenizer, tmp_path):
    path = _write(tmp_path, "r.jsonl", MULTI)
    with pytest.raises(DataError, match=r"r.jsonl:1: a rated row .* the head learns from pairs only\. Use a head "
                                        r"that learns from ratings \(multi_objective, regression\)"):
        _load(tokenizer, tmp_path, str(path), attributes=())


def test_unrated_rows_are_skipped_or_strict(tokenizer, tmp_path):
    path = _write(tmp_path, "r.jsonl", [MULTI[0], {"prompt": "q", "response": "a", "helpfulness": None}])
    train, summaries = _load(tokenizer, tmp_path, str(path))
    assert len(train) == 1 and "no scores 1" in summaries[0]
    with pytest.raises(DataError, match=r"r.jsonl:2: no attribute is rated .*strict_data is on"):
        _load(tokenizer, tmp_path, str(path), strict_data=True)


def test_pairs_and_rated_rows_mix_in_one_data_set(tokenizer, tmp_path):
    pairs = _write(tmp_path, "pairs.jsonl", [{"prompt": "q", "chosen": "yes", "rejected": "no", "margin": 1.0}] * 2)
    rated = _write(tmp_path, "rated.jsonl", MULTI)
    train, summaries = _load(tokenizer, tmp_path, f"{rated},{pairs}")
    assert "5 rows (2 pairs, 3 rated responses) read, 5 kept" in summaries[0]
    only_pairs, only_rated = split_kinds(train)
    assert len(only_pairs) == 2 and len(only_rated) == 3 and only_pairs[0]["margin"] == 1.0


def _features():
    return [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10], "margin": 0.5},
        {"prompt_ids": [11, 12], "response_ids": [13, 14, 15], "scores": [3.0, math.nan]},
        {"prompt_ids": [16], "chosen_ids": [17, 18, 19], "rejected_ids": [20, 21]},
        {"prompt_ids": [22, 23, 24, 25], "response_ids": [26], "scores": [math.nan, 1.0]},
    ]


def test_collators_lay_out_pairs_then_rated():
    padded = PairwiseDataCollatorWithPadding(0)(_features())
    assert padded["input_ids"].shape == (6, 5)
    assert padded["input_ids"][4, :5].tolist() == [11, 12, 13, 14, 15]  # rated rows follow the 2B pair rows
    assert padded["scores"].tolist() == [[3.0, 0.0], [0.0, 1.0]]
    assert padded["score_mask"].tolist() == [[True, False], [False, True]]
    assert padded["margin"].tolist() == [0.5, 0.0]
    packed = PackedPairCollator(prefix_sharing=True)(_features())
    assert packed["pair_blocks"].tolist() == [[0, 3, 2, 1], [6, 1, 3, 2], [12, 0, 5, 0], [17, 0, 5, 0]]
    assert packed["score_index"].tolist() == [4, 9, 5, 11, 16, 21]


@pytest.mark.parametrize("output", ["scalar", "gaussian"])
@pytest.mark.parametrize("prefix_sharing", [True, False])
def test_mixed_batches_packed_match_padded(tiny_llama, output, prefix_sharing):
    """Scores, loss and gradients of a batch mixing pairs and rated responses: packed == padded."""
    from discorm.config import FinetuningArguments
    from discorm.train.loss import PairwiseLoss
    from discorm.train.trainer import split_batch

    options = {"attributes": ["a", "b"], "output": output, "score_range": [0, 4]}
    model = build_model(tiny_llama, head="multi_objective", head_options=options).eval()
    loss_fn = PairwiseLoss.from_args(model.head, FinetuningArguments(head="multi_objective", head_options=options))
    assert model.check_packing()

    def run(batch):
        model.zero_grad()
        batch = dict(batch)
        scores, mask = batch.pop("scores"), batch.pop("score_mask")
        params = model(**model_inputs(batch)).head_params
        pc, pr, rated = split_batch(params, scores.shape[0])
        loss = loss_fn(pc, pr, batch.get("margin"), None, rated, scores, mask)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return params.detach(), loss.detach(), grads

    plain = run(PairwiseDataCollatorWithPadding(0)(_features()))
    packed = run(PackedPairCollator(prefix_sharing)(_features()))
    torch.testing.assert_close(packed[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[1], plain[1], atol=1e-5, rtol=0)
    assert plain[2].keys() == packed[2].keys() and len(plain[2]) > 4
    for name, grad in plain[2].items():
        assert (packed[2][name] - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < 1e-4, name


def test_preview_shows_rated_responses(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    path = _write(tmp_path, "r.jsonl", MULTI)
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {tiny_llama}\ndataset: {path},demo\nhead: multi_objective\n"
                      "attributes: [helpfulness, correctness]\nscore_range: [0, 4]\n")
    assert main(["data", "preview", str(config), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "rated response 1: prompt" in out and "ratings: helpfulness 3" in out and "correctness" not in out.split(
        "rated response 1")[1].split("\n")[0]
    assert "403 rows (400 pairs, 3 rated responses) read" in out
