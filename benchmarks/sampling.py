"""Sampling many responses per prompt from a causal LM, with a KV cache and the prompt computed once.

``transformers``' ``generate(num_return_sequences=k)`` repeats every prompt k times before its first forward pass;
with k = 512 candidates per prompt the prompt's prefill would cost as much as the responses. Here a batch of
distinct prompts (left-padded) is prefilled once, its KV cache is repeated k times, and the k copies decode
together. Greedy decoding (``temperature=0``) equals ``generate``'s (tests/benchmarks/test_sampling.py).
"""

from __future__ import annotations

import time

import torch


@torch.no_grad()
def sample(model, tokenizer, prompts: list[list[dict]], k: int, max_new_tokens: int, temperature: float = 1.0,
           top_k: int = 50, batch_sequences: int = 512, seed: int = 0, desc: str = "Sampling") -> list[list[dict]]:
    """k responses to each chat prompt -> per prompt a list of {"text", "tokens"} (tokens: new tokens up to and
    including the end of turn, or max_new_tokens). A batch holds max(1, batch_sequences // k) prompts."""
    from tqdm.auto import tqdm

    eos = _end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    generator = torch.Generator().manual_seed(seed)
    per_batch = max(1, batch_sequences // k)
    out: list[list[dict]] = []
    for start in tqdm(range(0, len(prompts), per_batch), desc=desc, unit="batch"):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                 for p in prompts[start : start + per_batch]]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        tokens = _decode(model, ids, k, max_new_tokens, temperature, top_k, eos, pad, generator)
        for row in range(len(ids)):
            responses = []
            for seq in tokens[row * k : (row + 1) * k].tolist():
                cut = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
                responses.append({"text": tokenizer.decode(seq[:cut], skip_special_tokens=True).strip(),
                                  "tokens": cut})
            out.append(responses)
    return out


def _end_ids(model, tokenizer) -> set[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured]) if configured is not None else set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _decode(model, ids: list[list[int]], k: int, max_new_tokens: int, temperature: float, top_k: int,
            eos: set[int], pad: int, generator: torch.Generator) -> torch.Tensor:
    """-> (len(ids) * k, max_new_tokens) new token ids (pad after an end of turn); prompt i's copies are rows
    i*k .. i*k + k - 1."""
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in ids])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in ids])
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    logits = out.logits[:, -1].float().repeat_interleave(k, 0)
    mask, last = mask.repeat_interleave(k, 0), position[:, -1].repeat_interleave(k, 0)
    eos_ids = torch.tensor(sorted(eos))
    done = torch.zeros(len(logits), dtype=torch.bool)
    new = torch.full((len(logits), max_new_tokens), pad, dtype=torch.long)
    for step in range(max_new_tokens):
        token = _pick(logits, temperature, top_k, generator)
        token = torch.where(done, torch.full_like(token, pad), token)
        new[:, step] = token
        done |= torch.isin(token, eos_ids)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype)], dim=1)
        last = last + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache,
                    use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
    return new


def _pick(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    values, index = logits.topk(min(top_k, logits.shape[-1]), dim=-1) if top_k else (logits, None)
    choice = torch.multinomial(torch.softmax(values / temperature, dim=-1), 1, generator=generator)[:, 0]
    return index.gather(1, choice[:, None])[:, 0] if index is not None else choice


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start
