"""``run_rm``: the reward-model recipe, read top to bottom.

the Trainer's arguments (``train/arguments.py``) -> setup model -> setup data -> validate -> setup trainer -> train
-> post-training stages (``train/stages.py``) -> save once -> evaluate the saved run on the held-out sets with
``discorm eval``'s code (``eval/``).
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import set_seed

from discorm.config import (
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    TrainingArguments,
    check_output_dir,
    validate,
)
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
from discorm.data.loader import demo_test_split, split_kinds, split_validation, tokenized_dataset
from discorm.data.preview import preview
from discorm.data.templates import Renderer
from discorm.errors import ConfigError, TrainingError, TrainingInterrupted
from discorm.eval.runner import EvalOptions, flat_metrics, run_evaluation
from discorm.files import replacing, write_json
from discorm.metrics import pairwise_metrics, rating_metrics
from discorm.model.heads import HEADS
from discorm.model.inference import padded_reason
from discorm.model.loading import load_tokenizer
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import CONFIG_FILE, RewardModelConfig
from discorm.plots import plot_training
from discorm.train.arguments import TrainerArguments, trainer_arguments
from discorm.train.callbacks import JsonlLogCallback
from discorm.train.checkpoints import CompleteCheckpoints, failed_save
from discorm.train.stages import post_training
from discorm.train.trainer import PairwiseTrainer

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """The tokenized data of a run: training rows, the Trainer's evaluation rows, calibration pairs, the reference
    set of the reward normalisation, and the held-out sets the final evaluation reads (name -> source, and for a
    ``val_size`` split the row labels it keeps)."""

    train: object = None
    evaluation: object = None
    calibration: object = None
    reference: object = None
    summaries: list[str] = field(default_factory=list)
    heldout: dict[str, str] = field(default_factory=dict)
    heldout_rows: set[str] | None = None


def run_rm(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments,
           finetuning_args: FinetuningArguments, callbacks: list | None = None) -> dict:
    """Train a reward model and evaluate it on its held-out data; returns the metrics (also written to the run
    directory). The argument objects are left unchanged: the Trainer runs with a copy (``trainer_arguments``)."""
    check_output_dir(training_args)
    arguments = trainer_arguments(training_args, data_args)
    training_args = arguments.used
    check_resumed_head(training_args.resume_from_checkpoint, finetuning_args)
    set_seed(training_args.seed)
    warn_about_cpu_bf16(model_args, training_args)
    tokenizer = load_tokenizer(model_args.tokenizer_path, model_args.trust_remote_code, model_args.cache_dir)
    model = setup_model(model_args, finetuning_args, tokenizer, data_args)
    data_args = replace(data_args, cutoff_len=model.rm_config.cutoff_len)  # within the backbone's positions
    attributes = HEADS[finetuning_args.head].attributes_from(finetuning_args.head_options)
    with training_args.main_process_first(local=True, desc="tokenizing"):  # one process fills the cache
        data = setup_data(data_args, tokenizer, training_args.seed, attributes, finetuning_args.temperature_scaling,
                          finetuning_args.reward_normalization, model.vision)
    validate(data_args, finetuning_args, model.head, data.train, data.evaluation)
    trainer = setup_trainer(model, data, data_args, arguments, finetuning_args, callbacks)
    metrics = {"data": data.summaries, **train(trainer)}
    post_training(model, data, data_args, finetuning_args, training_args.per_device_eval_batch_size)
    save(trainer, metrics)
    if data.heldout and trainer.is_world_process_zero():
        options = EvalOptions(batch_size=training_args.per_device_eval_batch_size, show_progress=False,
                              device="cpu" if training_args.use_cpu else None, only_rows=data.heldout_rows)
        results = run_evaluation(training_args.output_dir, data.heldout, Path(training_args.output_dir, "eval"),
                                 options, data_args)
        metrics.update(flat_metrics(results))
    if trainer.is_world_process_zero():
        final = [{"step": trainer.state.global_step, **metrics}] if "eval_accuracy" in metrics else []
        plot_training(trainer.state.log_history + final, training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    return metrics


def setup_data(data_args: DataArguments, tokenizer, seed: int = 42, attributes: tuple = (),
               calibrate: bool = False, normalize: bool = False, vision=None) -> RunData:
    """Training rows, evaluation rows (``eval_dataset``, else a ``val_size`` split, else the built-in test split
    of built-in data), for temperature scaling calibration pairs held out of training (or ``calibration_data``:
    never the evaluated pairs, nor pairs the model trains on), and the normalisation's ``normalization_dataset``."""
    data = RunData()
    data.train, stats = tokenize(data_args.dataset, data_args, tokenizer, attributes=attributes, vision=vision)
    data.summaries.append(stats.summary(data_args.dataset))
    heldout = data_args.eval_dataset or demo_test_split(data_args.dataset)
    if heldout:
        data.evaluation, stats = tokenize(heldout, data_args, tokenizer, eval_split=True, attributes=attributes,
                                          vision=vision)
        data.summaries.append(stats.summary(f"{heldout} (eval)"))
    elif data_args.val_size:
        data.train, data.evaluation = split_validation(data.train, data_args.val_size, seed)
        data.summaries.append(f"validation split: {len(data.evaluation)} pairs held out, {len(data.train)} for "
                              "training")
        heldout, data.heldout_rows = data_args.dataset, set(data.evaluation["source"])
    if heldout:
        entries = [n.strip() for n in heldout.split(",") if n.strip()]
        data.heldout = {"heldout" if len(entries) == 1 else f"heldout_{Path(n).stem}": n for n in entries}
    if calibrate and data_args.calibration_data:
        data.calibration, stats = tokenize(data_args.calibration_data, data_args, tokenizer, eval_split=True,
                                           vision=vision)
        data.summaries.append(stats.summary(f"{data_args.calibration_data} (calibration)"))
    elif calibrate:
        data.train, data.calibration = split_validation(data.train, data_args.calibration_size, seed,
                                                        "calibration_size")
        data.summaries.append(f"calibration: {len(data.calibration)} training pairs held out to fit the "
                              f"temperature, {len(data.train)} left for training")
    if normalize and data_args.normalization_dataset:
        data.reference, _ = tokenize(data_args.normalization_dataset, data_args, tokenizer, attributes=attributes,
                                     vision=vision)
    for line in data.summaries:
        logger.info(line)
    return data


