"""What choosing costs: ``RewardModel.select`` over a pool of N unlabelled pairs vs one plain scoring pass of the
same pool (encoding, then ``score_pairs`` and P(a > b), as ``discorm score`` does for pairs).

``select`` reads the pool, encodes it, scores it once (keeping the pooled features) and runs the acquisition math
(64-node quadrature per pair for Laplace BALD; the greedy diversity term for diverse_bald). The target is an
overhead under 10% of the plain pass. The default model with a Laplace head (a random posterior covariance: the
cost does not depend on its values); synthetic prompts and responses of about --words words each.

    python benchmarks/bench_select.py                              # N = 10,000 pairs (CPU: long)
    python benchmarks/bench_select.py --tiny 64 --words 8          # N = 10,000 on a small CPU (minutes)
    python benchmarks/bench_select.py --pairs 40 --budget 8        # a short run

--tiny H replaces the default model by a small random-weight Llama (hidden size H, --tiny-blocks blocks) that keeps
the default model's tokenizer and chat template (written once to --cache): encoding, packing, collation and the
acquisition math are the real ones, only the forward pass is cheaper. That makes the overhead's share larger than
with the default model (the fixed costs of choosing weigh more against a cheaper pass): a conservative ratio.

The acquisition math alone is also timed at --math-pairs pairs (default 10,000) on random features through the
same head: its seconds, divided by the plain pass's time per pair times --math-pairs, give the overhead at that
size without scoring that many pairs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_throughput import matmul_peak  # noqa: E402

WORDS = ("the cat sat on a mat while rain fell over old stone bridges and people asked about recipes, taxes, "
         "travel, music, health, code and history with answers long or short").replace(",", "").split()


def pool(pairs: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(n // 2, n * 3 // 2)))

    return [{"prompt": text(words), "responses": [text(words), text(words)], "id": i} for i in range(pairs)]


def tiny_model(opts) -> str:
    """A small random-weight Llama with the tokenizer of --model, saved once under --cache."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from discorm.model.loading import resolve_model_path

    path = Path(opts.cache) / f"tiny-llama-{opts.tiny}-{opts.tiny_blocks}"
    if not (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(opts.model))
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=opts.tiny, intermediate_size=2 * opts.tiny,
                             num_hidden_layers=opts.tiny_blocks, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000, help="N, the pool's size")
    parser.add_argument("--budget", type=int, default=1000, help="items to choose")
    parser.add_argument("--words", type=int, default=30, help="about this many words per prompt and response")
    parser.add_argument("--batch", type=int, default=16, help="items per forward pass")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tiny", type=int, default=0, help="hidden size of a small random model (0: --model)")
    parser.add_argument("--tiny-blocks", type=int, default=2)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "discorm" / "bench_select"))
    parser.add_argument("--math-pairs", type=int, default=10_000, help="pairs for the math-only timing")
    parser.add_argument("--math-hidden", type=int, default=576, help="feature size in the math-only timing "
                        "(576: the default model's)")
    parser.add_argument("--math-budget", type=int, default=1000, help="diverse_bald's budget in the math-only timing")
    opts = parser.parse_args()

    import torch

    from discorm.config import FinetuningArguments, ModelArguments
    from discorm.data.pool import read_pool_item
    from discorm.data.tokenize import Encoder
    from discorm.model.acquisition import diverse_greedy, pair_scores
    from discorm.model.heads import LaplaceHead, ScalarHead
    from discorm.model.inference import score_pairs
    from discorm.model.loading import resolve_model_path
    from discorm.train.workflow import setup_model

    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    path = tiny_model(opts) if opts.tiny else resolve_model_path(opts.model)
    model = setup_model(ModelArguments(model_name_or_path=path),
                        FinetuningArguments(finetuning_type="full", uncertainty="laplace")).eval()
    hidden = model.head.covariance.shape[0]
    root = torch.randn(hidden, hidden) / hidden
    model.head.set_posterior(root @ root.T, 1.0)
    rows = pool(opts.pairs, opts.words)
    encoder = Encoder.for_model(model)

    def plain():
        examples = []
        for i, row in enumerate(rows):
            item = read_pool_item(row, f"row {i}")
            encoded = encoder.encode(item.prompt, item.responses, item.where)
            examples.append({"prompt_ids": encoded.prompt_ids, "chosen_ids": encoded.response_ids[0],
                             "rejected_ids": encoded.response_ids[1]})
        params = score_pairs(model, examples, opts.batch)
        return model.head.prob_pair(params[:, 0], params[:, 1])

    runs = {"plain scoring pass": plain}
    for strategy in ("bald", "diverse_bald"):
        runs[f"select, {strategy}"] = lambda s=strategy: model.select(rows, opts.budget, s, batch_size=opts.batch)
    model.select(rows[: opts.batch], 2)  # warm-up
    times = {name: [] for name in runs}
    for _ in range(opts.rounds):
        for name, run in runs.items():
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["plain scoring pass"]
    head = model.head
    if opts.math_hidden != hidden:  # the acquisition math at the default model's size
        hidden = opts.math_hidden
        head = LaplaceHead(ScalarHead(hidden), hidden)
        root = torch.randn(hidden, hidden) / hidden
        head.set_posterior(root @ root.T, 1.0)
    phi_a, phi_b = torch.randn(opts.math_pairs, hidden), torch.randn(opts.math_pairs, hidden)
    begin = time.perf_counter()
    with torch.no_grad():
        scores = pair_scores("bald", head, head(phi_a), head(phi_b), phi_a, phi_b)["score"]
    bald_math = time.perf_counter() - begin
    diverse_greedy(scores, (phi_a + phi_b) / 2, min(opts.math_budget, opts.math_pairs))
    diverse_math = time.perf_counter() - begin
    per_pair = base / opts.pairs
    name = f"a random Llama (hidden {opts.tiny}, {opts.tiny_blocks} blocks, {opts.model}'s tokenizer)" if opts.tiny \
        else opts.model
    print(f"\n{name} with a Laplace head; {opts.pairs} pairs of ~{opts.words}-word prompts and responses, "
          f"budget {opts.budget}, {opts.batch} items per pass, {opts.threads} CPU threads; median of {opts.rounds}\n")
    print(f"fp32 matmul peak (2048x2048, {opts.threads} threads): {matmul_peak(opts.threads):.0f} GFLOP/s\n")
    print("| run | seconds (median) | every round (s) | overhead vs the plain pass |")
    print("|---|---:|---|---:|")
    for name, seconds in median.items():
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {name} | {seconds:.1f} | {rounds} | {100 * (seconds / base - 1):+.1f}% |")
    print(f"\nThe acquisition math alone at {opts.math_pairs} pairs, hidden size {hidden}: BALD {bald_math:.2f} s, "
          f"with diverse_bald's greedy (budget {min(opts.math_budget, opts.math_pairs)}) {diverse_math:.2f} s; "
          f"a plain pass over {opts.math_pairs} pairs at {per_pair:.4f} s per pair takes "
          f"~{per_pair * opts.math_pairs:.0f} s: "
          f"{100 * bald_math / (per_pair * opts.math_pairs):.2f}% and "
          f"{100 * diverse_math / (per_pair * opts.math_pairs):.2f}% of it.")


if __name__ == "__main__":
    main()
