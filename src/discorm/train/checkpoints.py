"""Crash-safe checkpoints: a ``checkpoint-N`` folder appears only when it is complete.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, ``rng_state_{rank}.pth`` from every
process, ``trainer_state.json``), so a kill or a full disk during the write used to leave a half-written
``checkpoint-N`` that a resume would then pick. Here every process writes into ``<output_dir>/.partial-checkpoints/
checkpoint-N``; once all of them are done (a barrier), the main process renames the folder into place, which is
atomic on one file system. ``resume_from_checkpoint: latest`` picks the newest complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from discorm.errors import ConfigError, TrainingError
from discorm.train.collective import any_process

logger = logging.getLogger(__name__)

STAGING_DIR = ".partial-checkpoints"
STATE_FILE = "trainer_state.json"  # the Trainer writes it last


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of a run that hold a trainer state, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match[1]), path))
    return [path for _, path in sorted(found)]


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


class AtomicCheckpoints:
    """Trainer mixin: checkpoints are written to a staging folder and renamed into place when complete."""

    _staging_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        # Private: the Trainer asks it where checkpoint-N goes; during a save the answer is the staging folder.
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        # Private: Trainer._save_checkpoint writes checkpoint-N in place on every process, and no public hook
        # surrounds the whole write; this wraps it to stage the write and publish the folder when complete.
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / STAGING_DIR
        staged, final = staging_root / name, run_dir / name
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # what a killed write left behind
        self.accelerator.wait_for_everyone()
        failure = None
        self._staging_root = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        except Exception as err:  # noqa: BLE001 - any failed write: reported below, on every process
            failure = err
        finally:
            self._staging_root = None
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
        if not any_process(failure is not None, self.args.device):  # also the barrier: every file is written
            if self.args.should_save:
                try:
                    self._publish(staged, final)
                except OSError as err:
                    failure = err
            if not any_process(failure is not None, self.args.device):
                return
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
        previous = complete_checkpoints(run_dir)
        raise TrainingError(
            f"could not write {final} ({type(failure).__name__ if failure else 'on another process'}: "
            f"{failure or 'see its log'}). The previous checkpoint "
            f"{'(' + str(previous[-1]) + ') ' if previous else ''}is intact. Free disk space or make {run_dir} "
            "writable (or choose another output_dir), then run again with resume_from_checkpoint=latest."
        ) from failure

    def _publish(self, staged: Path, final: Path) -> None:
        """Rename the complete staged folder to ``final`` (replacing an older one of the same step)."""
        if self.state.best_model_checkpoint == str(final):  # the staged state file names the staging folder
            self.state.save_to_json(str(staged / STATE_FILE))
        replaced = staged.parent / f"replaced-{final.name}"
        if final.exists():
            os.rename(final, replaced)
        os.rename(staged, final)
        shutil.rmtree(staged.parent, ignore_errors=True)
        rotate_checkpoints(output_dir=str(final.parent), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