def tokenize(names: str, data_args: DataArguments, tokenizer, eval_split: bool = False, attributes: tuple = (),
             vision=None):
    """One ``dataset`` value tokenized with the run's template, cutoff and reading options -> (dataset, stats);
    ``vision``: a vision-language model's image inputs."""
    renderer = Renderer(tokenizer, data_args.template, data_args.reasoning, data_args.chat_template_kwargs)
    return tokenized_dataset(names, tokenizer, renderer, data_args.cutoff_len,
                             data_args.read_options(), eval_split, attributes, data_args.preprocessing_num_workers,
                             data_args.overwrite_cache, vision)


def setup_model(model_args: ModelArguments, finetuning_args: FinetuningArguments, tokenizer=None,
                data_args: DataArguments | None = None) -> RewardModel:
    """The backbone with a new head (or a run to continue), described by the run's template, cutoff and reward
    options. A ``cutoff_len`` beyond the backbone's positions is lowered to them, with a warning, so the data, the
    saved model and everything that scores with it use a length the backbone can read."""
    data_args = data_args or DataArguments()
    tokenizer = tokenizer or load_tokenizer(model_args.tokenizer_path, model_args.trust_remote_code,
                                            model_args.cache_dir)
    model = RewardModel.for_training(model_args.model_name_or_path, tokenizer, finetuning_args.head,
                                     finetuning_args.head_options, finetuning_args.finetuning(),
                                     model_args.load_options(), finetuning_args.pooling,
                                     finetuning_args.uncertainty_config())
    model.rm_config = replace(model.rm_config, template=data_args.template, reasoning=data_args.reasoning,
                              chat_template_kwargs=dict(data_args.chat_template_kwargs or {}),
                              cutoff_len=usable_cutoff(data_args.cutoff_len, model.backbone.config),
                              reward_mode=finetuning_args.reward_mode, reward_alpha=finetuning_args.reward_alpha,
                              reward_k=finetuning_args.reward_k)
    return model


