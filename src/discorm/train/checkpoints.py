"""Crash-safe checkpoints through the Trainer's public hooks: a ``checkpoint-N`` folder counts only once it holds
``COMPLETE_MARKER``, which the main process writes after every process has finished writing (a barrier).

A kill or a full disk during a save leaves a folder without the marker, which ``resume_from_checkpoint: latest``
never picks and the next run removes. Older checkpoints are rotated (``save_total_limit``) only after the new one
is marked, so the newest complete checkpoint is never deleted for one that is not.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from discorm.errors import ConfigError, TrainingError
from discorm.files import write_text

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete"
STATE_FILE = "trainer_state.json"


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder of a run, complete or not, as (N, path), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m[1]), path) for path in root.iterdir()
             if path.is_dir() and (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name))]
    return sorted(found)


def is_complete(folder: str | os.PathLike) -> bool:
    return Path(folder, COMPLETE_MARKER).is_file()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The marked ``checkpoint-N`` folders of a run, oldest first."""
    return [path for _, path in checkpoint_folders(output_dir) if is_complete(path)]


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """``resume_from_checkpoint`` -> a checkpoint folder or None. ``latest``: the newest complete checkpoint in
    ``output_dir`` (none yet: start from step 0, so a preempted job can always be relaunched the same way)."""
    if not value:
        return None
    if value == "latest":
        found = complete_checkpoints(output_dir)
        if not found:
            logger.info("resume_from_checkpoint=latest: no complete checkpoint in %s yet; starting at step 0",
                        output_dir)
            return None
        logger.info("resuming from %s", found[-1])
        return str(found[-1])
    if not Path(value, STATE_FILE).is_file():
        raise ConfigError(
            f"resume_from_checkpoint={value!r} is not a complete checkpoint (no {STATE_FILE} there); give a "
            "checkpoint-N folder of an earlier run, or `latest` for the newest one in output_dir."
        )
    return value


def failed_save(err: OSError, output_dir: str, step: int) -> TrainingError | None:
    """The error for a checkpoint that could not be written (its partial folder removed), or None when ``err``
    did not come from writing checkpoint-``step``."""
    folder = Path(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    if not folder.is_dir() or is_complete(folder):
        return None
    shutil.rmtree(folder, ignore_errors=True)
    previous = complete_checkpoints(output_dir)
    return TrainingError(
        f"could not write {folder} ({err.strerror or err}{': ' + str(err.filename) if err.filename else ''}). The "
        f"previous checkpoint {'(' + str(previous[-1]) + ') ' if previous else ''}is intact. Free disk space or "
        f"make {output_dir} writable (or choose another output_dir), then run again with "
        "resume_from_checkpoint=latest.")


class CompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint once every process has written it, then rotates old ones. When training starts at
    step S it removes the unmarked folders a crash left behind and those past S (this run writes them again).
    ``save_total_limit`` is handled here: the Trainer's own rotation would run before the marker is written."""

    def __init__(self, save_total_limit: int | None):
        self.save_total_limit = save_total_limit

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            resuming = Path(args.resume_from_checkpoint).resolve() if args.resume_from_checkpoint else None
            for step, folder in checkpoint_folders(args.output_dir):
                if folder.resolve() == resuming:
                    continue
                if not is_complete(folder) or step > state.global_step:
                    why = "past the step training starts at" if is_complete(folder) else "an unfinished checkpoint"
                    logger.warning("removing %s: %s", folder, why)
                    shutil.rmtree(folder, ignore_errors=True)
        PartialState().wait_for_everyone()

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every process has written its part of the checkpoint
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        write_text(folder / COMPLETE_MARKER, f"{state.global_step}\n")
        rotate_checkpoints(output_dir=args.output_dir, save_total_limit=self.save_total_limit,
                           best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)
