"""Listwise training throughput: comparisons per second for K = 4 ranked lists (one block per prompt, the four
responses as branches), the same 6 comparisons per list as separate prefix-shared pairs, and TRL's RewardTrainer
on those 6 pairs.

Same model (smollm2-135m-instruct, fp32, full fine-tuning, no gradient checkpointing), same token sequences
(tokenized once by DiscoRM; TRL gets them pre-tokenized), same cutoff, the same comparisons per optimizer step (a
batch of B lists makes 6B comparisons; the pair modes take batches of 6B pairs), same seed. Every run is its own
process and the modes alternate over the rounds; comparisons/s are measured over the steps after warm-up. The
lists are made from the HH-RLHF harmless pairs: a prompt, its chosen and rejected response, and the chosen and
rejected responses of the next row (throughput does not depend on which response is better).

    python benchmarks/bench_listwise.py                        # CPU: the table in docs/benchmarks.md
    python benchmarks/bench_listwise.py --lists 12 --rounds 2  # longer, steadier
    python benchmarks/bench_listwise.py --device cuda          # GPU, bf16

TRL is an optional dependency of this script only (`pip install trl`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_throughput import HH_FILE, StepTimer, matmul_peak  # noqa: E402

K = 4
MODES = ("listwise", "pairs", "trl")


def make_rows(lists: int):
    """-> (listwise rows, the same comparisons as explicit pairs), in DiscoRM's message form."""
    from discorm.data.pairs import implicit
    from discorm.data.rows import FormatSpec

    pairs = [implicit(json.loads(line), FormatSpec("implicit"), "hh")
             for line in HH_FILE.read_text().splitlines()[: 2 * lists + 1]]
    listwise, flat = [], []
    for index in range(lists):
        first, second = pairs[2 * index], pairs[2 * index + 1]
        responses = [first.chosen, first.rejected, second.chosen, second.rejected]
        listwise.append({"prompt": first.prompt, "responses": responses, "ranking": [0, 2, 3, 1]})
        levels = [0, 3, 1, 2]
        for i, j in combinations(range(K), 2):
            better, worse = (i, j) if levels[i] < levels[j] else (j, i)
            flat.append({"prompt": first.prompt, "chosen": responses[better], "rejected": responses[worse]})
    return listwise, flat


def tokenized(model_dir: str, rows: list[dict], cutoff: int):
    from transformers import AutoTokenizer

    from discorm.config import DataArguments
    from discorm.train.workflow import setup_data

    folder = Path(tempfile.mkdtemp())
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer, setup_data(DataArguments(dataset=str(folder / "rows.jsonl"), cutoff_len=cutoff), tokenizer).train


def worker(opts) -> dict:
    import torch

    torch.set_num_threads(opts.threads)
    from discorm.model.loading import resolve_model_path

    model_dir = resolve_model_path(opts.model)
    listwise, flat = make_rows(opts.lists)
    tokenizer, train = tokenized(model_dir, listwise if opts.mode == "listwise" else flat, opts.cutoff)
    comparisons_per_step = K * (K - 1) // 2 * opts.batch_lists
    batch = opts.batch_lists if opts.mode == "listwise" else comparisons_per_step
    steps = len(train) // batch
    cuda, bf16 = opts.device == "cuda", opts.device == "cuda"
    times: list = []
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps,
                  learning_rate=1e-5, save_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True,
                  seed=0, use_cpu=not cuda, dataloader_num_workers=0, bf16=bf16)
    if opts.mode == "trl":
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        data = Dataset.from_dict({"chosen_ids": [e["prompt_ids"] + e["chosen_ids"] for e in train],
                                  "rejected_ids": [e["prompt_ids"] + e["rejected_ids"] for e in train]})
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="sdpa")
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = RewardTrainer(model=model, args=RewardConfig(**common, gradient_checkpointing=False,
                                                               max_length=opts.cutoff),
                                train_dataset=data, processing_class=tokenizer, callbacks=[StepTimer.make(times)])
    else:
        from discorm.config import FinetuningArguments, ModelArguments, TrainingArguments
        from discorm.data.collator import PackedPairCollator
        from discorm.train.trainer import PairwiseTrainer
        from discorm.train.workflow import setup_model

        ft = FinetuningArguments(finetuning_type="full", ranking_loss="all_pairs")
        model = setup_model(ModelArguments(model_name_or_path=model_dir, dtype="bfloat16" if bf16 else "float32"),
                            ft, tokenizer)
        assert model.check_packing()
        trainer = PairwiseTrainer(model=model, args=TrainingArguments(**common), train_dataset=train,
                                  data_collator=PackedPairCollator(prefix_sharing=True),
                                  callbacks=[StepTimer.make(times)], finetuning_args=ft)
    trainer.train()
    ends = [t for kind, t in times if kind == "end"]
    elapsed = ends[-1] - ends[opts.warmup - 1]
    return {"mode": opts.mode, "comparisons_per_s": (steps - opts.warmup) * comparisons_per_step / elapsed,
            "steps": steps, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lists", type=int, default=6, help="K = 4 lists (6 comparisons each)")
    parser.add_argument("--batch-lists", type=int, default=1, help="lists per step (6x as many pairs)")
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print("RESULT " + json.dumps(worker(opts)))
        return
    peak = matmul_peak(opts.threads)
    results: dict[str, list[dict]] = {mode: [] for mode in opts.modes}
    for round_ in range(opts.rounds):
        for mode in opts.modes:
            args = [sys.executable, __file__, "--worker", "--mode", mode, "--device", opts.device, "--model",
                    opts.model, "--lists", str(opts.lists), "--batch-lists", str(opts.batch_lists), "--cutoff",
                    str(opts.cutoff), "--warmup", str(opts.warmup), "--threads", str(opts.threads)]
            begin = time.perf_counter()
            done = subprocess.run(args, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
            results[mode].append(json.loads(line[7:]))
            print(f"round {round_ + 1} {mode}: {results[mode][-1]['comparisons_per_s']:.2f} comparisons/s "
                  f"({time.perf_counter() - begin:.0f} s)", flush=True)
    import statistics

    print(f"\nmatmul peak {peak:.0f} GFLOP/s ({opts.threads} threads); {opts.device}; K = {K}, {opts.lists} lists, "
          f"{opts.batch_lists} lists (= {6 * opts.batch_lists} comparisons) per step, cutoff {opts.cutoff}; medians of "
          f"{opts.rounds} rounds\n")
    print("| mode | comparisons/s | × listwise time | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    median = {mode: statistics.median(r["comparisons_per_s"] for r in runs) for mode, runs in results.items()}
    labels = {"listwise": "DiscoRM, K = 4 lists (one block each)", "pairs": "DiscoRM, the 6 pairs (prefix-shared)",
              "trl": "TRL RewardTrainer, the 6 pairs"}
    for mode, runs in results.items():
        ratio = median.get("listwise", float("nan")) / median[mode]
        rss = max(r["peak_rss_mb"] for r in runs)
        print(f"| {labels[mode]} | {median[mode]:.2f} | {ratio:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
