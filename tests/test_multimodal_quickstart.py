"""The offline multimodal quick start: the image-grounded demo set and the assembled vision model. (Training on
images end to end: tests/train/test_multimodal_training.py.)"""

from __future__ import annotations

import base64
import io
import json
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from discorm.data import demo_images
from discorm.data.images import IMAGE_PLACEHOLDER
from discorm.errors import ConfigError, ModelError
from discorm.model import builtin
from discorm.model.builtin import (
    BUILTIN_MODELS,
    VISION_MODEL,
    VisionTower,
    align_vision_to_words,
    assemble_vision_model,
)
from discorm.model.loading import Finetuning, apply_finetuning
from tests.conftest import REPO


def _image(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_demo_images_are_deterministic_and_sized():
    first, again = demo_images.image_rows("train"), demo_images.image_rows("train")
    assert first == again
    assert len(first) == 504 and len(demo_images.image_rows("test")) == 144
    row = first[0]
    assert row["conversations"][0]["value"].count(IMAGE_PLACEHOLDER) == len(row["images"]) == 1
    assert _image(row["images"][0]).size == (demo_images.IMAGE_SIZE, demo_images.IMAGE_SIZE)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_answer_is_chosen_as_often_as_rejected(split):
    rows = demo_images.image_rows(split)
    for question, _ in demo_images.QUESTIONS.values():
        asked = [r for r in rows if r["conversations"][0]["value"].endswith(question)]
        assert len(asked) == len(rows) // 3
        chosen = Counter(r["chosen"]["value"] for r in asked)
        rejected = Counter(r["rejected"]["value"] for r in asked)
        assert chosen == rejected and len(chosen) >= 3
        pairs = Counter((r["chosen"]["value"], r["rejected"]["value"]) for r in asked)
        assert len(set(pairs.values())) == 1  # every ordered (chosen, rejected) pair equally often


def test_splits_share_no_picture_and_the_blank_control_has_one_grey_picture():
    train = {r["images"][0] for r in demo_images.image_rows("train")}
    test = {r["images"][0] for r in demo_images.image_rows("test")}
    assert len(train) > 400 and not train & test
    blank = demo_images.blank_rows("test")
    plain = demo_images.image_rows("test")
    assert [(r["chosen"], r["rejected"]) for r in blank] == [(r["chosen"], r["rejected"]) for r in plain]
    assert len({r["images"][0] for r in blank}) == 1
    grey = _image(blank[0]["images"][0]).convert("RGB")
    assert grey.size == (demo_images.IMAGE_SIZE,) * 2 and grey.getcolors() == [(64 * 64, demo_images.BLANK)]


def test_pictures_show_their_answer():
    """The chosen answer is true of the picture: the colour's pixels are there, the count of shapes is right."""
    for row in demo_images.image_rows("test")[:60]:
        image = _image(row["images"][0]).convert("RGB")
        question, answer = row["conversations"][0]["value"], row["chosen"]["value"]
        colours = {c for _, c in image.getcolors(maxcolors=4096)}
        if question.endswith("What colour is the shape?"):
            name = answer.removeprefix("It is ").removesuffix(".")
            others = set(demo_images.COLOURS.values()) - {demo_images.COLOURS[name]}
            assert demo_images.COLOURS[name] in colours and not colours & others


def test_vision_model_assembles_from_a_text_model_and_loads_offline(tiny_llama, tmp_path):
    tower = VisionTower(image_size=32, patch_size=16, hidden=16, layers=1, heads=2, align_steps=20, align_batch=8)
    assemble_vision_model(tiny_llama, tmp_path / "vlm", tower)
    processor = AutoProcessor.from_pretrained(tmp_path / "vlm")
    model = AutoModel.from_pretrained(tmp_path / "vlm")
    text = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}What colour is the shape?"}], tokenize=False)
    image = _image(demo_images.image_rows("test")[0]["images"][0])
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    image_id = model.config.image_token_id
    assert int((inputs["input_ids"] == image_id).sum()) == tower.image_tokens == 4
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    out = model(**inputs)
    assert out.last_hidden_state.shape[-1] == 32
    source = AutoModel.from_pretrained(tiny_llama)
    assert torch.equal(model.language_model.layers[0].mlp.up_proj.weight, source.layers[0].mlp.up_proj.weight)
    again = tmp_path / "again"
    assemble_vision_model(tiny_llama, again, tower)
    rebuilt = AutoModel.from_pretrained(again)
    for part in ("vision_tower", "multi_modal_projector"):  # drawn and aligned from the seed: the same twice
        new, old = getattr(rebuilt, part).state_dict(), getattr(model, part).state_dict()
        assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


@pytest.mark.parametrize("kind", ["freeze", "lora"])
def test_train_vision_tower_trains_the_new_vision_side_in_full(tiny_llama, tmp_path, kind):
    assemble_vision_model(tiny_llama, tmp_path / "vlm", VisionTower(image_size=32, patch_size=16, hidden=16,
                                                                    layers=1, heads=2, align_steps=0))
    for train_vision in (False, True):
        backbone = apply_finetuning(AutoModel.from_pretrained(tmp_path / "vlm"),
                                    Finetuning(kind, freeze_trainable_layers=1, train_vision_tower=train_vision))
        names = {n: p.requires_grad for n, p in backbone.named_parameters() if "original_module" not in n}
        vision = {n for n in names if "vision_tower" in n or "multi_modal_projector" in n}
        assert vision and {n for n in vision if names[n]} == (vision if train_vision else set())
        text = [n for n in names if "language_model.layers." in n and "lora_" not in n]  # LoRA: base weights frozen
        assert {n for n in text if names[n]} == {n for n in text if "layers.1." in n and kind == "freeze"}


