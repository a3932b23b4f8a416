"""The data-format registry: every name the config and dataset_info.json accept resolves through it, a format a
test registers loads from YAML and from dataset_info.json unchanged, and bad rows of every reader stop the load
naming the file, the row and the key."""

import json
import math

import pandas
import pyarrow
import pyarrow.parquet
import pytest
import yaml
from transformers import AutoTokenizer

from discorm.config import FORMATTINGS, DataArguments, load_args
from discorm.data.formats import FORMATS, DataFormat, describe_formats, detect_format, register_format
from discorm.data.loader import ReadOptions, load_pairs, read_source
from discorm.data.pairs import Pair, build_pair
from discorm.data.tokenize import DataStats
from discorm.errors import ConfigError, DataError
from discorm.model.heads import Attribute
from tests.conftest import build_datasets

ROW = {"prompt": "q", "chosen": "a", "rejected": "b"}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def _jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _load(path, attributes: tuple = (), **read) -> list:
    return load_pairs(str(path), ReadOptions(dataset_dir=str(path.parent), **read), DataStats(), attributes=attributes)


# ----------------------------------------------------------------------------- every name resolves
def test_every_config_choice_resolves_through_the_registry():
    assert list(FORMATTINGS) == ["auto", *FORMATS]
    assert {"explicit", "implicit", "alpaca", "sharegpt", "rated", "listwise", "ultrafeedback",
            "helpsteer3"} <= set(FORMATS)
    for name in FORMATS:
        assert DataArguments(formatting=name).formatting == name  # helpsteer3 was refused here, accepted there
        assert f"{name} (" in DataArguments.__dataclass_fields__["formatting"].metadata["help"]
        assert FORMATS[name].spec().name == name
    allowed = "auto, label_studio, argilla, listwise, "
    with pytest.raises(ConfigError, match=rf"formatting='weird' is not valid; allowed values: {allowed}"):
        DataArguments(formatting="weird")


def test_every_dataset_info_formatting_resolves_through_the_registry(tmp_path):
    _jsonl(tmp_path / "d.jsonl", [ROW])
    info = {name: {"file_name": "d.jsonl", "ranking": True, "formatting": name} for name in FORMATS}
    info["default"] = {"file_name": "d.jsonl", "ranking": True}  # LlamaFactory's default: alpaca
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    read = ReadOptions(dataset_dir=str(tmp_path))
    for name in FORMATS:
        rows, spec = read_source(name, read)
        assert spec.name == name and rows[0][1] == ROW
    assert read_source("default", read)[1].name == "alpaca"
    assert read_source("alpaca", read)[1].column("prompt") == "instruction"
    assert read_source("sharegpt", read)[1].tags["user_tag"] == "human"
    assert read_source("helpsteer3", read)[1].strength_scale == 3.0


def test_detection_order_is_unchanged():
    cases = {("responses", "prompt", "chosen", "rejected"): "listwise",
             ("instruction", "completions", "chosen", "rejected"): "ultrafeedback",
             ("context", "response1", "response2", "overall_preference", "chosen", "rejected"): "helpsteer3",
             ("prompt", "chosen", "rejected", "instruction"): "explicit",
             ("instruction", "chosen", "rejected"): "alpaca",
             ("conversations", "chosen", "rejected"): "sharegpt", ("chosen", "rejected"): "implicit",
             ("prompt", "response", "chosen"): "rated"}
    for columns, name in cases.items():
        assert detect_format(list(columns), "f") == name, columns


# ----------------------------------------------------------------------------- a format a plugin adds
def _toy(row: dict, spec, where: str) -> Pair:
    """A toy pair format: a question and a good and a bad answer."""
    return build_pair(row, spec, where, [{"role": "user", "content": row[spec.column("question")]}],
                      [{"role": "assistant", "content": row[spec.column("good")]}],
                      [{"role": "assistant", "content": row[spec.column("bad")]}])


@pytest.fixture
def toy_format():
    fmt = register_format(DataFormat("toy", "pair", ("question", "good", "bad"), _toy, "question, good, bad",
                                     detect=("question", "good", "bad")))
    yield fmt
    del FORMATS["toy"]


TOY = [{"question": "What is 2 + 2?", "good": "4", "bad": "5", "margin": 2.0},
       {"question": "Capital of France?", "good": "Paris", "bad": "Lyon"}]


