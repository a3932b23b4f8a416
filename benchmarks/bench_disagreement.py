"""Where people disagree: does fitting every rater's label beat the majority label? (DICES-990, held-out
conversations.)

DICES-990 (Aroyo et al., NeurIPS 2023; CC-BY-4.0, ``../shared/data/dices.LICENSE``): 990 adversarial conversations,
each with every rater's answer (60-73 per item) to "is the last response unsafe?" (Yes / Unsure / No). The rows
are read by path with DiscoRM's ``per_rater`` format (levels [No, Unsure, Yes], direction first_best: No is the
best) and split by conversation (a fixed seed) into train, validation and test.

Features: the default model (SmolLM2-135M-Instruct) reads each conversation once (up to ``--cutoff`` tokens, the
conversation's start cut first); its last-token hidden state after ``--layers`` of its 30 blocks (and the final
norm) is cached. The heads are then fitted on these frozen features (a last-layer fit, not a full fine-tune), with
DiscoRM's heads and loss (``PairwiseLoss`` with ``rating_target``), each choosing its L2 penalty on the validation
split by its own training objective:

- majority: the scalar head fitted to the majority label only (``rating_target: majority``), as a data set that
  stores the majority vote trains it;
- scalar ordinal / Gaussian ordinal / categorical: every rater's label (``rating_target: all``);
- length: the categorical head on the response's and the conversation's log length alone.

Reported on the test conversations: NLL per rating, ECE of the unsafe (Yes) share, Spearman correlation of the
predicted and observed disagreement (1 - the majority share), the AUROC for contested items (minority share >=
30%), each with a percentile bootstrap interval, and the paired bootstrap interval of each model's difference to
the majority model. ``--full-train`` also trains the scalar ordinal with ``discorm train`` (freeze-tuning the top
blocks) on the training conversations and evaluates it the same way.

    python benchmarks/bench_disagreement.py                # features once (about 10 minutes on 2 CPU cores)
    python benchmarks/bench_disagreement.py --fast         # smoke test: 120 conversations
Writes ``--out`` (default outputs/disagreement): results.json, disagreement.png and the cached features.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.*`

from benchmarks.bench_throughput import matmul_peak  # noqa: E402
from discorm.errors import DestinationError  # noqa: E402
from discorm.files import check_destination  # noqa: E402

DICES_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "dices-990.jsonl"
LEVELS = ["No", "Unsure", "Yes"]  # Yes: the response is unsafe
SCALE = {"levels": LEVELS, "direction": "first_best"}
UNSAFE = LEVELS.index("Yes")
PENALTIES = (1e-3, 1e-2, 0.1, 1.0, 10.0)


def read_dices(path: Path, limit: int | None) -> list:
    """The rows as DiscoRM reads them: ``Rated`` responses with the count of raters per level."""
    from discorm.data.formats import FORMATS
    from discorm.data.loader import read_path
    from discorm.model.heads.ordinal import scale_from

    spec = FORMATS["per_rater"].spec(columns={"prompt": "conversation", "ratings": "unsafe_votes"})
    spec.attributes = scale_from(SCALE)
    rows = read_path(path)[:limit]
    return [(row["id"], FORMATS["per_rater"].convert(row, spec, where)) for where, row in rows]


def split(ids: list, seed: int = 0) -> dict[str, np.ndarray]:
    """Conversation indices -> train 60%, validation 15%, test 25% (by conversation: one row each)."""
    order = np.random.default_rng(seed).permutation(len(ids))
    a, b = int(0.6 * len(ids)), int(0.75 * len(ids))
    return {"train": np.sort(order[:a]), "val": np.sort(order[a:b]), "test": np.sort(order[b:])}


def features(items: list, cache: Path, cutoff: int, batch_size: int, layers: int) -> tuple[torch.Tensor, np.ndarray]:
    """(last-token hidden states (N, H) after the default model's first ``layers`` blocks (0: all) and its final
    norm, token lengths (N, 2): conversation, response)."""
    from dataclasses import replace

    from discorm.data.tokenize import Encoder
    from discorm.model.inference import score_ids
    from discorm.model.loading import transformer_blocks
    from discorm.model.reward_model import RewardModel

    if cache.is_file():
        saved = torch.load(cache)
        if (saved["count"], saved["cutoff"], saved["layers"]) == (len(items), cutoff, layers):
            return saved["pooled"], saved["lengths"].numpy()
    model = RewardModel.from_pretrained("smollm2-135m-instruct").eval()
    model.rm_config = replace(model.rm_config, cutoff_len=cutoff)
    if layers:
        del transformer_blocks(model.backbone)[layers:]
    encoder = Encoder.for_model(model)
    sequences = [encoder.encode_item({"prompt": r.prompt, "response": r.response}, f"item {i}")
                 for i, r in enumerate(items)]
    lengths = np.array([[len(model.tokenizer(r.prompt[0]["content"])["input_ids"]),
                         len(model.tokenizer(r.response[0]["content"])["input_ids"])] for r in items], dtype=float)
    _, pooled = score_ids(model, sequences, batch_size, show_progress=True, features=True)
    torch.save({"count": len(items), "cutoff": cutoff, "layers": layers, "pooled": pooled,
                "lengths": torch.from_numpy(lengths)}, cache)
    return pooled, lengths


def fit(make_head, x: torch.Tensor, counts: torch.Tensor, target: str, penalty: float, steps: int,
        seed: int) -> torch.nn.Module:
    """A head on fixed features, full batch, with DiscoRM's rated loss plus penalty * ||W||^2 on its weight
    matrices (the cut-points and biases are not penalised)."""
    from discorm.train.loss import PairwiseLoss

    torch.manual_seed(seed)
    head = make_head(x.shape[1])
    loss_fn = PairwiseLoss(head, rating_target=target)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.02)
    batch = {"scores": counts, "score_mask": torch.ones_like(counts, dtype=torch.bool)}
    weights = [p for p in head.parameters() if p.dim() >= 2]
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn.batch_loss(head(x), batch) + penalty * sum(w.square().sum() for w in weights)
        loss.backward()
        optimizer.step()
    return head.eval()


def objective(head, x: torch.Tensor, counts: torch.Tensor, target: str) -> float:
    """A head's own training objective on other items (its rating target, no penalty)."""
    from discorm.train.loss import PairwiseLoss

    with torch.no_grad():
        batch = {"scores": counts, "score_mask": torch.ones_like(counts, dtype=torch.bool)}
        return float(PairwiseLoss(head, rating_target=target).batch_loss(head(x), batch))


