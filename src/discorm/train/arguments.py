"""The arguments the Trainer sees, derived once from the ones the user gave, as a copy.

DiscoRM changes a few ``TrainingArguments`` for the Trainer (it rotates checkpoints and loads the best one itself,
resolves ``resume_from_checkpoint: latest``, adapts to a machine without an accelerator). Each change is made here,
on a copy, with its reason; the run's ``training_args.json`` records what the user asked for and, under
``discorm_changes``, what DiscoRM used instead and why.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch

from discorm.config import DataArguments, TrainingArguments, launched_processes
from discorm.train.checkpoints import resolve_resume

CHANGES_KEY = "discorm_changes"


@dataclass(frozen=True)
class TrainerArguments:
    """``asked``: the user's arguments; ``used``: the copy the Trainer runs with; ``changes``: key -> {asked, used,
    why} for every key DiscoRM set differently."""

    asked: TrainingArguments
    used: TrainingArguments
    changes: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def unchanged(cls, args: TrainingArguments) -> TrainerArguments:
        return cls(args, args)

    @property
    def loads_best_checkpoint(self) -> bool:
        """DiscoRM, not the Trainer, loads the best checkpoint's weights after training."""
        return "load_best_model_at_end" in self.changes

    def to_json_string(self) -> str:
        """The run's record: the user's arguments plus ``discorm_changes``."""
        record = json.loads(self.asked.to_json_string())
        record[CHANGES_KEY] = self.changes
        return json.dumps(record, indent=2)


def engine_checkpoints(args: TrainingArguments) -> bool:
    """DeepSpeed or FSDP, from the arguments or the launcher (``accelerate launch --use_fsdp``): their
    checkpoints carry the engine's files, which the Trainer's own loader reads."""
    from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # as Accelerate reads it
    return args.deepspeed_plugin is not None or args.fsdp_plugin_args is not None or from_launcher


def trainer_arguments(args: TrainingArguments, data_args: DataArguments) -> TrainerArguments:
    """The arguments the Trainer runs with: a copy of ``args`` with DiscoRM's changes, each recorded with its
    reason. ``args`` is left as it is."""
    wanted = {}  # key -> (value for the Trainer, why)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if resume != args.resume_from_checkpoint:
        wanted["resume_from_checkpoint"] = (resume, "latest: the newest complete checkpoint in output_dir (none: "
                                            "training starts at step 0)")
    if data_args.group_by_length:
        wanted["train_sampling_strategy"] = ("group_by_length", "group_by_length: true (batches of pairs of similar "
                                             "length, from the tokenized `length` column)")
    if args.save_total_limit is not None:
        wanted["save_total_limit"] = (None, "DiscoRM rotates checkpoints once each is marked complete (the Trainer "
                                      "would rotate before the marker is written); it keeps save_total_limit of them")
    if args.load_best_model_at_end and not engine_checkpoints(args):
        wanted["load_best_model_at_end"] = (False, "DiscoRM loads the best checkpoint's weights after training: a "
                                            "checkpoint is a run directory, which the Trainer's loader cannot read")
    if not torch.accelerator.is_available():
        if launched_processes() > 1:
            wanted["use_cpu"] = (True, "several processes on a machine without an accelerator form one (gloo) "
                                 "job only when told to use the CPU")
        wanted["dataloader_pin_memory"] = (False, "pinning memory needs an accelerator")
    wanted = {key: value for key, value in wanted.items() if getattr(args, key) != value[0]}
    if not wanted:
        return TrainerArguments.unchanged(args)
    used = dataclasses.replace(args, **{key: value for key, (value, _) in wanted.items()})
    changes = {key: {"asked": getattr(args, key), "used": value, "why": why} for key, (value, why) in wanted.items()}
    return TrainerArguments(args, used, changes)
