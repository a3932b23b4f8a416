"""Images through scoring and the server, on a tiny random LLaVA: a served image item scores what
``RewardModel.score`` gives; inputs sharing an image are scored as one block (equal to each alone); every bad image
is a 422 naming its item (never a 500); paths are read only under --media-root (``..``, absolute paths and symlinks
out of it refused); URLs are never fetched unless allowed; /classify takes vLLM's multimodal chat; TRL's reward
function takes GRPO's image inputs."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from discorm.cli import main
from discorm.data.tokenize import Encoder
from discorm.errors import DataError
from discorm.integrations.trl import reward_function
from discorm.model.inference import shared_prefix_groups
from discorm.model.reward_model import RewardModel
from discorm.serve.server import create_app
from tests.conftest import build_model, user_error
from tests.model.multimodal_models import make_vlm
from tests.serve.server_helpers import running, served_model

QUESTION = "What is in this picture?"


def picture(seed: int, height: int = 40, width: int = 56) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(url: str, answer: str = "A red square.") -> list[dict]:
    """vLLM's / OpenAI's multimodal chat: the image as an image_url part."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """(run directory, loaded model) of a tiny LLaVA reward model with perturbed weights."""
    base = tmp_path_factory.mktemp("llava")
    path, _ = make_vlm(base / "backbone", "llava")
    model = build_model(path, "full", head="scalar")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(base / "run")
    return base / "run", RewardModel.from_pretrained(base / "run").eval()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A media root holding red.png, notimage.png (text) and link.png (a symlink to secret.png, outside it)."""
    top = tmp_path_factory.mktemp("media")
    (top / "root").mkdir()
    picture(1).save(top / "root" / "red.png")
    picture(5).save(top / "secret.png")
    (top / "root" / "notimage.png").write_text("not an image")
    (top / "root" / "link.png").symlink_to(top / "secret.png")
    return top


@pytest.fixture(scope="module")
def client(vlm, media):
    app = create_app(vlm[1], max_items=16, media_root=str(media / "root"), max_image_pixels=64 * 64,
                     max_image_bytes=200_000)
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=60) as c:
        yield c


def test_a_served_image_item_scores_what_reward_model_score_gives(client, vlm, media):
    model = vlm[1]
    red, blue = data_uri(picture(1)), data_uri(picture(2))
    items = [chat(red), {"prompt": QUESTION, "response": "A red square.", "images": [red]}, chat(blue),
             {"prompt": QUESTION, "response": "A red square.", "images": ["red.png"]}]  # a path under the root
    served = client.post("/score", json={"inputs": items})
    assert served.status_code == 200, served.text
    expected = [r["reward"] for r in model.score(items[:3])]
    assert served.json()["rewards"][:3] == pytest.approx(expected, abs=1e-5)
    # the same image as a content part, an images list or a file: one score; another image, another score
    assert served.json()["rewards"][1] == pytest.approx(expected[0], abs=1e-5)
    assert served.json()["rewards"][3] == pytest.approx(expected[0], abs=1e-5)
    assert abs(expected[2] - expected[0]) > 1e-3


def test_inputs_sharing_an_image_are_one_block_equal_to_each_alone(vlm):
    model = vlm[1]
    red = data_uri(picture(1))
    items = [chat(red, "A red square."), chat(red, "A blue circle, rather large."), chat(data_uri(picture(2)))]
    encoder = Encoder.for_model(model)
    sequences = [encoder.encode_item(item, f"item {i}") for i, item in enumerate(items)]
    groups = shared_prefix_groups(sequences, images=[s.images for s in sequences],
                                  image_token_id=model.vision.image_token_id)
    assert sorted(sorted(members) for _, members in groups) == [[0, 1], [2]]  # the third: another image
    shared = next(length for length, members in groups if len(members) == 2)
    last_image_token = max(i for i, t in enumerate(sequences[0]) if t == model.vision.image_token_id)
    assert shared > last_image_token  # the image tokens are in the shared prefix, computed once
    together = [r["reward"] for r in model.score(items)]
    alone = [model.score([item])[0]["reward"] for item in items]
    assert together == pytest.approx(alone, abs=1e-5)


