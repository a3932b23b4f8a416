"""``run_rm``: the reward-model recipe, top to bottom.

args -> tokenizer -> data (pairs and/or rated responses) -> model (backbone + head) -> collator -> PairwiseTrainer
-> train -> [fit the attribute weights on pairs] -> [normalise the reward] -> evaluate / predict
-> run directory (weights, logs, plots, metrics).
"""

from __future__ import annotations

import copy
import json
import logging
import signal
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import set_seed

from discorm.config import DataArguments, FinetuningArguments, ModelArguments, TrainingArguments
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
from discorm.data.loader import build_datasets, split_kinds, split_validation, tokenized_dataset
from discorm.data.templates import Renderer
from discorm.errors import ConfigError, TrainingError, TrainingInterrupted
from discorm.model.heads import HEADS
from discorm.model.loading import load_tokenizer
from discorm.model.reward_model import RewardModel
from discorm.train.callbacks import JsonlLogCallback, plot_calibration, plot_training
from discorm.train.checkpoints import resolve_resume
from discorm.train.metrics import fit_temperature, pairwise_metrics, rating_metrics, reliability_bins
from discorm.train.preemption import PreemptionCallback
from discorm.train.stages import fit_normalization, learn_combination, score_dataset
from discorm.train.trainer import PairwiseTrainer

logger = logging.getLogger(__name__)


def make_collator(model: RewardModel, data_args: DataArguments, tokenizer):
    """Packed batches (the prompt shared when ``prefix_sharing``) where the model runs them exactly; padded
    batches otherwise, with the reason in the log."""
    pooling = model.rm_config.pooling
    if not data_args.packing:
        reason = "packing: false" + (" (prefix sharing needs packed batches)" if data_args.prefix_sharing else "")
    elif pooling != "last":
        reason = (f"pooling: {pooling} reads {'every token' if pooling == 'mean' else 'the first token'} of a "
                  "sequence, and packed batches hand the head only the last token of each response")
    elif not model.check_packing():
        reason = model.packing_obstacle
    else:
        return PackedPairCollator(prefix_sharing=data_args.prefix_sharing)
    logger.info("padded batches: %s", reason)
    return PairwiseDataCollatorWithPadding(tokenizer.pad_token_id, data_args.pad_to_multiple_of)


def _metrics_fn(model: RewardModel, eval_pairs):
    noise = None
    if eval_pairs is not None and "noise" in eval_pairs.column_names:
        noise = np.array([np.nan if x is None else x for x in eval_pairs["noise"]], dtype=float)

    def compute_metrics(prediction) -> dict:
        target = torch.as_tensor(prediction.label_ids)
        if target.dim() == 2:  # rated responses: params (R, K), ratings (R, A)
            return rating_metrics(model.head, torch.as_tensor(prediction.predictions), target)
        params = torch.as_tensor(prediction.predictions)  # (B, 2, K)
        return pairwise_metrics(model.head, params[:, 0], params[:, 1], target,
                                temperature=model.rm_config.temperature, noise=noise)

    return compute_metrics


def _write_predictions(trainer: PairwiseTrainer, dataset, output_dir: str, prefix: str = "predict") -> dict:
    """predictions.jsonl (index, chosen/rejected score, correct, P(chosen preferred)) + <prefix> metrics."""
    model = trainer.reward_model
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    params = torch.as_tensor(output.predictions)
    pc, pr = params[:, 0], params[:, 1]
    chosen, rejected = model.reward(pc), model.reward(pr)
    prob = model.head.prob_pair(pc, pr, model.rm_config.temperature)
    if not trainer.is_world_process_zero():
        return output.metrics
    with open(Path(output_dir, "predictions.jsonl"), "w") as handle:
        for i in range(len(chosen)):
            record = {"index": i, "chosen_score": float(chosen[i]), "rejected_score": float(rejected[i]),
                      "correct": bool(chosen[i] > rejected[i]), "p_chosen": float(prob[i])}
            if model.head.distributional:
                record["chosen_sigma"] = float(model.head.std(pc[i : i + 1])[0])
                record["rejected_sigma"] = float(model.head.std(pr[i : i + 1])[0])
            handle.write(json.dumps(record) + "\n")
    target = torch.as_tensor(output.label_ids).double().numpy()
    plot_calibration(reliability_bins(prob.double().numpy(), target), output_dir,
                     f"Reliability ({model.head.kind} head)")
    return output.metrics


def _write_rated_predictions(trainer: PairwiseTrainer, dataset, output_dir: str) -> dict:
    """rated_predictions.jsonl (index, reward, predicted and given rating per attribute) + eval_rated metrics."""
    model = trainer.reward_model
    output = trainer.predict(dataset, metric_key_prefix="eval_rated")
    params, scores = torch.as_tensor(output.predictions), torch.as_tensor(output.label_ids)
    if trainer.is_world_process_zero():
        names = [a.name for a in model.head.attributes]
        means, rewards = model.head.attribute_means(params), model.reward(params)
        with open(Path(output_dir, "rated_predictions.jsonl"), "w") as handle:
            for i in range(len(params)):
                given = {n: float(v) for n, v in zip(names, scores[i]) if not v.isnan()}
                record = {"index": i, "reward": float(rewards[i]),
                          "predicted": {n: float(v) for n, v in zip(names, means[i])}, "rated": given}
                handle.write(json.dumps(record) + "\n")
    return output.metrics


