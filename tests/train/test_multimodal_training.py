"""A vision-language reward model end to end on a tiny random LLaVA: `discorm train` on sharegpt rows with image
files, the final evaluation on held-out image rows, the saved run reloaded with its processor."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from discorm.config import load_args
from discorm.model.reward_model import RewardModel
from discorm.train.workflow import run_rm
from tests.model.multimodal_models import make_vlm

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def _rows(folder, count: int, offset: int) -> list[dict]:
    rows = []
    for i in range(count):
        colour, other = ("red", "blue") if (i + offset) % 2 else ("blue", "red")
        name = f"img{offset + i}.png"
        Image.new("RGB", (28 + i % 3, 28), COLOURS[colour]).save(folder / name)
        rows.append({"conversations": [{"from": "human", "value": "<image>What colour is this?"}],
                     "chosen": {"from": "gpt", "value": f"It is {colour}."},
                     "rejected": {"from": "gpt", "value": f"It is {other}."}, "images": [name]})
    return rows


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("finetuning", [{"finetuning_type": "full"},
                                        {"finetuning_type": "lora", "lora_vision_tower": True}])
def test_a_vision_language_reward_model_trains_evaluates_saves_and_scores_images(tmp_path, finetuning):
    model_dir, _ = make_vlm(tmp_path / "vlm", "llava")
    data = tmp_path / "data"
    data.mkdir()
    train = _write(data / "train.jsonl", _rows(data, 8, 0))
    heldout = _write(data / "heldout.jsonl", _rows(data, 4, 100))
    out = tmp_path / "run"
    config = {"model_name_or_path": str(model_dir), "dataset": train, "eval_dataset": heldout,
              "output_dir": str(out), "learning_rate": 1e-3, "per_device_train_batch_size": 4, "cutoff_len": 128,
              "max_steps": 2, "save_strategy": "no", "disable_tqdm": True, "use_cpu": True, **finetuning}
    metrics = run_rm(*load_args(config))
    results = json.loads((out / "eval" / "eval_results.json").read_text())
    assert results["sets"]["heldout"]["items"] == 4 and math.isfinite(metrics["eval_accuracy"])

    model = RewardModel.from_pretrained(out)
    assert model.vision is not None  # the processor was saved with the run
    image = str(data / "img100.png")
    item = {"messages": [{"role": "user", "content": [{"type": "image", "image": image},
                                                      {"type": "text", "text": "What colour is this?"}]},
                         {"role": "assistant", "content": "It is blue."}]}
    blank = {"messages": [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (28, 28))},
                                                       {"type": "text", "text": "What colour is this?"}]},
                          {"role": "assistant", "content": "It is blue."}]}
    scored, other = model.score([item, blank])
    assert math.isfinite(scored["reward"]) and scored["reward"] != other["reward"]  # the image is read