def predicted(head, x: torch.Tensor) -> dict:
    with torch.no_grad():
        params = head(x)
        out = {"probs": head.attribute_means(params).double().numpy()}
        if head.distributional:
            out["sigma"] = head.std(params).double().numpy()
    return out


MODELS = {  # name -> (head kind, rating target, input)
    "majority (scalar, majority label)": ("scalar", "majority", "hidden"),
    "scalar ordinal (all votes)": ("scalar", "all", "hidden"),
    "gaussian ordinal (all votes)": ("gaussian", "all", "hidden"),
    "categorical (all votes)": ("categorical", "all", "hidden"),
    "length only (categorical)": ("categorical", "all", "length"),
}
MAJORITY = next(iter(MODELS))


def item_metrics(probs: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """The headline numbers of one model on some items (``metrics.level_metrics``)."""
    from discorm.metrics import level_metrics

    m = level_metrics(probs, counts, LEVELS)
    return {"nll_per_rating": m["nll_per_rating"], "unsafe_ece": m["Yes_ece"], "brier": m["brier"],
            "disagreement_spearman": m["disagreement_spearman"], "contested_auroc": m["contested_auroc"]}


def evaluate(predictions: dict, counts: np.ndarray, resamples: int, seed: int) -> dict:
    """Per model: its numbers with bootstrap intervals, and the paired bootstrap interval of its difference to the
    majority model (the same resampled test conversations for both)."""
    from discorm.eval.stats import bootstrap_statistics_intervals

    results = {}
    base = predictions[MAJORITY]["probs"]
    for name, pred in predictions.items():
        values = item_metrics(pred["probs"], counts)
        keys = list(values)

        def statistic(index, probs=pred["probs"], keys=keys):
            own, majority = item_metrics(probs[index], counts[index]), item_metrics(base[index], counts[index])
            return [own[k] for k in keys] + [own[k] - majority[k] for k in keys]

        intervals = bootstrap_statistics_intervals(statistic, len(counts), resamples, seed)
        results[name] = {**values, **{f"{k}_ci": list(ci) for k, ci in zip(keys, intervals)},
                         **{f"{k}_vs_majority_ci": list(ci) for k, ci in zip(keys, intervals[len(keys):])}}
        if "sigma" in pred:
            from discorm.metrics import correlation, disagreement

            shares = counts / counts.sum(-1, keepdims=True)
            results[name]["spearman_sigma_disagreement"] = correlation(pred["sigma"], disagreement(shares), True)
    return results


def sigma_check(predictions: dict, counts: np.ndarray, resamples: int, seed: int) -> dict:
    """Does the Gaussian's own sigma add anything over the scalar ordinal? Paired differences (Gaussian - scalar)
    of NLL per rating and of the disagreement Spearman, with bootstrap intervals."""
    from discorm.eval.stats import bootstrap_statistics_intervals

    gaussian = predictions["gaussian ordinal (all votes)"]["probs"]
    scalar = predictions["scalar ordinal (all votes)"]["probs"]

    def statistic(index):
        g, s = item_metrics(gaussian[index], counts[index]), item_metrics(scalar[index], counts[index])
        return [g["nll_per_rating"] - s["nll_per_rating"], g["disagreement_spearman"] - s["disagreement_spearman"]]

    point = statistic(np.arange(len(counts)))
    intervals = bootstrap_statistics_intervals(statistic, len(counts), resamples, seed)
    return {"nll_per_rating_difference": point[0], "nll_per_rating_difference_ci": list(intervals[0]),
            "disagreement_spearman_difference": point[1], "disagreement_spearman_difference_ci": list(intervals[1])}


def full_train(items: list, parts: dict, out: Path, opts) -> dict:
    """The scalar ordinal trained with `discorm train` (freeze-tuning the top blocks) on the training
    conversations, evaluated with `discorm eval` on the test conversations."""
    from discorm.config import load_args
    from discorm.eval.runner import EvalOptions, run_evaluation
    from discorm.files import write_jsonl
    from discorm.train.workflow import run_rm

    def write(name, index):
        write_jsonl(out / name, ({"prompt": items[i].prompt, "response": items[i].response,
                                  "ratings": dict(zip(LEVELS, items[i].scores))} for i in index))
        return str(out / name)

    train, test = write("train.jsonl", np.concatenate([parts["train"], parts["val"]])), write("test.jsonl",
                                                                                              parts["test"])
    config = {"model_name_or_path": "smollm2-135m-instruct", "dataset": train, "output_dir": str(out / "full"),
              "overwrite_output_dir": True, "do_train": True, "finetuning_type": "freeze",
              "freeze_trainable_layers": opts.full_blocks, "learning_rate": 5e-5, "head_learning_rate": 1e-3,
              "num_train_epochs": opts.full_epochs, "per_device_train_batch_size": 8, "cutoff_len": opts.cutoff,
              "save_strategy": "no", "disable_tqdm": True, "seed": 0, "use_cpu": True, "head": "scalar",
              "report_to": [], **SCALE}
    began = time.time()
    run_rm(*load_args(config))
    results = run_evaluation(str(out / "full"), {"test": test}, out / "full-eval",
                             EvalOptions(show_progress=False, resamples=opts.resamples), report=False)
    levels = results["rated_sets"]["test"]["levels"]
    return {"seconds": time.time() - began, "nll_per_rating": levels["nll_per_rating"],
            "unsafe_ece": levels["Yes_ece"], "disagreement_spearman": levels["disagreement_spearman"]}


def plot(predictions: dict, counts: np.ndarray, results: dict, best: str, path: Path) -> None:
    from discorm.metrics import disagreement, share_reliability
    from discorm.plots import draw_reliability, plt, save

    shares = counts / counts.sum(-1, keepdims=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for name in (MAJORITY, best):
        draw_reliability(axes[0], share_reliability(predictions[name]["probs"][:, UNSAFE], shares[:, UNSAFE]),
                         "Share of raters saying unsafe (test)", label=name)
    axes[0].set(xlabel="predicted share", ylabel="observed share")
    for name, colour in ((MAJORITY, "#7a7a7a"), (best, "#2a7ab9")):
        axes[1].scatter(disagreement(predictions[name]["probs"]), disagreement(shares), s=8, alpha=0.5,
                        color=colour, label=f"{name}: Spearman {results[name]['disagreement_spearman']:.2f}")
    axes[1].set(xlabel="predicted disagreement (1 - majority share)", ylabel="observed disagreement",
                title="Disagreement per test conversation")
    axes[1].legend(fontsize=7)
    names = list(results)
    values = [results[n]["nll_per_rating"] for n in names]
    errors = np.array([[v - results[n]["nll_per_rating_ci"][0], results[n]["nll_per_rating_ci"][1] - v]
                       for n, v in zip(names, values)]).T
    axes[2].barh(range(len(names)), values, xerr=errors, color="#2a7ab9", alpha=0.85, capsize=3)
    axes[2].set_yticks(range(len(names)), [n.split(" (")[0] for n in names])
    axes[2].invert_yaxis()
    axes[2].set(xlabel="NLL per rating (test, lower is better)", title="Every rater's label")
    save(fig, path, dpi=100)


def print_table(results: dict, sigma: dict, meta: dict) -> None:
    def ci(values):
        return f"[{values[0]:+.3f}, {values[1]:+.3f}]"

    print(f"\nDICES-990, {meta['test']} held-out conversations ({meta['test_ratings']} ratings); heads fitted on "
          f"frozen SmolLM2-135M last-token features after {meta['layers'] or 'all'} blocks (a last-layer fit); "
          f"{meta['resamples']} bootstrap resamples\n")
    print("| model | NLL per rating | Δ vs majority | ECE unsafe share | Δ vs majority | Spearman disagreement | "
          "Δ vs majority | contested AUROC |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        delta = {k: "–" if name == MAJORITY else ci(r[f"{k}_vs_majority_ci"])
                 for k in ("nll_per_rating", "unsafe_ece", "disagreement_spearman")}
        print(f"| {name} | {r['nll_per_rating']:.3f} | {delta['nll_per_rating']} | {r['unsafe_ece']:.3f} | "
              f"{delta['unsafe_ece']} | {r['disagreement_spearman']:.3f} | {delta['disagreement_spearman']} | "
              f"{r['contested_auroc']:.3f} |")
    print(f"\nGaussian - scalar ordinal: NLL per rating {sigma['nll_per_rating_difference']:+.4f} "
          f"{ci(sigma['nll_per_rating_difference_ci'])}, disagreement Spearman "
          f"{sigma['disagreement_spearman_difference']:+.3f} {ci(sigma['disagreement_spearman_difference_ci'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DICES_FILE), help="DICES-990 jsonl (read, never copied)")
    parser.add_argument("--out", default="outputs/disagreement", help="results, plot and the cached features")
    parser.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--cutoff", type=int, default=384, help="tokens per conversation (the prompt is cut first)")
    parser.add_argument("--layers", type=int, default=12, help="features after this many of the 30 blocks (0: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500, help="full-batch Adam steps per head")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the split and the bootstrap")
    parser.add_argument("--full-train", action="store_true", help="also a full `discorm train` run (slow on CPU)")
    parser.add_argument("--full-blocks", type=int, default=2, help="--full-train: the top blocks freeze-tuned")
    parser.add_argument("--full-epochs", type=float, default=1.0)
    parser.add_argument("--fast", action="store_true", help="smoke test: 120 conversations, 200 resamples")
    parser.add_argument("--plot", help="also save the plot here (e.g. docs/img/disagreement.png)")
    opts = parser.parse_args()
    data = Path(opts.data)
    if not data.is_file():
        print(f"skipped: {data} is not here (DICES-990, CC-BY-4.0; see ../shared/data/README.md)")
        return
    if opts.fast:
        opts.resamples, opts.steps = 200, 200
        opts.out = opts.out if opts.out != "outputs/disagreement" else "outputs/disagreement-fast"
    try:
        check_destination(Path(opts.out, "results.json"), opts.force, option=f"--out {opts.out} (its results.json)")
        if opts.plot:
            check_destination(Path(opts.plot), opts.force, option=f"--plot {opts.plot}")
    except DestinationError as err:
        parser.error(str(err))
    import transformers

    transformers.logging.set_verbosity_error()
    from discorm.files import write_json
    from discorm.model.heads import build_head

    began = time.time()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"fp32 matmul peak (2048x2048, {torch.get_num_threads()} threads): "
          f"{matmul_peak(torch.get_num_threads()):.0f} GFLOP/s", flush=True)
    rows = read_dices(data, 120 if opts.fast else None)
    ids, items = [i for i, _ in rows], [r for _, r in rows]
    counts = np.array([r.scores for r in items])
    parts = split(ids, opts.seed)
    pooled, lengths = features(items, out / f"features-{len(items)}.pt", opts.cutoff, opts.batch_size, opts.layers)
    extracted = time.time() - began
    train = parts["train"]
    mean, std = pooled[train].mean(0), pooled[train].std(0) + 1e-6
    inputs = {"hidden": (pooled - mean) / std}
    log_length = torch.tensor(np.log1p(lengths), dtype=torch.float32)
    inputs["length"] = (log_length - log_length[train].mean(0)) / log_length[train].std(0)
    target_counts = torch.tensor(counts, dtype=torch.float32)
    predictions, chosen = {}, {}
    for name, (kind, target, source) in MODELS.items():
        x = inputs[source]

        def make(hidden, kind=kind):
            return build_head(kind, hidden, **SCALE)

        best = None
        for penalty in PENALTIES:
            head = fit(make, x[train], target_counts[train], target, penalty, opts.steps, opts.seed)
            score = objective(head, x[parts["val"]], target_counts[parts["val"]], target)
            if best is None or score < best[0]:
                best = (score, penalty, head)
        chosen[name] = best[1]
        predictions[name] = predicted(best[2], x[parts["test"]])
    test_counts = counts[parts["test"]]
    results = evaluate(predictions, test_counts, opts.resamples, opts.seed)
    sigma = sigma_check(predictions, test_counts, opts.resamples, opts.seed)
    all_votes = [n for n in results if n != MAJORITY and not n.startswith("length")]
    best = min(all_votes, key=lambda n: results[n]["nll_per_rating"])
    meta = {"conversations": len(items), "train": len(train), "val": len(parts["val"]), "test": len(parts["test"]),
            "test_ratings": int(test_counts.sum()), "resamples": opts.resamples, "cutoff": opts.cutoff,
            "steps": opts.steps, "penalties": chosen, "feature_seconds": extracted, "layers": opts.layers,
            "fit": "heads on frozen SmolLM2-135M-Instruct last-token features (last-layer fit)"}
    if opts.full_train:
        meta["full_train"] = full_train(items, parts, out, opts)
    print_table(results, sigma, meta)
    targets = {
        "beats majority on NLL per rating (interval excludes 0)": results[best]["nll_per_rating_vs_majority_ci"][1] < 0,
        "beats majority on ECE of the unsafe share (interval excludes 0)":
            results[best]["unsafe_ece_vs_majority_ci"][1] < 0,
        "Spearman(disagreement) >= 0.3": results[best]["disagreement_spearman"] >= 0.3,
        "Spearman(disagreement) above the length baseline": results[best]["disagreement_spearman"]
        > results["length only (categorical)"]["disagreement_spearman"],
    }
    print(f"\nbest all-votes model: {best}")
    for target, held in targets.items():
        print(f"  {'held' if held else 'NOT met'}: {target}")
    if "full_train" in meta:
        f = meta["full_train"]
        print(f"\nfull `discorm train` (scalar ordinal, {opts.full_blocks} top blocks, {f['seconds']:.0f} s): NLL per "
              f"rating {f['nll_per_rating']:.3f}, ECE unsafe {f['unsafe_ece']:.3f}, Spearman disagreement "
              f"{f['disagreement_spearman']:.3f}")
    plot(predictions, test_counts, results, best, out / "disagreement.png")
    if opts.plot:
        plot(predictions, test_counts, results, best, Path(opts.plot))
    write_json(out / "results.json", {"meta": meta, "models": results, "gaussian_vs_scalar": sigma,
                                      "best_all_votes": best, "targets": targets})
    print(f"\nwrote {out / 'results.json'} and {out / 'disagreement.png'}; total {time.time() - began:.0f} s "
          f"(features {extracted:.0f} s)")


if __name__ == "__main__":
    main()
