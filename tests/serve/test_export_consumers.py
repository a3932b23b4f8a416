"""The export read the way each RL consumer reads it gives DiscoRM's reward: RewardBench's text-classification
pipeline (top label, no activation), TRL's right-padded logits[:, 0], OpenRLHF's value head at the last token with
config.mean / config.std (mirrored from openrlhf/models/model.py at 3c3be62); more than one label needs a flag and
every label is named."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from discorm.errors import ModelError
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from tests.conftest import build_model
from tests.policies import CONVERSATIONS

HEADS = {
    "scalar": {},
    "gaussian": {},
    "multi_objective": {"head_options": {"attributes": ["helpful", "safe"], "score_range": [1, 5]}},
}


def _run(base, tmp_path, head, normalized=False):
    model = build_model(base, "full", head=head, **HEADS[head])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if normalized:
        model.rm_config = replace(model.rm_config, reward_mean=0.4, reward_std=2.5, normalized_on="test")
    model.save_pretrained(tmp_path / "run")
    return RewardModel.from_pretrained(tmp_path / "run").eval()


def _texts(export_dir):
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    return [tokenizer.apply_chat_template(chat, tokenize=False) for chat in CONVERSATIONS]


@pytest.mark.parametrize("head", list(HEADS))
def test_rewardbench_pipeline_reads_discorms_reward(tiny_llama, tmp_path, head):
    model = _run(tiny_llama, tmp_path, head)
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    classify = pipeline("text-classification", model=str(tmp_path / "export"), function_to_apply="none",
                        device="cpu")
    outputs = classify(_texts(tmp_path / "export"), batch_size=3, padding=True)
    shift = config.get("discorm_reward_shift", 0.0)
    expected = [r["reward"] for r in model.score(CONVERSATIONS)]
    assert [o["score"] - shift for o in outputs] == pytest.approx(expected, abs=1e-4)
    assert {o["label"] for o in outputs} == {"reward"} and config["discorm_labels"] == ["reward"]
    assert (shift != 0) == (head == "multi_objective")  # the attributes' biases: a constant no label carries


def test_trl_reads_logits_0_of_right_padded_chat_renderings(tiny_llama, tmp_path):
    """TRL's GRPO path: apply_chat_template on prompt + completion messages, add_special_tokens=False, right
    padding, logits[:, 0] (trl/trainer/grpo_trainer.py _calculate_rewards)."""
    model = _run(tiny_llama, tmp_path, "gaussian")
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export", num_labels=1).eval()
    inputs = tokenizer(text=_texts(tmp_path / "export"), return_tensors="pt", padding=True, padding_side="right",
                       add_special_tokens=False)
    with torch.no_grad():
        logits = classifier(**inputs).logits[:, 0]
    assert logits.tolist() == pytest.approx([r["mean"] for r in model.score(CONVERSATIONS)], abs=1e-4)
    prompt = tokenizer.apply_chat_template(CONVERSATIONS[0][:1], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("assistant\n")  # the generation prompt keeps its whitespace


def test_openrlhf_reads_the_value_head_and_normalises_with_config_mean_std(tiny_llama, tmp_path):
    model = _run(tiny_llama, tmp_path, "multi_objective", normalized=True)
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    weights = load_file(tmp_path / "export" / "model.safetensors")
    value_head = weights[f"{config['value_head_prefix']}.weight"]  # nn.Linear(hidden, 1, bias=False)
    assert value_head.shape == (1, config["hidden_size"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    batch = tokenizer(_texts(tmp_path / "export"), return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False)
    mask = batch["attention_mask"]
    eos = mask.size(1) - 1 - mask.long().fliplr().argmax(dim=1, keepdim=True)
    position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(tmp_path / "export")(batch["input_ids"], attention_mask=mask,
                                                                position_ids=position_ids).last_hidden_state
    reward = (hidden @ value_head[0]).gather(1, eos).squeeze(1)
    normalised = (reward - config["mean"]) / config["std"]  # --reward.normalize_enable
    assert normalised.tolist() == pytest.approx([r["reward"] for r in model.score(CONVERSATIONS)], abs=1e-4)


def test_more_than_one_label_needs_the_flag_and_names_every_label(tiny_llama, tmp_path):
    _run(tiny_llama, tmp_path, "multi_objective")
    with pytest.raises(ModelError, match="verl and vLLM read the last label.*--multi-label"):
        export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"), num_labels=3)
    assert not (tmp_path / "export").exists()
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"), num_labels=3, multi_label=True)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["discorm_labels"] == ["reward", "helpful", "safe"]
    assert config["id2label"] == {"0": "reward", "1": "helpful", "2": "safe"}
