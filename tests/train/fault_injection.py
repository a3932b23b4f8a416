"""Test-only fault injection: ``python -m tests.train.fault_injection CONFIG FAULT ARG`` runs ``discorm train
CONFIG`` in this process with one fault planted from outside the package:

- ``kill-during-save STEP``: while checkpoint-STEP is being written (the weights are on disk, the optimizer
  state half written) the process kills itself with SIGKILL;
- ``slow SECONDS``: every optimizer step takes SECONDS longer, so a test can signal the run mid-epoch.

With ``FAULT_PID_DIR`` set, each process writes its id to ``rank{RANK}.pid`` there (to signal one rank).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import transformers
from transformers import TrainerCallback


def _kill_during_save(step: int) -> None:
    original = transformers.Trainer._save_optimizer_and_scheduler

    def dying(self, output_dir):
        if self.state.global_step == step:
            Path(output_dir, "optimizer.pt").write_bytes(b"half an optimizer state")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, output_dir)

    transformers.Trainer._save_optimizer_and_scheduler = dying


class _Slow(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def _slow(seconds: float) -> None:
    import discorm.train.workflow as workflow

    run_rm = workflow.run_rm
    workflow.run_rm = lambda *args, callbacks=None: run_rm(*args, callbacks=[_Slow(seconds)])


if __name__ == "__main__":
    config, fault, arg = sys.argv[1:4]
    if os.environ.get("FAULT_PID_DIR"):  # under torchrun: where each rank's process id can be found
        Path(os.environ["FAULT_PID_DIR"], f"rank{os.environ.get('RANK', 0)}.pid").write_text(str(os.getpid()))
    {"kill-during-save": lambda: _kill_during_save(int(arg)), "slow": lambda: _slow(float(arg))}[fault]()
    from discorm.cli import main

    sys.exit(main(["train", config]))
