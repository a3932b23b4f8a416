"""PairwiseTrainer: a ``transformers.Trainer`` whose loss is :class:`PairwiseLoss`, on batches of pairs, rated
responses, or both (:class:`PairBatch`).

It overrides ``compute_loss``, ``prediction_step``, ``log`` and ``create_optimizer``, and two private methods,
``_save`` and ``_load_from_checkpoint`` (reasons inline); optimizers, schedulers, accumulation and DDP / FSDP /
DeepSpeed are the Trainer's own. Each optimizer step ends with one all-reduce (:class:`StepSync`).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from discorm.config import FinetuningArguments
from discorm.data.collator import PairBatch, model_inputs
from discorm.errors import ConfigError
from discorm.files import write_text
from discorm.model.reward_model import RewardModel
from discorm.train.arguments import TrainerArguments
from discorm.train.loss import PairwiseLoss, ordered_rewards
from discorm.train.preemption import StepSync
from discorm.train.trunk_cache import TrunkCache, build_trunk_cache


def split_batch(params: torch.Tensor, rated: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(2B + R, K) as the collators lay it out -> (B, K) chosen, (B, K) rejected, (R, K) rated."""
    pairs = params.shape[0] - rated
    return params[: pairs // 2], params[pairs // 2 : pairs], params[pairs:]


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


class PairwiseTrainer(Trainer):
    """A ``transformers.Trainer`` for reward models: ``compute_loss`` is the head's pairwise (and rated) loss,
    ``prediction_step`` returns the head's parameters for chosen and rejected; optimizers, schedulers, DDP, FSDP,
    DeepSpeed, logging and checkpoints are the Trainer's own. ``finetuning_args`` give the loss options and
    ``head_learning_rate``; ``arguments`` (:func:`trainer_arguments`) are the arguments it runs with (``used``) and
    the record it writes with every checkpoint (``training_args.json``), in place of ``args``."""

    def __init__(self, *args, finetuning_args: FinetuningArguments | None = None,
                 arguments: TrainerArguments | None = None, **kwargs):
        if arguments is not None:
            kwargs["args"] = arguments.used
        super().__init__(*args, **kwargs)
        self.arguments = arguments or TrainerArguments.unchanged(self.args)
        finetuning_args = finetuning_args or FinetuningArguments()
        self.loss_fn = PairwiseLoss.from_args(self.reward_model.head, finetuning_args)
        self.head_learning_rate = finetuning_args.head_learning_rate
        self.model_accepts_loss_kwargs = False
        self.sync = StepSync(self.args.device, getattr(self.args, "skip_nonfinite_batches", False))
        self.add_callback(self.sync)
        self.trunk_cache: TrunkCache | None = None

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

    def cache_frozen_trunk(self, max_gb: float) -> None:
        """Train from the frozen blocks' cached output (``train/trunk_cache.py``): computed here, once, under the
        autocast training uses, and the training rows rewritten to read it. Evaluation runs the full model."""
        if self.args.world_size > 1:
            raise ConfigError("cache_frozen_trunk trains in one process; this run has "
                              f"{self.args.world_size}. Remove cache_frozen_trunk, or train on one device.")
        with self.autocast_smart_context_manager():
            self.trunk_cache, self.train_dataset = build_trunk_cache(
                self.reward_model, self.train_dataset, self.args.per_device_eval_batch_size, max_gb)

    def compute_loss(self, model, inputs: PairBatch, return_outputs=False, num_items_in_batch=None):
        if self.trunk_cache is not None and model.training:  # training rows hold rows of the cache, not tokens
            outputs = self.trunk_cache.model(**model_inputs(inputs))
        else:
            outputs = model(**model_inputs(inputs))  # one pass over every scored sequence (padded or packed)
        params = outputs.head_params
        with torch.autocast(params.device.type, enabled=False):  # the loss in float32, also under bf16
            loss = self.loss_fn.batch_loss(params, inputs)
        if model.training:
            with torch.no_grad():
                better, worse = ordered_rewards(self.loss_fn.head, params, inputs)
            loss = self.sync.record(loss, better, worse, inputs.get("sources"), self.state.global_step + 1, model)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs: PairBatch, prediction_loss_only, ignore_keys=None):
        """-> (loss, head params (B, 2, K) as [chosen, rejected], labels (B, 2): P(chosen preferred) and the
        pair's noise level (NaN: none)); a batch of rated responses gives (loss, params (R, K), scores (R, A),
        NaN where not rated). Labels travel with their pairs, so any evaluation order gives the same metrics."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        params = outputs.head_params.detach()
        if "scores" in inputs:
            if params.shape[0] != inputs["scores"].shape[0]:
                raise ValueError("predict on pairs and on rated responses separately (see split_kinds)")
            return loss.detach(), params, inputs["scores"].masked_fill(~inputs["score_mask"], torch.nan)
        pc, pr, _ = split_batch(params, 0)
        ones = torch.ones(pc.shape[0], device=pc.device)
        labels = torch.stack([inputs.get("soft_label", ones), inputs.get("noise", ones * torch.nan)], dim=1)
        return loss.detach(), torch.stack([pc, pr], dim=1), labels

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds the training accuracy of every process since the last log line, and the skipped batches."""
        if "loss" in logs:
            logs.update(self.sync.log_values())
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        # Private, and kept: Trainer.save_model hands _save the state dict it gathered under FSDP / ZeRO-3, and
        # the default writes a non-PreTrainedModel as one flat file; a DiscoRM checkpoint is a run directory.
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        self.reward_model.save_pretrained(output_dir, state_dict=state_dict)
        write_text(f"{output_dir}/training_args.json", self.arguments.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Private, and kept: a checkpoint is a run directory (backbone or adapter + value head), which the
        # Trainer's loader cannot read; FSDP and DeepSpeed checkpoints carry the engine's files, which it can.
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.reward_model.load_weights(resume_from_checkpoint)
