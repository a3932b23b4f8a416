"""Training throughput: DiscoRM plain (padded) vs DiscoRM optimised (prefix sharing + packing) vs TRL's RewardTrainer.

Same model, same token sequences (tokenized once by DiscoRM, handed to TRL pre-tokenized), same cutoff, same
batch size, same seed and data order, fp32, no gradient checkpointing. Every run is its own process (so peak
resident memory is its own), and the modes alternate. Pairs/second are measured over the steps after warm-up.

    python benchmarks/bench_throughput.py                      # defaults of the README table
    python benchmarks/bench_throughput.py --pairs 24 --rounds 1 --modes optimised trl

TRL is an optional dependency of this script only (`pip install trl`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"


def tokenized_pairs(model_dir: str, pairs: int, cutoff: int):
    from transformers import AutoTokenizer

    from discorm.config import DataArguments
    from discorm.data.loader import build_datasets

    lines = HH_FILE.read_text().splitlines()[:pairs]
    folder = Path(tempfile.mkdtemp())
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train, _, _ = build_datasets(DataArguments(dataset=str(folder / "pairs.jsonl"), cutoff_len=cutoff), tokenizer)
    return tokenizer, train


class StepTimer:
    """Wall-clock time of each optimizer step (a TrainerCallback, built lazily to keep imports local)."""

    @staticmethod
    def make(times: list):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                times.append(["begin", time.perf_counter()])

            def on_step_end(self, args, state, control, **kwargs):
                times.append(["end", time.perf_counter()])

        return _Timer()


def worker(opts) -> dict:
    import torch

    torch.set_num_threads(opts.threads)
    from discorm.model.loading import resolve_model_path

    model_dir = resolve_model_path(opts.model)
    tokenizer, train = tokenized_pairs(model_dir, opts.pairs, opts.cutoff)
    steps = len(train) // opts.batch
    out = tempfile.mkdtemp()
    times: list = []
    common = dict(output_dir=out, per_device_train_batch_size=opts.batch, max_steps=steps, learning_rate=1e-5,
                  save_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True, seed=0,
                  use_cpu=True, dataloader_num_workers=0)
    if opts.mode == "trl":
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        data = Dataset.from_dict({
            "chosen_ids": [e["prompt_ids"] + e["chosen_ids"] for e in train],
            "rejected_ids": [e["prompt_ids"] + e["rejected_ids"] for e in train],
        })
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        config = RewardConfig(**common, bf16=False, gradient_checkpointing=False, max_length=opts.cutoff,
                              pad_to_multiple_of=None)
        peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS") \
            if opts.finetuning == "lora" else None
        trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                peft_config=peft, callbacks=[StepTimer.make(times)])
        real_tokens = sum(len(x) for x in data["chosen_ids"]) + sum(len(x) for x in data["rejected_ids"])
    else:
        from discorm.config import FinetuningArguments, ModelArguments, TrainingArguments
        from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
        from discorm.model.reward_model import RewardModel
        from discorm.train.trainer import PairwiseTrainer

        ft = FinetuningArguments(finetuning_type=opts.finetuning, lora_rank=16, lora_alpha=32, lora_target="all")
        model = RewardModel.for_training(ModelArguments(model_name_or_path=model_dir), ft, tokenizer)
        if opts.mode == "optimised":
            assert model.check_packing()
            collator = PackedPairCollator(prefix_sharing=True)
            real_tokens = sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train)
        else:
            collator = PairwiseDataCollatorWithPadding(tokenizer.pad_token_id)
            real_tokens = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train)
        trainer = PairwiseTrainer(model=model, args=TrainingArguments(**common), train_dataset=train,
                                  data_collator=collator, callbacks=[StepTimer.make(times)], finetuning_args=ft)
    trainer.train()
    begins = [t for kind, t in times if kind == "begin"]
    ends = [t for kind, t in times if kind == "end"]
    timed = steps - opts.warmup
    elapsed = ends[-1] - ends[opts.warmup - 1] if opts.warmup else ends[-1] - begins[0]
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lora_" not in n)
    return {
        "mode": opts.mode, "finetuning": opts.finetuning, "pairs_per_s": timed * opts.batch / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "gflops": 6 * non_embedding * real_tokens * (timed / steps) / elapsed / 1e9,
        "real_tokens": real_tokens, "steps": steps,
    }


def matmul_peak(threads: int, size: int = 2048, repeats: int = 20) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the table shows the medians")
    parser.add_argument("--finetuning", nargs="+", default=["full", "lora"])
    parser.add_argument("--modes", nargs="+", default=["plain", "optimised", "trl"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        opts.finetuning = opts.finetuning[0]
        print("RESULT " + json.dumps(worker(opts)), flush=True)
        return

    print(f"model {opts.model}, first {opts.pairs} pairs of {HH_FILE.name}, cutoff {opts.cutoff}, "
          f"{opts.batch} pairs/step, fp32, {opts.threads} threads, {opts.rounds} alternating rounds", flush=True)
    results: dict = {}
    for round_index in range(opts.rounds):
        for finetuning in opts.finetuning:
            for mode in opts.modes:
                cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--finetuning", finetuning,
                       "--model", opts.model, "--pairs", str(opts.pairs), "--cutoff", str(opts.cutoff),
                       "--batch", str(opts.batch), "--warmup", str(opts.warmup), "--threads", str(opts.threads)]
                env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(f"{mode}/{finetuning} failed:\n{done.stderr[-3000:]}", flush=True)
                    continue
                result = json.loads(line[7:])
                results.setdefault((finetuning, mode), []).append(result)
                print(f"round {round_index + 1}: {finetuning:5s} {mode:9s} {result['pairs_per_s']:.3f} pairs/s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)

    import statistics

    peak = matmul_peak(opts.threads)
    print(f"\nfp32 matmul peak (2048x2048, {opts.threads} threads): {peak:.0f} GFLOP/s\n")
    print("| fine-tuning | trainer | pairs/s | × TRL | peak RSS (MB) | GFLOP/s (full) |")
    print("| --- | --- | --- | --- | --- | --- |")
    names = {"plain": "DiscoRM plain (padded)", "optimised": "DiscoRM optimised", "trl": "TRL RewardTrainer"}
    for finetuning in opts.finetuning:
        trl = results.get((finetuning, "trl"))
        trl_rate = statistics.median(r["pairs_per_s"] for r in trl) if trl else None
        for mode in opts.modes:
            runs = results.get((finetuning, mode))
            if not runs:
                continue
            rate = statistics.median(r["pairs_per_s"] for r in runs)
            rss = statistics.median(r["peak_rss_mb"] for r in runs)
            gflops = statistics.median(r["gflops"] for r in runs) if finetuning == "full" else None
            ratio = f"{rate / trl_rate:.2f}" if trl_rate else "-"
            print(f"| {finetuning} | {names[mode]} | {rate:.3f} | {ratio} | {rss:.0f} | "
                  f"{f'{gflops:.0f}' if gflops else '-'} |")


if __name__ == "__main__":
    main()
