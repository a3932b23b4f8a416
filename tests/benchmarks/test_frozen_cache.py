import pytest
import torch

from benchmarks.frozen_cache import cache_frozen_states, first_trainable_block, trainable_part
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.errors import ModelError
from discorm.train.loss import PairwiseLoss
from tests.conftest import build_model

PAIRS = [
    {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13], "soft_label": 0.5},
    {"prompt_ids": [14, 15], "chosen_ids": [16], "rejected_ids": [17, 18, 19, 20], "soft_label": 1.0},
    {"prompt_ids": [21, 22, 23], "chosen_ids": [24, 25], "rejected_ids": [26], "soft_label": 1.0},
]


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**model_inputs(batch))
    half = out.head_params.shape[0] // 2
    loss = PairwiseLoss(model.head)(out.head_params[:half], out.head_params[half:], soft_label=batch["soft_label"])
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.head_params.detach(), grads


@pytest.mark.parametrize("head", ["gaussian", "categorical"])
@pytest.mark.parametrize("collator", [PackedPairCollator(), PairwiseDataCollatorWithPadding(0)])
def test_cached_frozen_blocks_give_the_full_models_outputs_and_gradients(tiny_llama, head, collator):
    model = build_model(tiny_llama, "freeze", head=head, freeze_trainable_layers=1)
    states, cached = cache_frozen_states(model, PAIRS, batch_size=2)
    assert states.shape == (sum(len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])
                                for p in PAIRS), model.config.hidden_size)
    reduced = trainable_part(model, states, check_with={"original": PAIRS[0], "cached": cached[0]})
    assert len(reduced.backbone.layers) == 1 and len(model.backbone.layers) == 2  # the full model is untouched
    assert reduced.backbone.layers[0] is model.backbone.layers[1] and reduced.head is model.head
    full_params, full_grads = _loss_and_grads(model, collator(PAIRS))
    part_params, part_grads = _loss_and_grads(reduced, collator(cached))
    torch.testing.assert_close(part_params, full_params, atol=1e-5, rtol=1e-5)
    shared = {name.replace("layers.1.", "layers.0."): grad for name, grad in full_grads.items()}
    assert set(part_grads) == set(shared) and any("layers.0" in name for name in part_grads)
    for name, grad in part_grads.items():
        torch.testing.assert_close(grad, shared[name], atol=1e-5, rtol=1e-4, msg=name)


def test_head_only_training_caches_the_last_block(tiny_llama):
    model = build_model(tiny_llama, "freeze", head="gaussian", freeze_trainable_layers=0).eval()
    assert first_trainable_block(model.backbone) == 2
    states, cached = cache_frozen_states(model, PAIRS)
    reduced = trainable_part(model, states, check_with={"original": PAIRS[1], "cached": cached[1]})
    assert len(reduced.backbone.layers) == 0
    with torch.no_grad():
        full = model(**model_inputs(PackedPairCollator()(PAIRS))).head_params
        part = reduced(**model_inputs(PackedPairCollator()(cached))).head_params
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)


def test_models_the_cache_cannot_reproduce_are_refused(tiny_llama, tiny_gpt2):
    with pytest.raises(ModelError, match="trains but lies below"):
        first_trainable_block(build_model(tiny_llama, "full").backbone)
    gpt2 = build_model(tiny_gpt2, "freeze", freeze_trainable_layers=1)
    states, cached = cache_frozen_states(gpt2, PAIRS)
    with pytest.raises(ModelError, match="position embeddings"):  # GPT-2 adds them to its input
        trainable_part(gpt2, states, check_with={"original": PAIRS[0], "cached": cached[0]})


def test_pairs_that_name_where_they_were_read_are_cached_and_scored(tiny_llama):
    from discorm.model.inference import score_pairs

    sourced = [{**pair, "source": f"pairs.jsonl:{i + 1}"} for i, pair in enumerate(PAIRS)]  # as the encoder writes
    model = build_model(tiny_llama, "freeze", head="gaussian", freeze_trainable_layers=1).eval()
    states, cached = cache_frozen_states(model, sourced)
    reduced = trainable_part(model, states, check_with={"original": sourced[0], "cached": cached[0]})
    torch.testing.assert_close(score_pairs(reduced, cached), score_pairs(model, PAIRS), atol=1e-5, rtol=1e-5)
