"""Two processes on the CPU (gloo), launched with torchrun: DDP and FSDP2 full sharding train the same model as
one process with the same global batch, save a run directory that loads in one process with the same scores,
and resume from a middle checkpoint to the same final loss."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from discorm.data.collator import PairwiseDataCollatorWithPadding, model_inputs
from discorm.model.reward_model import RewardModel
from tests.conftest import REPO

pytestmark = pytest.mark.slow

WORKER = REPO / "tests" / "distributed_worker.py"
PROBE = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 10], "rejected_ids": [11, 12]},
         {"prompt_ids": [13], "chosen_ids": [14, 15], "rejected_ids": [16, 17, 18, 19]}]
FSDP = {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                      "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}}
DEEPSPEED = REPO / "examples" / "deepspeed"
ENGINES = {  # engine -> (extra config, enable the Trainer's FSDP2 on CPU)
    "ddp": ({}, False),
    "fsdp2": (FSDP, True),
    "zero2": ({"deepspeed": str(DEEPSPEED / "ds_z2.json")}, False),
    "zero3": ({"deepspeed": str(DEEPSPEED / "ds_z3.json")}, False),
    "zero3_lora": ({"deepspeed": str(DEEPSPEED / "ds_z3.json"), "finetuning_type": "lora", "lora_rank": 4}, False),
}
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    words = ["fox", "dog", "moon", "bees", "tea", "owls", "bread", "chess"]
    rows = [{"prompt": f"{words[i % 8]} {words[(i * 3) % 8]}", "chosen": f"yes {words[(i * 5) % 8]}",
             "rejected": f"no {words[(i + 1) % 8]} {i}"} for i in range(32)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(tmp_path, name, model_dir, data, nproc, extra=None, cpu_fsdp=False):
    """-> (per-step losses, probe scores of the in-memory model, probe metadata)."""
    out = tmp_path / name
    config = {"model_name_or_path": str(model_dir), "dataset": str(data), "output_dir": str(out),
              "do_train": True, "finetuning_type": "full", "head": "gaussian", "cutoff_len": 64,
              "per_device_train_batch_size": 4 // nproc, "num_train_epochs": 1, "learning_rate": 2e-3,
              "lr_scheduler_type": "linear", "logging_steps": 1, "save_strategy": "steps", "save_steps": 4,
              "seed": 3, "disable_tqdm": True, "report_to": "none", **(extra or {})}
    batch = PairwiseDataCollatorWithPadding(0)(PROBE)
    spec = {"config": config, "probe": str(tmp_path / f"{name}.probe.json"), "cpu_fsdp": cpu_fsdp,
            "batch": {k: batch[k].tolist() for k in ("input_ids", "attention_mask")}}
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    launch = [sys.executable, str(WORKER)] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_port", str(_free_port()), str(WORKER)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([*launch, str(tmp_path / f"{name}.json")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    probe = json.loads((tmp_path / f"{name}.probe.json").read_text())
    return losses, torch.tensor(probe["head_params"]), probe


def _scores(run_dir):
    model = RewardModel.from_pretrained(run_dir).eval()
    with torch.no_grad():
        return model(**model_inputs(PairwiseDataCollatorWithPadding(0)(PROBE))).head_params


@pytest.fixture(scope="module")
def single(tiny_llama, pairs, tmp_path_factory):
    """One process with the global batch of the two-process runs, per fine-tuning type."""
    runs = {}

    def run(finetuning_type):
        if finetuning_type not in runs:
            runs[finetuning_type] = _train(tmp_path_factory.mktemp("single"), "one", tiny_llama, pairs, 1,
                                           {"finetuning_type": finetuning_type, "lora_rank": 4})
        return runs[finetuning_type]

    return run


@pytest.mark.parametrize("engine", list(ENGINES))
def test_two_processes_match_one_save_and_resume(engine, single, tiny_llama, pairs, tmp_path):
    extra, cpu_fsdp = ENGINES[engine]
    if "deepspeed" in extra and not HAS_DEEPSPEED:
        pytest.skip("DeepSpeed is not installed (pip install deepspeed)")
    losses, probe, meta = _train(tmp_path, "two", tiny_llama, pairs, 2, extra, cpu_fsdp)
    one_losses, one_probe, one_meta = single(extra.get("finetuning_type", "full"))
    assert meta["world_size"] == 2 and meta["max_steps"] == one_meta["max_steps"] == 8  # half the steps of 1x2
    if engine == "fsdp2":
        assert meta["sharded"]  # the parameters are DTensor shards
    assert sorted(losses) == sorted(one_losses) == list(range(1, 9))
    for step, loss in one_losses.items():
        assert abs(losses[step] - loss) < 1e-5, (step, losses[step], loss)
    torch.testing.assert_close(probe, one_probe, atol=1e-5, rtol=0)

    # the run directory, written from the gathered full state dict, loads in one process with the same scores
    torch.testing.assert_close(_scores(tmp_path / "two"), probe, atol=1e-5, rtol=0)
    RewardModel.from_pretrained(tmp_path / "two" / "checkpoint-4")  # every checkpoint is a run directory

    resumed, resumed_probe, _ = _train(tmp_path, "resumed", tiny_llama, pairs, 2, {
        **extra, "resume_from_checkpoint": str(tmp_path / "two" / "checkpoint-4")}, cpu_fsdp)
    assert max(resumed) == 8
    for step in (5, 6, 7, 8):
        assert abs(resumed[step] - losses[step]) < 1e-5, (step, resumed[step], losses[step])
    torch.testing.assert_close(resumed_probe, probe, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ranking_loss", ["all_pairs", "plackett_luce"])
def test_ranked_lists_train_the_same_on_two_processes(ranking_loss, tiny_llama, tmp_path):
    """K = 3 lists (one block each) under DDP: half the steps per process, the losses of one process with the
    same global batch."""
    words = ["fox", "dog", "moon", "bees", "tea", "owls", "bread", "chess"]
    rows = [{"prompt": f"{words[i % 8]} {words[(i * 3) % 8]}",
             "responses": [f"no {words[(i + 1) % 8]} {i}", f"yes {words[(i * 5) % 8]}", f"maybe {i}"],
             "ranking": [1, 2, 0]} for i in range(32)]
    data = tmp_path / "lists.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = {"head": "scalar", "ranking_loss": ranking_loss, "save_strategy": "no"}
    losses, probe, meta = _train(tmp_path, "two", tiny_llama, data, 2, extra)
    one_losses, one_probe, one_meta = _train(tmp_path, "one", tiny_llama, data, 1, extra)
    assert meta["world_size"] == 2 and meta["max_steps"] == one_meta["max_steps"] == 8  # half the steps of 1x2
    assert sorted(losses) == sorted(one_losses) == list(range(1, 9))
    for step, loss in one_losses.items():
        assert abs(losses[step] - loss) < 1e-5, (step, losses[step], loss)
    torch.testing.assert_close(probe, one_probe, atol=1e-5, rtol=0)
