"""Training throughput: DiscoRM plain (padded) vs DiscoRM optimised (prefix sharing + packing, split-SDPA or
FlexAttention) vs TRL's RewardTrainer.

Same model, same token sequences (tokenized once by DiscoRM, handed to TRL pre-tokenized), same cutoff, same
batch size, same seed and data order, gradient checkpointing off (`--gradient-checkpointing`: on for every
trainer). Every run is its own process (so peak memory is its own), and the modes alternate. Pairs/second are
measured over the steps after warm-up.

    python benchmarks/bench_throughput.py                      # CPU, fp32: the defaults of the docs' table
    python benchmarks/bench_throughput.py --pairs 24 --rounds 1 --modes optimised trl
    python benchmarks/bench_throughput.py --device cuda        # GPU, bf16, a random 1B Llama, synthetic pairs

On CUDA the default is bf16 (TRL: bf16=True, SDPA), `--model random-llama-1b` (a randomly initialised ~1.1B
Llama: nothing is downloaded) and `--synthetic` pairs (random token ids with HH-like lengths: prompt 200-400,
responses 40-250 tokens); it reports pairs/s, tokens/s, peak GPU memory and model FLOPs utilisation (MFU:
6 x non-embedding parameters x tokens processed / time, over the GPU's dense bf16 peak; `--peak-tflops`).

TRL is an optional dependency of this script only (`pip install trl`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"


GPU_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                   "A10": 125.0, "L4": 121.0}  # dense bf16 peaks from the vendors' data sheets


def random_llama(size: str) -> str:
    """A randomly initialised Llama saved once under the cache (no download): `random-llama-1b` ~1.1B, or
    `random-llama-tiny` for a quick run of this script."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from discorm.files import cache_root

    target = cache_root() / "models" / size
    if target.is_dir():
        return str(target)
    shapes = {"random-llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                      num_attention_heads=32, num_key_value_heads=4),
              "random-llama-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)}[size]
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **shapes)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{size}-", dir=target.parent))  # whole, or not there at all
    LlamaForCausalLM(config).save_pretrained(building)
    vocab = {f"t{i}": i for i in range(32000)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        pad_token="t0", eos_token="t1")
    tokenizer.save_pretrained(building)
    try:
        building.rename(target)
    except OSError:  # another process built it meanwhile (the dry run's steps run side by side): use theirs
        shutil.rmtree(building, ignore_errors=True)
    return str(target)


