"""Nothing lost: crash-safe checkpoints, preemption, non-finite losses and failed saves.

The kills and signals hit real training processes (``tests/train/fault_injection.py`` plants the fault from
outside the package); each resumed run must reach the losses and scores of an uninterrupted one.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import transformers
import yaml

from discorm.config import load_args
from discorm.errors import ConfigError, TrainingError
from discorm.model.reward_model import RewardModel
from discorm.train.checkpoints import (
    COMPLETE_MARKER,
    checkpoint_folders,
    complete_checkpoints,
    is_complete,
    resolve_resume,
)
from discorm.train.workflow import run_rm
from tests.conftest import REPO, build_model, user_error
from tests.train.test_trainer import FEATURES, _config, _scores, _synthetic_file, _trainer

STEPS_PER_EPOCH = 12  # 48 pairs, 4 per step


def _run_config(model_dir, data, out, **extra):
    return _config(model_dir, data, out, num_train_epochs=2, save_strategy="steps", save_steps=8,
                   lr_scheduler_type="linear", **extra)


@pytest.fixture(scope="module")
def reference(tiny_llama, tmp_path_factory):
    """The uninterrupted run: its loss at every step and its final scores."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISCORM_HOME", str(root / "home"))
        data = _synthetic_file(root / "pairs.jsonl", n=48)
        run_rm(*load_args(_run_config(tiny_llama, data, root / "run")))
    return {"data": data, "losses": _losses(root / "run"), "scores": _final_scores(root / "run")}


def _losses(run) -> dict[int, float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def _final_scores(run) -> torch.Tensor:
    chosen, rejected, _ = _scores(RewardModel.from_pretrained(run).eval(), FEATURES)
    return torch.cat([chosen, rejected])


def _launch(config: dict, tmp_path, fault: str, arg: str, **kwargs):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({k: str(v) if hasattr(v, "__fspath__") else v for k, v in config.items()}))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
    command = [sys.executable, "-m", "tests.train.fault_injection", str(path), fault, arg]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _resume_matches_reference(tiny_llama, reference, run, resumed_from: int) -> None:
    run_rm(*load_args(_run_config(tiny_llama, reference["data"], run, resume_from_checkpoint="latest")))
    losses = _losses(run)
    later = {step: loss for step, loss in reference["losses"].items() if step > resumed_from}
    assert later and {step: losses[step] for step in later} == pytest.approx(later, abs=1e-5)
    torch.testing.assert_close(_final_scores(run), reference["scores"], atol=1e-5, rtol=0)


def test_sigkill_during_a_checkpoint_write_then_resume_latest(tiny_llama, tmp_path, reference):
    run = tmp_path / "run"
    process = _launch(_run_config(tiny_llama, reference["data"], run), tmp_path, "kill-during-save", "16")
    _, err = process.communicate(timeout=600)
    assert process.returncode == -signal.SIGKILL, err[-2000:]
    staged = run / "checkpoint-16"
    assert (staged / "model.safetensors").is_file() and (staged / "optimizer.pt").stat().st_size < 100
    assert not is_complete(run / "checkpoint-16")  # the half-written checkpoint does not count
    assert complete_checkpoints(run) == [run / "checkpoint-8"]
    _resume_matches_reference(tiny_llama, reference, run, resumed_from=8)
    assert all(is_complete(folder) for _, folder in checkpoint_folders(run))  # the resumed run cleared it
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-8", "checkpoint-16", "checkpoint-24"]


def test_sigterm_mid_epoch_saves_a_checkpoint_that_resumes_exactly(tiny_llama, tmp_path, reference):
    run = tmp_path / "run"
    process = _launch(_run_config(tiny_llama, reference["data"], run), tmp_path, "slow", "0.3")
    log = run / "trainer_log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.is_file() else []
        if steps and max(steps) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    message = user_error(err)
    stopped = int(re.search(r"^discorm: training stopped by SIGTERM at step (\d+) of 24", message)[1])
    assert stopped % STEPS_PER_EPOCH != 0  # mid-epoch
    assert complete_checkpoints(run)[-1] == run / f"checkpoint-{stopped}"
    assert "resume_from_checkpoint=latest" in message
    _resume_matches_reference(tiny_llama, reference, run, resumed_from=stopped)


def _digest(folder) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())).hexdigest()


