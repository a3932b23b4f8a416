"""Logging to ``trainer_log.jsonl``: one line per log event, appended as it happens so nothing is lost on a
crash."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

LOG_FILE = "trainer_log.jsonl"


class JsonlLogCallback(TrainerCallback):
    """Appends {step, loss, lr, accuracy, eval metrics, elapsed, remaining} to trainer_log.jsonl."""

    def __init__(self):
        self.start = None
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.first_step = state.global_step
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            if not args.resume_from_checkpoint:
                Path(args.output_dir, LOG_FILE).unlink(missing_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        elapsed = time.time() - (self.start or time.time())
        done = max(state.global_step - self.first_step, 1)
        remaining = elapsed / done * max(state.max_steps - state.global_step, 0)
        record = {"step": state.global_step, "epoch": state.epoch, **logs,
                  "elapsed": round(elapsed, 2), "remaining": round(remaining, 2)}
        if "learning_rate" in record:
            record["lr"] = record.pop("learning_rate")
        with open(Path(args.output_dir, LOG_FILE), "a") as handle:
            handle.write(json.dumps(record) + "\n")
