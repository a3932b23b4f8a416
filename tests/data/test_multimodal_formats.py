"""Multimodal preference data: LlamaFactory's layouts (sharegpt rlhf_v / vlfeedback rows with `images`, rlaif_v
rows with `image`), TRL/OpenAI content parts and data URIs load unchanged, through a file and through
dataset_info.json, into records whose prompt holds one <image> per image and whose meta["images"] holds the
checked sources; every bad image input stops the load naming the file, the row and the key."""

import base64
import io
import json

import datasets
import pyarrow
import pyarrow.parquet
import pytest
from PIL import Image

from discorm.data import loader
from discorm.data.formats import detect_format
from discorm.data.loader import ReadOptions, _record, load_pairs, pairs_from_rows
from discorm.data.preview import preview
from discorm.data.rows import to_conversation
from discorm.data.tokenize import DataStats
from discorm.errors import DataError
from discorm.model.heads import Attribute


def _draw(path, colour, kind="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (16, 12), colour)
    image.paste((255, 255, 255), (2, 2, 8, 8))
    image.save(path, format=kind)
    return path


def _data_uri(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _load(path, attributes=(), **read):
    return load_pairs(str(path), ReadOptions(dataset_dir=str(path.parent), **read), DataStats(), attributes=attributes)


def _sharegpt(images, question="<image>What colour is the square?", chosen="Red.", rejected="Blue."):
    return {"conversations": [{"from": "human", "value": question}], "chosen": {"from": "gpt", "value": chosen},
            "rejected": {"from": "gpt", "value": rejected}, "images": images}


@pytest.fixture
def pictures(tmp_path):
    return {"red": _draw(tmp_path / "imgs" / "red.png", "red"), "blue": _draw(tmp_path / "imgs" / "blue.jpg", "blue",
                                                                              "JPEG")}


# ----------------------------------------------------------------------------- layouts read unchanged
def test_rlhf_v_and_vlfeedback_sharegpt_rows(tmp_path, pictures):
    rows = [_sharegpt(["imgs/red.png"]),  # vlfeedback: one image
            {**_sharegpt(["imgs/red.png", "imgs/blue.jpg"], "<image>Left, and <image> right: which is red?"),
             "conversations": [{"from": "system", "value": "Look closely."},
                               {"from": "human", "value": "<image>Left, and <image> right: which is red?"}]}]
    path = _jsonl(tmp_path / "rlhf_v.jsonl", rows)
    assert detect_format(list(rows[0]), "x") == "sharegpt"
    first, second = _load(path)
    assert first.prompt == [{"role": "user", "content": "<image>What colour is the square?"}]
    assert first.meta["images"] == [str(pictures["red"])]
    assert [m["role"] for m in second.prompt] == ["system", "user"]
    assert second.meta["images"] == [str(pictures["red"]), str(pictures["blue"])]
    assert second.chosen == [{"role": "assistant", "content": "Red."}]
    raw = datasets.Dataset.from_list([_record(first), _record(second)])
    assert raw["images"] == [[str(pictures["red"])], [str(pictures["red"]), str(pictures["blue"])]]


def test_rlaif_v_rows_get_their_image_at_the_start_of_the_question(tmp_path, pictures):
    rows = [{"question": "What colour is the square?", "chosen": "Red.", "rejected": "Blue.", "image": "imgs/red.png",
             "ds_name": "rlaif", "origin_dataset": "x"},
            {"question": "And <image> this one?", "chosen": "Blue.", "rejected": "Red.", "image": "imgs/blue.jpg"}]
    path = _jsonl(tmp_path / "rlaif_v.jsonl", rows)
    assert detect_format(list(rows[0]), "x") == "rlaif_v"
    first, second = _load(path)
    assert first.prompt == [{"role": "user", "content": "<image>What colour is the square?"}]
    assert second.prompt == [{"role": "user", "content": "And <image> this one?"}]
    assert (first.meta["images"], second.meta["images"]) == ([str(pictures["red"])], [str(pictures["blue"])])


def test_dataset_info_entries_read_images_from_dataset_dir(tmp_path, pictures):
    """LlamaFactory's entries as it ships them (file_name in place of hf_hub_url); the data files lie in a
    subfolder, the image paths are relative to dataset_dir, and one climbs out of it (a training set's paths are
    the user's own: only existence is checked)."""
    outside = _draw(tmp_path.parent / f"{tmp_path.name}_outside.png", "green")
    _jsonl(tmp_path / "files" / "rlhf_v.jsonl", [_sharegpt(["imgs/red.png"]), _sharegpt([f"../{outside.name}"])])
    _jsonl(tmp_path / "files" / "rlaif_v.jsonl",
           [{"question": "Colour?", "chosen": "Blue.", "rejected": "Red.", "image": "imgs/blue.jpg"}])
    info = {"rlhf_v": {"file_name": "files/rlhf_v.jsonl", "ranking": True, "formatting": "sharegpt",
                       "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected",
                                   "images": "images"}},
            "rlaif_v": {"file_name": "files/rlaif_v.jsonl", "ranking": True,
                        "columns": {"prompt": "question", "chosen": "chosen", "rejected": "rejected",
                                    "images": "image"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    read = ReadOptions(dataset_dir=str(tmp_path))
    pairs = load_pairs("rlhf_v,rlaif_v", read, DataStats())
    assert [p.meta["images"] for p in pairs] == [[str(pictures["red"])], [str(outside)], [str(pictures["blue"])]]
    assert pairs[2].prompt == [{"role": "user", "content": "<image>Colour?"}]


def test_a_data_folder_reads_its_images_from_itself(tmp_path):
    picture = _draw(tmp_path / "set" / "red.png", "red")
    _jsonl(tmp_path / "set" / "a.jsonl", [_sharegpt(["red.png"])])
    _jsonl(tmp_path / "set" / "b.jsonl", [_sharegpt([str(picture)], chosen="Crimson.")])
    pairs = load_pairs(str(tmp_path / "set"), ReadOptions(dataset_dir=str(tmp_path / "elsewhere")), DataStats())
    assert [p.meta["images"] for p in pairs] == [[str(picture)], [str(picture)]]


def test_content_parts_become_placeholders_and_images(tmp_path, pictures):
    uri = _data_uri("blue")
    rows = [{"prompt": [{"role": "user", "content": [
                {"type": "image", "image": "imgs/red.png"}, {"type": "text", "text": "Which colour?"},
                {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": " And this?"}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "Red, then blue."}]}],
             "rejected": "Blue, then red."},
            # TRL's layout: bare image parts, the images in the `images` column
            {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
             "chosen": "Red.", "rejected": "Blue.", "images": [str(pictures["red"])]},
            # OpenAI's Responses parts
            {"prompt": [{"role": "user", "content": [{"type": "input_text", "text": "Colour? "},
                                                     {"type": "input_image", "image_url": uri}]}],
             "chosen": "Blue.", "rejected": "Red."}]
    first, second, third = _load(_jsonl(tmp_path / "parts.jsonl", rows))
    assert first.prompt == [{"role": "user", "content": "<image>Which colour?<image> And this?"}]
    assert first.meta["images"] == [str(pictures["red"]), uri]
    assert first.chosen == [{"role": "assistant", "content": "Red, then blue."}]
    assert second.prompt[0]["content"] == "<image>Colour?" and second.meta["images"] == [str(pictures["red"])]
    assert third.prompt[0]["content"] == "Colour? <image>" and third.meta["images"] == [uri]


def test_data_uris_pil_images_and_parquet_bytes(tmp_path, pictures):
    uri = _data_uri("red")
    assert _load(_jsonl(tmp_path / "u.jsonl", [_sharegpt([uri])]))[0].meta["images"] == [uri]
    png = pictures["red"].read_bytes()
    table = tmp_path / "t.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"question": ["Colour?"], "chosen": ["Red."], "rejected": ["Blue."],
                                               "image": [{"bytes": png, "path": None}]}), table)
    (pair,) = _load(table)
    assert pair.meta["images"][0].startswith("data:image") and pair.prompt[0]["content"] == "<image>Colour?"
    hub_row = {"question": "Colour?", "chosen": "Red.", "rejected": "Blue.", "image": Image.open(pictures["red"])}
    ((_, from_hub),) = pairs_from_rows([("hub row 0", hub_row)], None, "hub", ReadOptions(), DataStats())
    stored = _record(from_hub)["images"][0]
    assert stored.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(stored.partition(",")[2])))
    assert decoded.size == (16, 12) and decoded.getpixel((0, 0)) == (255, 0, 0)


def test_image_features_keep_their_file_bytes(tmp_path, pictures, monkeypatch):
    """A table saved by `datasets` with an image feature, and a Hub set (RLAIF-V's columns) standing in for
    load_dataset: the images are stored as their original bytes, not decoded and re-encoded."""
    jpeg = pictures["blue"].read_bytes()
    features = datasets.Features({"question": datasets.Value("string"), "chosen": datasets.Value("string"),
                                  "rejected": datasets.Value("string"), "image": datasets.Image()})
    table = datasets.Dataset.from_dict({"question": ["Colour?"], "chosen": ["Blue."], "rejected": ["Red."],
                                        "image": [{"bytes": jpeg, "path": None}]}, features=features)
    table.to_parquet(str(tmp_path / "saved.parquet"))
    expected = "data:image;base64," + base64.b64encode(jpeg).decode()
    assert _load(tmp_path / "saved.parquet")[0].meta["images"] == [expected]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset, split, cache_dir: table)
    (pair,) = load_pairs("openbmb/RLAIF-V-Dataset", ReadOptions(dataset_dir=str(tmp_path)), DataStats())
    assert pair.meta["images"] == [expected] and pair.prompt[0]["content"] == "<image>Colour?"


def test_lists_and_rated_rows_carry_images_and_text_rows_none(tmp_path, pictures):
    rows = [{"prompt": "<image>Colour?", "responses": ["Red.", "Blue.", "Green."], "ranking": [0, 1, 2],
             "images": ["imgs/red.png"]},
            {"prompt": "Colour?", "responses": ["Red.", "Blue."], "ranking": [0, 1]}]
    ranked, text = _load(_jsonl(tmp_path / "l.jsonl", rows))
    assert ranked.meta["images"] == [str(pictures["red"])] and "images" not in text.meta
    assert _record(text)["images"] is None
    rated = _jsonl(tmp_path / "r.jsonl", [{"prompt": "Colour?", "response": "Red.", "score": 4,
                                           "image": "imgs/blue.jpg"}])
    (item,) = _load(rated, attributes=(Attribute("score", 0, 5),))
    assert item.prompt[0]["content"] == "<image>Colour?" and item.meta["images"] == [str(pictures["blue"])]
    literal = _load(_jsonl(tmp_path / "t.jsonl", [{"prompt": "Is <image> an HTML tag?", "chosen": "No.",
                                                    "rejected": "Yes."}]))
    assert literal[0].prompt[0]["content"] == "Is <image> an HTML tag?" and "images" not in literal[0].meta


class _Encoder:
    """Stands in for the model's encoder (which expands the placeholders): the loader's part is the column."""

    def __init__(self, *args):
        pass

    def encode_record(self, record):
        ids = [1] * (2 + len(record["images"] or ()))
        return {"prompt_ids": ids, "chosen_ids": [2], "rejected_ids": [3], "response_ids": None,
                "responses_ids": None, "length": len(ids) + 1, "truncated": False, "dropped": None,
                "lengths": [len(ids) + 1] * 2, "pair_tokens": 2 * len(ids) + 2, "padded_tokens": 2 * len(ids) + 2}


class _Tokenizer:
    name_or_path = "stand-in"

    def __len__(self):
        return 8


class _Renderer:
    name, chat_template, reasoning, template_kwargs = "stand-in", None, None, None


def test_the_tokenized_data_set_keeps_the_images_column(tmp_path, pictures, monkeypatch):
    monkeypatch.setattr(loader, "PairTokenizer", _Encoder)
    path = _jsonl(tmp_path / "mixed.jsonl", [_sharegpt(["imgs/red.png", "imgs/blue.jpg"], "<image><image>Same?"),
                                             _sharegpt(None, "Colour?")])
    dataset, _ = loader.tokenized_dataset(str(path), _Tokenizer(), _Renderer(), 64, ReadOptions())
    assert dataset["images"] == [[str(pictures["red"]), str(pictures["blue"])], None]
    assert [len(ids) for ids in dataset["prompt_ids"]] == [4, 2]
    text = _jsonl(tmp_path / "text.jsonl", [_sharegpt(None, "Colour?")])
    dataset, _ = loader.tokenized_dataset(str(text), _Tokenizer(), _Renderer(), 64, ReadOptions())
    assert "images" not in dataset.column_names  # a text data set has no images column


# ----------------------------------------------------------------------------- bad inputs
BAD = [
    ("image in a response", {"prompt": "Colour?", "chosen": [{"role": "assistant", "content": [
        {"type": "image", "image": "imgs/red.png"}]}], "rejected": "Blue."},
     r"bad.jsonl:2, chosen\[0\].content part 0: response 'chosen' holds an image; images belong to the prompt"),
    ("placeholder in a response", _sharegpt(["imgs/red.png"], rejected="Look: <image>"),
     r"bad.jsonl:2: response 'rejected' holds an <image> placeholder; images belong to the prompt"),
    ("count mismatch", _sharegpt(["imgs/red.png"], "<image> and <image>?"),
     r"bad.jsonl:2: the prompt has 2 <image> placeholder\(s\) but column 'images' gives 1 image\(s\)"),
    ("empty images with a placeholder", _sharegpt([]),
     r"bad.jsonl:2: the prompt has 1 <image> placeholder\(s\) but column 'images' gives 0 image\(s\)"),
    ("missing file", _sharegpt(["imgs/nope.png"]),
     r"bad.jsonl:2, column 'images' image 0: image file '.*imgs/nope.png' does not exist.*relative to the data file"),
    ("unreadable file", _sharegpt(["imgs/notes.png"]),
     r"bad.jsonl:2, column 'images' image 0: image file '.*notes.png' is not a readable image"),
    ("URL", _sharegpt(["https://example.com/cat.png"]),
     r"bad.jsonl:2, column 'images' image 0: image URL 'https://example.com/cat.png' is not fetched.*data URI"),
    ("non-string image", _sharegpt([42]),
     r"bad.jsonl:2, column 'images' image 0: an image must be a file path, a data URI or a URL, not '42'"),
    ("invalid data URI", _sharegpt(["data:image/png;base64,@@@"]),
     r"bad.jsonl:2, column 'images' image 0: the image data URI holds invalid base64"),
    ("data URI of no image", _sharegpt(["data:image/png;base64," + base64.b64encode(b"plain text").decode()]),
     r"bad.jsonl:2, column 'images' image 0: the image cannot be read"),
    ("image part of a sharegpt response", {**_sharegpt([]), "rejected": {"from": "gpt", "value": [
        {"type": "text", "text": "See "}, {"type": "image_url", "image_url": {"url": "imgs/red.png"}}]}},
     r"bad.jsonl:2, rejected part 1: response 'rejected' holds an image"),
    ("too many pixels", _sharegpt(["imgs/huge.png"]),
     r"bad.jsonl:2, column 'images' image 0: image file '.*huge.png' has 4097x4097 pixels, more than the 16777216"),
    ("video column", {**_sharegpt(["imgs/red.png"]), "videos": ["clip.mp4"]},
     r"bad.jsonl:2: column 'videos' carries videos .*videos and audio are not read \(images are\)"),
    ("video part", {"prompt": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}],
                    "chosen": "a", "rejected": "b"},
     r"bad.jsonl:2: prompt\[0\].content part 0 is a video part; videos and audio are not read"),
    ("unknown part", {"prompt": [{"role": "user", "content": [{"type": "file", "file": "x"}]}],
                      "chosen": "a", "rejected": "b"},
     r"bad.jsonl:2: column 'prompt\[0\].content' should be str or a list of content parts .*part 0 is dict"),
    ("images in a column and in parts", {"prompt": [{"role": "user", "content": [
        {"type": "image", "image": "imgs/red.png"}]}], "chosen": "a", "rejected": "b", "images": ["imgs/red.png"]},
     r"bad.jsonl:2: images come both from column 'images' and from content parts"),
    ("both image columns", {"question": "Q?", "chosen": "a", "rejected": "b", "image": "imgs/red.png",
                            "images": ["imgs/red.png"]},
     r"bad.jsonl:2: both columns 'image' and 'images' give images; keep one images column"),
]


