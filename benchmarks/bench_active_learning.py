"""Active labelling on real pairs: held-out accuracy against the number of labels, per acquisition strategy.

The HH-RLHF harmless pairs of the shared data file, their human labels. The default model's pooled features of
every response are computed once and cached (--cache); the inner loop refits the last layer only: a Bradley-Terry
logistic regression on z = phi_a - phi_b with a Gaussian prior of precision --prior (its MAP by L-BFGS), whose
Laplace posterior feeds ``model/acquisition.py`` through a ``LaplaceHead`` exactly as ``discorm select`` does.
Each seed splits the pairs into a held-out set (never in the pool) and a pool, starts from --start random labels
and adds --step labels per round, chosen by each strategy from the pool. The order of the two responses of a pair
is drawn per seed, so the label is [a > b] and not always 1.

    python benchmarks/bench_active_learning.py                      # 600 pairs, 5 seeds
    python benchmarks/bench_active_learning.py --pairs 200 --heldout 80 --rounds 4 --seeds 3   # short

Prints, per strategy and number of labels, the mean held-out accuracy with a 95% interval over the seeds (normal
approximation), and the labels each strategy needs to reach random selection's final accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"


def features(opts) -> torch.Tensor:
    """(N, 2, H) pooled features of each pair's [chosen, rejected], computed once per model/pairs/cutoff."""
    cache = Path(opts.cache) / f"features-{Path(opts.model).name}-{opts.pairs}-{opts.cutoff}.pt"
    if cache.is_file():
        return torch.load(cache)
    from discorm.data.formats import FORMATS, convert
    from discorm.data.rows import SkipPair
    from discorm.data.tokenize import Encoder
    from discorm.model.inference import score_pairs
    from discorm.model.reward_model import RewardModel

    model = RewardModel.from_pretrained(opts.model).eval()
    encoder = Encoder.for_model(model, opts.cutoff)
    examples, spec = [], FORMATS["implicit"].spec()
    for number, line in enumerate(HH_FILE.read_text().splitlines()):
        try:
            pair = convert(json.loads(line), spec, f"line {number + 1}")
        except SkipPair:
            continue
        encoded = encoder.encode(pair.prompt, [pair.chosen, pair.rejected])
        examples.append({"prompt_ids": encoded.prompt_ids, "chosen_ids": encoded.response_ids[0],
                         "rejected_ids": encoded.response_ids[1]})
        if len(examples) == opts.pairs:
            break
    _, pooled = score_pairs(model, examples, opts.batch, show_progress=True, features=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pooled, cache)
    return pooled


def fit(x: torch.Tensor, y: torch.Tensor, prior: float) -> torch.Tensor:
    """MAP weights (H,) of P(y = 1) = sigmoid(x . w) with the prior N(0, I / prior)."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w, y, reduction="sum") + 0.5 * prior * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def curve(phi: torch.Tensor, strategy: str, seed: int, opts) -> list[float]:
    """Held-out accuracy after each round for one seed."""
    from discorm.model.acquisition import pair_scores, tie_break_order
    from discorm.model.heads import LaplaceHead, ScalarHead
    from discorm.model.heads.uncertainty import laplace_posterior

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(phi), generator=generator)
    flip = torch.rand(len(phi), generator=generator) < 0.5  # response a is the rejected one
    phi_a = torch.where(flip[:, None], phi[:, 1], phi[:, 0])
    phi_b = torch.where(flip[:, None], phi[:, 0], phi[:, 1])
    y = (~flip).double()  # [a > b]
    heldout, pool = order[: opts.heldout], order[opts.heldout :]
    labelled = pool[torch.randperm(len(pool), generator=generator)[: opts.start]].tolist()
    z = phi_a - phi_b
    head = LaplaceHead(ScalarHead(phi.shape[-1]), phi.shape[-1]).double()
    accuracies = []
    for round_number in range(opts.rounds + 1):
        w = fit(z[labelled], y[labelled], opts.prior)
        accuracies.append(float(((z[heldout] @ w > 0).double() == y[heldout]).double().mean()))
        if round_number == opts.rounds:
            break
        candidates = torch.tensor(sorted(set(pool.tolist()) - set(labelled)))
        if strategy == "random":
            picks = candidates[torch.randperm(len(candidates), generator=generator)[: opts.step]]
        else:
            prob = torch.sigmoid(z[labelled] @ w)
            covariance, _ = laplace_posterior(phi_a[labelled], phi_b[labelled], prob, w, prior_precision=opts.prior)
            with torch.no_grad():
                head.member.value.weight.copy_(w[None])
                head.set_posterior(covariance.double(), opts.prior)
                a, b = phi_a[candidates], phi_b[candidates]
                scores = pair_scores(strategy, head, head(a), head(b), a, b)["score"]
            picks = candidates[tie_break_order(scores, seed)[: opts.step]]
        labelled += picks.tolist()
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--heldout", type=int, default=200, help="pairs held out per seed (never in the pool)")
    parser.add_argument("--start", type=int, default=20, help="random labels before the first round")
    parser.add_argument("--step", type=int, default=20, help="labels added per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--strategies", default="random,entropy,bald,epistemic_std")
    parser.add_argument("--prior", type=float, default=1.0, help="prior precision of the last layer (features are "
                        "standardised)")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "discorm" / "bench_active_learning"))
    opts = parser.parse_args()
    if not HH_FILE.is_file():
        sys.exit(f"{HH_FILE} is absent: this benchmark needs the shared HH pairs.")
    torch.set_num_threads(opts.threads)
    phi = features(opts).double()
    phi = (phi - phi.mean((0, 1))) / phi.std((0, 1)).clamp_min(1e-6)  # standardised per feature
    labels = [opts.start + k * opts.step for k in range(opts.rounds + 1)]
    results = {}
    for strategy in opts.strategies.split(","):
        runs = [curve(phi, strategy, seed, opts) for seed in range(opts.seeds)]
        results[strategy] = [(statistics.mean(r[k] for r in runs),
                              1.96 * statistics.stdev(r[k] for r in runs) / len(runs) ** 0.5 if len(runs) > 1 else 0.0)
                             for k in range(len(labels))]
    print(f"\n{opts.model} features (cutoff {opts.cutoff}), {len(phi)} HH harmless pairs with human labels, "
          f"{opts.heldout} held out per seed, {opts.seeds} seeds, last layer refitted (prior {opts.prior}); "
          "held-out accuracy, mean ± 95% interval\n")
    print("| labels | " + " | ".join(results) + " |")
    print("|---:|" + "---:|" * len(results))
    for k, count in enumerate(labels):
        print(f"| {count} | " + " | ".join(f"{m:.3f} ± {h:.3f}" for m, h in (r[k] for r in results.values())) + " |")
    target = results["random"][-1][0] if "random" in results else None
    if target is not None:
        print(f"\nlabels to reach random's final accuracy ({target:.3f}):")
        for strategy, points in results.items():
            reached = next((count for count, (m, _) in zip(labels, points) if m >= target), None)
            print(f"- {strategy}: {reached if reached is not None else f'not within {labels[-1]}'}")


if __name__ == "__main__":
    main()
