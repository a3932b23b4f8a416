"""`discorm <command>`: parses argv and calls one function per command.

User errors (DiscoRMError) are printed as one paragraph without a traceback; `--debug` shows it.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys

from discorm import __version__
from discorm.data.annotations import WRITERS
from discorm.data.images import ImagePolicy
from discorm.errors import DiscoRMError, TrainingInterrupted
from discorm.model.acquisition import STRATEGIES
from discorm.model.rm_config import REWARD_MODES


def _cmd_train(args) -> None:
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    results = run_rm(*load_args(args.config, args.overrides))
    if "eval_best_of_k_accuracy" in results:
        print(f"held-out best-of-K accuracy: {results['eval_best_of_k_accuracy']:.4f} ({results['eval_lists']} items, "
              f"K = {results['eval_mean_k']:.1f} on average)")
        extras = [f"{label} {results[key]:.4f}" for key, label in (
            ("eval_kendall_tau", "Kendall tau"), ("eval_spearman", "Spearman"), ("eval_tie_accuracy", "tie accuracy"),
            ("eval_tie_ece", "P(tie) ECE")) if key in results]
        if extras:
            print("held-out " + ", ".join(extras))
    elif "eval_accuracy" in results:
        print(f"held-out accuracy: {results['eval_accuracy']:.4f}")
    _print_rated(results)


def _print_rated(results: dict) -> None:
    """One line per rated attribute evaluated (eval_rated_<name>_spearman)."""
    prefix, suffix = "eval_rated_", "_spearman"
    for key in sorted(k for k in results if k.startswith(prefix) and k.endswith(suffix)):
        name = key[len(prefix) : -len(suffix)]
        print(f"held-out {name}: rmse {results[f'{prefix}{name}_rmse']:.4f}  spearman {results[key]:.4f}")


def _cmd_eval(args) -> None:
    from discorm.eval.command import eval_from_args, summary_text

    results, out = eval_from_args(args)
    print(summary_text(results, out, report=not args.no_report))


def _cmd_preview(args) -> None:
    from discorm.config import load_args
    from discorm.train.workflow import preview_data

    model_args, data_args, training_args, finetuning_args = load_args(args.config, args.overrides)
    print(preview_data(model_args, data_args, finetuning_args, args.n, training_args.seed))


def _cmd_pull(args) -> None:
    from discorm.model.builtin import pull_builtin_model

    print(pull_builtin_model(args.name, force=args.force))


def _cmd_env(args) -> None:
    import importlib.metadata as md

    import torch

    lines = [f"discorm {__version__}", f"python {platform.python_version()} ({platform.platform()})"]
    for package in ("torch", "transformers", "peft", "datasets", "accelerate", "safetensors"):
        try:
            lines.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            lines.append(f"{package} not installed")
    if torch.cuda.is_available():
        lines.append(f"device: cuda x{torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})")
    else:
        lines.append(f"device: cpu ({torch.get_num_threads()} threads)")
    print("\n".join(lines))


def _cmd_keys(args) -> None:
    from discorm.config import reference_markdown

    print(reference_markdown())


def _cmd_score(args) -> None:
    from discorm.serve.scoring import score_file

    n = score_file(args.model, args.input, args.output, batch_size=args.batch_size, reward_mode=args.reward_mode,
                   reward_alpha=args.reward_alpha, reward_k=args.reward_k, policy_tokenizer=args.policy_tokenizer,
                   force=args.force)
    print(f"scored {n} rows -> {args.output}")


def _cmd_select(args) -> None:
    from discorm.serve.selection import select_file

    n = select_file(args.run, args.pool, args.out, args.budget, strategy=args.strategy, seed=args.seed,
                    exclude_path=args.exclude, output_format=args.format, batch_size=args.batch_size,
                    force=args.force)
    print(f"selected {n} items ({args.strategy}) -> {args.out}")


def _cmd_export(args) -> None:
    from discorm.serve.export import export_sequence_classification

    out = export_sequence_classification(args.run_dir, args.out, merge_lora=args.merge_lora, dtype=args.dtype,
                                         num_labels=args.num_labels, force=args.force, multi_label=args.multi_label)
    print(f"exported to {out}")


def _cmd_serve(args) -> None:
    from discorm.serve.server import serve

    serve(args.model, host=args.host, port=args.port, max_batch_size=args.batch_size, api_key=args.api_key,
          max_items=args.max_items, max_queue_items=args.max_queue, request_timeout_s=args.timeout,
          policy_tokenizer=args.policy_tokenizer, max_body_bytes=args.max_body_bytes, media_root=args.media_root,
          allow_image_urls=args.allow_image_urls, max_image_pixels=args.max_image_pixels,
          max_image_bytes=args.max_image_bytes)


def _positive(kind):
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value

    return parse


POLICY_HELP = ("texts are rendered by this tokenizer's chat template (the RL policy's): read them back into messages "
               "and render them with the reward model's own template (default: score texts as given)")


def finish_distributed() -> None:
    """Leave a torchrun / accelerate job together: without it a gloo process can abort at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="discorm", description="Train and use (distributional) reward models.")
    parser.add_argument("--version", action="version", version=f"discorm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a reward model: discorm train CONFIG.yaml [key=value ...]")
    train.add_argument("config")
    train.add_argument("overrides", nargs="*", help="key=value pairs that override the YAML file")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser(
        "eval", help="evaluate a reward model: discorm eval MODEL --data NAME=PATH [...] (or CONFIG.yaml [key=value])",
        description="Score a reward model (a DiscoRM run, an exported checkpoint, any sequence-classification reward "
                    "model, or a pretrained LM with a new head) on named sets: pairs in any format DiscoRM reads, "
                    "RewardBench v1 and RewardBench 2 files. Writes eval_results.json, predictions/ and report.html.")
    evaluate.add_argument("target", help="a model directory or built-in name, or a YAML config (key=value may follow)")
    evaluate.add_argument("overrides", nargs="*", help="with a YAML config: key=value pairs that override it")
    evaluate.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                          help="an evaluation set (repeatable); PATH as for `dataset`, or a YAML list of sets")
    evaluate.add_argument("--out", help="output folder (default: a new MODEL/eval-SETS, or OUTPUT_DIR/eval-SETS with "
                          "a config)")
    evaluate.add_argument("--force", action="store_true",
                          help="write into a non-empty output folder, replacing only the files an evaluation writes")
    evaluate.add_argument("--compare", metavar="OTHER", help="another model, or an earlier eval output, to compare")
    evaluate.add_argument("--reward-mode", choices=REWARD_MODES, help="ranking reward for this run (default: the "
                          "model's own)")
    evaluate.add_argument("--reward-alpha", type=float, help="lower_quantile: the quantile level")
    evaluate.add_argument("--reward-k", type=float, help="mean_minus_std, lcb: the number of standard deviations; "
                          "uwo: the weight of the epistemic variance; entropic: the risk aversion 1/beta")
    evaluate.add_argument("--batch-size", type=int, default=8, help="items per packed forward pass")
    evaluate.add_argument("--cutoff-len", type=int, help="token budget per sequence (default: the model's own)")
    evaluate.add_argument("--max-samples", type=int, help="use at most this many rows of each set")
    evaluate.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for intervals and tests")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    evaluate.add_argument("--no-report", action="store_true", help="skip report.html")
    evaluate.set_defaults(func=_cmd_eval)

    keys = sub.add_parser("keys", help="print every config key with its default and help")
    keys.set_defaults(func=_cmd_keys)

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    prev = data.add_parser("preview", help="show pairs as the model sees them")
    prev.add_argument("config")
    prev.add_argument("overrides", nargs="*")
    prev.add_argument("--n", type=_positive(int), default=3, help="how many pairs to show")
    prev.set_defaults(func=_cmd_preview)

    models = sub.add_parser("models", help="built-in models").add_subparsers(dest="models_command", required=True)
    pull = models.add_parser("pull", help="fetch and convert a built-in model into the cache")
    pull.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    pull.add_argument("--force", action="store_true", help="convert again even if cached")
    pull.set_defaults(func=_cmd_pull)

    env = sub.add_parser("env", help="print versions and the device")
    env.set_defaults(func=_cmd_env)

    score = sub.add_parser("score", help="score rows or pairs with a trained reward model")
    score.add_argument("model")
    score.add_argument("--input", required=True)
    score.add_argument("--output", required=True, help="the JSONL file to write (refused if it exists, unless --force)")
    score.add_argument("--force", action="store_true", help="replace an existing --output file")
    score.add_argument("--batch-size", type=_positive(int), default=8)
    score.add_argument("--reward-mode", default=None, choices=list(REWARD_MODES),
                       help="turn a distribution into one reward (default: the model's reward_mode)")
    score.add_argument("--reward-alpha", type=float, default=None,
                       help="lower_quantile: the level alpha in (0, 1) (default: the model's reward_alpha)")
    score.add_argument("--reward-k", type=float, default=None,
                       help="mean_minus_std, lcb: the number of standard deviations k; uwo: the weight of the "
                       "epistemic variance; entropic: the risk aversion 1/beta (default: the model's reward_k)")
    score.add_argument("--policy-tokenizer", default=None, metavar="PATH_OR_NAME", help=POLICY_HELP)
    score.set_defaults(func=_cmd_score)

    select = sub.add_parser("select", help="choose the items of an unlabelled pool to label next")
    select.add_argument("run")
    select.add_argument("--pool", required=True, help="unlabelled items: prompt + responses (or response_a, "
                        "response_b)")
    select.add_argument("--budget", required=True, type=_positive(int), help="how many items to choose")
    select.add_argument("--out", required=True, help="the file to write (refused if it exists, unless --force)")
    select.add_argument("--strategy", default="bald", choices=list(STRATEGIES),
                        help="bald, epistemic_std and diverse_bald need a model trained with uncertainty: laplace "
                        "or ensemble")
    select.add_argument("--seed", type=int, default=0, help="the random strategy's draws and the order of ties")
    select.add_argument("--exclude", default=None, help="a file of comparisons never to choose (e.g. the held-out "
                        "set), in any pair or list format")
    select.add_argument("--format", default="jsonl", choices=list(WRITERS),
                        help="jsonl: the pool's rows plus acquisition and preferences; label-studio: tasks to import; "
                        "argilla: v2 records")
    select.add_argument("--batch-size", type=_positive(int), default=8)
    select.add_argument("--force", action="store_true", help="replace an existing --out file")
    select.set_defaults(func=_cmd_select)

    export = sub.add_parser("export", help="write an AutoModelForSequenceClassification checkpoint")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True)
    export.add_argument("--merge-lora", action="store_true", help="merge LoRA adapters into the weights")
    export.add_argument("--force", action="store_true",
                        help="write into a non-empty --out folder, replacing only the files an export writes")
    export.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    export.add_argument("--num-labels", type=int, default=1,
                        help="gaussian heads: 2 also exports the log-variance as a second label; "
                             "multi_objective heads: 1 + the number of attributes also exports each attribute "
                             "(needs --multi-label)")
    export.add_argument("--multi-label", action="store_true",
                        help="allow --num-labels above 1 (verl/vLLM read the last label, RewardBench the largest)")
    export.set_defaults(func=_cmd_export)

    serve = sub.add_parser("serve", help="serve rewards over HTTP")
    serve.add_argument("model")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--batch-size", type=_positive(int), default=16, help="largest micro-batch")
    serve.add_argument("--api-key", default=None,
                       help="required on scoring routes and /metrics (default: $DISCORM_API_KEY); needed unless the "
                            "host is a loopback address")
    serve.add_argument("--max-items", type=_positive(int), default=256, help="most inputs per request (413 beyond)")
    serve.add_argument("--max-queue", type=_positive(int), default=1024,
                       help="most items waiting (503 + Retry-After beyond)")
    serve.add_argument("--timeout", type=_positive(float), default=30.0,
                       help="seconds a request may take (408 / 503 beyond)")
    serve.add_argument("--policy-tokenizer", default=None, metavar="PATH_OR_NAME", help=POLICY_HELP)
    serve.add_argument("--max-body-bytes", type=_positive(int), default=4_000_000,
                       help="largest request body (413 beyond); images sent as data URIs count")
    serve.add_argument("--media-root", default=None, metavar="FOLDER",
                       help="image file paths are read only under this folder (relative ones from it); without it, "
                       "paths are refused and images come as data URIs")
    serve.add_argument("--allow-image-urls", action="store_true",
                       help="fetch http(s) image URLs (off: URLs are refused with 422)")
    serve.add_argument("--max-image-pixels", type=_positive(int), default=ImagePolicy.max_pixels,
                       help="largest image, width x height (422 beyond)")
    serve.add_argument("--max-image-bytes", type=_positive(int), default=ImagePolicy.max_bytes,
                       help="largest image file or data URI payload (422 beyond)")
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"] and "--help-keys" in argv:
        argv = ["keys"]
    args = build_parser().parse_args(argv)
    # bitsandbytes warns at import, on every command, that an optional CPU kernel package is absent.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.basicConfig(format="[discorm] %(message)s", level=logging.WARNING)
    logging.getLogger("discorm").setLevel(logging.INFO)
    try:
        args.func(args)
        finish_distributed()
    except DiscoRMError as err:
        if args.debug:
            raise
        code = getattr(err, "exit_code", 2)
        print(f"discorm: {'error: ' if code == 2 else ''}{err}", file=sys.stderr)
        if isinstance(err, TrainingInterrupted):  # every process stopped at the same step: leave together
            finish_distributed()
        return code
    except KeyboardInterrupt:
        print("discorm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
