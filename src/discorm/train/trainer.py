"""PairwiseTrainer: a ``transformers.Trainer`` whose loss is the head's pairwise negative log-likelihood.

Everything else (optimizers, schedulers, accumulation, DDP/DeepSpeed/FSDP through Accelerate, logging) is the
Trainer's own. Saving and checkpoint loading go through ``RewardModel.save_pretrained`` and
``RewardModel.load_weights`` so every checkpoint is a loadable run directory.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from discorm.config import FinetuningArguments
from discorm.model.reward_model import RewardModel


def split_pairs(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, K) with chosen first -> (B, K) chosen, (B, K) rejected."""
    half = params.shape[0] // 2
    return params[:half], params[half:]


class PairwiseTrainer(Trainer):
    def __init__(self, *args, finetuning_args: FinetuningArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.finetuning_args = finetuning_args or FinetuningArguments()
        self.model_accepts_loss_kwargs = False
        self._train_correct = torch.zeros(2)  # (correct, seen) since the last log

    @property
    def reward_model(self) -> RewardModel:
        return self.accelerator.unwrap_model(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean over pairs of -log P(observed preference) + the head's regulariser (+ reward centring).

        Scalar head, hard labels: -logsigmoid(r_c - r_r - margin)."""
        inputs = dict(inputs)
        margin, soft_label = inputs.pop("margin", None), inputs.pop("soft_label", None)
        outputs = model(**inputs)  # one pass over all 2B sequences (padded or packed)
        head = self.reward_model.head
        pc, pr = split_pairs(outputs.head_params)
        loss = head.pair_loss(pc, pr, margin, soft_label).mean() + head.regulariser(pc, pr)
        chosen, rejected = head.mean(pc), head.mean(pr)
        if self.finetuning_args.center_rewards_coefficient:
            loss = loss + self.finetuning_args.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
        if model.training:
            with torch.no_grad():
                correct = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
                self._train_correct += torch.tensor([correct.sum().item(), correct.numel()])
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """-> (loss, head params stacked (B, 2, K) as [chosen, rejected], target P(chosen preferred) (B,))."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
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
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        self.reward_model.save_pretrained(output_dir)
        with open(f"{output_dir}/training_args.json", "w") as handle:
            handle.write(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self.reward_model.load_weights(resume_from_checkpoint)

    def _load_best_model(self):
        self.reward_model.load_weights(self.state.best_model_checkpoint)