def usable_cutoff(cutoff_len: int, backbone_config) -> int:
    """``cutoff_len``, or the backbone's ``max_position_embeddings`` where it is smaller (with a warning)."""
    positions = getattr(backbone_config, "max_position_embeddings", None)
    if positions is None or cutoff_len <= positions:
        return cutoff_len
    logger.warning("cutoff_len=%d is beyond the backbone's max_position_embeddings=%d; training, scoring and "
                   "serving this model cut sequences at %d tokens. Set cutoff_len: %d (or less) to silence this.",
                   cutoff_len, positions, positions, positions)
    return positions


def check_resumed_head(checkpoint: str | None, finetuning_args: FinetuningArguments) -> None:
    """A checkpoint continues only with the head it was trained with; refused before any data or model loads."""
    if checkpoint is None or not Path(checkpoint, CONFIG_FILE).is_file():
        return
    saved = RewardModelConfig.load(checkpoint)
    if (saved.head, saved.uncertainty) == (finetuning_args.head, finetuning_args.uncertainty):
        return
    trained, asked = head_name(saved.head, saved.uncertainty), head_name(finetuning_args.head,
                                                                           finetuning_args.uncertainty)
    raise ConfigError(
        f"resume_from_checkpoint={checkpoint!r} was trained with {trained}, and the config asks for {asked}; a "
        f"checkpoint continues only with its own head. Set {trained} to resume it, or train {asked} into another "
        "output_dir (model_name_or_path may name the run to start from).")


def head_name(head: str, uncertainty: str | None) -> str:
    return f"head: {head}" + (f" and uncertainty: {uncertainty}" if uncertainty else "")


def make_collator(model: RewardModel, data_args: DataArguments, tokenizer):
    """Packed batches (the prompt shared when ``prefix_sharing``) where the model runs them exactly; padded
    batches otherwise, with the reason in the log."""
    reason = padded_reason(model, data_args.packing, data_args.prefix_sharing)
    if reason is None:
        return PackedPairCollator(prefix_sharing=data_args.prefix_sharing, vision=model.vision)
    logger.info("padded batches: %s", reason)
    return PairwiseDataCollatorWithPadding(tokenizer.pad_token_id, data_args.pad_to_multiple_of, vision=model.vision)


def metrics_fn(model: RewardModel):
    """The Trainer's periodic evaluation: pairwise metrics (accuracy under the model's reward mode) or, for a
    set of rated responses, the rating metrics."""

    def compute_metrics(prediction) -> dict:
        params, labels = torch.as_tensor(prediction.predictions), torch.as_tensor(prediction.label_ids)
        if params.dim() == 2:  # rated responses: params (R, K), ratings (R, A)
            return rating_metrics(model.head, params, labels)
        pc, pr = params[:, 0], params[:, 1]  # (B, K) each; labels (B, 2): target, noise
        noise = labels[:, 1].double().numpy()
        return pairwise_metrics(model.head, pc, pr, labels[:, 0], model.rm_config.temperature,
                                noise if (~torch.isnan(labels[:, 1])).any() else None,
                                rewards=(model.reward(pc).numpy(), model.reward(pr).numpy()))

    return compute_metrics


def setup_trainer(model: RewardModel, data: RunData, data_args: DataArguments, arguments: TrainerArguments,
                  finetuning_args: FinetuningArguments, callbacks: list | None = None) -> PairwiseTrainer:
    """The Trainer on the training rows (a learned combination's first stage: the rated rows), evaluating pairs
    and rated responses; checkpoints are marked complete, then rotated to the user's ``save_total_limit``."""
    training_args = arguments.used
    stage_one = split_kinds(data.train)[1] if finetuning_args.combination == "learned" else data.train
    pairs, rated = split_kinds(data.evaluation)  # ranked lists are evaluated at the end, in RUN/eval
    if data.evaluation is not None and pairs is None and rated is None and training_args.eval_strategy != "no":
        raise ConfigError("the evaluation set holds only ranked lists, and the periodic evaluation (eval_strategy) "
                          "reads pairs and rated responses; the lists are evaluated after training, in RUN/eval. "
                          "Set eval_strategy: no, or add pairs to eval_dataset.")
    collator = make_collator(model, data_args, model.tokenizer)
    logger.info("batches: %s", type(collator).__name__)
    trainer = PairwiseTrainer(
        model=model, arguments=arguments, train_dataset=stage_one, data_collator=collator,
        eval_dataset=rated if pairs is None else pairs if rated is None else {"pairs": pairs, "rated": rated},
        compute_metrics=metrics_fn(model), finetuning_args=finetuning_args,
        callbacks=[JsonlLogCallback(), CompleteCheckpoints(arguments.asked.save_total_limit), *(callbacks or [])])
    if finetuning_args.cache_frozen_trunk:
        trainer.cache_frozen_trunk(finetuning_args.cache_frozen_trunk_max_gb)
    return trainer


