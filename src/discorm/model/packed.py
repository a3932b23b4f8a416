"""Exact attention for prefix-shared, padding-free packed pairs.

A packed batch is one row of tokens made of blocks ``[prompt | chosen | rejected]`` (a plain sequence is a block
with an empty rejected part). Within a block the prompt is causal, the chosen response sees the prompt and itself,
and the rejected response sees the prompt and itself but not the chosen response; its position ids restart at
the prompt length. Blocks never see each other. This is the same computation as running ``prompt + chosen`` and
``prompt + rejected`` as separate sequences, with the prompt computed once and no padding.

The attention runs block by block with SDPA: one causal call for ``prompt + chosen`` and one masked call for the
rejected queries against ``prompt + rejected`` keys. It is registered with transformers' AttentionInterface as
``discorm_sdpa``; without block metadata it is plain SDPA, so the same model serves padded batches too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "discorm_sdpa"
Block = tuple[int, int, int, int]  # (start, prompt_len, chosen_len, rejected_len)


def _branch_mask(prompt_len: int, branch_len: int, device) -> torch.Tensor:
    """(R, P + R) bool: every prompt key, then causal over the branch."""
    mask = torch.ones(branch_len, prompt_len + branch_len, dtype=torch.bool, device=device)
    mask[:, prompt_len:] = torch.ones(branch_len, branch_len, dtype=torch.bool, device=device).tril()
    return mask


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    discorm_blocks: list[Block] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query/key/value (1, heads, N, d) -> (1, N, heads, d); plain SDPA when ``discorm_blocks`` is None."""
    if discorm_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # torch.split (not per-block slicing): its backward is one concatenation instead of a zero-filled
    # full-length gradient per slice.
    sizes = [n for _, p, c, r in discorm_blocks for n in (p + c, r) if n]
    q_parts, k_parts, v_parts = (t.split(sizes, dim=2) for t in (query, key, value))
    pieces, part = [], 0
    for _, prompt_len, _, rejected_len in discorm_blocks:
        q, k, v = q_parts[part], k_parts[part], v_parts[part]
        pieces.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True))
        part += 1
        if rejected_len:
            q_r, k_r, v_r = q_parts[part], k_parts[part], v_parts[part]
            pieces.append(
                F.scaled_dot_product_attention(
                    q_r,
                    torch.cat([k[:, :, :prompt_len], k_r], dim=2),
                    torch.cat([v[:, :, :prompt_len], v_r], dim=2),
                    attn_mask=_branch_mask(prompt_len, rejected_len, query.device),
                    dropout_p=dropout, scale=scaling,
                )
            )
            part += 1
    out = torch.cat(pieces, dim=2)  # (1, heads, N, d)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, packed_sdpa_attention)
# Padded batches get the usual SDPA mask; packed ones get it too, and the attention above ignores it.
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def block_positions(blocks: list[Block]) -> torch.Tensor:
    """Position ids (N,): 0..P+C-1 for prompt + chosen, then P..P+R-1 for rejected, per block."""
    parts = []
    for _, prompt_len, chosen_len, rejected_len in blocks:
        parts.append(torch.arange(prompt_len + chosen_len))
        parts.append(torch.arange(prompt_len, prompt_len + rejected_len))
    return torch.cat(parts)


def unsupported_reason(backbone: torch.nn.Module) -> str | None:
    """Why this backbone cannot run the packed attention, found from its config and modules; None when it can
    (the reward model then still compares a packed forward pass with a padded one)."""
    config = backbone.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation != ATTN_IMPLEMENTATION:
        return f"it was loaded with attn_implementation={implementation!r}, not DiscoRM's {ATTN_IMPLEMENTATION!r}"
    if getattr(config, "attn_logit_softcapping", None):
        return (f"its attention logits are soft-capped (attn_logit_softcapping={config.attn_logit_softcapping}), "
                "which SDPA cannot compute")
    bidirectional = [type(m).__name__ for m in backbone.modules() if getattr(m, "is_causal", None) is False]
    if bidirectional:
        return f"its attention is bidirectional ({bidirectional[0]}.is_causal=False, an encoder), not causal"
    return None