def run_rm(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    finetuning_args: FinetuningArguments,
    callbacks: list | None = None,
) -> dict:
    """Train and/or evaluate a reward model; returns the final metrics (also written to the output dir). The
    argument objects are left unchanged."""
    model_args, data_args, training_args, finetuning_args = copy.deepcopy(
        (model_args, data_args, training_args, finetuning_args))
    if training_args.do_train:  # `latest` -> the newest complete checkpoint, checked before anything loads
        training_args.resume_from_checkpoint = resolve_resume(training_args.resume_from_checkpoint,
                                                              training_args.output_dir)
    set_seed(training_args.seed)
    warn_about_cpu_bf16(model_args, training_args)
    if data_args.group_by_length:
        training_args.train_sampling_strategy = "group_by_length"  # uses the tokenized `length` column
    if training_args.do_train:  # data first: a bad data file fails before the model loads
        tokenizer = load_tokenizer(model_args)
        attributes = HEADS[finetuning_args.head].attributes_from(finetuning_args.head_options)
        with training_args.main_process_first(local=True, desc="tokenizing"):  # one process fills the cache
            train_set, eval_set, summaries = build_datasets(data_args, tokenizer, training_args.seed,
                                                            attributes=attributes)
        model = RewardModel.for_training(model_args, finetuning_args, tokenizer)
        if model.head.attributes != attributes:
            raise ConfigError(f"the model being continued predicts {[a.name for a in model.head.attributes]}, "
                              f"the config declares {[a.name for a in attributes]}; make `attributes` and "
                              "`score_range` match the run, or train a new head.")
    else:  # evaluate a trained run with the template it was trained with
        model = RewardModel.from_pretrained(model_args.model_name_or_path, model_args=model_args)
        tokenizer = model.tokenizer or load_tokenizer(model_args)
        data_args.template = data_args.template or model.rm_config.template
        with training_args.main_process_first(local=True, desc="tokenizing"):
            train_set, eval_set, summaries = build_datasets(data_args, tokenizer, training_args.seed,
                                                            need_train=False, attributes=model.head.attributes)
    calibration_set = None
    if finetuning_args.temperature_scaling:
        with training_args.main_process_first(local=True, desc="tokenizing"):
            train_set, calibration_set = _calibration_split(data_args, tokenizer, train_set, training_args.seed)
    model.rm_config = replace(model.rm_config, template=data_args.template, cutoff_len=data_args.cutoff_len)
    stage_one = train_set
    if training_args.do_train and finetuning_args.combination == "learned":  # stage 1: the rated rows only
        train_pairs, stage_one = split_kinds(train_set)
        if stage_one is None or train_pairs is None:
            raise ConfigError(f"combination: learned trains the attributes on rated rows, then fits the weights "
                              f"that combine them on pairs, and {data_args.dataset} has no "
                              f"{'rated rows' if stage_one is None else 'pairs'}; add a "
                              f"{'rated' if stage_one is None else 'preference'} data set to `dataset` (e.g. "
                              "dataset: ratings.jsonl,pairs.jsonl), or set combination: fixed with "
                              "attribute_weights.")
    if any(d is not None and "margin" in d.column_names for d in (train_set, eval_set)) and not (
            model.head.supports_margin):
        raise ConfigError(f"the data has a `{data_args.margin_column}` column, which the {model.head.kind} head "
                          "cannot use; drop the column or set margin_column to a name the data lacks.")
    eval_pairs, eval_rated = split_kinds(eval_set)
    collator = make_collator(model, data_args, tokenizer)
    logger.info("batches: %s", type(collator).__name__)

    preemption = PreemptionCallback()
    trainer = PairwiseTrainer(
        model=model,
        args=training_args,
        train_dataset=stage_one if training_args.do_train else None,
        eval_dataset=eval_set if eval_pairs is None or eval_rated is None else {"pairs": eval_pairs,
                                                                                "rated": eval_rated},
        data_collator=collator,
        compute_metrics=_metrics_fn(model, eval_pairs),
        callbacks=[JsonlLogCallback(), preemption, *(callbacks or [])],
        finetuning_args=finetuning_args,
    )
    output_dir = training_args.output_dir
    results: dict = {"data": summaries}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if preemption.stopped_at is not None:
            raise TrainingInterrupted(
                f"training stopped by {signal.Signals(preemption.received).name} at step {preemption.stopped_at} of "
                f"{trainer.state.max_steps}; the checkpoint is {Path(output_dir, f'checkpoint-{preemption.stopped_at}')}."
                " Run the same command with resume_from_checkpoint=latest to continue from it.",
                preemption.received)
        if trainer.skipped_nonfinite:
            logger.warning("%d batches were skipped for a non-finite loss", trainer.skipped_nonfinite)
            train_result.metrics["train_skipped_nonfinite_batches"] = trainer.skipped_nonfinite
        with saving(output_dir):
            trainer.save_model()
            trainer.save_state()
        trainer.save_metrics("train", train_result.metrics)
        results.update(train_result.metrics)
        if trainer.is_world_process_zero():
            plot_training(trainer.state.log_history, output_dir)
        _after_training(trainer, model, train_set, data_args, finetuning_args, tokenizer)

    if eval_set is not None and (training_args.do_eval or training_args.do_predict or training_args.do_train):
        if calibration_set is not None:
            _fit_temperature(trainer, calibration_set, model)
        metrics = {}
        if eval_pairs is not None:
            metrics.update(_write_predictions(trainer, eval_pairs, output_dir, prefix="eval"))
            logger.info("held-out accuracy: %.4f on %d pairs", metrics["eval_accuracy"], len(eval_pairs))
        if eval_rated is not None:
            metrics.update(_write_rated_predictions(trainer, eval_rated, output_dir))
        trainer.save_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            plot_training(trainer.state.log_history + [{"step": trainer.state.global_step, **metrics}], output_dir)
            Path(output_dir, "eval_results.json").write_text(json.dumps(metrics, indent=2))
        results.update(metrics)
    return results


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
        logger.warning(CPU_BF16_WARNING)


