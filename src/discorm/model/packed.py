"""Exact attention for prefix-shared, padding-free packed rows.

A packed row holds blocks ``[prompt | r_1 | ... | r_K]`` (a pair: K = 2, ``[prompt | chosen | rejected]``):
within a block the prompt is causal, each response branch sees the prompt and itself (never a sibling; its
positions restart at the prompt length), and blocks never see each other; sliding-window layers also drop keys a
window or more back. This equals running each ``prompt + r_k`` as a separate sequence. Two backends compute it
(``choose_backend``): ``sdpa_split`` (one SDPA call per branch; trains everywhere) and ``flex`` (one compiled
FlexAttention call per
layer with a block mask per batch; GPUs). ``register_packed_attention`` makes it known to transformers as
``discorm_sdpa``, which is plain SDPA for padded batches.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from discorm.data.collator import Block, block_positions
from discorm.errors import ConfigError
from discorm.model.multimodal import BIDIRECTIONAL_IMAGE_ATTENTION, language_model, text_config

try:  # the registries of transformers' attention dispatch (5.x); the packed path depends on them
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError as err:  # pragma: no cover - only with an untested transformers release
    raise ImportError(
        f"DiscoRM's packed attention needs transformers' AttentionInterface, AttentionMaskInterface, sdpa_mask and "
        f"sdpa_attention_forward ({err}); this transformers release moved them. Install the transformers range "
        "that pyproject.toml declares."
    ) from err

ATTN_IMPLEMENTATION = "discorm_sdpa"
ATTENTION_BACKENDS = ("auto", "sdpa_split", "flex")
logger = logging.getLogger(__name__)


def _window(mask: torch.Tensor, query_pos: torch.Tensor, key_pos: torch.Tensor, window: int | None):
    """Drop keys `window` or more positions behind the query (sliding-window layers)."""
    if window is None:
        return mask
    return mask & (query_pos[:, None] - key_pos[None, :] < window)


def _branch_mask(prompt_len: int, branch_len: int, device, window: int | None = None) -> torch.Tensor:
    """(R, P + R) bool: every prompt key, then causal over the branch (the branch's positions follow the prompt)."""
    mask = torch.ones(branch_len, prompt_len + branch_len, dtype=torch.bool, device=device)
    mask[:, prompt_len:] = torch.ones(branch_len, branch_len, dtype=torch.bool, device=device).tril()
    positions = torch.arange(prompt_len + branch_len, device=device)
    return _window(mask, positions[prompt_len:], positions, window)


def _split_sdpa(query, key, value, blocks: list[Block], dropout: float, scaling, window: int | None):
    """query/key/value (1, heads, N, d) -> (1, heads, N, d), one SDPA call per response branch."""
    # torch.split (not per-block slicing): its backward is one concatenation instead of a zero-filled
    # full-length gradient per slice.
    sizes = [n for _, p, first, *others in blocks for n in (p + first, *others) if n]
    q_parts, k_parts, v_parts = (t.split(sizes, dim=2) for t in (query, key, value))
    pieces, part = [], 0
    for _, prompt_len, first, *others in blocks:
        q, k, v = q_parts[part], k_parts[part], v_parts[part]
        length = prompt_len + first
        if window is None or length <= window:
            pieces.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True))
        else:
            mask = _branch_mask(0, length, query.device, window)
            pieces.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling))
        part += 1
        for branch_len in (n for n in others if n):
            q_b, k_b, v_b = q_parts[part], k_parts[part], v_parts[part]
            pieces.append(
                F.scaled_dot_product_attention(
                    q_b,
                    torch.cat([k[:, :, :prompt_len], k_b], dim=2),
                    torch.cat([v[:, :, :prompt_len], v_b], dim=2),
                    attn_mask=_branch_mask(prompt_len, branch_len, query.device, window),
                    dropout_p=dropout, scale=scaling,
                )
            )
            part += 1
    return torch.cat(pieces, dim=2)


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    discorm_blocks: list[Block] | None = None,
    discorm_block_masks: dict | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query/key/value (1, heads, N, d) -> (1, N, heads, d). Packed with ``discorm_blocks`` (split SDPA) or
    ``discorm_block_masks`` (FlexAttention, one BlockMask per window size); plain SDPA otherwise."""
    if discorm_block_masks is not None:
        if dropout:
            raise ValueError("the FlexAttention path has no attention dropout; use attention_backend: sdpa_split")
        out = flex_attention_call(query, key, value, block_mask=discorm_block_masks[sliding_window],
                                  scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    elif discorm_blocks is not None:
        groups = getattr(module, "num_key_value_groups", 1)
        out = _split_sdpa(query, repeat_kv(key, groups), repeat_kv(value, groups), discorm_blocks,
                          dropout, scaling, sliding_window)
    else:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling,
                                      sliding_window=sliding_window, **kwargs)
    return out.transpose(1, 2).contiguous(), None


def register_packed_attention() -> None:
    """Make ``attn_implementation="discorm_sdpa"`` known to transformers (called before a backbone loads with
    it). Padded batches get the usual SDPA mask (sliding windows included); packed ones ignore it."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, packed_sdpa_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


