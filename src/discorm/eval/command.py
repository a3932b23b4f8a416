"""``discorm eval`` arguments -> an evaluation, and the summary it prints.

Two forms:
- ``discorm eval MODEL --data NAME=PATH [--data ...] [--out DIR] [--compare OTHER] [options]``;
- ``discorm eval CONFIG.yaml [key=value ...]``: the model is ``model_name_or_path``, the set ``eval_dataset``
  (else ``dataset``), the output folder under ``output_dir``; the data keys (``max_samples``, ``formatting``,
  ``dataset_dir``, ...) apply, and so do ``reward_mode``/``reward_alpha``/``reward_k`` and ``cutoff_len`` when the
  file sets them.

The output goes to ``--out``, else to a new ``eval-<sets>`` folder in the model's folder (``output_dir`` with a
config; ``saves/eval/<name>`` for a model that is not a folder): never over training's ``RUN/eval``, nor over
another evaluation or other files unless ``--force``, which replaces the evaluation's own files only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from discorm.config import DataArguments, given_values, load_args
from discorm.errors import ConfigError
from discorm.eval.results import REPORT_FILE, RESULTS_FILE, TIMING_FILE, RewardOptions
from discorm.eval.runner import EvalOptions, run_evaluation
from discorm.eval.sets import parse_set_specs
from discorm.files import check_destination
from discorm.model.rm_config import check_reward_options


def is_config_file(target: str) -> bool:
    return Path(target).suffix in (".yaml", ".yml")


def _check(args) -> None:
    check_reward_options(args.reward_mode, args.reward_alpha, args.reward_k, flags=True)
    if args.batch_size < 1 or args.bootstrap < 100:
        raise ConfigError("--batch-size must be >= 1 and --bootstrap >= 100.")


def eval_from_args(args) -> tuple[dict, Path]:
    """Run ``discorm eval`` -> (eval_results, output directory)."""
    _check(args)
    reward = RewardOptions(args.reward_mode, args.reward_alpha, args.reward_k)
    options = EvalOptions(reward=reward, batch_size=args.batch_size, cutoff_len=args.cutoff_len,
                          resamples=args.bootstrap, seed=args.seed, device=args.device)
    sets = parse_set_specs(args.data)
    if is_config_file(args.target):
        given = given_values(args.target, args.overrides)
        model_args, data_args, training_args, finetuning_args = load_args(args.target, args.overrides)
        for key, field in (("reward_mode", "mode"), ("reward_alpha", "alpha"), ("reward_k", "k")):
            if key in given and getattr(reward, field) is None:
                setattr(reward, field, getattr(finetuning_args, key))
        if "cutoff_len" in given and options.cutoff_len is None:
            options.cutoff_len = data_args.cutoff_len
        if not sets:
            if data_args.val_size and not data_args.eval_dataset:
                raise ConfigError(f"{args.target}: `discorm eval` reads whole sets; val_size splits training data. "
                                  "Set eval_dataset to the held-out file (or pass --data NAME=PATH).")
            source = data_args.eval_dataset or data_args.dataset
            sets = {Path(source.split(",")[0].split(":")[0]).stem or "eval": source}
        model, folder = model_args.model_name_or_path, Path(training_args.output_dir)
    else:
        if args.overrides:
            raise ConfigError(f"key=value overrides ({' '.join(args.overrides)}) need a YAML config as the first "
                              "argument; with a model, use the --options (see `discorm eval --help`).")
        if not sets:
            raise ConfigError(f"no evaluation data: give one or more --data NAME=PATH after {args.target} "
                              "(a pair file, a RewardBench v1/v2 file, or a YAML list of sets).")
        data_args = DataArguments(max_samples=args.max_samples)
        model, model_args = args.target, None
        folder = Path(model) if Path(model).is_dir() else Path("saves", "eval", Path(model).name)
    out = Path(args.out) if args.out else folder / default_folder(sets)
    option = f"--out {out}" if args.out else f"the output folder {out} (the default; --out chooses another)"
    check_destination(out, args.force, folder=True, reads=[model] if Path(model).is_dir() else [], option=option)
    if args.max_samples:
        data_args.max_samples = args.max_samples
    results = run_evaluation(model, sets, out, options, data_args, model_args, compare=args.compare,
                             report=not args.no_report)
    return results, out


def default_folder(sets: dict[str, str]) -> str:
    """``eval-<set names>``: a folder of its own for each choice of sets, never training's ``eval``."""
    return "eval-" + re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(sets))[:100]


def summary_text(results: dict, out: Path, report: bool = True) -> str:
    """The lines `discorm eval` prints: per set accuracy, baseline and calibration; RewardBench scores; tests."""
    def f(value, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    model = results["model"]
    timing = json.loads((out / TIMING_FILE).read_text()).get("sets", {}) if (out / TIMING_FILE).is_file() else {}

    def speed(name: str) -> str:
        return f"{timing[name]['items_per_second']:.1f} items/s" if name in timing else ""

    lines = [f"model: {model['path']} ({model['head']} head, reward mode {model['reward_mode']})"]
    for name, s in results["sets"].items():
        ci = s["accuracy_ci"]
        interval = f" [{f(ci[0])}, {f(ci[1])}]" if ci else ""
        lines.append(f"{name}: {s['items']} items  accuracy: {f(s['accuracy'])}{interval}  pick-longer: "
                     f"{f(s['length']['baseline_accuracy'])}  nll: {f(s['nll'])}  ece: {f(s['ece'])}  "
                     f"spearman(reward, length): {f(s['length']['spearman_reward_length'], 3)}  {speed(name)}")
        if "rewardbench" in s:
            rb = s["rewardbench"]
            parts = [f"{k} {f(v)}" for k, v in rb["sections"].items()]
            parts += [f"Prior Sets {f(rb['prior_sets'])}"] if rb["prior_sets"] is not None else []
            lines.append(f"  RewardBench: {', '.join(parts)}; overall {f(rb['overall'])}"
                         + ("" if rb["complete"] else f" (missing {', '.join(rb['missing_sections'])})"))
        if "rewardbench2" in s:
            parts = [f"{k} {f(v['score'])}" for k, v in s["subsets"].items()]
            lines.append(f"  RewardBench 2: {', '.join(parts)}; overall {f(s['rewardbench2']['overall'])}")
    for name, s in results.get("rated_sets", {}).items():
        parts = [f"{a} rmse {f(m.get('rmse'))} spearman {f(m.get('spearman'))}" for a, m in s["attributes"].items()]
        if "levels" in s:
            m = s["levels"]
            parts = [f"nll per rating {f(m['nll_per_rating'])}", f"brier {f(m['brier'])}",
                     f"spearman(disagreement) {f(m['disagreement_spearman'], 3)}",
                     f"contested auroc {f(m['contested_auroc'], 3)}"]
        lines.append(f"{name}: {s['items']} rated responses  {'; '.join(parts)}  {speed(name)}")
    for name, c in results.get("compare", {}).get("sets", {}).items():
        if c["paired_items"]:
            lines.append(f"compare {name}: {f(c['accuracy'])} vs {f(c['other_accuracy'])}, difference "
                         f"{c['difference']:+.4f} [{f(c['difference_ci'][0])}, {f(c['difference_ci'][1])}], "
                         f"p = {c['p_value']:.4f} ({c['paired_items']} paired items)")
        else:
            lines.append(f"compare {name}: {c['note']}")
    lines.append(f"wrote {out / RESULTS_FILE}" + (f" and {out / REPORT_FILE}" if report else ""))
    return "\n".join(lines)
