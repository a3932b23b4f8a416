"""What epistemic uncertainty costs: a training step with an ensemble of K heads vs one head (one backbone pass
either way), and fitting the Laplace posterior vs one evaluation pass over the same training pairs.

    python benchmarks/bench_uncertainty_cost.py [--pairs 48] [--cutoff 384] [--batch 8] [--rounds 2] [--k 5]

The default model freeze-tuned (last 2 blocks) on the first pairs of the shared HH file; the runs alternate and
the table shows medians of the per-step times after the first step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.*`

from benchmarks.bench_throughput import StepTimer, matmul_peak, tokenized_pairs  # noqa: E402


def step_times(model_dir: str, tokenizer, train, opts, uncertainty: str | None):
    """-> (the time of every optimizer step but the first, the trained model)."""
    from discorm.config import FinetuningArguments, ModelArguments, TrainingArguments
    from discorm.data.collator import PackedPairCollator
    from discorm.train.trainer import PairwiseTrainer
    from discorm.train.workflow import setup_model

    torch.manual_seed(0)
    ft = FinetuningArguments(finetuning_type="freeze", freeze_trainable_layers=2, uncertainty=uncertainty,
                             ensemble_size=opts.k)
    model = setup_model(ModelArguments(model_name_or_path=model_dir), ft, tokenizer)
    times: list = []
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=opts.batch,
                             max_steps=len(train) // opts.batch, learning_rate=1e-4, save_strategy="no",
                             logging_steps=10_000, report_to="none", disable_tqdm=True, seed=0, use_cpu=True)
    trainer = PairwiseTrainer(model=model, args=args, train_dataset=train, data_collator=PackedPairCollator(),
                              callbacks=[StepTimer.make(times)], finetuning_args=ft)
    trainer.train()
    begins = [t for kind, t in times if kind == "begin"]
    ends = [t for kind, t in times if kind == "end"]
    return [end - begin for begin, end in zip(begins, ends)][1:], model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--cutoff", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    opts = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    from discorm.model.inference import score_pairs
    from discorm.model.loading import resolve_model_path
    from discorm.train.stages import fit_laplace

    model_dir = resolve_model_path("smollm2-135m-instruct")
    tokenizer, train = tokenized_pairs(model_dir, opts.pairs, opts.cutoff)
    steps: dict[str, list[float]] = {"one head": [], f"ensemble of {opts.k} heads": []}
    fit, evaluation = [], []
    for round_index in range(opts.rounds):
        for name, uncertainty in (("one head", None), (f"ensemble of {opts.k} heads", "ensemble")):
            times, model = step_times(model_dir, tokenizer, train, opts, uncertainty)
            steps[name] += times
            print(f"round {round_index + 1}: {name}: median step {statistics.median(times):.3f} s", flush=True)
        _, model = step_times(model_dir, tokenizer, train.select(range(2 * opts.batch)), opts, "laplace")
        pairs = list(train)
        start = time.perf_counter()
        score_pairs(model, pairs, batch_size=16)
        evaluation.append(time.perf_counter() - start)
        start = time.perf_counter()
        fit_laplace(model, train, "the training pairs", batch_size=16)
        fit.append(time.perf_counter() - start)
        print(f"round {round_index + 1}: evaluation pass {evaluation[-1]:.2f} s, Laplace fit {fit[-1]:.2f} s",
              flush=True)

    threads = torch.get_num_threads()
    print(f"\nfp32 matmul peak (2048x2048, {threads} threads): {matmul_peak(threads):.0f} GFLOP/s")
    print(f"{opts.pairs} HH pairs, cutoff {opts.cutoff}, {opts.batch} pairs per step, last 2 blocks + head(s) train\n")
    base = statistics.median(steps["one head"])
    print("| training | median step (s) | × one head |\n| --- | --- | --- |")
    for name, times in steps.items():
        print(f"| {name} | {statistics.median(times):.3f} | {statistics.median(times) / base:.3f} |")
    print("\n| over the training pairs | median time (s) | × evaluation pass |\n| --- | --- | --- |")
    print(f"| evaluation pass (score_pairs) | {statistics.median(evaluation):.2f} | 1.000 |")
    print(f"| Laplace fit (features pass + posterior) | {statistics.median(fit):.2f} | "
          f"{statistics.median(fit) / statistics.median(evaluation):.3f} |")


if __name__ == "__main__":
    main()