def synthetic_pairs(pairs: int, cutoff: int, seed: int = 0):
    """Random token ids with HH-like lengths (prompt 200-400, responses 40-250), cut to the cutoff like DiscoRM."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(pairs):
        prompt = [rng.randrange(2, 32000) for _ in range(rng.randint(200, 400))]
        chosen, rejected = ([rng.randrange(2, 32000) for _ in range(rng.randint(40, 250))] for _ in range(2))
        budget = cutoff - max(len(chosen), len(rejected))
        rows.append({"prompt_ids": prompt[len(prompt) - max(budget, 0) :], "chosen_ids": chosen,
                     "rejected_ids": rejected})
    return Dataset.from_list(rows)


def tokenized_pairs(model_dir: str, pairs: int, cutoff: int):
    from transformers import AutoTokenizer

    from discorm.config import DataArguments
    from discorm.train.workflow import setup_data

    lines = HH_FILE.read_text().splitlines()[:pairs]
    folder = Path(tempfile.mkdtemp())
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train = setup_data(DataArguments(dataset=str(folder / "pairs.jsonl"), cutoff_len=cutoff), tokenizer).train
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
    from transformers import AutoTokenizer

    from discorm.model.loading import resolve_model_path

    model_dir = random_llama(opts.model) if opts.model.startswith("random-llama") else resolve_model_path(opts.model)
    if opts.synthetic:
        tokenizer, train = AutoTokenizer.from_pretrained(model_dir), synthetic_pairs(opts.pairs, opts.cutoff)
    else:
        tokenizer, train = tokenized_pairs(model_dir, opts.pairs, opts.cutoff)
    steps = len(train) // opts.batch
    out = tempfile.mkdtemp()
    times: list = []
    cuda = opts.device == "cuda"
    bf16 = opts.precision == "bf16"
    common = dict(output_dir=out, per_device_train_batch_size=opts.batch, max_steps=steps, learning_rate=1e-5,
                  save_strategy="no", logging_steps=10_000, report_to="none", disable_tqdm=True, seed=0,
                  use_cpu=not cuda, dataloader_num_workers=0, bf16=bf16,
                  gradient_checkpointing=opts.gradient_checkpointing)
    if opts.mode == "trl":
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        data = Dataset.from_dict({
            "chosen_ids": [e["prompt_ids"] + e["chosen_ids"] for e in train],
            "rejected_ids": [e["prompt_ids"] + e["rejected_ids"] for e in train],
        })
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=1, dtype=torch.bfloat16 if bf16 else torch.float32, attn_implementation="sdpa")
        model.config.pad_token_id = tokenizer.pad_token_id
        config = RewardConfig(**common, max_length=opts.cutoff, pad_to_multiple_of=None)
        peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS") \
            if opts.finetuning == "lora" else None
        trainer = RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                peft_config=peft, callbacks=[StepTimer.make(times)])
        real_tokens = sum(len(x) for x in data["chosen_ids"]) + sum(len(x) for x in data["rejected_ids"])
    else:
        from discorm.config import FinetuningArguments, ModelArguments, TrainingArguments
        from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
        from discorm.train.trainer import PairwiseTrainer
        from discorm.train.workflow import setup_model

        ft = FinetuningArguments(finetuning_type=opts.finetuning, lora_rank=16, lora_alpha=32, lora_target="all")
        backend = "flex" if opts.mode == "flex" else "sdpa_split"
        model_args = ModelArguments(model_name_or_path=model_dir, dtype="bfloat16" if bf16 else "float32",
                                    attention_backend=backend)
        model = setup_model(model_args, ft, tokenizer)
        if opts.mode == "optimised-peft":  # LoRA layers with peft's own forward: what the fused addmm replaced
            from peft.tuners.lora.layer import Linear as LoraLinear

            from discorm.model.fused_lora import FusedLoraLinear

            for module in model.modules():
                if type(module) is FusedLoraLinear:
                    module.__class__ = LoraLinear
        if opts.mode in ("optimised", "optimised-peft", "flex"):
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
        "tokens_per_s": real_tokens * (timed / steps) / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
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
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--model", help="default: smollm2-135m-instruct on CPU, random-llama-1b on CUDA")
    parser.add_argument("--synthetic", action="store_true", help="random token pairs (default on CUDA)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: by name)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for every trainer (default: off)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the table shows the medians")
    parser.add_argument("--peak-size", type=int, default=2048, help="matrix size of the fp32 matmul peak printed "
                        "with the table (a CPU dry run uses a small one)")
    parser.add_argument("--finetuning", nargs="+", default=["full", "lora"])
    parser.add_argument("--modes", nargs="+", help="plain, optimised (split SDPA), flex, trl, optimised-peft (LoRA "
                        "layers with peft's unfused forward); default: plain "
                        "optimised trl on CPU, optimised flex trl on CUDA")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    cuda = opts.device == "cuda"
    opts.precision = opts.precision or ("bf16" if cuda else "fp32")
    opts.model = opts.model or ("random-llama-1b" if cuda else "smollm2-135m-instruct")
    opts.synthetic = opts.synthetic or cuda
    opts.modes = opts.modes or (["optimised", "flex", "trl"] if cuda else ["plain", "optimised", "trl"])
    if opts.worker:
        opts.finetuning = opts.finetuning[0]
        print("RESULT " + json.dumps(worker(opts)), flush=True)
        return

    data = "synthetic pairs" if opts.synthetic else f"the first {opts.pairs} pairs of {HH_FILE.name}"
    print(f"model {opts.model}, {opts.pairs} {data}, cutoff {opts.cutoff}, {opts.batch} pairs/step, "
          f"{opts.precision}, {opts.device}, {opts.threads} threads, {opts.rounds} alternating rounds, gradient "
          f"checkpointing {'on' if opts.gradient_checkpointing else 'off'}", flush=True)
    results: dict = {}
    for round_index in range(opts.rounds):
        for finetuning in opts.finetuning:
            for mode in opts.modes:
                cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--finetuning", finetuning,
                       "--model", opts.model, "--pairs", str(opts.pairs), "--cutoff", str(opts.cutoff),
                       "--batch", str(opts.batch), "--warmup", str(opts.warmup), "--threads", str(opts.threads),
                       "--device", opts.device, "--precision", opts.precision,
                       *(["--synthetic"] if opts.synthetic else []),
                       *(["--gradient-checkpointing"] if opts.gradient_checkpointing else [])]
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

    print_table(opts, results)


def print_table(opts, results: dict) -> None:
    import statistics

    import torch

    names = {"plain": "DiscoRM plain (padded)", "optimised": "DiscoRM optimised (split SDPA)",
             "flex": "DiscoRM optimised (FlexAttention)", "trl": "TRL RewardTrainer",
             "optimised-peft": "DiscoRM optimised, peft's LoRA forward"}
    if opts.device == "cuda":
        gpu = torch.cuda.get_device_name(0)
        peak = opts.peak_tflops or next((v for k, v in GPU_BF16_TFLOPS.items() if k in gpu), None)
        print(f"\nGPU: {gpu}, dense bf16 peak used for MFU: {peak} TFLOP/s\n")
        print("| fine-tuning | trainer | pairs/s | × TRL | tokens/s | peak GPU memory (MB) | MFU |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    else:
        print(f"\nfp32 matmul peak ({opts.peak_size}x{opts.peak_size}, {opts.threads} threads): "
              f"{matmul_peak(opts.threads, opts.peak_size):.0f} GFLOP/s\n")
        print("| fine-tuning | trainer | pairs/s | × TRL | peak RSS (MB) | GFLOP/s (full) |")
        print("| --- | --- | --- | --- | --- | --- |")
    for finetuning in opts.finetuning:
        trl = results.get((finetuning, "trl"))
        trl_rate = statistics.median(r["pairs_per_s"] for r in trl) if trl else None
        for mode in opts.modes:
            runs = results.get((finetuning, mode))
            if not runs:
                continue
            median = {key: statistics.median(r[key] for r in runs if r[key] is not None)
                      for key in ("pairs_per_s", "tokens_per_s", "peak_rss_mb", "gflops", "peak_gpu_mb")
                      if any(r[key] is not None for r in runs)}
            ratio = f"{median['pairs_per_s'] / trl_rate:.2f}" if trl_rate else "-"
            full = finetuning == "full"
            if opts.device == "cuda":
                mfu = f"{median['gflops'] / 1000 / peak:.1%}" if peak and full else "-"
                print(f"| {finetuning} | {names[mode]} | {median['pairs_per_s']:.2f} | {ratio} | "
                      f"{median['tokens_per_s']:.0f} | {median['peak_gpu_mb']:.0f} | {mfu} |")
            else:
                gflops = f"{median['gflops']:.0f}" if full else "-"
                print(f"| {finetuning} | {names[mode]} | {median['pairs_per_s']:.3f} | {ratio} | "
                      f"{median['peak_rss_mb']:.0f} | {gflops} |")


if __name__ == "__main__":
    main()