def train(trainer: PairwiseTrainer) -> dict:
    """The gradient steps; a stop signal raises TrainingInterrupted (its checkpoint is saved); -> train metrics."""
    args = trainer.args
    try:
        result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except OSError as err:  # a checkpoint write that failed (disk full, permissions) is one clear error
        raise failed_save(err, args.output_dir, trainer.state.global_step) or err from err
    sync = trainer.sync
    if sync.stopped_at is not None:
        raise TrainingInterrupted(
            f"training stopped by {signal.Signals(sync.received).name} at step {sync.stopped_at} of "
            f"{trainer.state.max_steps}; the checkpoint is {Path(args.output_dir, f'checkpoint-{sync.stopped_at}')}."
            " Run the same command with resume_from_checkpoint=latest to continue from it.", sync.received)
    if trainer.arguments.loads_best_checkpoint and trainer.state.best_model_checkpoint:
        logger.info("loading the best checkpoint, %s", trainer.state.best_model_checkpoint)
        trainer.reward_model.load_weights(trainer.state.best_model_checkpoint)
    if sync.skipped:
        logger.warning("%d batches were skipped for a non-finite loss", sync.skipped)
        result.metrics["train_skipped_nonfinite_batches"] = sync.skipped
    return result.metrics


def save(trainer: PairwiseTrainer, metrics: dict) -> None:
    """The trained model, the trainer state and the training metrics: written once, after every stage, each file
    replaced in one rename."""
    out = Path(trainer.args.output_dir)
    with saving(str(out)):
        trainer.save_model()  # through PairwiseTrainer._save, with the state dict gathered under FSDP / ZeRO-3
        if trainer.is_world_process_zero():
            with replacing(out / "trainer_state.json") as tmp:
                trainer.state.save_to_json(str(tmp))
            train_metrics = {k: v for k, v in metrics.items() if k != "data"}
            for name in ("train_results.json", "all_results.json"):
                write_json(out / name, train_metrics, sort_keys=True)


@contextmanager
def saving(output_dir: str):
    """A failed write of the final model (disk full, permissions) as one clear error; checkpoints stay."""
    try:
        yield
    except OSError as err:
        raise TrainingError(
            f"could not save the trained model to {output_dir} ({err.strerror or err}"
            f"{': ' + str(err.filename) if err.filename else ''}). The checkpoints in it are intact: free disk space "
            "or make the folder writable, then run again with resume_from_checkpoint=latest."
        ) from err


def warn_about_cpu_bf16(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """bf16 trains correctly on any CPU; one without bf16 instructions (AVX512-BF16 or AMX) emulates it, slowly."""
    on_cpu = training_args.use_cpu or not torch.accelerator.is_available()
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if on_cpu and (training_args.bf16 or model_args.dtype == "bfloat16") and not native:
        logger.warning("bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): PyTorch emulates bf16 here, "
                       "many times slower than float32 (benchmarks/README.md, 'bf16 on a CPU'); train in float32.")


def preview_data(model_args: ModelArguments, data_args: DataArguments, finetuning_args: FinetuningArguments,
                 n: int = 3, seed: int = 42) -> str:
    """``discorm data preview``: the first ``n`` training examples as the model sees them, and the summary."""
    tokenizer = load_tokenizer(model_args.tokenizer_path, model_args.trust_remote_code, model_args.cache_dir)
    attributes = HEADS[finetuning_args.head].attributes_from(finetuning_args.head_options)
    data = setup_data(data_args, tokenizer, seed, attributes)
    return preview(tokenizer, data.train, n, [a.name for a in attributes], data.summaries)