CPU_BF16_WARNING = (
    "bf16 on a CPU without bf16 instructions (AVX512-BF16 or AMX): PyTorch emulates bf16 matrix products here, and "
    "benchmarks/bench_precision.py measured a training step of the default model with the kernels limited to AVX2 "
    "at 6x to 45x the float32 time under `bf16: true` (autocast) and 150x with `dtype: bfloat16` weights (on a CPU "
    "with AVX512-BF16: 0.44x and 0.42x; see benchmarks/README.md). Train in float32 (the default) on this CPU."
)


def _after_training(trainer: PairwiseTrainer, model: RewardModel, train_set, data_args: DataArguments,
                    finetuning_args: FinetuningArguments, tokenizer) -> None:
    """Stage 2 of a learned combination, then the reward normalisation; the run directory is saved again. The
    training data is scored once for both (stage 2 leaves the attribute outputs as they are)."""
    batch_size, scored = trainer.args.per_device_eval_batch_size, None
    normalise_on_train = finetuning_args.reward_normalization and not data_args.normalization_dataset
    if finetuning_args.combination == "learned":
        scored = score_dataset(model, train_set, batch_size, rated=normalise_on_train)
        learn_combination(model, scored, data_args.dataset)
    if finetuning_args.reward_normalization:
        if data_args.normalization_dataset:
            reference, _ = tokenized_dataset(data_args.normalization_dataset, data_args, tokenizer,
                                             Renderer(tokenizer, data_args.template), False, model.head.attributes)
            scored = score_dataset(model, reference, batch_size)
        elif scored is None:
            scored = score_dataset(model, train_set, batch_size)
        fit_normalization(model, scored, data_args.normalization_dataset or data_args.dataset)
    if (finetuning_args.combination == "learned" or finetuning_args.reward_normalization) and (
            trainer.is_world_process_zero()):
        with saving(trainer.args.output_dir):
            model.save_pretrained(trainer.args.output_dir)


def _calibration_split(data_args: DataArguments, tokenizer, train_set, seed: int):
    """-> (training pairs, calibration pairs): ``calibration_data``, else a share held out of the training pairs
    (so the temperature is never fitted on the pairs the evaluation reports, nor on pairs the model trained on)."""
    if data_args.calibration_data:
        renderer = Renderer(tokenizer, data_args.template)
        calibration, stats = tokenized_dataset(data_args.calibration_data, data_args, tokenizer, renderer,
                                                eval_split=True)
        logger.info(stats.summary(f"{data_args.calibration_data} (calibration)"))
        return train_set, calibration
    if train_set is None:
        raise ConfigError("temperature_scaling needs pairs to fit the temperature on, and this run has no training "
                          "data to hold them out of; set calibration_data to a file of held-out pairs.")
    train_set, calibration = split_validation(train_set, data_args.calibration_size, seed, "calibration_size")
    logger.info("calibration: %d training pairs held out to fit the temperature, %d left for training",
                len(calibration), len(train_set))
    return train_set, calibration


def _fit_temperature(trainer: PairwiseTrainer, calibration_set, model: RewardModel) -> None:
    """Fit the head's temperature on the calibration pairs (stored in discorm_config.json)."""
    output = trainer.predict(calibration_set, metric_key_prefix="uncalibrated")
    params = torch.as_tensor(output.predictions)
    diff = (model.head.mean(params[:, 0]) - model.head.mean(params[:, 1])).double().numpy()
    temperature = fit_temperature(diff, torch.as_tensor(output.label_ids).double().numpy())
    model.rm_config = replace(model.rm_config, temperature=temperature)
    logger.info("temperature scaling: T = %.3f", temperature)
    if trainer.is_world_process_zero():
        model.save_pretrained(trainer.args.output_dir)
