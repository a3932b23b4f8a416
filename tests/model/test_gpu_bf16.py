"""bf16 on a CUDA GPU: a packed, prefix-shared batch scores and trains like the same pairs padded, within bf16's own
rounding. The fp32 twins of these tests (tests/model/test_reward_model.py) hold packing to 1e-4; in bf16 each
product is rounded to 8 significant bits (a relative step of 2**-8 ~ 0.0039), and the packed and padded kernels
round in different orders, so the two may differ by a few such steps at the scale of the scores.
`benchmarks/gpu/run.sh` runs these with `pytest -m gpu`."""

import pytest
import torch

from discorm.config import FinetuningArguments, ModelArguments
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
from discorm.train.workflow import setup_model
from tests.model.test_reward_model import PAIRS, _scores_and_grads

BF16_STEP = 2.0**-8
SCORE_STEPS = 8  # packed vs padded scores: at most 8 bf16 steps at the scores' scale (~3% of it)
GRAD_RTOL = 0.05  # each parameter's gradient: max difference at most 5% of its largest entry


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 packed training runs on a CUDA GPU")
@pytest.mark.parametrize("backend", ["sdpa_split", "flex"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2_window"])
def test_bf16_packed_matches_padded_on_gpu(arch, backend, request):
    model_args = ModelArguments(model_name_or_path=str(request.getfixturevalue(arch)), dtype="bfloat16",
                                attention_backend=backend)
    model = setup_model(model_args, FinetuningArguments(finetuning_type="full")).to("cuda").eval()
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    cuda = lambda batch: {k: v.to("cuda") for k, v in batch.items()}  # noqa: E731
    padded_params, padded_grads = _scores_and_grads(model, cuda(PairwiseDataCollatorWithPadding(0)(PAIRS)))
    packed_params, packed_grads = _scores_and_grads(model, cuda(PackedPairCollator(True)(PAIRS)))
    padded_params, packed_params = padded_params.float(), packed_params.float()
    scale = max(1.0, float(padded_params.abs().max()))
    torch.testing.assert_close(packed_params, padded_params, atol=SCORE_STEPS * BF16_STEP * scale, rtol=0)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        grad, packed = grad.float(), packed_grads[name].float()
        assert (packed - grad).abs().max() / grad.abs().max().clamp_min(1e-8) < GRAD_RTOL, name
