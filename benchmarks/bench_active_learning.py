"""Active labelling on real pairs: held-out accuracy against the number of labels, per acquisition strategy.

The 1,500 HH-RLHF harmless pairs of the shared data file, labelled two ways:

- human: their own HH labels (chosen > rejected);
- gold: relabelled by a stronger gold reward: a linear reward on a richer view of the default model (the
  response-averaged hidden states of blocks --gold-layers, concatenated) fitted on all 1,500 human labels. The
  proxy never sees that view: it reads the last token of the final block, as DiscoRM's scalar head does. The
  gold's cross-validated accuracy on the human labels is printed next to the proxy's.

Features: one packed forward pass of the default model per pair (prompt once, both responses), cached on disk under
--out/cache. The inner loop refits the last layer only: a Bradley-Terry logistic regression on z = phi_a - phi_b
(standardised proxy features) with a Gaussian prior of precision --prior (its MAP by L-BFGS), whose Laplace
posterior feeds ``model/acquisition.py`` through a ``LaplaceHead`` exactly as ``discorm select`` does
(``diverse_bald``: the same greedy, on the pair's mean features). Each seed splits the pairs into a held-out set
(never in the pool) and a pool, starts from --start random labels and adds --step labels per round, chosen by each
strategy from the rest of the pool. The order of the two responses is drawn per seed (label [a > b]).

    python benchmarks/bench_active_learning.py                      # 50 -> 800 labels, 5 seeds (~10 min CPU)
    python benchmarks/bench_active_learning.py --rounds 4 --seeds 2 # short

Prints, per label set, strategy and number of labels, the mean held-out accuracy with a 95% interval over the
seeds (t interval), and the labels each strategy needs to reach random selection's final accuracy. Writes
--out/results.json, --out/active_learning.png and, with --check-train, the selection of the best strategy's last
round (seed 0) as pair files for ``discorm train`` (--out/check/), and the accuracy of that run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"
T975 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}  # by number of seeds


def read_pairs() -> list:
    from discorm.data.formats import FORMATS, convert
    from discorm.data.rows import SkipPair

    pairs, spec = [], FORMATS["implicit"].spec()
    for number, line in enumerate(HH_FILE.read_text().splitlines()):
        try:
            pairs.append(convert(json.loads(line), spec, f"line {number + 1}"))
        except SkipPair:
            continue
    return pairs


@torch.no_grad()
def features(pairs: list, opts) -> dict:
    """{"last": (N, 2, H) final-block last-token states (the proxy's view), "mean": (N, 2, len(gold_layers) * H)
    response-averaged states of the gold's blocks}, for each pair's [chosen, rejected]; cached on disk."""
    layers = [int(x) for x in opts.gold_layers.split(",")]
    cache = Path(opts.out) / "cache" / (f"features-{Path(opts.model).name}-{opts.blocks}-{len(pairs)}-{opts.cutoff}-"
                                        f"{opts.gold_layers}.pt")
    if cache.is_file():
        return torch.load(cache)
    from tqdm.auto import tqdm

    from discorm.data.collator import PackedPairCollator
    from discorm.data.tokenize import Encoder
    from discorm.model.reward_model import RewardModel

    model = RewardModel.from_pretrained(truncated_model(opts)).eval()
    encoder = Encoder.for_model(model, opts.cutoff)
    groups = []
    for pair in pairs:
        encoded = encoder.encode(pair.prompt, [pair.chosen, pair.rejected])
        groups.append({"prompt_ids": encoded.prompt_ids, "responses_ids": list(encoded.response_ids)})
    last, mean = [], []
    for start in tqdm(range(0, len(groups), opts.batch), desc="Features"):
        inputs = PackedPairCollator(prefix_sharing=True)(groups[start : start + opts.batch])
        out = model.backbone(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                             discorm_blocks=[tuple(b) for b in inputs["pair_blocks"].tolist()],
                             output_hidden_states=True)
        hidden = out.hidden_states  # embeddings, then one per block; the last one normed
        last.append(out.last_hidden_state[0, inputs["score_index"]].float().view(-1, 2, hidden[-1].shape[-1]))
        for block_start, p, c, r in inputs["pair_blocks"].tolist():
            spans = [(block_start + p, block_start + p + c), (block_start + p + c, block_start + p + c + r)]
            mean.append(torch.stack([torch.cat([hidden[k][0, a:b].float().mean(0) for k in layers])
                                     for a, b in spans]))
    found = {"last": torch.cat(last), "mean": torch.stack(mean)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(found, cache)
    return found


def truncated_model(opts) -> str:
    """The default model cut to its first --blocks blocks (a plain model directory, cached), so that the features
    of 1,500 pairs take minutes on a CPU; ``discorm train`` reads the same directory in the re-check."""
    path = Path(opts.out).resolve() / "cache" / f"{Path(opts.model).name}-{opts.blocks}-blocks"
    if not (path / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from discorm.model.loading import resolve_model_path

        source = resolve_model_path(opts.model)
        AutoModelForCausalLM.from_pretrained(source, num_hidden_layers=opts.blocks).save_pretrained(path)
        AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return str(path)


def standardise(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return (x - x.mean((0, 1))) / x.std((0, 1)).clamp_min(1e-6)


def fit(x: torch.Tensor, y: torch.Tensor, prior: float, start: torch.Tensor | None = None) -> torch.Tensor:
    """MAP weights (H,) of P(y = 1) = sigmoid(x . w) with the prior N(0, I / prior), from ``start`` (or 0)."""
    w = (torch.zeros(x.shape[1], dtype=torch.float64) if start is None else start.clone()).requires_grad_()
    optimizer = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w, y, reduction="sum") + 0.5 * prior * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def cv_accuracy(phi: torch.Tensor, prior: float, folds: int = 5) -> float:
    """k-fold accuracy of the linear reward on (N, 2, D) [chosen, rejected] features against the human labels
    (each pair in both orders, so the labels are balanced)."""
    order = torch.randperm(len(phi), generator=torch.Generator().manual_seed(0))
    correct = 0
    for k in range(folds):
        test = order[k::folds]
        train = torch.tensor(sorted(set(order.tolist()) - set(test.tolist())))
        z = phi[train, 0] - phi[train, 1]
        w = fit(torch.cat([z, -z]), torch.cat([torch.ones(len(z)), torch.zeros(len(z))]).double(), prior)
        correct += int(((phi[test, 0] - phi[test, 1]) @ w > 0).sum())
    return correct / len(phi)


def curve(phi: torch.Tensor, human: torch.Tensor, strategy: str, seed: int, opts) -> tuple[list[float], list[int]]:
    """Held-out accuracy after each round for one seed, and the pairs labelled at the end. ``human`` (N,) bool:
    whether the first response is the one the label prefers."""
    from discorm.model.acquisition import diverse_greedy, pair_scores, tie_break_order
    from discorm.model.heads import LaplaceHead, ScalarHead
    from discorm.model.heads.uncertainty import laplace_posterior

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(phi), generator=generator)
    flip = torch.rand(len(phi), generator=generator) < 0.5  # response a is the dispreferred one
    phi_a = torch.where(flip[:, None], phi[:, 1], phi[:, 0])
    phi_b = torch.where(flip[:, None], phi[:, 0], phi[:, 1])
    y = (human ^ flip).double()  # [a > b]
    heldout, pool = order[: opts.heldout], order[opts.heldout :]
    labelled = pool[torch.randperm(len(pool), generator=generator)[: opts.start]].tolist()
    z = phi_a - phi_b
    head = LaplaceHead(ScalarHead(phi.shape[-1]), phi.shape[-1]).double()
    accuracies, w = [], None
    for round_number in range(opts.rounds + 1):
        w = fit(z[labelled], y[labelled], opts.prior, w)
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
            if strategy == "diverse_bald":
                picks = candidates[diverse_greedy(scores, (a + b) / 2, opts.step, seed)]
            else:
                picks = candidates[tie_break_order(scores, seed)[: opts.step]]
        labelled += picks.tolist()
    return accuracies, labelled


def summarise(runs: list[list[float]]) -> list[tuple[float, float]]:
    t = T975.get(len(runs), 1.96)
    return [(statistics.mean(r[k] for r in runs),
             t * statistics.stdev(r[k] for r in runs) / len(runs) ** 0.5 if len(runs) > 1 else 0.0)
            for k in range(len(runs[0]))]


def labels_to_reach(labels: list[int], points: list[tuple[float, float]], target: float) -> float | None:
    """The number of labels at which the mean curve first reaches ``target`` (linear between rounds)."""
    for k, (count, (m, _)) in enumerate(zip(labels, points)):
        if m >= target:
            if k == 0:
                return float(count)
            before = points[k - 1][0]
            return labels[k - 1] + (count - labels[k - 1]) * (target - before) / (m - before)
    return None


def check_train(pairs: list, human: torch.Tensor, picked: list[int], heldout: list[int], out: Path, opts) -> float:
    """Train the default model's head (finetuning_type freeze, 0 blocks) with ``discorm train`` on the picked
    pairs under the given labels, and return its accuracy on the held-out pairs (the same labels)."""
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    def write(path: Path, rows: list[int]) -> str:
        lines = []
        for i in rows:
            first, second = (pairs[i].chosen, pairs[i].rejected) if human[i] else (pairs[i].rejected, pairs[i].chosen)
            lines.append(json.dumps({"prompt": pairs[i].prompt, "chosen": first, "rejected": second}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    run = out / "run"
    config = {"dataset": write(out / "train.jsonl", picked), "eval_dataset": write(out / "heldout.jsonl", heldout),
              "model_name_or_path": truncated_model(opts), "output_dir": str(run), "overwrite_output_dir": True,
              "finetuning_type": "freeze",
              "freeze_trainable_layers": 0, "cutoff_len": opts.cutoff, "per_device_train_batch_size": 16,
              "per_device_eval_batch_size": 16, "learning_rate": 1e-3, "head_learning_rate": opts.check_lr,
              "num_train_epochs": opts.check_epochs, "lr_scheduler_type": "cosine", "warmup_steps": 0,
              "logging_steps": 10, "save_strategy": "no", "report_to": "none", "seed": 0, "use_cpu": True,
              "disable_tqdm": True}
    metrics = run_rm(*load_args(config))
    return float(metrics["eval_accuracy"])


def plot(results: dict, labels: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), squeeze=False)
    for ax, (name, curves) in zip(axes[0], results.items()):
        for strategy, points in curves.items():
            m = [p[0] for p in points]
            h = [p[1] for p in points]
            ax.plot(labels, m, marker="o", markersize=3, label=strategy)
            ax.fill_between(labels, [a - b for a, b in zip(m, h)], [a + b for a, b in zip(m, h)], alpha=0.15)
        ax.set_title(f"HH harmless, {name} labels")
        ax.set_xlabel("labels")
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", type=int, default=300, help="pairs held out per seed (never in the pool)")
    parser.add_argument("--start", type=int, default=50, help="random labels before the first round")
    parser.add_argument("--step", type=int, default=50, help="labels added per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--strategies", default="random,entropy,bald,epistemic_std,diverse_bald")
    parser.add_argument("--labels", default="gold,human", help="label sets: gold, human")
    parser.add_argument("--prior", type=float, default=30.0, help="prior precision of the last layer (features are "
                        "standardised)")
    parser.add_argument("--blocks", type=int, default=4, help="the default model's first blocks used (of 30)")
    parser.add_argument("--gold-layers", default="0,2,4", help="hidden states (0: embeddings) the gold averages")
    parser.add_argument("--gold-prior", type=float, default=30000.0, help="the gold's prior precision (strong: a "
                        "smooth reward, not a memory of the human labels)")
    parser.add_argument("--dims", type=int, default=64, help="principal components of the proxy's features "
                        "(0: all 576)")
    parser.add_argument("--cutoff", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--check-train", action="store_true", help="re-check the best strategy's final point "
                        "with discorm train (seed 0)")
    parser.add_argument("--check-epochs", type=float, default=2.0)
    parser.add_argument("--check-lr", type=float, default=1e-2)
    parser.add_argument("--out", default="outputs/active_learning")
    opts = parser.parse_args()
    if not HH_FILE.is_file():
        sys.exit(f"{HH_FILE} is absent: this benchmark needs the shared HH pairs.")
    torch.set_num_threads(opts.threads)
    out = Path(opts.out)
    pairs = read_pairs()
    found = features(pairs, opts)
    phi, rich = standardise(found["last"]), standardise(found["mean"])
    if opts.dims:  # the proxy's features on their first principal components (no labels used), standardised
        flat = phi.reshape(-1, phi.shape[-1])
        basis = torch.linalg.svd(flat - flat.mean(0), full_matrices=False).Vh[: opts.dims]
        phi = standardise(phi @ basis.T)
    began = time.perf_counter()
    gold_w = fit(torch.cat([rich[:, 0] - rich[:, 1], rich[:, 1] - rich[:, 0]]),
                 torch.cat([torch.ones(len(rich)), torch.zeros(len(rich))]).double(), opts.gold_prior)
    gold_prefers_chosen = (rich[:, 0] - rich[:, 1]) @ gold_w > 0
    label_sets = {"gold": gold_prefers_chosen, "human": torch.ones(len(pairs), dtype=torch.bool)}
    summary = {"pairs": len(pairs), "gold_agrees_with_human": float(gold_prefers_chosen.double().mean()),
               "cv_accuracy_human": {"gold view": cv_accuracy(rich, opts.gold_prior),
                                     "proxy view": cv_accuracy(phi, opts.prior)}}
    labels = [opts.start + k * opts.step for k in range(opts.rounds + 1)]
    results, finals = {}, {}
    for name in opts.labels.split(","):
        results[name], finals[name] = {}, {}
        for strategy in opts.strategies.split(","):
            runs = [curve(phi, label_sets[name], strategy, seed, opts) for seed in range(opts.seeds)]
            results[name][strategy] = summarise([r for r, _ in runs])
            print(f"{name} {strategy}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
            finals[name][strategy] = (runs[0][1], runs[0][0][-1])  # seed 0: the labelled pairs, final accuracy
    summary["seconds_inner_loop"] = time.perf_counter() - began
    print(f"\n{opts.model}: {len(pairs)} HH harmless pairs (cutoff {opts.cutoff}); gold = linear reward on the "
          f"response-averaged states of blocks {opts.gold_layers} fitted on all human labels; it agrees with the "
          f"human label on {summary['gold_agrees_with_human']:.3f} of the pairs. 5-fold accuracy on the human "
          f"labels: gold view {summary['cv_accuracy_human']['gold view']:.3f}, proxy view "
          f"{summary['cv_accuracy_human']['proxy view']:.3f}.")
    print(f"{opts.heldout} held out per seed, {opts.seeds} seeds, last layer refitted each round (prior "
          f"{opts.prior}); held-out accuracy, mean ± 95% interval (t, over seeds)")
    summary["reach"] = {}
    for name, curves in results.items():
        print(f"\n{name} labels\n\n| labels | " + " | ".join(curves) + " |")
        print("|---:|" + "---:|" * len(curves))
        for k, count in enumerate(labels):
            print(f"| {count} | " + " | ".join(f"{m:.3f} ± {h:.3f}" for m, h in (r[k] for r in curves.values()))
                  + " |")
        target = curves["random"][-1][0]
        reach = {s: labels_to_reach(labels, p, target) for s, p in curves.items()}
        summary["reach"][name] = {"target": target, "labels": reach}
        print(f"\nlabels to reach random's final accuracy ({target:.3f} at {labels[-1]}):")
        for strategy, count in reach.items():
            print(f"- {strategy}: " + (f"{count:.0f} ({100 * count / labels[-1]:.0f}%)" if count is not None
                                       else f"not within {labels[-1]}"))
    if opts.check_train and "gold" in results:
        curves = results["gold"]
        best = max((s for s in curves if s != "random"), key=lambda s: curves[s][-1][0])
        heldout = torch.randperm(len(phi), generator=torch.Generator().manual_seed(0))[: opts.heldout].tolist()
        began = time.perf_counter()
        picked, cached = finals["gold"][best]
        accuracy = check_train(pairs, label_sets["gold"], picked, heldout, out / "check", opts)
        summary["check_train"] = {"strategy": best, "labels": labels[-1], "seed": 0, "discorm_train": accuracy,
                                  "cached_features": cached, "seconds": time.perf_counter() - began}
        print(f"\nre-check, gold labels, {best}, seed 0, {labels[-1]} labels: discorm train (head only, "
              f"{opts.check_epochs:g} epochs) {accuracy:.3f} vs cached-feature refit {cached:.3f} on the same "
              f"{opts.heldout} held-out pairs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"labels": labels, "curves": results, **summary}, indent=1))
    plot(results, labels, out / "active_learning.png")


if __name__ == "__main__":
    main()
