"""K response branches sharing one prompt: packed scores and gradients equal each prompt + response run as its own
padded sequence, for K = 2, 3, 5 and mixed K (with pairs and rated responses) in one batch, on both backends."""

import pytest
import torch

from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from tests.conftest import build_model

LISTS = [
    {"prompt_ids": [5, 6, 7, 8, 9], "responses_ids": [[10, 11], list(range(30, 48)), [12]], "levels": [0, 1, 2]},
    {"prompt_ids": [12, 13], "responses_ids": [[14 + i] * (i + 1) for i in range(5)], "levels": [0, 0, 1, 2, 3]},
    {"prompt_ids": list(range(60, 80)), "responses_ids": [[91], [92, 93]], "levels": [1, 0]},
]
PAIR = {"prompt_ids": [3, 4], "chosen_ids": [40, 41, 42], "rejected_ids": [43]}
RATED = {"prompt_ids": [7, 8], "response_ids": [9, 10, 11], "scores": [1.0]}
BATCHES = {"K=2": [LISTS[2]], "K=3": [LISTS[0]], "K=5": [LISTS[1]], "mixed": [PAIR, *LISTS]}
WINDOWED = ["tiny_mistral_window", "tiny_qwen2_window"]


def _scores_and_grads(model, batch):
    model.zero_grad()
    params = model(**model_inputs(batch)).head_params
    (params.pow(2).sum() + params.sum()).backward()  # touches every score with a different weight
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return params.detach(), grads


def _assert_same(model, features):
    plain_params, plain_grads = _scores_and_grads(model, PairwiseDataCollatorWithPadding(0)(features))
    packed_params, packed_grads = _scores_and_grads(model, PackedPairCollator(True)(features))
    torch.testing.assert_close(packed_params, plain_params, atol=1e-5, rtol=0)
    assert plain_grads.keys() == packed_grads.keys() and len(plain_grads) > 4
    for name, grad in plain_grads.items():
        assert (packed_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < 1e-4, name


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2", *WINDOWED])
@pytest.mark.parametrize("batch", list(BATCHES))
def test_k_branch_blocks_match_separate_sequences(arch, batch, request):
    model = build_model(request.getfixturevalue(arch), "full").eval()
    assert model.check_packing()
    _assert_same(model, BATCHES[batch])


def test_mixed_batch_with_rated_responses_and_lora(tiny_llama):
    model = build_model(tiny_llama, "lora", head="gaussian", lora_rank=4).eval()
    _assert_same(model, [PAIR, LISTS[1], RATED, LISTS[0]])


def test_list_block_layout_and_score_order():
    batch = PackedPairCollator(True)([PAIR, LISTS[0], RATED])
    # one block per prompt: the pair (K = 2), the list (K = 3), the rated response (its own prompt + response)
    assert batch["pair_blocks"].tolist() == [[0, 2, 3, 1, 0], [6, 5, 2, 18, 1], [32, 0, 5, 0, 0]]
    assert batch["score_index"].tolist() == [4, 5, 12, 30, 31, 36]  # chosen, rejected, list x3, rated
    assert batch["position_ids"][0, 6:].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 5, 6, 7, 8, 9]
    assert batch["list_sizes"].tolist() == [3] and batch["list_levels"].tolist() == [0, 1, 2]


def test_k_branch_layout_without_prefix_sharing_is_one_block_per_sequence():
    batch = PackedPairCollator(False)([LISTS[0]])
    assert [b[1] for b in batch["pair_blocks"].tolist()] == [0, 0, 0]
    assert batch["input_ids"].shape[1] == 3 * 5 + 2 + 18 + 1


@pytest.mark.slow  # compiles FlexAttention for the CPU (tens of seconds)
@pytest.mark.parametrize("arch", ["tiny_llama", *WINDOWED])
def test_flex_attention_k_branches_match_plain(arch, request):
    model = build_model(request.getfixturevalue(arch), "full").eval()
    model.attention_backend = "flex"
    with torch.no_grad():
        plain = model(**model_inputs(PairwiseDataCollatorWithPadding(0)(BATCHES["mixed"]))).head_params
        packed = model(**model_inputs(PackedPairCollator(True)(BATCHES["mixed"]))).head_params
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention gradients need a GPU (no CPU backward)")
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2", *WINDOWED])
def test_flex_attention_k_branch_gradients_match_plain_on_gpu(arch, request):
    model = build_model(request.getfixturevalue(arch), "full").to("cuda").eval()
    model.attention_backend = "flex"
    cuda = lambda batch: {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in batch.items()}  # noqa: E731
    plain_params, plain_grads = _scores_and_grads(model, cuda(PairwiseDataCollatorWithPadding(0)(BATCHES["mixed"])))
    packed_params, packed_grads = _scores_and_grads(model, cuda(PackedPairCollator(True)(BATCHES["mixed"])))
    torch.testing.assert_close(packed_params, plain_params, atol=1e-4, rtol=0)
    for name, grad in plain_grads.items():
        assert (packed_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < 1e-3, name
