"""A vision-language model's image inputs: its processor turns ``<image>`` placeholders into the model's image
tokens and images into the model's pixel tensors.

Each family expands an image its own way, and the processor knows how: Qwen2-VL writes
``<|vision_start|><|image_pad|>*n<|vision_end|>`` (n from the image's size), LLaVA ``<image>*n``, Idefics3 /
SmolVLM ``<fake_token_around_image><global-img><image>*n<fake_token_around_image>`` (with row tokens when it splits
images). The pixel tensors keep the names the family's ``forward`` takes (``pixel_values``, ``image_grid_thw``,
``pixel_attention_mask``, ``image_sizes``...). Image processors run on PIL and numpy: transformers falls back to
its ``*ImageProcessorPil`` classes where torchvision is not installed.
"""

from __future__ import annotations

import logging
import os

import torch
from PIL import Image

from discorm.data.images import IMAGE_PLACEHOLDER
from discorm.errors import DataError

logger = logging.getLogger(__name__)

# Families whose processor expects the image token wrapped in vision start/end tokens (their chat templates write
# them around every image); the processor then repeats the image token.
WRAPPED_IMAGE_TOKENS = {"<|image_pad|>": ("<|vision_start|>", "<|vision_end|>")}


class VisionInputs:
    """A transformers processor (``AutoProcessor``) of an image-text-to-text model, used for images only: the text
    of a conversation is rendered and cut by ``data/tokenize.py``'s encoder, which asks ``expand`` for a prompt's
    tokens with its images, and the collators ask ``pixel_inputs`` for a batch's pixel tensors."""

    def __init__(self, processor):
        self.processor = processor
        self.image_token = processor.image_token
        start, end = WRAPPED_IMAGE_TOKENS.get(self.image_token, ("", ""))
        self.placeholder = start + self.image_token + end  # what the processor expands, per image
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """The processor's files (image processor and tokenizer), so that a saved run reads images again."""
        self.processor.save_pretrained(str(directory))

    def expand(self, text: str, images: list[Image.Image], where: str = "") -> list[int]:
        """A rendered prompt with one ``<image>`` per image -> its tokens, each placeholder replaced by the image's
        tokens (how many depends on the image's size)."""
        found = text.count(IMAGE_PLACEHOLDER)
        if found != len(images):
            raise DataError(f"{where}: the prompt has {found} {IMAGE_PLACEHOLDER} placeholder(s) but the row has "
                            f"{len(images)} image(s); put one {IMAGE_PLACEHOLDER} in the prompt per image, in order.")
        if not images:
            return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        text = text.replace(IMAGE_PLACEHOLDER, self.placeholder)
        encoded = self.processor(text=[text], images=[list(images)], add_special_tokens=False)
        return list(encoded["input_ids"][0])

    def pixel_inputs(self, rows: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        """The images of each model row (a padded batch: one list per sequence; a packed batch: one list, every
        block's images in row order) -> the pixel tensors the model takes, under its own argument names. Rows
        without images are left out (the model finds the images by their tokens, in row order)."""
        rows = [list(r) for r in rows if r]
        if not rows:
            return {}
        out = self.processor.image_processor(images=rows, return_tensors="pt")
        return {name: value for name, value in out.items() if torch.is_tensor(value)}
