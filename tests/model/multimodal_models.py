"""Tiny random vision-language checkpoints of three families, with tiny processors (a local tokenizer plus the
family's image tokens): built offline in a second."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from tests.conftest import make_tokenizer

IMAGE_TOKENS = ["<image>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<fake_token_around_image>",
                "<global-img>", "<end_of_utterance>"]
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
FAMILIES = ("llava", "qwen2_vl", "idefics3")


class ImageOnlyQwen2VLProcessor(transformers.Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor (which needs torchvision, absent here)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def _tokenizer(path: Path):
    tokenizer = make_tokenizer(path)
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    return tokenizer


def make_vlm(path: Path, family: str):
    """(checkpoint folder, processor) of a tiny random ``family`` model; the processor is saved with it where the
    family's processor can be saved and loaded without torchvision."""
    tokenizer = _tokenizer(path)
    vocab, image_id = len(tokenizer), tokenizer.convert_tokens_to_ids
    torch.manual_seed(0)
    if family == "llava":
        config = transformers.LlavaConfig(
            text_config=transformers.LlamaConfig(vocab_size=vocab, **TEXT),
            vision_config=transformers.CLIPVisionConfig(image_size=28, patch_size=7, **VISION),
            image_token_id=image_id("<image>"), vision_feature_select_strategy="full", vision_feature_layer=-1)
        model = transformers.LlavaForConditionalGeneration(config)
        image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 28},
                                                             crop_size={"height": 28, "width": 28})
        processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                                                vision_feature_select_strategy="full",
                                                num_additional_image_tokens=1)  # CLIP's class token
    elif family == "qwen2_vl":
        config = transformers.Qwen2VLConfig(
            text_config=dict(vocab_size=vocab, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                                "rope_theta": 10000.0}, **TEXT),
            vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                               spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=image_id("<|image_pad|>"), vision_start_token_id=image_id("<|vision_start|>"),
            vision_end_token_id=image_id("<|vision_end|>"))
        model = transformers.Qwen2VLForConditionalGeneration(config)
        image_processor = transformers.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 84, patch_size=14,
                                                                merge_size=2, temporal_patch_size=2)
        processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    elif family == "idefics3":
        config = transformers.Idefics3Config(
            text_config=transformers.LlamaConfig(vocab_size=vocab, **TEXT),
            vision_config=transformers.Idefics3VisionConfig(image_size=28, patch_size=7, **VISION),
            scale_factor=2, image_token_id=image_id("<image>"))
        model = transformers.Idefics3ForConditionalGeneration(config)
        image_processor = transformers.Idefics3ImageProcessorPil(size={"longest_edge": 28},
                                                                 max_image_size={"longest_edge": 28},
                                                                 do_image_splitting=False)
        processor = transformers.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                                   image_seq_len=4)
    else:
        raise ValueError(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, processor
