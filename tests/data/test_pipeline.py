"""Templates, truncation, collators, sources (files, LlamaFactory folders), bad-input errors, preview."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from discorm.config import DataArguments
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
from discorm.data.pairs import Pair
from discorm.data.templates import Renderer
from discorm.data.tokenize import DataStats, PairTokenizer
from discorm.errors import ConfigError, DataError
from tests.conftest import build_datasets


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _pair(prompt="What is 2 + 2?", chosen="4", rejected="5"):
    return Pair([{"role": "user", "content": prompt}], [{"role": "assistant", "content": chosen}],
                [{"role": "assistant", "content": rejected}])


@pytest.mark.parametrize(
    "template, prompt_text, chosen_text",
    [
        (None, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Yo<|im_end|>"),
        ("chatml", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Yo<|im_end|>"),
        ("qwen", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                 "<|im_start|>assistant\n", "Yo<|im_end|>"),
        ("llama3", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n", "Yo<|eot_id|>"),
        ("raw", "Hi", "Yo"),
        ("empty", "Hi", "Yo"),
    ],
)
def test_templates_render_prompt_and_response(tokenizer, template, prompt_text, chosen_text):
    renderer = Renderer(tokenizer, template)
    prompt = [{"role": "user", "content": "Hi"}]
    assert renderer.render_prompt(prompt) == prompt_text
    assert renderer.render_response(prompt, prompt_text, [{"role": "assistant", "content": "Yo"}]) == chosen_text


def test_template_errors(tiny_llama, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ConfigError, match="template='vicuna' is not known"):
        Renderer(tokenizer, "vicuna")
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="the tokenizer has no chat template"):
        Renderer(tokenizer, None)


def test_tokenized_pair_ends_with_end_of_turn(tokenizer):
    example = PairTokenizer(tokenizer, Renderer(tokenizer), 512)(_pair(), DataStats())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example["chosen_ids"][-1] == end and example["rejected_ids"][-1] == end
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}], tokenize=False
    ).rstrip()
    assert tokenizer.decode(example["prompt_ids"] + example["chosen_ids"]) == full


def test_truncation_drops_oldest_turns_then_cuts_prompt_keeping_response_end(tokenizer):
    long_history = []
    for i in range(6):
        long_history += [{"role": "user", "content": f"old question {i} " * 5},
                         {"role": "assistant", "content": f"old answer {i} " * 5}]
    pair = Pair([*long_history, {"role": "user", "content": "last question"}],
                [{"role": "assistant", "content": "good answer " * 3}], [{"role": "assistant", "content": "bad"}])
    stats = DataStats()
    cutoff = 64
    example = PairTokenizer(tokenizer, Renderer(tokenizer), cutoff)(pair, stats)
    assert stats.truncated == 1
    prompt = tokenizer.decode(example["prompt_ids"])
    assert "last question" in prompt and "old question 0" not in prompt
    assert len(example["prompt_ids"]) + max(len(example["chosen_ids"]), len(example["rejected_ids"])) <= cutoff
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert example["chosen_ids"][-1] == end

    # a response longer than the budget: cut in the middle, end-of-turn kept
    pair = _pair(prompt="q " * 40, chosen="long answer " * 40, rejected="short")
    example = PairTokenizer(tokenizer, Renderer(tokenizer), 48)(pair, DataStats())
    assert len(example["prompt_ids"]) + len(example["chosen_ids"]) <= 48
    assert example["chosen_ids"][-1] == end and len(example["prompt_ids"]) >= 12


def test_identical_after_truncation_is_dropped(tokenizer):
    pair = _pair(prompt="q", chosen="same start " * 30 + "A", rejected="same start " * 30 + "B")
    stats = DataStats()
    assert PairTokenizer(tokenizer, Renderer(tokenizer), 24)(pair, stats) is None
    assert stats.dropped["truncated to identical"] == 1
    with pytest.raises(DataError, match="strict_data is on"):
        PairTokenizer(tokenizer, Renderer(tokenizer), 24, strict=True)(pair, DataStats())


FEATURES = [
    {"prompt_ids": [1, 2, 3], "chosen_ids": [4], "rejected_ids": [5, 6], "margin": 1.0},
    {"prompt_ids": [7], "chosen_ids": [8, 9, 10, 11], "rejected_ids": [12], "margin": None, "soft_label": 0.6},
]


def test_padding_collator_shapes_and_sides():
    batch = PairwiseDataCollatorWithPadding(0)(FEATURES)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 0], [7, 8, 9, 10, 11], [1, 2, 3, 5, 6], [7, 12, 0, 0, 0]]
    assert batch["attention_mask"].sum(-1).tolist() == [4, 5, 5, 2]
    assert batch["margin"].tolist() == [1.0, 0.0] and batch["soft_label"].tolist() == pytest.approx([1.0, 0.6])
    left = PairwiseDataCollatorWithPadding(0, pad_to_multiple_of=8, padding_side="left")(FEATURES)
    assert left["input_ids"].shape == (4, 8) and left["input_ids"][3].tolist() == [0] * 6 + [7, 12]


def test_packed_collator_layout():
    batch = PackedPairCollator(prefix_sharing=True)(FEATURES)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 3, 4, 0, 1, 2, 3, 4, 1]]
    assert batch["pair_blocks"].tolist() == [[0, 3, 1, 2], [6, 1, 4, 1]]
    assert batch["score_index"].tolist() == [3, 10, 5, 11]
    plain = PackedPairCollator(prefix_sharing=False)(FEATURES)
    assert plain["input_ids"].shape == (1, 16) and plain["score_index"].tolist() == [3, 13, 8, 15]


# --------------------------------------------------------------------------- sources and errors
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(tmp_path, **kw):
    return DataArguments(dataset_dir=str(tmp_path), cutoff_len=128, **kw)


def test_local_formats_and_mixing(tokenizer, tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 3)
    (tmp_path / "b.json").write_text(json.dumps([{"chosen": "\n\nHuman: x\n\nAssistant: y",
                                                  "rejected": "\n\nHuman: x\n\nAssistant: z"}] * 2))
    import datasets

    datasets.Dataset.from_list([{"prompt": "Q", "chosen": "C", "rejected": "D"}] * 4).to_parquet(
        str(tmp_path / "c.parquet"))
    datasets.Dataset.from_list([{"prompt": "Q", "chosen": "C", "rejected": "D"}] * 5).to_csv(str(tmp_path / "d.csv"))
    args = _args(tmp_path, dataset="a.jsonl,b.json,c.parquet,d.csv")
    train, evaluation, summaries = build_datasets(args, tokenizer)
    assert len(train) == 14 and evaluation is None
    assert "14 pairs read, 14 kept" in summaries[0]
    train, evaluation, _ = build_datasets(_args(tmp_path, dataset="a.jsonl,d.csv", val_size=0.25), tokenizer)
    assert (len(train), len(evaluation)) == (6, 2)
    train, _, _ = build_datasets(_args(tmp_path, dataset="d.csv", max_samples=2), tokenizer)
    assert len(train) == 2


@pytest.fixture
def llamafactory_dir(tmp_path):
    folder = tmp_path / "lf"
    folder.mkdir()
    _write_jsonl(folder / "alpaca_rank.jsonl", [
        {"instruction": "Say hi", "input": "", "chosen": "Hi!", "rejected": "No."},
        {"instruction": "Add", "input": "2+2", "chosen": "4", "rejected": "5", "history": [["a", "b"]]},
    ])
    (folder / "sharegpt_rank.json").write_text(json.dumps([
        {"conversations": [{"from": "human", "value": "Q1"}], "chosen": {"from": "gpt", "value": "good"},
         "rejected": {"from": "gpt", "value": "bad"}},
    ]))
    (folder / "dataset_info.json").write_text(json.dumps({
        "my_alpaca": {"file_name": "alpaca_rank.jsonl", "ranking": True},
        "my_sharegpt": {"file_name": "sharegpt_rank.json", "formatting": "sharegpt", "ranking": True,
                        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "sft_only": {"file_name": "alpaca_rank.jsonl"},
    }))
    return folder


def test_llamafactory_folder(tokenizer, llamafactory_dir):
    args = DataArguments(dataset="my_alpaca,my_sharegpt", dataset_dir=str(llamafactory_dir), cutoff_len=128)
    train, _, summaries = build_datasets(args, tokenizer)
    assert len(train) == 3
    assert "Add\n2+2" in tokenizer.decode(train[1]["prompt_ids"])
    assert tokenizer.decode(train[2]["chosen_ids"]).startswith("good")
    with pytest.raises(DataError, match=r"dataset 'my_alpca' is not in .*known names: my_alpaca, my_sharegpt"):
        build_datasets(DataArguments(dataset="my_alpca", dataset_dir=str(llamafactory_dir)), tokenizer)
    with pytest.raises(DataError, match="is not a ranking data set"):
        build_datasets(DataArguments(dataset="sft_only", dataset_dir=str(llamafactory_dir)), tokenizer)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a",\n',
         r"bad.jsonl:2: malformed JSON"),
        ("", r"bad.jsonl: the file is empty"),
        ('{"question": "q", "answer": "a"}\n',
         r"cannot tell the data format from the columns \['answer', 'question'\]"),
        ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": ["x"], "rejected": "b"}\n',
         r"bad.jsonl:2: column 'chosen' should be dict, found str"),
        ('[1, 2]\n', r"bad.jsonl:1: expected a JSON object, found list"),
    ],
)
def test_bad_input_errors(tokenizer, tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        build_datasets(_args(tmp_path, dataset=str(tmp_path / "bad.jsonl")), tokenizer)


def test_missing_columns_and_missing_file(tokenizer, tmp_path):
    _write_jsonl(tmp_path / "x.jsonl", [{"conversations": [], "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"missing column\(s\) \['prompt'\] for the explicit format; columns found"):
        build_datasets(_args(tmp_path, dataset=str(tmp_path / "x.jsonl"), formatting="explicit"), tokenizer)
    with pytest.raises(DataError, match="dataset 'nope.jsonl' not found"):
        build_datasets(_args(tmp_path, dataset="nope.jsonl"), tokenizer)


def test_skips_are_counted_or_strict(tokenizer, tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "", "rejected": "b"},
            {"prompt": "q", "chosen": "same", "rejected": "same"}]
    _write_jsonl(tmp_path / "s.jsonl", rows)
    _, _, summaries = build_datasets(_args(tmp_path, dataset=str(tmp_path / "s.jsonl")), tokenizer)
    assert "3 pairs read, 1 kept; dropped: empty response 1, identical chosen/rejected 1" in summaries[0]
    with pytest.raises(DataError, match=r"s.jsonl:2: empty chosen or rejected response \(strict_data is on"):
        build_datasets(_args(tmp_path, dataset=str(tmp_path / "s.jsonl"), strict_data=True), tokenizer)


def test_demo_has_fixed_disjoint_splits(tokenizer):
    from discorm.data import demo

    train, test = demo.rows("train"), demo.rows("test")
    assert len(train) == 400 and len(test) == 100 and demo.rows("train") == train
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    train_set, eval_set, _ = build_datasets(DataArguments(dataset="demo"), tokenizer)
    assert (len(train_set), len(eval_set)) == (400, 100)


def test_preview_cli(tiny_llama, llamafactory_dir, tmp_path, capsys):
    from discorm.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {tiny_llama}\ndataset: my_sharegpt,my_alpaca\n"
                      f"dataset_dir: {llamafactory_dir}\n")
    assert main(["data", "preview", str(config), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "pair 0: prompt" in out and "--- chosen" in out and "3 pairs read, 3 kept" in out
    assert "<|im_start|>assistant" in out


def test_tokenization_cache_is_reused(tokenizer, tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 3)
    first, _, _ = build_datasets(_args(tmp_path, dataset="a.jsonl"), tokenizer)
    second, _, summaries = build_datasets(_args(tmp_path, dataset="a.jsonl"), tokenizer)
    assert first[:] == second[:] and "3 pairs read" in summaries[0]
    _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 4)
    assert len(build_datasets(_args(tmp_path, dataset="a.jsonl"), tokenizer)[0]) == 4


def test_packed_collator_matches_padding_collator_tokens():
    packed = PackedPairCollator()(FEATURES)
    padded = PairwiseDataCollatorWithPadding(0)(FEATURES)
    ids = packed["input_ids"][0]
    for row, (start, p, c, r) in enumerate(packed["pair_blocks"].tolist()):
        chosen = torch.cat([ids[start : start + p + c]])
        rejected = torch.cat([ids[start : start + p], ids[start + p + c : start + p + c + r]])
        assert chosen.tolist() == padded["input_ids"][row][: p + c].tolist()
        assert rejected.tolist() == padded["input_ids"][2 + row][: p + r].tolist()


def test_worker_processes_give_the_same_tokens(tokenizer):
    single, _, _ = build_datasets(DataArguments(dataset="demo", overwrite_cache=True), tokenizer)
    parallel, _, summaries = build_datasets(
        DataArguments(dataset="demo", preprocessing_num_workers=2, overwrite_cache=True), tokenizer)
    assert single[:] == parallel[:] and "400 pairs read, 400 kept" in summaries[0]


def test_a_column_missing_from_the_first_rows_is_kept(tokenizer, tmp_path):
    """A margin given only on a later row reaches the batches (datasets' from_list reads the first row's keys)."""
    rows = [{"prompt": "q", "chosen": f"a {i}", "rejected": f"b {i}"} for i in range(4)]
    rows[2]["margin"] = 2.5
    _write_jsonl(tmp_path / "m.jsonl", rows)
    train, _, _ = build_datasets(_args(tmp_path, dataset=str(tmp_path / "m.jsonl")), tokenizer)
    assert train["margin"] == [None, None, 2.5, None]
    assert train["source"] == [f"{tmp_path / 'm.jsonl'}:{i}" for i in range(1, 5)]
    batch = PairwiseDataCollatorWithPadding(0)(list(train))
    assert batch["margin"].tolist() == [0.0, 0.0, 2.5, 0.0] and batch["sources"] == train["source"]
