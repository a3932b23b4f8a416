"""``discorm eval``: score one model on named evaluation sets and write eval_results.json, the per-item
predictions and report.html.

The model is a DiscoRM run directory, a checkpoint in one, an exported sequence-classification checkpoint, any
``AutoModelForSequenceClassification`` reward model directory, or a pretrained LM (a new, untrained head). Its
own encoder (tokenizer, chat template, cutoff length) turns every item into tokens, so evaluation sees exactly the
tokens training saw. The model is never changed: the reward options apply to this evaluation only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from discorm.config import DataArguments, ModelArguments
from discorm.data.tokenize import Encoder
from discorm.eval.compare import comparison, load_results
from discorm.eval.rated import rated_results
from discorm.eval.report import write_report
from discorm.eval.results import REPORT_FILE, RESULTS_FILE, SCHEMA, TIMING_FILE, RewardOptions, set_results
from discorm.eval.scoring import score_items
from discorm.eval.sets import EvalSet, load_eval_set
from discorm.eval.stats import CONFIDENCE, DEFAULT_RESAMPLES
from discorm.files import replacing_folder, write_json, write_jsonl
from discorm.model.loading import LoadOptions
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import check_reward_options
from discorm.plots import plot_reliability

logger = logging.getLogger(__name__)

FLAT_METRICS = ("accuracy", "accuracy_mean", "nll", "brier", "ece", "margin", "chosen_reward", "rejected_reward",
                "mean_sigma", "sigma_noise_corr")


@dataclass
class EvalOptions:
    reward: RewardOptions = field(default_factory=RewardOptions)
    batch_size: int = 8
    cutoff_len: int | None = None  # None: the model's own
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    show_progress: bool = True
    only_rows: set[str] | None = None  # keep only the rows read at these places (a training run's val_size split)


@dataclass
class Evaluation:
    """One model's evaluation: the numbers (eval_results.json), the per-item records, the sets, and how long
    scoring took (timing.json: the only part that differs between two runs on the same inputs)."""

    results: dict
    records: dict[str, list[dict]]
    sets: dict[str, EvalSet]
    timing: dict = field(default_factory=dict)


def load_model(path: str, model_args: ModelArguments | None, device: str | None) -> RewardModel:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = model_args.load_options() if model_args is not None else LoadOptions()
    return RewardModel.from_pretrained(path, options=options, device=device).eval()


def evaluate(model_path: str, sets: dict[str, str], options: EvalOptions, data_args: DataArguments | None = None,
             model_args: ModelArguments | None = None) -> Evaluation:
    """Load the model, read and encode every set with its encoder, score, and compute every number."""
    read = (data_args or DataArguments()).read_options()
    model = load_model(model_path, model_args, options.device)
    check_reward_options(options.reward.mode, head=model.head, flags=True)  # the mode this model can give
    encoder = Encoder.for_model(model, options.cutoff_len)
    eval_sets = {name: load_eval_set(name, source, encoder, read, model.head.attributes, options.only_rows)
                 for name, source in sets.items()}
    config = model.rm_config
    results = {
        "discorm_eval": SCHEMA,
        "model": {"path": str(model_path), "head": model.head.kind, "imported_from": config.imported_from,
                  "base_model": config.base_model, "temperature": config.temperature,
                  "reward_mode": options.reward.mode or config.reward_mode,
                  "reward_alpha": config.reward_alpha if options.reward.alpha is None else options.reward.alpha,
                  "reward_k": config.reward_k if options.reward.k is None else options.reward.k,
                  "template": encoder.renderer.name, "cutoff_len": encoder.cutoff_len},
        "settings": {"bootstrap_resamples": options.resamples, "confidence": CONFIDENCE, "seed": options.seed,
                     "batch_size": options.batch_size, "device": str(next(model.parameters()).device)},
        "sets": {},
    }
    records, timing = {}, {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "sets": {}}
    for name, eval_set in eval_sets.items():
        params, seconds = score_items(model, eval_set, options.batch_size, options.show_progress)
        if eval_set.format.rated:  # kept apart: the ranking sections read results["sets"]
            summary, records[name] = rated_results(model, eval_set, params, options.reward, options.resamples,
                                                   options.seed)
            results.setdefault("rated_sets", {})[name] = summary
        else:
            summary, records[name] = set_results(model, eval_set, params, options.reward, options.resamples,
                                                 options.seed)
            results["sets"][name] = summary
        responses = sum(len(item.response_ids) for item in eval_set.items)
        timing["sets"][name] = {"seconds": seconds, "items_per_second": len(eval_set.items) / seconds,
                                "responses_per_second": responses / seconds}
        summary["predictions_file"] = f"predictions/{_file_name(name)}.jsonl"
        logger.info("%s: %d items scored in %.1f s (%.1f items/s)", name, len(eval_set.items), seconds,
                    len(eval_set.items) / seconds)
    return Evaluation(results, records, eval_sets, timing)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "set"


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """eval_results.json, predictions/<set>.jsonl, calibration.png (one reliability curve per pair set) and
    timing.json under ``out_dir``, each replaced in one rename; returns the results file."""
    out = Path(out_dir)
    for name, summary in {**evaluation.results["sets"], **evaluation.results.get("rated_sets", {})}.items():
        write_jsonl(out / summary["predictions_file"], evaluation.records[name])
    curves = {name: [s["reliability"][k] for k in ("confidence", "frequency", "count")]
              for name, s in evaluation.results["sets"].items()}
    if curves:
        plot_reliability(curves, out / CALIBRATION_FILE, f"Reliability ({evaluation.results['model']['head']} head)")
    write_json(out / TIMING_FILE, evaluation.timing)
    write_json(out / RESULTS_FILE, evaluation.results)
    return out / RESULTS_FILE


CALIBRATION_FILE = "calibration.png"
OUTPUT_FILES = (RESULTS_FILE, TIMING_FILE, CALIBRATION_FILE, REPORT_FILE, "predictions", "compare")  # all it writes


def compare_with(evaluation: Evaluation, other: str, sets: dict[str, str], options: EvalOptions,
                 data_args: DataArguments | None, model_args: ModelArguments | None, out_dir: Path) -> dict:
    """Load the other evaluation (or evaluate the other model, written under ``out_dir``) and test the
    per-set accuracy differences -> (the other's results, the comparison)."""
    loaded = load_results(other)
    if loaded is None:
        model = Path(other).parent if Path(other).suffix == ".json" else other  # an older run's metrics file
        other_eval = evaluate(str(model), sets, options, data_args, model_args)
        write_evaluation(other_eval, out_dir)
        loaded = other_eval.results, other_eval.records
    other_results, other_records = loaded
    return comparison(evaluation.results, evaluation.records, other_results, other_records, options.resamples,
                      options.seed, str(other))


def run_evaluation(model_path: str, sets: dict[str, str], out_dir: str | Path, options: EvalOptions | None = None,
                   data_args: DataArguments | None = None, model_args: ModelArguments | None = None,
                   compare: str | None = None, report: bool = True) -> dict:
    """Evaluate, compare with another run or results when asked, write everything; returns eval_results. The
    files are written in a temporary folder that then replaces the evaluation files of ``out_dir`` (all of them:
    the predictions of an earlier evaluation never stay beside new results), leaving its other files."""
    options = options or EvalOptions()
    evaluation = evaluate(model_path, sets, options, data_args, model_args)
    with replacing_folder(out_dir, OUTPUT_FILES) as staged:
        if compare:
            evaluation.results["compare"] = compare_with(evaluation, compare, sets, options, data_args, model_args,
                                                         staged / "compare")
        write_evaluation(evaluation, staged)
        if report:
            write_report(evaluation, staged / REPORT_FILE)
    return evaluation.results


def flat_metrics(results: dict) -> dict[str, float]:
    """The headline numbers of an evaluation as one flat map: ``eval_<metric>`` of the first set of pairs (with a
    listwise set's ``eval_best_of_k_accuracy``, ``eval_kendall_tau``, ``eval_tie_accuracy``, ...) and
    ``eval_rated_<attribute>_<metric>`` of rated sets, ``eval_rated_<metric>`` of sets rated on levels (what
    ``run_rm`` returns and ``discorm train`` prints)."""
    flat = {}
    first = next(iter(results["sets"].values()), None)
    if first is not None:
        flat.update({f"eval_{key}": first[key] for key in FLAT_METRICS if first.get(key) is not None})
        flat.update({f"eval_{key}": value for key, value in first.get("listwise", {}).items() if value is not None})
        if results["model"]["temperature"] != 1.0:
            flat["eval_temperature"] = results["model"]["temperature"]
    for summary in results.get("rated_sets", {}).values():
        for attribute, values in summary["attributes"].items():
            flat.update({f"eval_rated_{attribute}_{metric}": value for metric, value in values.items()})
        flat.update({f"eval_rated_{key}": value for key, value in summary.get("levels", {}).items()
                     if isinstance(value, float)})
    return flat