GOOD = {"sharegpt": _sharegpt(["imgs/red.png"]), "explicit": {"prompt": "Q?", "chosen": "a", "rejected": "b"},
        "rlaif_v": {"question": "Q?", "chosen": "a", "rejected": "b", "image": "imgs/blue.jpg"}}


@pytest.mark.parametrize("row, message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_image_inputs_name_the_row_and_the_key(tmp_path, pictures, row, message):
    (tmp_path / "imgs" / "notes.png").write_text("not an image")
    if "huge" in json.dumps(row):
        Image.new("1", (4097, 4097)).save(tmp_path / "imgs" / "huge.png")
    path = _jsonl(tmp_path / "bad.jsonl", [GOOD[detect_format(list(row), "row")], row])  # line 1 reads well
    with pytest.raises(DataError, match=message):
        _load(path)


def test_images_without_a_user_turn_and_in_scoring_inputs(tmp_path, pictures):
    row = {"prompt": [{"role": "system", "content": "Judge."}], "chosen": "a", "rejected": "b",
           "images": ["imgs/red.png"]}
    with pytest.raises(DataError, match=r"n.jsonl:1: the row gives 1 image\(s\) but its prompt has no user message"):
        _load(_jsonl(tmp_path / "n.jsonl", [row]))
    item = {"prompt": "look", "response": [{"role": "assistant", "content": [{"type": "image", "image": "x.png"}]}]}
    with pytest.raises(DataError, match=r"item 3, response\[0\].content part 0: the response holds an image; images "
                                        "belong to the prompt"):
        to_conversation(item, "item 3")


# ----------------------------------------------------------------------------- preview
class _Tokens:
    """A tokenizer as preview reads it: ids 9 are the image token."""

    image_token_id = 9

    def decode(self, ids):
        return " ".join("<img>" if i == 9 else str(i) for i in ids)


def test_preview_counts_images_and_the_image_tokens_sharing_saves():
    dataset = datasets.Dataset.from_list([
        {"prompt_ids": [1, 9, 9, 9, 2], "chosen_ids": [3], "rejected_ids": [4], "responses_ids": None,
         "images": ["/a.png"]},
        {"prompt_ids": [1, 9, 9, 2, 9, 9], "chosen_ids": None, "rejected_ids": None, "responses_ids": [[3], [4], [5]],
         "images": ["/a.png", "/b.png"]},
        {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4], "responses_ids": None, "images": None}])
    text = preview(_Tokens(), dataset, 3, [], ["summary line"])
    assert "images: 1 in the prompt, 3 image tokens; the shared prompt saves 5 tokens (3 of them image tokens)" in text
    assert "images: 2 in the prompt, 4 image tokens; the shared prompt saves 12 tokens (8 of them image tokens)" in text
    assert text.count("images:") == 3  # two examples and the summary; the text pair has no image line
    assert text.endswith("summary line\nimages: 3 in 2 of 3 examples; image tokens: 7, of which sharing each prompt "
                         "across its responses saves 11")

    class _Text(_Tokens):
        image_token_id = None

    assert preview(_Text(), dataset, 0, [], []).endswith(
        "images: 3 in 2 of 3 examples (the tokenizer has no image token: image tokens are not counted)")
