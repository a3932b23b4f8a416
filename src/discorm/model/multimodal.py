"""What a reward model needs to know about a vision-language backbone (``AutoModel`` of an image-text-to-text
model: ``LlavaModel``, ``Qwen2VLModel``, ``Idefics3Model``...): its language model, the hidden size the head reads,
the pixel arguments of its ``forward``, and the 3-D (M-RoPE) positions of a packed row.

In a packed row the vision encoder runs once per image and each prompt block's image tokens once; every response
branch must still get the positions it would have in its own padded row. With 1-D positions that is
``data/collator.block_positions``; Qwen2-VL / Qwen2.5-VL number image tokens by (time, height, width), so each
branch's positions come from the model's own ``get_rope_index`` on prompt + branch.
"""

from __future__ import annotations

import torch

from discorm.data.collator import Block

# Families whose image tokens attend to each other both ways (a bidirectional block inside the causal mask):
# the packed attention is causal, so they are padded.
BIDIRECTIONAL_IMAGE_ATTENTION = {"gemma3": "Gemma 3", "paligemma": "PaliGemma"}


def is_multimodal(config) -> bool:
    return getattr(config, "vision_config", None) is not None


def text_config(config):
    """The language model's config (the config itself for a text-only model)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(config) -> int:
    """The width of the last hidden state: the language model's (a VLM config may have no ``hidden_size``)."""
    size = getattr(config, "hidden_size", None)
    return size if size is not None else text_config(config).hidden_size


def language_model(backbone: torch.nn.Module) -> torch.nn.Module:
    """The text decoder of a VLM backbone (PEFT-wrapped or not); the backbone itself for a text-only model."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return getattr(base, "language_model", None) or getattr(base, "text_model", None) or base


def uses_mrope(backbone: torch.nn.Module) -> bool:
    """Whether the backbone numbers positions in 3-D (Qwen2-VL, Qwen2.5-VL): it has a ``get_rope_index``."""
    return is_multimodal(backbone.config) and callable(getattr(backbone, "get_rope_index", None))


def image_token_types(config, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) 1 at image tokens, 0 elsewhere: the ``mm_token_type_ids`` M-RoPE numbers images by."""
    return (input_ids == config.image_token_id).int()


def mrope_positions(backbone, input_ids: torch.Tensor, blocks: list[Block],
                    image_grid_thw: torch.Tensor | None) -> torch.Tensor:
    """(1, N) packed ids -> (3, 1, N) positions: per block, ``get_rope_index`` on prompt + branch k (the block's
    own images, in row order) gives branch k the positions of its own padded row; the prompt's are the same in
    every branch."""
    config = backbone.config
    merge = config.vision_config.spatial_merge_size
    grids = iter(image_grid_thw if image_grid_thw is not None else [])
    ids = input_ids[0]
    parts = []
    for start, prompt_len, first, *others in blocks:
        branches = [first, *(n for n in others if n)]
        prompt = ids[start : start + prompt_len]
        block_grids, tokens = [], int((prompt == config.image_token_id).sum())
        while tokens > 0:  # the block's images: as many grids as its image tokens take, in row order
            block_grids.append(next(grids))
            tokens -= int(block_grids[-1].prod()) // merge**2
        offset = start + prompt_len
        for k, length in enumerate(branches):
            if k == 0:
                sequence = ids[start : offset + length]
            else:
                sequence = torch.cat([prompt, ids[offset : offset + length]])
            seq = sequence.unsqueeze(0)
            position, _ = backbone.get_rope_index(
                seq, image_token_types(config, seq),
                torch.stack(block_grids) if block_grids else None)  # (3, 1, P + R)
            parts.append(position[:, 0] if k == 0 else position[:, 0, prompt_len:])
            offset += length
    return torch.cat(parts, dim=1).unsqueeze(1)
