"""Evaluation throughput next to training throughput, on the same pairs, in one process, modes alternating.

- eval (packed): what `discorm eval` runs: no gradient, length-sorted batches, each packed into one row with the
  prompt shared ([prompt | chosen | rejected]);
- eval (padded): the plain twin: every prompt + response its own padded sequence, no gradient, length-sorted;
- train step: one optimizer step of `PairwiseTrainer` (packed, prefix-shared; freeze tuning of the last blocks,
  the HH setup of docs/evaluation.md), the first step not timed.

    python benchmarks/bench_eval.py                       # SmolLM2-135M, 64 HH pairs, cutoff 384, 2 rounds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import StepTimer, matmul_peak, tokenized_pairs  # noqa: E402


def eval_rate(model, train, batch: int, packed: bool) -> tuple[float, object]:
    from discorm.model.inference import score_ids, score_pairs

    start = time.perf_counter()
    if packed:
        params = score_pairs(model, list(train), batch_size=batch)
    else:
        seqs = [e["prompt_ids"] + e[k] for e in train for k in ("chosen_ids", "rejected_ids")]
        params = score_ids(model, seqs, batch_size=2 * batch).view(len(train), 2, -1)
    return len(train) / (time.perf_counter() - start), params


def train_rate(model_dir: str, tokenizer, train, batch: int, layers: int) -> float:
    from discorm.config import FinetuningArguments, ModelArguments, TrainingArguments
    from discorm.data.collator import PackedPairCollator
    from discorm.train.trainer import PairwiseTrainer
    from discorm.train.workflow import setup_model

    ft = FinetuningArguments(finetuning_type="freeze", freeze_trainable_layers=layers)
    model = setup_model(ModelArguments(model_name_or_path=model_dir), ft, tokenizer)
    times: list = []
    steps = len(train) // batch
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-5, save_strategy="no", logging_steps=10_000, report_to="none",
                             disable_tqdm=True, seed=0, use_cpu=True, dataloader_num_workers=0)
    trainer = PairwiseTrainer(model=model, args=args, train_dataset=train, finetuning_args=ft,
                              data_collator=PackedPairCollator(prefix_sharing=True), callbacks=[StepTimer.make(times)])
    trainer.train()
    ends = [t for kind, t in times if kind == "end"]
    return (steps - 1) * batch / (ends[-1] - ends[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--cutoff", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=2, help="freeze tuning: trainable last blocks")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    if opts.pairs // opts.batch < 2:
        parser.error("--pairs must be at least twice --batch: the first train step is not timed")

    import torch

    from discorm.model.loading import resolve_model_path
    from discorm.model.reward_model import RewardModel

    torch.set_num_threads(opts.threads)
    model_dir = resolve_model_path(opts.model)
    tokenizer, train = tokenized_pairs(model_dir, opts.pairs, opts.cutoff)
    model = RewardModel.from_pretrained(model_dir).eval()
    assert model.check_packing()
    rates: dict[str, list[float]] = {"eval (packed, prefix-shared)": [], "eval (padded)": [],
                                      f"train step (freeze, last {opts.layers} blocks)": []}
    for round_ in range(1, opts.rounds + 1):
        packed, fast = eval_rate(model, train, opts.batch, packed=True)
        padded, plain = eval_rate(model, train, opts.batch, packed=False)
        step = train_rate(model_dir, tokenizer, train, opts.batch, opts.layers)
        for name, rate in zip(rates, (packed, padded, step)):
            rates[name].append(rate)
            print(f"round {round_}: {name:34s} {rate:7.2f} pairs/s")
        print(f"round {round_}: packed vs padded scores differ by at most {float((fast - plain).abs().max()):.2e}")
    peak = matmul_peak(opts.threads)
    step = statistics.median(rates[list(rates)[-1]])
    print(f"\n{opts.model}, {len(train)} HH pairs, cutoff {opts.cutoff}, {opts.batch} pairs per batch, "
          f"{opts.threads} threads, median of {opts.rounds} rounds")
    print(f"fp32 matmul peak (2048x2048, {opts.threads} threads): {peak:.0f} GFLOP/s\n")
    print("| mode | pairs/s | × train step |\n| --- | --- | --- |")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name} | {rate:.2f} | {rate / step:.2f} |")


if __name__ == "__main__":
    main()
