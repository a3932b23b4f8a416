"""The offline multimodal quick start: the image-grounded demo set and the assembled vision model. (Training on
images end to end: tests/train/test_multimodal_training.py.)"""

from __future__ import annotations

import base64
import io
from collections import Counter

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from discorm.data import demo_images
from discorm.data.images import IMAGE_PLACEHOLDER
from discorm.errors import ConfigError
from discorm.model.builtin import BUILTIN_MODELS, VISION_MODEL, VisionTower, assemble_vision_model
from discorm.model.loading import Finetuning, apply_finetuning


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
    tower = VisionTower(image_size=32, patch_size=16, hidden=16, layers=1, heads=2)
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
    for part in ("vision_tower", "multi_modal_projector"):  # the new weights come from the seed: the same twice
        new, old = getattr(rebuilt, part).state_dict(), getattr(model, part).state_dict()
        assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in new)


@pytest.mark.parametrize("kind", ["freeze", "lora"])
def test_train_vision_tower_trains_the_new_vision_side_in_full(tiny_llama, tmp_path, kind):
    assemble_vision_model(tiny_llama, tmp_path / "vlm", VisionTower(image_size=32, patch_size=16, hidden=16,
                                                                    layers=1, heads=2))
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
    assert BUILTIN_MODELS[VISION_MODEL] == {"language_model": "smollm2-135m-instruct"}
