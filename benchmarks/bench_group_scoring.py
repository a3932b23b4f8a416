"""Group scoring for RL batches: items/s for G completions of each prompt (GRPO-style), scored by DiscoRM as
groups (one block per prompt, the prompt computed once: ``model.inference.score_sequences``), item by item in
packed batches (every sequence its own block), and by the exported sequence-classification model through
``transformers`` with padding (what TRL's GRPO does with ``reward_funcs=<path>``).

Same model (smollm2-135m-instruct with a value head), same token sequences: prompts of about --prompt-tokens
tokens and completions of about --completion-tokens (random token ids), --groups prompts x G completions, the
three scorers alternating over the rounds, fp32, no gradient. The scores of the three are checked equal (1e-4).

    python benchmarks/bench_group_scoring.py                   # CPU: the table in docs/benchmarks.md
    python benchmarks/bench_group_scoring.py --device cuda --groups 16
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_throughput import matmul_peak  # noqa: E402


def sequences(groups: int, size: int, prompt: int, completion: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(groups):
        shared = [rng.randrange(100, vocab) for _ in range(rng.randint(prompt * 3 // 4, prompt * 5 // 4))]
        out += [shared + [rng.randrange(100, vocab) for _ in range(rng.randint(completion // 2, completion * 3 // 2))]
                for _ in range(size)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--groups", type=int, default=4, help="prompts per RL batch")
    parser.add_argument("--group-size", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--completion-tokens", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification

    from discorm.data.collator import PackedPairCollator, model_inputs
    from discorm.model.inference import evaluating, score_sequences
    from discorm.model.reward_model import RewardModel
    from discorm.serve.export import export_sequence_classification

    torch.set_num_threads(opts.threads)
    peak = matmul_peak(opts.threads)
    device = torch.device(opts.device)
    work = Path(tempfile.mkdtemp())
    model = RewardModel.from_pretrained("smollm2-135m-instruct", finetuning_type="full")
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head.value.weight, std=0.05)
    model.save_pretrained(work / "run")
    export_sequence_classification(str(work / "run"), str(work / "export"))
    model = RewardModel.from_pretrained(str(work / "run")).to(device).eval()
    exported = AutoModelForSequenceClassification.from_pretrained(work / "export", dtype=torch.float32).to(device)
    exported.eval()
    pad = exported.config.pad_token_id
    data = sequences(opts.groups, opts.group_size, opts.prompt_tokens, opts.completion_tokens,
                     model.config.vocab_size)

    @torch.no_grad()
    def item_by_item():
        out = []
        with evaluating(model):
            for start in range(0, len(data), opts.batch):
                batch = [{"prompt_ids": [], "response_ids": s, "scores": [0.0]}
                         for s in data[start : start + opts.batch]]
                inputs = PackedPairCollator(prefix_sharing=False)(batch)
                out.append(model(**model_inputs(inputs, device)).scores.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def transformers_padded():
        out = []
        for start in range(0, len(data), opts.batch):
            batch = data[start : start + opts.batch]
            length = max(map(len, batch))
            ids = torch.tensor([s + [pad] * (length - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in batch], device=device)
            out.append(exported(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu())
        return torch.cat(out)

    def grouped():
        return model.reward(score_sequences(model, data, opts.batch).to(device)).cpu()

    scorers = {"DiscoRM, groups (prompt once)": grouped, "DiscoRM, item by item (packed)": item_by_item,
               "transformers, exported, padded": transformers_padded}
    times = {name: [] for name in scorers}
    results = {}
    for _ in range(opts.rounds + 1):  # the first round warms up
        for name, scorer in scorers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            results[name] = scorer()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - begin)
    reference = results["DiscoRM, item by item (packed)"]
    for name, scores in results.items():
        difference = float((scores - reference).abs().max())
        assert difference < 1e-4 * max(1.0, float(reference.abs().max())), (name, difference)
    print(f"\nmatmul peak {peak:.0f} GFLOP/s ({opts.threads} threads); {opts.device}; {opts.groups} prompts x "
          f"G = {opts.group_size}, prompts ~{opts.prompt_tokens} and completions ~{opts.completion_tokens} tokens, "
          f"{opts.batch} sequences per pass; median of {opts.rounds} rounds after a warm-up; scores equal to 1e-4\n")
    print("| scorer | items/s | vs groups |")
    print("|---|---:|---:|")
    median = {name: statistics.median(t[1:]) for name, t in times.items()}
    first = next(iter(median))
    for name, seconds in median.items():
        print(f"| {name} | {len(data) / seconds:.1f} | {seconds / median[first]:.2f}x the time |")


if __name__ == "__main__":
    main()