def test_a_failed_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tiny_llama, tmp_path, monkeypatch,
                                                                          capsys):
    from discorm.cli import main

    data = _synthetic_file(tmp_path / "pairs.jsonl", n=48)
    run = tmp_path / "run"
    before = {}
    original = transformers.Trainer._save_rng_state

    def disk_full(self, output_dir):  # the disk fills up while checkpoint-16 is written
        if self.state.global_step == 16:
            before["digest"] = _digest(run / "checkpoint-8")
            raise OSError(28, "No space left on device", os.path.join(output_dir, "rng_state.pth"))
        return original(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_rng_state", disk_full)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({k: str(v) for k, v in _run_config(tiny_llama, data, run).items()}))
    assert main(["train", str(config)]) == 2
    err = user_error(capsys.readouterr().err)
    assert "could not write" in err and "checkpoint-16" in err and "No space left on device" in err
    assert f"previous checkpoint ({run / 'checkpoint-8'}) is intact" in err
    assert not (run / "checkpoint-16").exists()
    assert _digest(run / "checkpoint-8") == before["digest"]
    assert complete_checkpoints(run) == [run / "checkpoint-8"]
    RewardModel.from_pretrained(run / "checkpoint-8")


def test_latest_is_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    for name in ("checkpoint-4", "checkpoint-12", "checkpoint-16", "checkpoint-x", "checkpoint-20"):
        (run / name).mkdir(parents=True)
    for name in ("checkpoint-4", "checkpoint-12", "checkpoint-16"):
        (run / name / "trainer_state.json").write_text("{}")
    for name in ("checkpoint-4", "checkpoint-12"):
        (run / name / COMPLETE_MARKER).write_text("")
    (run / "checkpoint-20" / "model.safetensors").write_text("")  # cut short by a kill
    assert complete_checkpoints(run) == [run / "checkpoint-4", run / "checkpoint-12"]
    assert resolve_resume("latest", str(run)) == str(run / "checkpoint-12")
    assert resolve_resume("latest", str(tmp_path / "fresh")) is None  # nothing yet: start at step 0
    assert resolve_resume(str(run / "checkpoint-4"), str(run)) == str(run / "checkpoint-4")
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resolve_resume(str(run / "checkpoint-20"), str(run))


def test_best_checkpoint_is_recorded_under_its_final_name(tiny_llama, tmp_path):
    data = _synthetic_file(tmp_path / "pairs.jsonl", n=24)
    run = tmp_path / "run"
    run_rm(*load_args(_config(tiny_llama, data, run, max_steps=8, save_strategy="steps", save_steps=4,
                              eval_strategy="steps", eval_steps=4, eval_dataset=str(data),
                              load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=False,
                              save_total_limit=1)))
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    best = state["best_model_checkpoint"]
    assert best in (str(run / "checkpoint-4"), str(run / "checkpoint-8")) and is_complete(best)
    assert os.path.isdir(best)


def _inf_margin_batch():
    features = [dict(f, source=f"pairs.jsonl:{i + 1}") for i, f in enumerate(FEATURES)]
    features[1]["margin"] = 1e39  # finite in the file, inf as float32
    return features


def test_a_nonfinite_loss_stops_with_the_step_and_rows(tiny_llama, tmp_path):
    from discorm.data.collator import PairwiseDataCollatorWithPadding

    model = build_model(tiny_llama).train()
    batch = PairwiseDataCollatorWithPadding(0)(_inf_margin_batch())
    trainer = _trainer(model, tmp_path)
    trainer.state.global_step = 1
    trainer.compute_loss(model, batch)  # noted on the device; the step's end checks it, on every process at once
    with pytest.raises(TrainingError, match=r"step 1: the training loss is inf on the batch at data rows "
                                            r"pairs.jsonl:1, pairs.jsonl:2\. .*skip_nonfinite_batches: true"):
        trainer.sync.on_step_end(trainer.args, trainer.state, trainer.control)


def test_skipped_nonfinite_batches_give_no_gradient(tiny_llama, tmp_path):
    from discorm.data.collator import PairwiseDataCollatorWithPadding

    model = build_model(tiny_llama).train()
    batch = PairwiseDataCollatorWithPadding(0)(_inf_margin_batch())
    trainer = _trainer(model, tmp_path, skip_nonfinite_batches=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    assert torch.isinf(loss) and trainer.sync.skipped == 1
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)


def test_training_skips_and_counts_nonfinite_batches(tiny_llama, tmp_path):
    rows = [{"prompt": f"q {i}", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(16)]
    rows[5]["margin"] = 1e39
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrainingError, match=rf"data rows .*{re.escape(str(data))}:6"):
        run_rm(*load_args(_config(tiny_llama, data, tmp_path / "a", max_steps=4)))
    results = run_rm(*load_args(_config(tiny_llama, data, tmp_path / "b", max_steps=4,
                                        skip_nonfinite_batches=True)))
    assert results["train_skipped_nonfinite_batches"] == 1
    model = RewardModel.from_pretrained(tmp_path / "b")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    log = [json.loads(x) for x in (tmp_path / "b" / "trainer_log.jsonl").read_text().splitlines()]
    assert max(r.get("skipped_nonfinite_batches", 0) for r in log) == 1


def _torchrun(config: dict, tmp_path, name: str, fault: str = "slow", arg: str = "0", **kwargs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({k: str(v) if hasattr(v, "__fspath__") else v for k, v in config.items()}))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}", "FAULT_PID_DIR": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "tests.train.fault_injection", str(path), fault, arg]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _free_port() -> int:
    from tests.serve.server_helpers import free_port

    return free_port()


