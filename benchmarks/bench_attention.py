"""Evaluation / scoring speed on the CPU: packed batches with split SDPA vs compiled FlexAttention (forward only,
no gradient), next to padded batches. This decides `attention_backend: auto` for CPU evaluation.

    python benchmarks/bench_attention.py [--pairs 64] [--cutoff 512] [--batch 8] [--rounds 3] [--sweep 1,2,4,16]

The default model on the first pairs of the shared HH file; every backend scores the same pairs in the same
length-sorted batches (`discorm.model.inference.score_pairs`); backends alternate, the first pass of each is a
warm-up (FlexAttention compiles there), and the table shows the median pairs/s of the timed passes next to the
first pass.
`--sweep` adds a table of split SDPA vs FlexAttention at other batch sizes, by the mean packed row length. The
faster path sets `CPU_EVAL_BACKEND` (`discorm/model/packed.py`), what `attention_backend: auto` uses for
evaluation and scoring on a CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import matmul_peak  # noqa: E402

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep", default="", help="comma-separated batch sizes (pairs per packed row)")
    opts = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a fresh compilation, as a user's first run

    from discorm.config import DataArguments, ModelArguments
    from discorm.data.collator import pad_sequences
    from discorm.model.inference import score_pairs
    from discorm.model.reward_model import RewardModel
    from discorm.train.workflow import setup_data

    folder = Path(tempfile.mkdtemp())
    (folder / "pairs.jsonl").write_text("\n".join(HH_FILE.read_text().splitlines()[: opts.pairs]) + "\n")
    model = RewardModel.from_pretrained(ModelArguments().model_name_or_path).eval()
    data = setup_data(DataArguments(dataset=str(folder / "pairs.jsonl"), cutoff_len=opts.cutoff), model.tokenizer).train
    examples = list(data)
    assert model.check_packing()

    def padded():
        with torch.no_grad():
            for start in range(0, len(examples), opts.batch):
                batch = examples[start : start + opts.batch]
                seqs = [e["prompt_ids"] + e[k] for k in ("chosen_ids", "rejected_ids") for e in batch]
                model(*pad_sequences(seqs, model.tokenizer.pad_token_id))

    def packed(backend, batch=opts.batch):
        def run():
            model.attention_backend = backend
            return score_pairs(model, examples, batch)

        return run

    runs = {"padded (plain SDPA)": padded, "packed, split SDPA": packed("sdpa_split"),
            "packed, FlexAttention (compiled)": packed("flex")}
    first: dict[str, float] = {}  # the first pass of each (FlexAttention compiles there)
    start = time.perf_counter()
    reference = packed("sdpa_split")()
    first["packed, split SDPA"] = time.perf_counter() - start
    start = time.perf_counter()
    flex = packed("flex")()
    first["packed, FlexAttention (compiled)"] = time.perf_counter() - start
    difference = float((flex - reference).abs().max())
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(opts.rounds + 1):  # round 0 warms up
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_index:
                seconds[name].append(time.perf_counter() - start)
            else:
                first.setdefault(name, time.perf_counter() - start)
            print(f"round {round_index}: {name} {time.perf_counter() - start:.1f} s", flush=True)

    tokens = sum(len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    threads = torch.get_num_threads()
    print(f"fp32 matmul peak (2048x2048, {threads} threads): {matmul_peak(threads):.0f} GFLOP/s")
    print(f"{len(examples)} HH pairs, cutoff {opts.cutoff}, {opts.batch} pairs per batch, {tokens} packed tokens; "
          f"FlexAttention vs split SDPA scores differ by at most {difference:.1e}\n")
    print("| evaluation forward | pairs/s (median) | × split SDPA | first pass (s, incl. compilation) |")
    print("| --- | --- | --- | --- |")
    base = len(examples) / statistics.median(seconds["packed, split SDPA"])
    for name, values in seconds.items():
        rate = len(examples) / statistics.median(values)
        print(f"| {name} | {rate:.2f} | {rate / base:.2f} | {first[name]:.1f} |")
    if opts.sweep:
        sweep(opts, examples, tokens, packed)


def sweep(opts, examples: list[dict], tokens: int, packed) -> None:
    """Split SDPA vs (already compiled) FlexAttention pairs/s at each batch size, alternating, median of rounds."""
    rows = []
    for batch in [int(size) for size in opts.sweep.split(",")]:
        seconds: dict[str, list[float]] = {"sdpa_split": [], "flex": []}
        for _ in range(opts.rounds):
            for backend in seconds:
                start = time.perf_counter()
                packed(backend, batch)()
                seconds[backend].append(time.perf_counter() - start)
        split, flex = (len(examples) / statistics.median(seconds[name]) for name in ("sdpa_split", "flex"))
        rows.append(f"| {batch} | {tokens / -(-len(examples) // batch):.0f} | {split:.2f} | {flex:.2f} | "
                    f"{flex / split:.2f} |")
        print(f"sweep: batch {batch} done", flush=True)
    print(f"\nfp32 matmul peak now: {matmul_peak(torch.get_num_threads()):.0f} GFLOP/s\n")
    print("| pairs per row | mean packed row (tokens) | split SDPA pairs/s | FlexAttention pairs/s | flex × split |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