def _bomb(tmp_path_factory) -> str:
    buffer = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buffer, "PNG")  # 225 M pixels in a few kB: PIL refuses to open it
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _bad_inputs(media, bomb: str) -> dict:
    """name -> (route, body, words the 422 must hold); the bad item is item 1 of /score bodies."""
    good = chat(data_uri(picture(1)))
    one = lambda item: {"inputs": [good, item]}  # noqa: E731
    images = lambda refs, prompt=QUESTION: one({"prompt": prompt, "response": "a", "images": refs})  # noqa: E731
    return {
        "not an image": ("/score", images(["data:image/png;base64," + base64.b64encode(b"hello").decode()]),
                         "cannot be read"),
        "invalid base64": ("/score", images(["data:image/png;base64,@@@"]), "invalid base64"),
        "not base64": ("/score", images(["data:image/png,abc"]), "not base64"),
        "too many pixels": ("/score", images([data_uri(picture(3, 80, 80))]), "pixels"),
        "too many bytes": ("/score", images([data_uri(picture(4, 60, 60)) + "A" * 300_000]), "bytes"),
        "decompression bomb": ("/score", images([bomb]), "cannot be read"),
        "fewer images than placeholders": ("/score", images([data_uri(picture(1))], "<image> and <image>?"),
                                           "2 <image> placeholder(s)"),
        "more images than placeholders": ("/score", images([data_uri(picture(1))] * 2, "<image>?"),
                                          "1 <image> placeholder(s)"),
        "dot-dot out of the root": ("/score", images(["../secret.png"]), "outside the media root"),
        "absolute path out of the root": ("/score", images([str(media / "secret.png")]), "outside the media root"),
        "symlink out of the root": ("/score", images(["link.png"]), "outside the media root"),
        "missing file": ("/score", images(["nothere.png"]), "does not exist"),
        "a text file named .png": ("/score", images(["notimage.png"]), "cannot be read"),
        "a URL": ("/score", images(["http://127.0.0.1:9/cat.png"]), "not fetched"),
        "not a reference": ("/score", images([42]), "must be a file path"),
        "an image in the response": ("/score", one([{"role": "user", "content": QUESTION}, {
            "role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_uri(picture(1))}}]}]),
            "images belong to the prompt"),
        "an image part without its image": ("/score", one([{"role": "user", "content": [{"type": "image"}]},
                                                            {"role": "assistant", "content": "a"}]),
                                            "without its image"),
        "a video part": ("/score", one([{"role": "user", "content": [{"type": "video_url", "video_url": "v.mp4"}]},
                                        {"role": "assistant", "content": "a"}]), "videos and audio are not read"),
        "TRL images column, wrong count": ("/score", {"prompts": [[{"role": "user", "content": "<image>?"}]] * 2,
                                                      "completions": [[{"role": "assistant", "content": "a"}]] * 2,
                                                      "images": [[data_uri(picture(1))], [data_uri(picture(1))] * 2]},
                                           "1 <image> placeholder(s) but the input gives 2"),
        "a placeholder without an image": ("/score", {"prompts": [[{"role": "user", "content": "<image>?"}]] * 2,
                                                      "completions": [[{"role": "assistant", "content": "a"}]] * 2,
                                                      "images": [[data_uri(picture(1))], []]}, "gives no image"),
        "TRL images column, one short": ("/score", {"prompts": ["a", "b"], "completions": ["c", "d"],
                                                    "images": [[data_uri(picture(1))]]}, '1 "images" for 2'),
        "classify: unreadable image": ("/classify", {"model": "rm", "messages": chat("data:image/png;base64,AAAA")},
                                       "cannot be read"),
        "classify: path without the root": ("/classify", {"model": "rm", "messages": chat("/etc/passwd")},
                                            "outside the media root"),
    }


BAD_NAMES = ["not an image", "invalid base64", "not base64", "too many pixels", "too many bytes", "decompression bomb",
             "fewer images than placeholders", "more images than placeholders", "dot-dot out of the root",
             "absolute path out of the root", "symlink out of the root", "missing file", "a text file named .png",
             "a URL", "not a reference", "an image in the response", "an image part without its image",
             "a video part", "TRL images column, wrong count", "a placeholder without an image",
             "TRL images column, one short",
             "classify: unreadable image", "classify: path without the root"]


@pytest.fixture(scope="module")
def bad_inputs(media, tmp_path_factory):
    return _bad_inputs(media, _bomb(tmp_path_factory))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_images_are_422_naming_the_item(client, bad_inputs, name, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("a URL was fetched")

    monkeypatch.setattr(urllib.request, "urlopen", no_fetch)
    route, body, words = bad_inputs[name]
    answer = client.post(route, json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert words in error and "Traceback" not in error
    item = None if "one short" in name else 0 if route == "/classify" else 1  # one short: the body's shape
    assert answer.json().get("items") == (None if item is None else [item])
    assert item is None or f"item {item}" in error
    assert client.post("/score", json=[chat(data_uri(picture(1)))]).status_code == 200  # serving goes on


def test_paths_are_refused_without_a_media_root_and_urls_fetched_only_when_allowed(vlm, media, monkeypatch):
    fetched = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(url, timeout=None):
        fetched.append(url)
        buffer = Response()
        picture(1).save(buffer, "PNG")
        buffer.seek(0)
        return buffer

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    item = {"prompt": QUESTION, "response": "A red square.", "images": [str(media / "root" / "red.png")]}
    url_item = {"prompt": QUESTION, "response": "A red square.", "images": ["https://example.com/red.png"]}
    with running(create_app(vlm[1])) as (url, _), httpx.Client(base_url=url, timeout=60) as c:
        answer = c.post("/score", json=[item])
        assert answer.status_code == 422 and "no media root is set" in answer.json()["error"]
        answer = c.post("/score", json=[url_item])
        assert answer.status_code == 422 and "not fetched" in answer.json()["error"] and not fetched
    with running(create_app(vlm[1], allow_image_urls=True)) as (url, _), httpx.Client(base_url=url, timeout=60) as c:
        answer = c.post("/score", json=[url_item])
        assert answer.status_code == 200, answer.text
        assert fetched == ["https://example.com/red.png"]
        expected = vlm[1].score([{**url_item, "images": [data_uri(picture(1))]}])[0]["reward"]
        assert answer.json()["rewards"][0] == pytest.approx(expected, abs=1e-5)


def test_an_image_for_a_text_only_model_is_422(tiny_llama, tmp_path):
    model = served_model(tiny_llama, tmp_path / "run", head="scalar")
    with running(create_app(model)) as (url, _), httpx.Client(base_url=url, timeout=60) as c:
        answer = c.post("/score", json=[CHATS_TEXT, chat(data_uri(picture(1)))])
        assert answer.status_code == 422 and answer.json()["items"] == [1]
        assert "item 1: the row has 1 image(s) but this model reads text only" in answer.json()["error"]
    with pytest.raises(DataError, match="input 0: the row has 1 image"):
        model.score([{"prompt": QUESTION, "response": "a", "images": [data_uri(picture(1))]}], show_progress=False)


CHATS_TEXT = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "A cat."}]


def test_classify_takes_vllms_multimodal_chat(client, vlm):
    red = data_uri(picture(1))
    answer = client.post("/classify", json={"model": "rm", "messages": chat(red), "use_activation": False})
    assert answer.status_code == 200, answer.text
    expected = vlm[1].score([chat(red)])[0]["reward"]
    assert answer.json()["data"][0]["probs"][-1] == pytest.approx(expected, abs=1e-5)


def test_trl_reward_function_takes_grpo_image_inputs(client, vlm):
    """GRPOTrainer hands a reward function the prompts with their images filled into {"type": "image"} parts
    (``prepare_multimodal_messages``) and the data set's ``images`` column, one list per completion."""
    red, blue = picture(1), picture(2)
    prompts = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
               for image in (red, red, blue)]
    completions = [[{"role": "assistant", "content": text}] for text in ("A red square.", "A cat.", "A red square.")]
    images = [[red], [red], [blue]]
    expected = [r["reward"] for r in vlm[1].score([
        {"prompt": QUESTION, "response": c[0]["content"], "images": [data_uri(i[0])]}
        for c, i in zip(completions, images)])]
    local = reward_function(vlm[1])(prompts=prompts, completions=completions, images=images)
    assert local == pytest.approx(expected, abs=1e-5)
    plain = [[{"role": "user", "content": QUESTION}]] * 3  # prompts without parts: the images column fills them
    assert reward_function(vlm[1])(prompts=plain, completions=completions, images=images) == pytest.approx(
        expected, abs=1e-5)
    remote = reward_function(str(client.base_url))(prompts=prompts, completions=completions, images=images)
    assert remote == pytest.approx(expected, abs=1e-5)


def test_discorm_score_reads_images_from_the_input_files_folder(vlm, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    picture(1).save(tmp_path / "imgs" / "red.png")
    rows = [{"prompt": QUESTION, "response": "A red square.", "images": ["imgs/red.png"]},
            {"messages": chat("imgs/red.png", "A cat.")},
            {"prompt": [{"role": "user", "content": QUESTION}], "completion": [{"role": "assistant",
                                                                               "content": "A red square."}],
             "images": ["imgs/red.png"]}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["score", str(vlm[0]), "--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 0
    scored = [json.loads(line)["reward"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    red = data_uri(picture(1))
    expected = [r["reward"] for r in vlm[1].score([{**rows[0], "images": [red]}, chat(red, "A cat."),
                                                   {**rows[0], "images": [red]}])]
    assert scored == pytest.approx(expected, abs=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "images": ["imgs/blue.png"]}) + "\n")
    assert main(["score", str(vlm[0]), "--input", str(bad), "--output", str(tmp_path / "bad_out.jsonl")]) != 0
    assert "bad.jsonl:1" in user_error(capsys.readouterr().err) and not (tmp_path / "bad_out.jsonl").exists()


def test_discorm_eval_and_score_read_image_pairs(vlm, tmp_path):
    """LlamaFactory's sharegpt pairs with images: `discorm eval` and `discorm score` score them with their images,
    as RewardModel.score does."""
    (tmp_path / "imgs").mkdir()
    for seed in (1, 2):
        picture(seed).save(tmp_path / "imgs" / f"{seed}.png")
    rows = [{"conversations": [{"from": "human", "value": "<image>What is it?"}],
             "chosen": {"from": "gpt", "value": "A red square."}, "rejected": {"from": "gpt", "value": "A cat."},
             "images": [f"imgs/{seed}.png"]} for seed in (1, 2)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["eval", str(vlm[0]), "--data", f"p={data}", "--out", str(tmp_path / "eval"), "--no-report",
                 "--bootstrap", "100"]) == 0
    assert main(["score", str(vlm[0]), "--input", str(data), "--output", str(tmp_path / "out.jsonl")]) == 0
    expected = [r["reward"] for seed in (1, 2) for r in vlm[1].score([
        {"prompt": "What is it?", "response": answer, "images": [data_uri(picture(seed))]}
        for answer in ("A red square.", "A cat.")])]
    predictions = [json.loads(x) for x in (tmp_path / "eval" / "predictions" / "p.jsonl").read_text().splitlines()]
    assert [s for p in predictions for s in p["scores"]] == pytest.approx(expected, abs=1e-5)
    scored = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [v for s in scored for v in (s["chosen"]["reward"], s["rejected"]["reward"])] == pytest.approx(
        expected, abs=1e-5)
    assert abs(expected[0] - expected[2]) > 1e-3  # the image changes the score


def test_export_refuses_a_vision_language_model_naming_what_to_use(vlm, tmp_path, capsys):
    assert main(["export", str(vlm[0]), "--out", str(tmp_path / "exported")]) == 2
    error = user_error(capsys.readouterr().err)
    assert "is a vision-language reward model" in error and "discorm serve" in error
    assert not (tmp_path / "exported").exists()
