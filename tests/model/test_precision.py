"""Reduced precision: a bf16 backbone (head and loss in float32) and quantized bases (QLoRA, bitsandbytes)."""

import importlib.util
import json

import pytest
import torch

from discorm.config import ModelArguments, load_args
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.errors import ConfigError
from discorm.model.reward_model import RewardModel
from discorm.train.workflow import run_rm, setup_model
from tests.conftest import build_model

PAIRS = [
    {"prompt_ids": [5, 6, 7, 8, 9], "chosen_ids": [10, 11], "rejected_ids": list(range(30, 50))},
    {"prompt_ids": [12], "chosen_ids": [13, 14, 15, 16, 17, 18], "rejected_ids": [19, 20, 21]},
]


def _data(path, n=16):
    rows = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model_dir, data, out, **extra):
    return {"model_name_or_path": str(model_dir), "dataset": str(data), "output_dir": str(out), "do_train": True,
            "finetuning_type": "full", "learning_rate": 1e-3, "per_device_train_batch_size": 4, "cutoff_len": 64,
            "max_steps": 4, "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True, "use_cpu": True,
            "report_to": "none", **extra}


def test_bf16_backbone_scores_match_float32_and_training_steps_are_finite(tiny_llama, tmp_path):
    fp32 = build_model(tiny_llama, "full", head="gaussian").eval()
    bf16 = setup_model(
        ModelArguments(model_name_or_path=str(tiny_llama), dtype="bfloat16"),
        load_args({"head": "gaussian", "finetuning_type": "full"})[3]).eval()
    bf16.head.load_state_dict(fp32.head.state_dict())
    assert next(bf16.backbone.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.head.parameters())
    with torch.no_grad():
        for collate in (PairwiseDataCollatorWithPadding(0), PackedPairCollator()):
            want = fp32(**model_inputs(collate(PAIRS))).head_params
            got = bf16(**model_inputs(collate(PAIRS))).head_params
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=0.05 * want.abs().max().item(), rtol=0.02)

    data = _data(tmp_path / "d.jsonl")
    for name, extra in [("weights", {"dtype": "bfloat16"}), ("autocast", {"bf16": True})]:
        run_rm(*load_args(_config(tiny_llama, data, tmp_path / name, head="gaussian", **extra)))
        history = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        losses = [h["loss"] for h in history if "loss" in h]
        assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None,
    reason="quantized bases need bitsandbytes (pip install 'discorm[quant]')")


@needs_bitsandbytes
@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_saves_and_reloads_on_its_quantized_base(tiny_llama, tmp_path, bits):
    data = _data(tmp_path / "d.jsonl")
    out = tmp_path / "run"
    run_rm(*load_args(_config(tiny_llama, data, out, finetuning_type="lora", lora_rank=4, quantization_bit=bits,
                              learning_rate=5e-3)))
    stored = json.loads((out / "discorm_config.json").read_text())
    assert stored["quantization"]["quantization_bit"] == bits and stored["finetuning_type"] == "lora"
    model = RewardModel.from_pretrained(out).eval()
    assert model.backbone.base_model.model.is_quantized
    assert all(p.dtype == torch.float32 for p in model.head.parameters())
    fresh = RewardModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**model_inputs(PackedPairCollator()(PAIRS))).head_params,
                                   fresh(**model_inputs(PackedPairCollator()(PAIRS))).head_params)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in history if "loss" in h])))


@needs_bitsandbytes
def test_lora_gradients_survive_an_eval_pass_on_a_4bit_base(tiny_llama):
    """The packing self-check runs a no-grad forward pass before training; afterwards every LoRA weight must
    still get a gradient (bitsandbytes' CPU repacking would silently drop some)."""
    from discorm.config import FinetuningArguments

    model = setup_model(ModelArguments(model_name_or_path=str(tiny_llama), quantization_bit=4),
                                     FinetuningArguments(finetuning_type="lora", lora_rank=4))
    assert model.check_packing()
    model.train()
    model(**model_inputs(PackedPairCollator()(PAIRS))).head_params.sum().backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is not None for p in lora.values())  # lora_A's is zero while lora_B is
    assert all(p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)


@needs_bitsandbytes
def test_quantized_base_needs_lora(tiny_llama):
    from discorm.config import FinetuningArguments

    with pytest.raises(ConfigError, match="finetuning_type='full' cannot train a quantized base"):
        setup_model(ModelArguments(model_name_or_path=str(tiny_llama), quantization_bit=4),
                                 FinetuningArguments(finetuning_type="full"))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about(native, monkeypatch, caplog):
    from discorm.config import TrainingArguments
    from discorm.train import workflow

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    for model_args, bf16 in ((ModelArguments(), True), (ModelArguments(dtype="bfloat16"), False)):
        caplog.clear()
        workflow.warn_about_cpu_bf16(model_args, TrainingArguments(output_dir="out", use_cpu=True, bf16=bf16))
        assert ("emulates bf16" in caplog.text) is not native
    caplog.clear()
    workflow.warn_about_cpu_bf16(ModelArguments(), TrainingArguments(output_dir="out", use_cpu=True))
    assert "bf16" not in caplog.text  # float32 needs no warning
