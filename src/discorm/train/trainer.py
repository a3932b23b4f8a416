"""PairwiseTrainer: a ``transformers.Trainer`` whose loss is :class:`PairwiseLoss`, on batches of pairs, rated
responses, or both.

Everything else (optimizers, schedulers, accumulation, DDP/DeepSpeed/FSDP through Accelerate, logging) is the
Trainer's own. Saving goes through ``RewardModel.save_pretrained`` (with the state dict the Trainer gathers under
FSDP / ZeRO-3), so every checkpoint is a loadable run directory; checkpoints appear only when complete
(``train/checkpoints.py``). A non-finite training loss stops the run (or is skipped, ``skip_nonfinite_batches``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer

from discorm.config import FinetuningArguments, launched_processes
from discorm.errors import ConfigError, TrainingError
from discorm.model.reward_model import RewardModel
from discorm.train.checkpoints import AtomicCheckpoints
from discorm.train.collective import any_process
from discorm.train.loss import PairwiseLoss

logger = logging.getLogger(__name__)


def split_pairs(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, K) with chosen first -> (B, K) chosen, (B, K) rejected."""
    half = params.shape[0] // 2
    return params[:half], params[half:]


def split_batch(params: torch.Tensor, rated: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(2B + R, K) as the collators lay it out -> (B, K) chosen, (B, K) rejected, (R, K) rated."""
    pc, pr = split_pairs(params[: params.shape[0] - rated])
    return pc, pr, params[params.shape[0] - rated :]


def split_param_groups(optimizer: torch.optim.Optimizer, params, **options) -> None:
    """Move ``params`` out of the optimizer's groups into groups of their own, one per group they came from (so
    its other options, e.g. weight decay, stay), with ``options`` (e.g. ``lr``) replaced. Before the first step."""
    moving = {id(p) for p in params}
    new_groups = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in moving]
        if mine:
            group["params"] = [p for p in group["params"] if id(p) not in moving]
            new_groups.append({**{k: v for k, v in group.items() if k != "params"}, **options, "params": mine})
    optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
    for group in new_groups:
        optimizer.add_param_group(group)


class PairwiseTrainer(AtomicCheckpoints, Trainer):
    def __init__(self, *args, finetuning_args: FinetuningArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        finetuning_args = finetuning_args or FinetuningArguments()
        self.loss_fn = PairwiseLoss.from_args(self.reward_model.head, finetuning_args)
        self.head_learning_rate = finetuning_args.head_learning_rate
        self.model_accepts_loss_kwargs = False
        self._train_correct = torch.zeros(2)  # (correct, seen) since the last log
        self.skipped_nonfinite = 0  # batches skipped for a nan/inf loss (skip_nonfinite_batches)
        self._refuse_unsupported_parallelism()

    def _refuse_unsupported_parallelism(self) -> None:
        """Setups that would train as something else than asked, or save a run directory wrongly, stop here."""
        launched = launched_processes()
        if launched > 1 and self.args.world_size == 1:
            raise ConfigError(
                f"{launched} processes were launched but did not join one distributed job, so each would train "
                "alone and all would write the same output_dir. On a machine without GPUs set use_cpu: true (or "
                "launch with torchrun / `accelerate launch --multi_gpu`); see README 'Multi-GPU'."
            )
        fsdp_asked = self.args.fsdp_plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP") == "true"
        if fsdp_asked and not self.is_fsdp_enabled:
            raise ConfigError(
                "fsdp is set but Accelerate did not turn FSDP on: it shards only on GPUs and other accelerators, "
                "and on a CPU it would silently train with plain DDP. Remove fsdp / fsdp_config (DDP is what runs "
                "here), or train on GPUs."
            )
        if self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type):
            raise ConfigError(
                "fsdp_config.state_dict_type must be FULL_STATE_DICT: a DiscoRM run directory is written from the full "
                "state dict gathered on the main process (the sharded type would leave checkpoints without one)."
            )
        if self.is_deepspeed_enabled:
            config = self.accelerator.state.deepspeed_plugin.hf_ds_config.config
            zero = config.get("zero_optimization", {})
            if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
                raise ConfigError(
                    "DeepSpeed ZeRO-3 needs zero_optimization.stage3_gather_16bit_weights_on_model_save: true in "
                    "the deepspeed config, so that the Trainer gathers the full weights for the run directory "
                    "(examples/deepspeed/ds_z3.json has it)."
                )

    @property
    def reward_model(self) -> RewardModel:
        return self.accelerator.unwrap_model(self.model)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with ``head_learning_rate`` the head's parameters get their own groups at that
        rate (the learning-rate schedule scales every group alike). An optimizer passed in is left as it is."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if created and self.head_learning_rate is not None:
            split_param_groups(optimizer, self.reward_model.head.parameters(), lr=self.head_learning_rate)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        margin, soft_label = inputs.pop("margin", None), inputs.pop("soft_label", None)
        sources = inputs.pop("sources", None)
        scores, score_mask = inputs.pop("scores", None), inputs.pop("score_mask", None)
        outputs = model(**inputs)  # one pass over all 2B + R sequences (padded or packed)
        pc, pr, rated = split_batch(outputs.head_params, 0 if scores is None else scores.shape[0])
        with torch.autocast(pc.device.type, enabled=False):  # the loss in float32, also under bf16
            loss = self.loss_fn(pc, pr, margin, soft_label, rated, scores, score_mask)
        if model.training:
            loss = self._check_finite(model, loss, sources)
            with torch.no_grad():
                chosen, rejected = self.loss_fn.head.mean(pc), self.loss_fn.head.mean(pr)
                correct = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
                self._train_correct += torch.tensor([correct.sum().item(), correct.numel()])
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, model, loss: torch.Tensor, sources: list[str] | None) -> torch.Tensor:
        """A nan/inf training loss stops the run naming the step and the batch's data rows, or, with
        skip_nonfinite_batches, is counted and contributes no gradient (its value stays non-finite, so the
        Trainer's logging_nan_inf_filter leaves it out of the logged loss)."""
        bad = not bool(torch.isfinite(loss))
        if getattr(self.args, "skip_nonfinite_batches", False):
            if not bad:
                return loss
            self.skipped_nonfinite += 1
            logger.warning("step %d: the loss is %s on the data rows %s; batch skipped (skip_nonfinite_batches)",
                           self.state.global_step + 1, loss.item(), sources)
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0  # every parameter: grad 0
            return zero + loss.detach()
        if any_process(bad, loss.device):
            rows = ", ".join(sources or []) if bad else "a batch of another process (see its log)"
            raise TrainingError(
                f"step {self.state.global_step + 1}: the training loss is {loss.item() if bad else 'not finite'} "
                f"on the batch at data rows {rows}. Check those rows (margins, soft labels, scores), lower the "
                "learning rate or use float32; or set skip_nonfinite_batches: true to skip such batches and count "
                "them."
            )
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """-> (loss, head params stacked (B, 2, K) as [chosen, rejected], target P(chosen preferred) (B,)); for a
        batch of rated responses (loss, head params (R, K), scores (R, A) with NaN where not rated)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        if "scores" in inputs:
            scores = inputs["scores"]
            if outputs.head_params.shape[0] != scores.shape[0]:
                raise ValueError("predict on pairs and on rated responses separately (see split_kinds)")
            return loss.detach(), outputs.head_params.detach(), scores.masked_fill(~inputs["score_mask"], torch.nan)
        pc, pr = split_pairs(outputs.head_params.detach())
        target = inputs.get("soft_label")
        if target is None:
            target = torch.ones(pc.shape[0], device=pc.device)
        return loss.detach(), torch.stack([pc, pr], dim=1), target

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds the training accuracy since the last log line."""
        correct, seen = self._train_correct.tolist()
        if "loss" in logs and seen:
            logs["accuracy"] = round(correct / seen, 4)
            self._train_correct.zero_()
        if "loss" in logs and self.skipped_nonfinite:
            logs["skipped_nonfinite_batches"] = self.skipped_nonfinite
        super().log(logs, *args, **kwargs)

    def _get_eval_sampler(self, eval_dataset):
        # The Trainer's default reorders evaluation by length under group_by_length; predictions must keep the
        # data order (predictions.jsonl indices, per-pair noise).
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Trainer.save_model hands the state dict it gathered under FSDP / ZeRO-3 to _save, whose default writes
        # a non-PreTrainedModel as one flat file; a DiscoRM checkpoint is a run directory instead.
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        self.reward_model.save_pretrained(output_dir, state_dict=state_dict)
        Path(output_dir, "training_args.json").write_text(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # FSDP and DeepSpeed checkpoints carry the engine's own files, which the Trainer loads; otherwise the
        # checkpoint is a run directory, which the Trainer's loader cannot read.
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.reward_model.load_weights(resume_from_checkpoint)

    def _load_best_model(self):
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        self.reward_model.load_weights(self.state.best_model_checkpoint)
