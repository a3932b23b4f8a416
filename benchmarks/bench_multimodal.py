"""Training throughput of a vision-language reward model on image pairs: DiscoRM packed prefix-shared (the image
and question once per pair, the vision encoder once per image) vs DiscoRM packed without prefix sharing (no
padding, but every sequence with its own copy of the image) vs the 2B x L padded layout (every sequence its own
row with its image: DiscoRM's padded batches, and how TRL and LlamaFactory batch a pair).

The model is a randomly initialised Qwen2-VL-shaped model (3-D M-RoPE positions, a ViT over 14-pixel patches, 2x2
patch merging) whose vision tower is as deep and as wide as its language model, as in Qwen2-VL-2B; nothing is
downloaded. Each pair is one random image of ``--image-tokens`` tokens (after merging; 4x as many patches go
through the vision encoder), a ``--question``-token question and two ``--answer``-token answers. Each mode runs in
its own process (so its peak memory is its own) and the modes alternate; a step is forward, backward and an AdamW
update of the full model, timed after a warm-up step, on batches collated beforehand.

    python benchmarks/bench_multimodal.py                       # 1,024-token images; CPU: about seven minutes
    python benchmarks/bench_multimodal.py --image-tokens 256 --steps 10
    python benchmarks/bench_multimodal.py --device cuda --width 1024 --layers 8 --pairs-per-step 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_throughput import matmul_peak

MODES = {"packed": "DiscoRM packed, prefix-shared", "unshared": "DiscoRM packed, not shared",
         "padded": "2B x L padded (DiscoRM padded, TRL, LlamaFactory)"}
IMAGE_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]


def build_model(folder: Path, opts) -> None:
    """A random Qwen2-VL-shaped checkpoint with a word-level tokenizer and its image processor, saved in
    ``folder``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(4000)}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0", eos_token="t1")
    tokenizer.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    ids = tokenizer.convert_tokens_to_ids
    heads = max(2, opts.width // 64)
    torch.manual_seed(0)
    config = transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=opts.width, intermediate_size=4 * opts.width,
                         num_hidden_layers=opts.layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [opts.width // heads // 8, opts.width // heads // 16 * 3,
                                                            opts.width // heads // 16 * 3]}),
        vision_config=dict(depth=opts.layers, embed_dim=opts.width, hidden_size=opts.width, num_heads=heads,
                           mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids("<|image_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"))
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def image_processor(opts):
    """Qwen2-VL's PIL image processor, sized so that the benchmark image gives ``--image-tokens`` tokens."""
    from transformers import Qwen2VLImageProcessorPil

    pixels = opts.image_tokens * 28 * 28
    return Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)


class Vision:
    """The parts of ``data/vision.VisionInputs`` a batch needs, over a bare image processor (Qwen2-VL's full
    processor also wants torchvision for videos)."""

    def __init__(self, processor):
        self.processor = processor

    def pixel_inputs(self, rows):
        import torch

        rows = [r for r in rows if r]
        out = self.processor(images=rows, return_tensors="pt")
        return {k: v for k, v in out.items() if torch.is_tensor(v)}


def batches(opts, tokenizer, vision, mode: str) -> list[dict]:
    import random

    import numpy as np
    from PIL import Image

    from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding

    rng = random.Random(0)
    side = int((opts.image_tokens * 28 * 28) ** 0.5)
    ids = tokenizer.convert_tokens_to_ids
    image_tokens = [ids("<|vision_start|>")] + [ids("<|image_pad|>")] * opts.image_tokens + [ids("<|vision_end|>")]
    words = lambda n: [rng.randrange(2, 4000) for _ in range(n)]  # noqa: E731
    collate = {"packed": PackedPairCollator(True, vision=vision), "unshared": PackedPairCollator(False, vision=vision),
               "padded": PairwiseDataCollatorWithPadding(tokenizer.pad_token_id, vision=vision)}[mode]
    out = []
    for step in range(opts.warmup + opts.steps):
        features = []
        for pair in range(opts.pairs_per_step):
            pixels = np.random.default_rng(step * 100 + pair).integers(0, 256, (side, side, 3), dtype=np.uint8)
            features.append({"prompt_ids": words(5) + image_tokens + words(opts.question),
                             "chosen_ids": words(opts.answer), "rejected_ids": words(opts.answer),
                             "images": [Image.fromarray(pixels)]})
        out.append(collate(features))
    return out


def worker(opts) -> dict:
    import torch
    from transformers import AutoTokenizer

    from discorm.data.collator import model_inputs
    from discorm.model.heads import build_head
    from discorm.model.loading import load_backbone
    from discorm.model.multimodal import hidden_size
    from discorm.model.reward_model import RewardModel
    from discorm.model.rm_config import RewardModelConfig

    torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    tokenizer = AutoTokenizer.from_pretrained(opts.folder)
    data = batches(opts, tokenizer, Vision(image_processor(opts)), opts.mode)
    torch.manual_seed(0)
    backbone = load_backbone(opts.folder)
    head = build_head("scalar", hidden_size(backbone.config))
    model = RewardModel(backbone, head, RewardModelConfig(head="scalar", head_options=head.saved_options()),
                        tokenizer).to(device).train()
    if opts.mode != "padded":
        assert model.check_packing(), model.packing_obstacle
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for step, batch in enumerate(data):
        inputs = model_inputs(batch, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = model(**inputs).scores
        half = len(scores) // 2
        loss = -torch.nn.functional.logsigmoid(scores[:half] - scores[half:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= opts.warmup:
            times.append(time.perf_counter() - start)
            tokens += batch["input_ids"].numel()
    patches = int(batch["image_grid_thw"].prod(-1).sum())
    return {"pairs_per_s": opts.pairs_per_step * len(times) / sum(times),
            "tokens_per_step": tokens // len(times), "patches_per_step": patches,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--image-tokens", type=int, default=1024, help="tokens per image, after 2x2 merging")
    parser.add_argument("--question", type=int, default=50)
    parser.add_argument("--answer", type=int, default=100)
    parser.add_argument("--width", type=int, default=128, help="hidden size of the language and vision models")
    parser.add_argument("--layers", type=int, default=4, help="layers of the language and vision models")
    parser.add_argument("--pairs-per-step", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the table shows the medians")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        print("RESULT " + json.dumps(worker(opts)), flush=True)
        return
    print(f"Qwen2-VL-shaped random model (width {opts.width}, {opts.layers} language + {opts.layers} vision layers), "
          f"{opts.image_tokens}-token image, {opts.question}-token question, two {opts.answer}-token answers, "
          f"{opts.pairs_per_step} pairs/step, {opts.steps} timed steps, {opts.device}, {opts.threads} threads, "
          f"{opts.rounds} alternating rounds", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        build_model(Path(folder), opts)
        for round_index in range(opts.rounds):
            for mode in opts.modes:
                args = [a for a in sys.argv[1:] if a != "--modes" and a not in MODES]
                cmd = [sys.executable, __file__, *args, "--worker", "--mode", mode, "--folder", folder]
                env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "TOKENIZERS_PARALLELISM": "false"}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(f"{mode} failed:\n{done.stderr[-3000:]}", flush=True)
                    continue
                result = json.loads(line[7:])
                results.setdefault(mode, []).append(result)
                print(f"round {round_index + 1}: {mode:8s} {result['pairs_per_s']:.3f} pairs/s, peak RSS "
                      f"{result['peak_rss_mb']:.0f} MB", flush=True)
    print_table(opts, results)


def print_table(opts, results: dict) -> None:
    if opts.device == "cpu":
        print(f"\nfp32 matmul peak (2048x2048, {opts.threads} threads): {matmul_peak(opts.threads):.0f} GFLOP/s\n")
    memory = "peak GPU memory (MB)" if opts.device == "cuda" else "peak RSS (MB)"
    print(f"| layout | pairs/s | x 2B x L | tokens/step | vision patches/step | {memory} |")
    print("| --- | --- | --- | --- | --- | --- |")
    padded = results.get("padded")
    base = statistics.median(r["pairs_per_s"] for r in padded) if padded else None
    for mode in opts.modes:
        runs = results.get(mode)
        if not runs:
            continue
        rate = statistics.median(r["pairs_per_s"] for r in runs)
        peak = statistics.median(r["peak_gpu_mb" if opts.device == "cuda" else "peak_rss_mb"] for r in runs)
        ratio = f"{rate / base:.2f}" if base else "-"
        print(f"| {MODES[mode]} | {rate:.3f} | {ratio} | {runs[0]['tokens_per_step']} | "
              f"{runs[0]['patches_per_step']} | {peak:.0f} |")


if __name__ == "__main__":
    main()