# ----------------------------------------------------------------------------- FlexAttention
_COMPILED_FLEX = None


def flex_attention_call(query, key, value, **kwargs):
    """FlexAttention, compiled once per process (eager FlexAttention materialises every score)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=True)
    return _COMPILED_FLEX(query, key, value, **kwargs)


def block_masks(blocks: list[Block], windows: set[int | None], device) -> dict:
    """One FlexAttention BlockMask per window size (None: full attention) for a packed row, built once per batch
    and reused by every layer. Same mask as ``_split_sdpa``: same block, causal in row order, a branch's tokens see
    the prompt and their own branch only, and keys within ``window`` positions."""
    from torch.nn.attention.flex_attention import create_block_mask

    segments = []  # per token: block index, part (0 prompt, k the k-th response branch)
    for index, (_, *lengths) in enumerate(blocks):
        for part, length in enumerate(lengths):
            segments.append(torch.tensor([[index, part]]).expand(length, 2))
    segments = torch.cat(segments).to(device)
    block, part = segments[:, 0].contiguous(), segments[:, 1].contiguous()
    position = block_positions(blocks).to(device)
    length = len(block)

    def make(window):
        # The window as a per-query tensor, not a captured int: the compiled CPU kernel mis-generates code for
        # an integer captured by the mask function.
        lowest = position - (window or 0)  # keys must lie after this position

        def mask_mod(b, h, q, kv):
            visible = (block[q] == block[kv]) & (kv <= q) & ((part[kv] == 0) | (part[kv] == part[q]))
            if window is not None:
                visible = visible & (position[kv] > lowest[q])
            return visible

        return create_block_mask(mask_mod, B=None, H=None, Q_LEN=length, KV_LEN=length, device=device)

    return {window: make(window) for window in windows}


def sliding_windows(config) -> set[int | None]:
    """The window sizes the layers of a model use (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return {None}
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:  # Mistral: every layer slides
        return {window}
    return {window if kind == "sliding_attention" else None for kind in layer_types}


# auto's backend for CPU forward passes without gradient (evaluation, scoring): the faster of the two in
# benchmarks/bench_attention.py (see benchmarks/README.md, "Attention").
CPU_EVAL_BACKEND = "sdpa_split"
_flex_failure: str | None = None  # why FlexAttention failed in this process; auto then stays on split SDPA


def choose_backend(requested: str, device: torch.device, needs_grad: bool, training: bool = False) -> str:
    """auto: FlexAttention on GPUs; on CPUs split SDPA for training (torch has no CPU FlexAttention backward) and
    ``CPU_EVAL_BACKEND`` for forward passes in eval mode without gradient (evaluation, scoring). Once FlexAttention
    has failed in a process (no C++ compiler for inductor, no Triton), auto uses split SDPA."""
    if requested == "auto":
        if _flex_failure is not None:
            return "sdpa_split"
        if device.type == "cuda":
            return "flex"
        if device.type == "cpu" and not (needs_grad or training):
            return CPU_EVAL_BACKEND
        return "sdpa_split"
    if requested == "flex" and needs_grad and device.type == "cpu":
        raise ConfigError("attention_backend=flex cannot train on a CPU: torch has no FlexAttention backward there. "
                          "Use attention_backend: auto (split SDPA on CPUs) for training.")
    return requested


def flex_failed(err: BaseException) -> None:
    """Record that FlexAttention failed here, so that auto falls back to split SDPA from now on; warns once."""
    global _flex_failure
    if _flex_failure is None:
        message = str(err).strip().splitlines()
        _flex_failure = f"{type(err).__name__}: {message[0] if message else ''}"[:300]
        logger.warning("FlexAttention failed (%s); packed batches use split SDPA from now on (the same scores). "
                       "Compiling FlexAttention needs a C++ compiler on a CPU and Triton on a GPU; "
                       "attention_backend: sdpa_split skips it.", _flex_failure)


def unsupported_reason(backbone: torch.nn.Module) -> str | None:
    """Why this backbone cannot run the packed attention, found from its config and modules; None when it can
    (the reward model then still compares a packed forward pass with a padded one)."""
    family = BIDIRECTIONAL_IMAGE_ATTENTION.get(backbone.config.model_type)
    if family:
        return (f"{family} lets image tokens attend to each other both ways, which the causal packed attention "
                "does not compute")
    config = text_config(backbone.config)  # a VLM's vision tower runs plain SDPA on whole images
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != ATTN_IMPLEMENTATION:
        return f"it was loaded with attn_implementation={implementation!r}, not DiscoRM's {ATTN_IMPLEMENTATION!r}"
    if getattr(config, "attn_logit_softcapping", None):
        return (f"its attention logits are soft-capped (attn_logit_softcapping={config.attn_logit_softcapping}), "
                "which SDPA cannot compute")
    bidirectional = [type(m).__name__ for m in language_model(backbone).modules()
                     if getattr(m, "is_causal", None) is False]
    if bidirectional:
        return f"its attention is bidirectional ({bidirectional[0]}.is_causal=False, an encoder), not causal"
    return None