def test_train_vision_tower_refuses_a_text_only_model(tiny_llama):
    with pytest.raises(ConfigError, match="train_vision_tower"):
        apply_finetuning(AutoModel.from_pretrained(tiny_llama), Finetuning("freeze", train_vision_tower=True))


def test_vision_model_is_a_builtin_built_from_the_default():
    assert BUILTIN_MODELS[VISION_MODEL]["language_model"] == "smollm2-135m-instruct"


def test_two_processes_pulling_a_builtin_build_it_once(tmp_path, monkeypatch):
    """A second pull of a built-in model that another process is building waits for that build and uses it."""
    monkeypatch.setenv("DISCORM_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models" / "smollm2-135m-instruct").mkdir(parents=True)  # the default model, "cached"
    builds = []

    def assemble(text_dir, out_dir, tower=None):  # a slow stand-in for the real assembly
        builds.append(out_dir)
        time.sleep(0.5)
        out_dir.mkdir()

    monkeypatch.setattr(builtin, "assemble_vision_model", assemble)
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: builtin.pull_builtin_model(VISION_MODEL), range(2)))
    assert len(builds) == 1 and paths[0] == paths[1] == tmp_path / "home" / "models" / VISION_MODEL
    assert json.loads((paths[0] / builtin.STAMP_FILE).read_text())["version"] == BUILTIN_MODELS[VISION_MODEL]["version"]
    (paths[0] / builtin.STAMP_FILE).unlink()  # an older, unstamped build is rebuilt
    builtin.pull_builtin_model(VISION_MODEL)
    assert len(builds) == 2


def test_alignment_maps_pictures_to_their_caption_words(tiny_llama, monkeypatch):
    """The new vision side learns the language model's embeddings of each picture's caption: the loss falls, the
    language model is untouched, and a held-out picture is never trained on, even when the drawing yields one."""
    tower = VisionTower(image_size=32, patch_size=16, hidden=16, layers=1, heads=2, align_steps=60, align_batch=16,
                        align_lr=3e-3)
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=16),
        text_config=AutoConfig.from_pretrained(tiny_llama).to_dict(), vision_feature_select_strategy="full",
        vision_feature_layer=-1))
    language = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    held_out = [_image(r["images"][0]).convert("RGB") for r in demo_images.image_rows("test")]
    drawn = []

    def drawing(rng):  # every fifth picture a held-out one
        drawn.append(demo_images.captioned_picture(rng) if len(drawn) % 5 else (held_out[len(drawn) % 144], [
            "one", "red", "circle", "."]))
        return drawn[-1]

    seen = []
    processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def images(pictures, **kwargs):
        seen.extend(p.tobytes() for p in pictures)
        return processor(pictures, **kwargs)

    monkeypatch.setattr(builtin, "captioned_picture", drawing)
    losses = align_vision_to_words(model, AutoTokenizer.from_pretrained(tiny_llama), images, tower)
    assert len(losses) == 60 and sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    assert all(torch.equal(v, language[k]) for k, v in model.model.language_model.state_dict().items())
    assert len(seen) == 60 * 16 and len(drawn) > len(seen)
    assert not set(seen) & {p.tobytes() for p in held_out}
    rng = random.Random(0)
    captions = [demo_images.captioned_picture(rng)[1] for _ in range(300)]
    assert {len(words) for words in captions} == {4}
    assert {words[0] for words in captions} == set(demo_images.NUMBER_WORDS.values())
    with pytest.raises(ModelError, match="4 image tokens"):
        align_vision_to_words(model, None, images, VisionTower(image_size=64, patch_size=16))


def test_blank_pictures_leave_any_text_only_scorer_at_exactly_chance():
    """The blanked control cannot beat chance: with every picture the same, a model scores text alone, and every
    ordered answer pair of the held-out split is met as often in one order as in the other."""
    for seed in range(5):
        score = {}
        rng = random.Random(seed)
        rows = demo_images.blank_rows("test")
        right = sum(score.setdefault(r["chosen"]["value"], rng.random()) >
                    score.setdefault(r["rejected"]["value"], rng.random()) for r in rows)
        assert right == len(rows) // 2


@pytest.mark.slow  # builds smollm2-135m-vision on first use (two to three minutes), then trains (about two)
def test_quick_start_through_the_cli_reads_the_pictures(tmp_path):
    """`discorm train examples/multimodal.yaml` as a user runs it: held-out accuracy >= 0.85 (the blanked control
    is at exactly chance for any model: test_blank_pictures_leave_any_text_only_scorer_at_exactly_chance)."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "discorm.cli", "train", str(REPO / "examples" / "multimodal.yaml"),
                           f"output_dir={run}", "disable_tqdm=true"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("held-out accuracy"))
    assert float(line.split(":")[1]) >= 0.85, done.stdout[-3000:]
    results = json.loads((run / "eval" / "eval_results.json").read_text())["sets"]["heldout"]
    assert results["items"] == 144, results
