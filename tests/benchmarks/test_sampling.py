"""The benchmarks' sampler (prompt prefilled once, its KV cache repeated k times) decodes what transformers'
generate decodes: greedy decoding token for token, left-padded prompts of different lengths included."""

import pytest
import torch

pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from benchmarks.sampling import _decode, sample  # noqa: E402


def tiny_lm():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=3, pad_token_id=0, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def test_greedy_decoding_equals_generate_for_left_padded_prompts():
    model = tiny_lm()
    prompts = [[5, 9, 17, 22, 40, 41], [7, 8], [60, 61, 62, 63]]
    ours = _decode(model, prompts, k=2, max_new_tokens=12, temperature=0.0, top_k=0, eos={3}, pad=0,
                   generator=torch.Generator().manual_seed(0))
    for i, prompt in enumerate(prompts):
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   do_sample=False, max_new_tokens=12, eos_token_id=3, pad_token_id=0)[0, len(prompt):]
        for copy in (2 * i, 2 * i + 1):  # both copies of a prompt decode the same greedy tokens
            assert ours[copy, : len(reference)].tolist() == reference.tolist()


def test_sampling_is_seeded_and_the_copies_differ():
    model = tiny_lm()

    class Tokenizer:  # the chat template and decoding the sampler needs, over raw ids
        pad_token_id, eos_token_id = 0, 3

        def apply_chat_template(self, prompt, add_generation_prompt, tokenize):
            return prompt[0]["content"]

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [int(t) for t in text.split()]}

        def decode(self, ids, skip_special_tokens):
            return " ".join(str(t) for t in ids if t not in (0, 3))

    prompts = [[{"role": "user", "content": "5 9 17"}], [{"role": "user", "content": "7 8 30 31"}]]
    first = sample(model, Tokenizer(), prompts, k=8, max_new_tokens=6, seed=1)
    again = sample(model, Tokenizer(), prompts, k=8, max_new_tokens=6, seed=1)
    assert first == again and len(first) == 2 and all(len(r) == 8 for r in first)
    assert len({r["text"] for r in first[0]}) > 1  # temperature 1: the 8 copies are not all the same
    assert all(1 <= r["tokens"] <= 6 for rs in first for r in rs)
