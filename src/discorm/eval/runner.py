"""``discorm eval``: score one model on named evaluation sets and write eval_results.json, the per-item
predictions and report.html.

The model is a DiscoRM run directory, a checkpoint in one, an exported sequence-classification checkpoint, any
``AutoModelForSequenceClassification`` reward model directory, or a pretrained LM (a new, untrained head). Its
own encoder (tokenizer, chat template, cutoff length) turns every item into tokens, so evaluation sees exactly the
tokens training saw. The model is never changed: the reward options apply to this evaluation only.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from discorm.config import DataArguments, ModelArguments
from discorm.data.tokenize import Encoder
from discorm.eval.rated import rated_results
from discorm.eval.results import RewardOptions, set_results
from discorm.eval.scoring import score_items
from discorm.eval.sets import EvalSet, load_eval_set
from discorm.eval.stats import CONFIDENCE, DEFAULT_RESAMPLES

logger = logging.getLogger(__name__)

RESULTS_FILE = "eval_results.json"
REPORT_FILE = "report.html"
SCHEMA = 1


@dataclass
class EvalOptions:
    reward: RewardOptions = field(default_factory=RewardOptions)
    batch_size: int = 8
    cutoff_len: int | None = None  # None: the model's own
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu
    show_progress: bool = True


@dataclass
class Evaluation:
    """One model's evaluation: the numbers (eval_results.json), the per-item records and the sets."""

    results: dict
    records: dict[str, list[dict]]
    sets: dict[str, EvalSet]


def load_model(path: str, model_args: ModelArguments | None, device: str | None):
    from discorm.model.reward_model import RewardModel

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return RewardModel.from_pretrained(path, model_args=model_args, device=device).eval()


def evaluate(model_path: str, sets: dict[str, str], options: EvalOptions, data_args: DataArguments | None = None,
             model_args: ModelArguments | None = None) -> Evaluation:
    """Load the model, read and encode every set with its encoder, score, and compute every number."""
    data_args = data_args or DataArguments()
    model = load_model(model_path, model_args, options.device)
    encoder = Encoder.for_model(model, options.cutoff_len)
    eval_sets = {name: load_eval_set(name, source, encoder, data_args, model.head.attributes)
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
    records = {}
    for name, eval_set in eval_sets.items():
        params, seconds = score_items(model, eval_set, options.batch_size, options.show_progress)
        if eval_set.format == "rated":  # kept apart: the ranking sections read results["sets"]
            summary, records[name] = rated_results(model, eval_set, params, options.reward)
            results.setdefault("rated_sets", {})[name] = summary
        else:
            summary, records[name] = set_results(model, eval_set, params, options.reward, options.resamples,
                                                 options.seed)
            results["sets"][name] = summary
        responses = sum(len(item.response_ids) for item in eval_set.items)
        summary["speed"] = {"seconds": seconds, "items_per_second": len(eval_set.items) / seconds,
                            "responses_per_second": responses / seconds}
        summary["predictions_file"] = f"predictions/{_file_name(name)}.jsonl"
        logger.info("%s: %d items scored in %.1f s (%.1f items/s)", name, len(eval_set.items), seconds,
                    len(eval_set.items) / seconds)
    return Evaluation(results, records, eval_sets)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "set"


def write_evaluation(evaluation: Evaluation, out_dir: str | Path) -> Path:
    """eval_results.json and predictions/<set>.jsonl under ``out_dir``; returns the results file."""
    out = Path(out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for name, summary in {**evaluation.results["sets"], **evaluation.results.get("rated_sets", {})}.items():
        with open(out / summary["predictions_file"], "w") as handle:
            for record in evaluation.records[name]:
                handle.write(json.dumps(record) + "\n")
    path = out / RESULTS_FILE
    path.write_text(json.dumps(evaluation.results, indent=2))
    return path


def run_evaluation(model_path: str, sets: dict[str, str], out_dir: str | Path, options: EvalOptions | None = None,
                   data_args: DataArguments | None = None, model_args: ModelArguments | None = None,
                   compare: str | None = None, report: bool = True) -> dict:
    """Evaluate, compare with another run or results when asked, write everything; returns eval_results."""
    from discorm.eval.compare import compare_with
    from discorm.eval.report import write_report

    options = options or EvalOptions()
    evaluation = evaluate(model_path, sets, options, data_args, model_args)
    other = None
    if compare:
        other = compare_with(evaluation, compare, sets, options, data_args, model_args, Path(out_dir) / "compare")
        evaluation.results["compare"] = other.comparison
    write_evaluation(evaluation, out_dir)
    if report:
        write_report(evaluation, Path(out_dir) / REPORT_FILE, other)
    return evaluation.results