def test_a_registered_format_loads_from_yaml(toy_format, tokenizer, tmp_path):
    path = _jsonl(tmp_path / "toy.jsonl", TOY)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dataset": str(path), "formatting": "toy", "cutoff_len": 64,
                                      "output_dir": str(tmp_path / "out")}))
    _, data_args, _, _ = load_args(str(config))
    train, _, summaries = build_datasets(data_args, tokenizer)
    assert len(train) == 2 and "2 pairs read" in summaries[0]
    assert tokenizer.decode(train[0]["prompt_ids"]).endswith("What is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert [tokenizer.decode(train[1][key]) for key in ("chosen_ids", "rejected_ids")] == ["Paris<|im_end|>",
                                                                                          "Lyon<|im_end|>"]
    assert train["margin"] == [2.0, None]
    assert "toy (question, good, bad)" in describe_formats()
    auto = _load(path)  # detected from its columns
    assert [p.chosen[0]["content"] for p in auto] == ["4", "Paris"] and auto[0].margin == 2.0


def test_a_registered_format_loads_from_dataset_info(toy_format, tmp_path):
    _jsonl(tmp_path / "toy.jsonl", [{"q": row["question"], **{k: v for k, v in row.items() if k != "question"}}
                                    for row in TOY])
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"my_toy": {"file_name": "toy.jsonl", "ranking": True, "formatting": "toy", "columns": {"question": "q"}}}))
    pairs = load_pairs("my_toy", ReadOptions(dataset_dir=str(tmp_path)), DataStats())
    assert [(p.prompt[0]["content"], p.chosen[0]["content"], p.rejected[0]["content"], p.margin) for p in pairs] == [
        ("What is 2 + 2?", "4", "5", 2.0), ("Capital of France?", "Paris", "Lyon", None)]


def test_a_format_is_gone_once_unregistered(tmp_path):
    assert "toy" not in FORMATS and "toy" not in FORMATTINGS
    with pytest.raises(ConfigError, match="formatting='toy' is not valid"):
        DataArguments(formatting="toy")
    with pytest.raises(ValueError, match="already registered"):
        register_format(DataFormat("explicit", "pair", (), _toy, ""))
    with pytest.raises(ValueError, match="kinds are pair, list, rated"):
        register_format(DataFormat("toy", "graph", (), _toy, ""))


# ----------------------------------------------------------------------------- bad rows
@pytest.mark.parametrize("column, value, media", [("videos", ["clip.mp4"], "videos"), ("video", "clip.mp4", "videos"),
                                                  ("audios", ["a.wav"], "audio")])
def test_a_media_column_is_refused_naming_file_row_and_column(tmp_path, column, value, media):
    path = _jsonl(tmp_path / "mm.jsonl", [{**ROW, column: None}, {**ROW, column: value}])
    with pytest.raises(DataError, match=rf"mm.jsonl:2: column '{column}' carries {media} .*videos and audio are not "
                                        rf"read \(images are\).*Drop the column"):
        _load(path)


def test_media_columns_of_every_kind_and_reader(tmp_path):
    rated = _jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "response": "a", "score": 1, "videos": ["x.mp4"]}])
    with pytest.raises(DataError, match="r.jsonl:1: column 'videos' carries videos"):
        _load(rated, attributes=(Attribute("score", 0, 5),))
    ranked = _jsonl(tmp_path / "l.jsonl", [{"prompt": "q", "responses": ["a", "b"], "ranking": [0, 1], "audio": "x"}])
    with pytest.raises(DataError, match="l.jsonl:1: column 'audio' carries audio"):
        _load(ranked)
    table = tmp_path / "t.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"prompt": ["q"], "chosen": ["a"], "rejected": ["b"],
                                               "videos": [[{"bytes": b"\x00\x00", "path": None}]]}), table)
    with pytest.raises(DataError, match="t.parquet row 0: column 'videos' carries videos"):
        _load(table)
    empty = _jsonl(tmp_path / "e.jsonl", [{**ROW, "videos": []}, {**ROW, "images": None}, {**ROW, "images": []}])
    assert len(_load(empty)) == 3  # an empty media column carries nothing


