"""A fourth head defined here, and nowhere in the package, trains, saves, loads and exports through the registry."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification

from discorm.config import load_args
from discorm.errors import ConfigError
from discorm.model.heads import HEADS, ExportSpec, HeadOption, RewardHead, register_head
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from discorm.train.workflow import run_rm


@register_head
class ScaledHead(RewardHead):
    """r = scale * w . h, with a loss option that pulls rewards towards zero."""

    kind = "toy_scaled"
    options = (
        HeadOption("toy_scale", 1.0, "toy: reward scale", low=0.0),
        HeadOption("toy_shrink", 0.0, "toy: adds toy_shrink * mean(r^2)", saved=False),
    )
    export_labels = (1,)

    def __init__(self, hidden_size, toy_scale=1.0):
        super().__init__()
        self.toy_scale = toy_scale
        self.value = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.value.weight, std=1 / math.sqrt(hidden_size + 1))

    def forward(self, hidden):
        return self.toy_scale * self.value(hidden)

    def mean(self, params):
        return params[:, 0]

    def log_prob_pair(self, pc, pr, margin=None):
        diff = pc[:, 0] - pr[:, 0] - (0 if margin is None else margin)
        return F.logsigmoid(diff), F.logsigmoid(-diff)

    def regulariser(self, pc, pr, toy_shrink=0.0, **_):
        return toy_shrink * torch.cat([pc, pr]).square().mean()

    def export_spec(self, num_labels):
        return ExportSpec(self.toy_scale * self.value.weight.detach().float())


def teardown_module():
    HEADS.pop(ScaledHead.kind)  # keep the registry as shipped for the other test modules


def _pairs(path, n=24):
    rows = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_toy_head_trains_saves_loads_and_exports(tiny_llama, tmp_path):
    assert "toy_scaled" in HEADS
    data = _pairs(tmp_path / "pairs.jsonl")
    config = {"model_name_or_path": str(tiny_llama), "dataset": str(data), "eval_dataset": str(data),
              "output_dir": str(tmp_path / "run"), "do_train": True, "finetuning_type": "full", "max_steps": 3,
              "head": "toy_scaled", "toy_scale": "2.5", "toy_shrink": 0.1, "per_device_train_batch_size": 4,
              "cutoff_len": 64, "save_strategy": "no", "disable_tqdm": True, "use_cpu": True, "report_to": "none"}
    results = run_rm(*load_args(config))
    assert 0 <= results["eval_accuracy"] <= 1
    stored = json.loads((tmp_path / "run" / "discorm_config.json").read_text())
    assert stored["head"] == "toy_scaled" and stored["head_options"] == {"toy_scale": 2.5}  # loss option not saved

    model = RewardModel.from_pretrained(tmp_path / "run").eval()
    assert isinstance(model.head, ScaledHead) and model.head.toy_scale == 2.5
    chats = [[{"role": "user", "content": "q 1"}, {"role": "assistant", "content": "yes 1"}]]
    reward = model.score(chats)[0]["reward"]
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"))
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    from discorm.data.tokenize import Encoder

    ids = torch.tensor([Encoder.for_model(model).encode_item(chats[0])])
    with torch.no_grad():
        assert float(classifier(input_ids=ids).logits[0, 0]) == pytest.approx(reward, abs=1e-4)


def test_head_options_are_checked_against_the_chosen_head():
    with pytest.raises(ConfigError, match="toy_scale does not apply to the gaussian head.*toy_scaled head"):
        load_args({"head": "gaussian", "toy_scale": 2.0})
    with pytest.raises(ConfigError, match="toy_scale=-1.0 is out of range"):
        load_args({"head": "toy_scaled", "toy_scale": -1.0})
    assert load_args({"head": "categorical", "num_atoms": "7"})[3].head_options["num_atoms"] == 7