@pytest.mark.slow
def test_ddp_sigterm_to_one_rank_stops_both_with_a_complete_checkpoint(tiny_llama, tmp_path):
    """torchrun, 2 CPU processes: every rank writes rng_state_{rank}.pth into the staged checkpoint, the main one
    renames it once all are done; SIGTERM to rank 1 alone stops both at the same step, and the run resumes from
    that checkpoint to the losses of an uninterrupted run."""
    from discorm.model.loading import load_tokenizer
    from tests.conftest import build_datasets

    data = _synthetic_file(tmp_path / "pairs.jsonl", n=48)
    config = _config(tiny_llama, data, tmp_path / "ddp", max_steps=12, per_device_train_batch_size=2,
                     save_strategy="steps", save_steps=4, lr_scheduler_type="linear")
    model_args, data_args, _, _ = load_args(config)
    build_datasets(data_args, load_tokenizer(model_args.tokenizer_path))  # the cache, before two processes want it
    reference = _torchrun({**config, "output_dir": tmp_path / "ref"}, tmp_path, "ref")
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]

    process = _torchrun(config, tmp_path, "ddp", arg="0.4")
    log, deadline = tmp_path / "ddp" / "trainer_log.jsonl", time.time() + 300
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.kill(int((tmp_path / "rank1.pid").read_text()), signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    stops = re.findall(r"discorm: training stopped by SIGTERM at step (\d+) of 12", output)
    assert len(stops) == 2 and stops[0] == stops[1], output[-3000:]  # both ranks, the same step
    # Each rank exits 143 after the checkpoint; once the first has exited, torchrun ends a rank still shutting
    # down with its own SIGTERM (-15), which is torchrun's rule, not a lost checkpoint (checked below).
    exits = re.findall(r"exitcode\s*: (-?\d+)", output)
    assert "143" in exits and set(exits) <= {"143", "-15"}, output[-3000:]
    stopped = int(stops[0])
    checkpoint = tmp_path / "ddp" / f"checkpoint-{stopped}"
    assert complete_checkpoints(tmp_path / "ddp")[-1] == checkpoint and stopped < 12
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= {p.name for p in checkpoint.iterdir()}
    assert all(is_complete(folder) for _, folder in checkpoint_folders(tmp_path / "ddp"))

    resumed = _torchrun({**config, "resume_from_checkpoint": "latest"}, tmp_path, "resume")
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()[-3000:]
    expected, got = _losses(tmp_path / "ref"), _losses(tmp_path / "ddp")
    later = {step: loss for step, loss in expected.items() if step > stopped}
    assert later and {step: got[step] for step in later} == pytest.approx(later, abs=1e-5)
    torch.testing.assert_close(_final_scores(tmp_path / "ddp"), _final_scores(tmp_path / "ref"), atol=1e-5, rtol=0)


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_llama, tmp_path):
    from transformers import TrainerCallback

    from discorm.errors import TrainingInterrupted

    class CtrlC(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    data = _synthetic_file(tmp_path / "pairs.jsonl", n=48)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT at step 3 of 12") as stop:
        run_rm(*load_args(_config(tiny_llama, data, tmp_path / "run", max_steps=12)), callbacks=[CtrlC()])
    assert stop.value.exit_code == 130 and signal.getsignal(signal.SIGINT) is previous
    assert complete_checkpoints(tmp_path / "run") == [tmp_path / "run" / "checkpoint-3"]
    assert not (tmp_path / "run" / "model.safetensors").exists()  # not saved as if training had finished


def test_a_failed_final_save_is_a_clear_error(tiny_llama, tmp_path, monkeypatch, capsys):
    from discorm.cli import main

    def disk_full(self, save_directory, state_dict=None):
        raise OSError(28, "No space left on device", str(save_directory))

    monkeypatch.setattr(RewardModel, "save_pretrained", disk_full)
    data = _synthetic_file(tmp_path / "pairs.jsonl", n=8)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({k: str(v) for k, v in _config(tiny_llama, data, tmp_path / "run",
                                                                      max_steps=1).items()}))
    assert main(["train", str(config)]) == 2
    err = user_error(capsys.readouterr().err)
    assert f"could not save the trained model to {tmp_path / 'run'} (No space left on device: " in err
    assert "resume_from_checkpoint=latest" in err
