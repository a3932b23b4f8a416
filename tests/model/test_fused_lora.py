"""The fused LoRA forward (model/fused_lora.py): one addmm instead of peft's scale-and-add, with the same outputs
and gradients as peft's own forward, and peft's forward wherever the update is not vanilla LoRA."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import LlamaConfig, LlamaModel

from discorm.model.fused_lora import FusedLoraLinear, fuse_lora_layers


def lora_llama(dropout: float = 0.0, **extra):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(LlamaModel(config), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                          target_modules="all-linear", **extra))
    with torch.no_grad():  # peft starts B at zero: a trained adapter is not
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model


def run(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids).last_hidden_state
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_forward_equals_peft_outputs_and_gradients():
    plain = lora_llama()
    fused = copy.deepcopy(plain)
    assert fuse_lora_layers(fused) == 14  # 7 linear layers x 2 blocks
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(1))
    out_plain, grads_plain = run(plain.train(), ids)
    out_fused, grads_fused = run(fused.train(), ids)
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-5, atol=1e-6)
    assert grads_fused.keys() == grads_plain.keys() and len(grads_plain) == 28
    for name in grads_plain:
        torch.testing.assert_close(grads_fused[name], grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_fused_path_taken_only_for_vanilla_lora(monkeypatch):
    calls = []
    original = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids = torch.randint(0, 64, (2, 7))
    model = lora_llama()
    fuse_lora_layers(model)
    model(input_ids=ids)
    assert len(calls) == 14
    calls.clear()
    with model.disable_adapter():  # adapters off: the base model alone
        model(input_ids=ids)
    assert not calls
    dropout = lora_llama(dropout=0.1)  # dropout needs peft's own path
    fuse_lora_layers(dropout)
    dropout(input_ids=ids)
    assert not calls and all(type(m) is FusedLoraLinear for m in dropout.modules() if isinstance(m, LoraLinear))


@pytest.mark.parametrize("variant", [{"use_dora": True}, {"lora_bias": True}])
def test_variants_run_peft_forward_unchanged(variant):
    plain = lora_llama(**variant)
    fused = copy.deepcopy(plain)
    fuse_lora_layers(fused)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(2))
    assert torch.equal(fused(input_ids=ids).last_hidden_state, plain(input_ids=ids).last_hidden_state)


def test_merged_adapter_gives_the_same_output():
    model = lora_llama()
    fuse_lora_layers(model)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
        model.merge_adapter()
        after = model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