def test_header_only_tables_say_no_rows(tmp_path):
    (tmp_path / "h.csv").write_text("prompt,chosen,rejected\n\n")
    with pytest.raises(DataError, match=r"h.csv: no rows found"):
        _load(tmp_path / "h.csv")
    pyarrow.parquet.write_table(pyarrow.table({c: pyarrow.array([], pyarrow.string()) for c in ROW}),
                                tmp_path / "h.parquet")
    with pytest.raises(DataError, match=r"h.parquet: no rows found"):
        _load(tmp_path / "h.parquet")


def test_a_csv_column_named_twice_is_refused(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected,chosen\nq,a,b,c\n")
    with pytest.raises(DataError, match=r"d.csv: the header names the column\(s\) \['chosen'\] more than once"):
        _load(tmp_path / "d.csv")


def test_a_repeated_json_key_is_refused_naming_file_line_and_key(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n'
                                      '{"prompt": "q", "chosen": "a", "rejected": "b", "chosen": "c"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: the key 'chosen' appears twice in one JSON object"):
        _load(tmp_path / "d.jsonl")
    (tmp_path / "n.jsonl").write_text('{"prompt": [{"role": "user", "content": "q", "role": "system"}], '
                                      '"chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"n.jsonl:1: the key 'role' appears twice"):
        _load(tmp_path / "n.jsonl")
    (tmp_path / "d.json").write_text('[{"prompt": "q", "chosen": "a", "rejected": "b", "rejected": "c"}]')
    with pytest.raises(DataError, match=r"d.json: the key 'rejected' appears twice"):
        _load(tmp_path / "d.json")
    (tmp_path / "dataset_info.json").write_text('{"x": {"file_name": "d.jsonl"}, "x": {"file_name": "n.jsonl"}}')
    with pytest.raises(DataError, match=r"dataset_info.json: the key 'x' appears twice"):
        load_pairs("x", ReadOptions(dataset_dir=str(tmp_path)), DataStats())


@pytest.mark.parametrize("key", ["strength", "margin", "soft_label", "noise"])
def test_nan_labels_are_refused_naming_row_and_key(tmp_path, key):
    (tmp_path / "n.jsonl").write_text(f'{json.dumps(ROW)}\n{json.dumps(ROW)[:-1]}, "{key}": NaN}}\n')
    with pytest.raises(DataError, match=rf"n.jsonl:2: column '{key}' should be a finite number, found float "
                                        r"\('nan'\)"):
        _load(tmp_path / "n.jsonl", strength_scale=3.0)


def test_nan_in_other_numbers_is_refused(tmp_path):
    rated = tmp_path / "r.jsonl"
    rated.write_text('{"prompt": "q", "response": "a", "score": NaN}\n')
    with pytest.raises(DataError, match=r"r.jsonl:1: the score of 'score' should be a finite number, found float"):
        _load(rated, attributes=(Attribute("score", 0, 5),))
    tie = tmp_path / "t.jsonl"
    tie.write_text(json.dumps(ROW)[:-1] + ', "tie": NaN}\n')
    with pytest.raises(DataError, match=r"t.jsonl:1: column 'tie' should be true or false, found float"):
        _load(tie)
    uf = tmp_path / "uf.jsonl"
    uf.write_text('{"instruction": "q", "completions": [{"response": "a", "fine-grained_score": NaN}, '
                  '{"response": "b", "fine-grained_score": 2}]}\n')
    with pytest.raises(DataError, match=r"uf.jsonl:1 completions\[0\]: fine-grained_score should be a number, found "
                                        r"float \('nan'\)"):
        _load(uf)


def test_empty_table_cells_are_still_absent_labels(tmp_path):
    (tmp_path / "m.csv").write_text("prompt,chosen,rejected,margin\nq,a,b,\nq,a,b,1.5\n")
    assert [p.margin for p in _load(tmp_path / "m.csv")] == [None, 1.5]
    pandas.DataFrame({**{c: [v, v] for c, v in ROW.items()}, "margin": [math.nan, 0.5]}).to_parquet(
        tmp_path / "m.parquet")
    assert [p.margin for p in _load(tmp_path / "m.parquet")] == [None, 0.5]
    rated = _load(_jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "response": "a", "score": 2, "other": None}]),
                  attributes=(Attribute("score", 0, 5), Attribute("other", 0, 5)))
    assert rated[0].scores[0] == 2 and math.isnan(rated[0].scores[1])  # null: not rated
