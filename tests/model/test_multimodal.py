"""Vision-language reward models: packed prefix-shared scores and gradients equal the padded computation (every
sequence its own row with its images) on three families (LLaVA, Qwen2-VL with 3-D positions, Idefics3), for
pairs and K = 3 lists with 1 and 2 images, full and LoRA tuning; the vision encoder runs once per image."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.data.pairs import Pair
from discorm.data.templates import Renderer
from discorm.data.tokenize import DataStats, PairTokenizer
from discorm.data.vision import VisionInputs
from discorm.errors import DataError
from discorm.model import inference
from discorm.model.heads import build_head
from discorm.model.inference import score_groups
from discorm.model.loading import Finetuning, apply_finetuning, load_backbone
from discorm.model.multimodal import hidden_size, image_token_types, mrope_positions
from discorm.model.packed import unsupported_reason
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import RewardModelConfig
from tests.model.multimodal_models import FAMILIES, make_vlm


def _image(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGES = [_image(40, 56, 1), _image(28, 28, 2), _image(56, 28, 3)]


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory):
    return request.param, *make_vlm(tmp_path_factory.mktemp(request.param), request.param)


def build(path: Path, processor, kind: str = "full", vision_tower: bool = False) -> RewardModel:
    torch.manual_seed(0)
    backbone = apply_finetuning(load_backbone(str(path)), Finetuning(kind=kind, lora_rank=4,
                                                                      lora_vision_tower=vision_tower))
    head = build_head("scalar", hidden_size(backbone.config))
    config = RewardModelConfig(head="scalar", head_options=head.saved_options(), base_model=str(path),
                               finetuning_type=kind)
    return RewardModel(backbone, head, config, processor.tokenizer, vision=VisionInputs(processor)).eval()


def _ids(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def _features(processor, shape: str) -> list[dict]:
    vision = VisionInputs(processor)
    prompt = lambda text, images: vision.expand(text, images)  # noqa: E731
    one = {"prompt_ids": prompt("<|im_start|>user\nwhat is in <image>?<|im_end|>\n", IMAGES[:1]),
           "images": IMAGES[:1]}
    two = {"prompt_ids": prompt("<|im_start|>user\ncompare <image> with <image> please<|im_end|>\n", IMAGES[1:]),
           "images": IMAGES[1:]}
    text_only = {"prompt_ids": _ids(processor, "hello there"), "chosen_ids": _ids(processor, "yes"),
                 "rejected_ids": _ids(processor, "no thank you")}
    answers = [_ids(processor, t) for t in ("a fox<|im_end|>", "the moon and bees<|im_end|>", "no<|im_end|>")]
    if shape == "pairs":
        return [{**one, "chosen_ids": answers[0], "rejected_ids": answers[1]},
                {**two, "chosen_ids": answers[2], "rejected_ids": answers[0]}]
    if shape == "lists":
        return [{**one, "responses_ids": answers, "levels": [0, 1, 2]},
                {**two, "responses_ids": answers[::-1], "levels": [2, 1, 0]}]
    return [text_only, {**two, "chosen_ids": answers[1], "rejected_ids": answers[2]},
            {**one, "responses_ids": answers, "levels": [0, 0, 1]}]


def _scores_and_grads(model, batch):
    model.zero_grad()
    params = model(**model_inputs(batch)).head_params
    (params.pow(2).sum() + params.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return params.detach(), grads


def _assert_packed_equals_padded(model, processor, features, prefix_sharing=True):
    vision = model.vision
    padded = PairwiseDataCollatorWithPadding(processor.tokenizer.pad_token_id, vision=vision)(features)
    packed = PackedPairCollator(prefix_sharing, vision=vision)(features)
    plain_params, plain_grads = _scores_and_grads(model, padded)
    packed_params, packed_grads = _scores_and_grads(model, packed)
    torch.testing.assert_close(packed_params, plain_params, atol=1e-5, rtol=0)
    assert plain_grads.keys() == packed_grads.keys() and len(plain_grads) > 4
    # relative to each tensor's largest gradient; a gradient that is zero in exact arithmetic (a key bias: the
    # softmax ignores it) is rounding noise, measured against the model's largest gradient instead
    floor = 1e-4 * max(float(g.abs().max()) for g in plain_grads.values())
    for name, grad in plain_grads.items():
        assert (packed_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(floor) < 1e-4, name


@pytest.mark.parametrize("tuning", ["full", "lora", "lora_vision"])
@pytest.mark.parametrize("shape", ["pairs", "lists", "mixed"])
def test_packed_prefix_shared_equals_padded(vlm, tuning, shape):
    family, path, processor = vlm
    model = build(path, processor, "full" if tuning == "full" else "lora", vision_tower=tuning == "lora_vision")
    assert model.check_packing(), model.packing_obstacle
    _assert_packed_equals_padded(model, processor, _features(processor, shape))


def test_packed_without_prefix_sharing_equals_padded(vlm):
    family, path, processor = vlm
    _assert_packed_equals_padded(build(path, processor), processor, _features(processor, "mixed"), False)


def test_lora_targets_the_language_model_unless_asked_for_the_vision_tower(vlm):
    family, path, processor = vlm
    names = lambda m: {n for n, p in m.named_parameters() if p.requires_grad and "lora_" in n}  # noqa: E731
    text_only, with_vision = names(build(path, processor, "lora")), names(build(path, processor, "lora", True))
    vision_key = {"llava": "vision_tower", "qwen2_vl": "visual", "idefics3": "vision_model"}[family]
    assert text_only and not any(vision_key in n for n in text_only)
    assert any(vision_key in n for n in with_vision) and text_only < with_vision


def _vision_tower(model):
    base = model.backbone
    return getattr(base, "vision_tower", None) or getattr(base, "visual", None) or base.vision_model


def test_vision_encoder_runs_once_per_image_packed_and_per_sequence_padded(vlm):
    family, path, processor = vlm
    model = build(path, processor)
    calls = []
    _vision_tower(model).register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
    features = _features(processor, "mixed")  # a text pair, a pair with 2 images, a K=3 list with 1 image
    packed = PackedPairCollator(True, vision=model.vision)(features)
    padded = PairwiseDataCollatorWithPadding(0, vision=model.vision)(features)
    counts = {}
    for name, batch in (("packed", packed), ("padded", padded)):
        calls.clear()
        with torch.no_grad():
            model(**model_inputs(batch))
        assert len(calls) == 1  # one vision-encoder pass per step
        counts[name] = _images_in(family, batch)
    assert counts == {"packed": 3, "padded": 2 * 2 + 3 * 1}


def _images_in(family: str, batch: dict) -> int:
    if family == "qwen2_vl":
        return len(batch["image_grid_thw"])
    if family == "idefics3":  # (rows, images per row, C, H, W), rows padded with all-zero images
        return int((batch["pixel_values"].flatten(2).abs().sum(-1) > 0).sum())
    return len(batch["pixel_values"])


def test_saved_run_reloads_with_its_processor(tmp_path, vlm):
    family, path, processor = vlm
    if family == "qwen2_vl":
        pytest.skip("Qwen2-VL's processor loads only with torchvision (its video processor), absent here")
    model = build(path, processor)
    model.save_pretrained(tmp_path / "run")
    loaded = RewardModel.from_pretrained(tmp_path / "run")
    assert loaded.vision is not None and loaded.vision.image_token == model.vision.image_token
    features = _features(processor, "pairs")
    batch = model_inputs(PackedPairCollator(True, vision=loaded.vision)(features))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).scores, model(**batch).scores, atol=1e-6, rtol=0)


def _encoder(processor, vision=True, cutoff_len=256) -> PairTokenizer:
    renderer = Renderer(processor.tokenizer)
    return PairTokenizer(processor.tokenizer, renderer, cutoff_len, vision=VisionInputs(processor) if vision else None)


def _pair(images, text="what is in <image>?"):
    return Pair([{"role": "user", "content": text}], [{"role": "assistant", "content": "a fox"}],
                [{"role": "assistant", "content": "the moon and bees"}], meta={"source": "data.jsonl:7",
                                                                             "images": images})


def test_encoder_expands_images_and_keeps_them_whole(vlm):
    family, path, processor = vlm
    encoder = _encoder(processor)
    example = encoder(_pair(IMAGES[:1]), DataStats())
    image_id = VisionInputs(processor).image_token_id
    assert example["images"] == IMAGES[:1] and example["prompt_ids"].count(image_id) > 1
    tight = _encoder(processor, cutoff_len=len(example["prompt_ids"]) + 3)
    cut = tight(_pair(IMAGES[:1]), stats := DataStats())
    assert cut["prompt_ids"] == example["prompt_ids"] and stats.truncated == 1  # responses cut, never the image
    assert max(len(cut["chosen_ids"]), len(cut["rejected_ids"])) == 3
    too_small = _encoder(processor, cutoff_len=len(example["prompt_ids"]) - 1)
    assert too_small(_pair(IMAGES[:1]), stats := DataStats()) is None
    assert stats.dropped["images do not fit"] == 1


def test_text_only_model_and_wrong_placeholder_count_are_refused(vlm):
    family, path, processor = vlm
    with pytest.raises(DataError, match=r"data\.jsonl:7: the row has 1 image\(s\) but this model reads text only"):
        _encoder(processor, vision=False)(_pair(IMAGES[:1]), DataStats())
    with pytest.raises(DataError, match=r"data\.jsonl:7: the prompt has 1 <image> placeholder\(s\) but the row has 2"):
        _encoder(processor)(_pair(IMAGES[:2]), DataStats())
    token = VisionInputs(processor).image_token  # typed as text: an image with no pixels behind it
    typed = Pair([{"role": "user", "content": f"what is {token}?"}], [{"role": "assistant", "content": "a fox"}],
                 [{"role": "assistant", "content": "bees"}], meta={"source": "data.jsonl:8"})
    with pytest.raises(DataError, match=r"data\.jsonl:8: a row that gives no image holds the image token"):
        _encoder(processor)(typed, DataStats())
    in_response = _pair(IMAGES[:1])
    in_response.chosen = [{"role": "assistant", "content": f"a {token}"}]
    with pytest.raises(DataError, match=r"data\.jsonl:7: a response holds the image token"):
        _encoder(processor)(in_response, DataStats())
    imported = _encoder(processor)
    imported.score_at = "last_non_pad"  # an imported model's rule reads whole text conversations only
    with pytest.raises(DataError, match=r"data\.jsonl:7: .*score_at=last_non_pad"):
        imported(_pair(IMAGES[:1]), DataStats())


def test_qwen2_vl_branches_get_the_3d_positions_of_their_own_padded_rows(tmp_path):
    path, processor = make_vlm(tmp_path, "qwen2_vl")
    model = build(path, processor)
    features = _features(processor, "lists")
    packed = PackedPairCollator(True, vision=model.vision)(features)
    padded = PairwiseDataCollatorWithPadding(0, vision=model.vision)(features)
    blocks = [tuple(b) for b in packed["pair_blocks"].tolist()]
    positions = mrope_positions(model.backbone, packed["input_ids"], blocks, packed["image_grid_thw"])  # (3, 1, N)
    mask = padded["attention_mask"]
    rows, _ = model.backbone.get_rope_index(padded["input_ids"], image_token_types(model.config, padded["input_ids"]),
                                            padded["image_grid_thw"], attention_mask=mask)  # (3, S, L)
    ends = packed["score_index"].tolist()
    for row, end in enumerate(ends):  # every scored token sits where its padded row puts it, in 3-D
        assert positions[:, 0, end].tolist() == rows[:, row, int(mask[row].sum()) - 1].tolist()
    image_rows = positions[1, 0][packed["input_ids"][0] == model.config.image_token_id]
    assert image_rows.unique().numel() > 1  # height positions vary inside an image: not 1-D positions


def test_gemma3_bidirectional_image_attention_falls_back_to_padded_batches():
    backbone = SimpleNamespace(config=SimpleNamespace(model_type="gemma3"))
    assert "Gemma 3 lets image tokens attend to each other both ways" in unsupported_reason(backbone)


def test_scoring_groups_with_images_packed_or_padded_gives_the_training_scores(vlm, monkeypatch):
    family, path, processor = vlm
    model = build(path, processor)
    features = _features(processor, "lists")
    groups = [{"prompt_ids": f["prompt_ids"], "responses_ids": f["responses_ids"], "images": f["images"]}
              for f in features]
    with torch.no_grad():
        expected = model(**model_inputs(PairwiseDataCollatorWithPadding(0, vision=model.vision)(features)))
    packed = torch.cat(score_groups(model, groups, batch_size=2))
    monkeypatch.setattr(inference, "padded_reason", lambda model: "packing is off")
    padded = torch.cat(score_groups(model, groups, batch_size=2))
    torch.testing.assert_close(packed, expected.head_params, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, expected.head_params, atol=1e-5, rtol=0)
