"""Reward over-optimisation on real text: does a reward that knows its epistemic uncertainty protect the gold
reward under best-of-n selection? (Gao et al. 2022 / Coste et al. 2024 protocol, on a CPU scale.)

1. Gold RM: the default model freeze-tuned (``--gold-blocks`` blocks) on HH-RLHF harmless pairs, none of whose
   prompts is a benchmark prompt; its accuracy on held-out HH pairs is printed.
2. Proxy data: other HH pairs relabelled by the gold RM (the response it scores higher is "chosen"), with 0% and
   25% of the labels flipped; ``--seeds`` proxy seeds, each with its own sample of pairs and flips.
3. Proxies, weaker than the gold: heads alone on the frozen default model's features (DiscoRM's heads, loss and
   uncertainty code on cached features): scalar, Gaussian, an ensemble of 5 scalar heads on bootstrap resamples,
   a scalar head with a Laplace posterior.
4. Candidates: the default model samples N responses per benchmark prompt (temperature 1, top-p 0.9), cached.
5. Best-of-n for n = 1, 2, 4, ..., N with the unbiased estimator (the i-th lowest of N proxy scores is the pick of a
   random n-subset with probability C(i-1, n-1) / C(N, n)); KL_bon = log n - (n - 1) / n; the pick's gold score
   in gold standard deviations, relative to n = 1. Coefficients (length penalty c, lcb k, uwo lambda) are tuned on
   a third of the prompts and reported on the rest.
6. Sanity checks of the uncertainty: AUROC of the Gaussian proxy's spread (and of its pair NLL) for flipped
   labels; AUROC of sigma_epistemic for held-out HH responses vs mismatched, truncated, repeated and non-English
   ones.

    python benchmarks/bench_overoptimization.py                 # about 40 minutes on 2 CPU cores
    python benchmarks/bench_overoptimization.py --fast          # smoke test: a few minutes
Writes ``--out`` (default outputs/overoptimization): results.json, overoptimization.png, and the cached gold
model, candidates and features (a re-run, with ``--force`` to replace the results, costs only the proxies and the
tables).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.*`

from benchmarks.bench_throughput import matmul_peak  # noqa: E402
from benchmarks.uncertainty import auroc  # noqa: E402
from discorm.errors import DestinationError  # noqa: E402
from discorm.files import check_destination  # noqa: E402

HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-harmless-dev.jsonl"
NON_ENGLISH = [
    "Lo siento, no puedo ayudarte con eso, pero puedo darte información general sobre el tema.",
    "Je ne suis pas sûr de comprendre la question; pouvez-vous la reformuler, s'il vous plaît ?",
    "Das ist eine interessante Frage, aber ich habe dazu keine verlässlichen Informationen.",
    "Извините, я не могу помочь с этим запросом, но могу предложить другие варианты.",
    "这个问题很复杂，我建议你咨询专业人士以获得更准确的答案。",
    "Mi dispiace, ma non posso fornire istruzioni su questo argomento.",
    "Desculpe, não posso ajudar com isso, mas posso sugerir alternativas seguras.",
    "申し訳ありませんが、その質問にはお答えできません。別の話題についてお手伝いできます。",
]


# ----------------------------------------------------------------------------- data
def hh_items() -> list[dict]:
    """Every HH pair as {prompt (messages), chosen, rejected (texts)}, in file order."""
    from discorm.data.pairs import parse_hh, split_shared_prompt

    items = []
    for line in HH_FILE.read_text().splitlines():
        row = json.loads(line)
        prompt, chosen, rejected = split_shared_prompt(parse_hh(row["chosen"]), parse_hh(row["rejected"]))
        if len(chosen) == 1 and len(rejected) == 1 and chosen[0]["content"] and rejected[0]["content"]:
            items.append({"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]})
    return items


def split(items: list[dict], prompts: int, heldout: int, seed: int = 0) -> dict:
    """Benchmark prompts (single-turn, short), the gold RM's training and held-out pairs (no benchmark prompt),
    and the pool the proxies' pairs are drawn from (the gold's training pairs, relabelled by it)."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    key = lambda i: json.dumps(items[i]["prompt"])  # noqa: E731
    bench, seen = [], set()
    for i in order:
        prompt = items[i]["prompt"]
        if len(bench) < prompts and len(prompt) == 1 and len(prompt[0]["content"]) <= 300 and key(i) not in seen:
            bench.append(prompt)
            seen.add(key(i))
    rest = [items[i] for i in order if key(i) not in seen]
    return {"bench": bench, "heldout": rest[:heldout], "train": rest[heldout:]}


def write_pairs(path: Path, items: list[dict]) -> Path:
    rows = [{"prompt": it["prompt"], "chosen": [{"role": "assistant", "content": it["chosen"]}],
             "rejected": [{"role": "assistant", "content": it["rejected"]}]} for it in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- models
def train_gold(out: Path, data: dict, opts) -> Path:
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    run = out / "gold"
    if (run / "discorm_config.json").is_file():
        return run
    config = {"dataset": str(write_pairs(out / "gold_train.jsonl", data["train"])),
              "eval_dataset": str(write_pairs(out / "gold_heldout.jsonl", data["heldout"])),
              "output_dir": str(run), "finetuning_type": "freeze", "freeze_trainable_layers": opts.gold_blocks,
              "cutoff_len": opts.cutoff, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
              "learning_rate": 1e-4, "head_learning_rate": 1e-3, "num_train_epochs": opts.gold_epochs,
              "lr_scheduler_type": "cosine", "warmup_steps": 5, "logging_steps": 10, "save_strategy": "no",
              "report_to": "none", "seed": 0, "use_cpu": True, "disable_tqdm": True}
    start = time.perf_counter()
    metrics = run_rm(*load_args(config))
    print(f"gold RM: {len(data['train'])} pairs, {opts.gold_blocks} trainable blocks, {opts.gold_epochs} epoch(s), "
          f"{time.perf_counter() - start:.0f} s; held-out accuracy {metrics.get('eval_accuracy', float('nan')):.3f} "
          f"on {len(data['heldout'])} pairs", flush=True)
    return run


def generate(out: Path, prompts: list, opts) -> list[list[str]]:
    """N sampled responses per prompt (cached in candidates.json)."""
    cache = out / "candidates.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["n"] == opts.candidates and cached["prompts"] == prompts:
            return cached["responses"]
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from discorm.model.loading import resolve_model_path

    path = resolve_model_path("smollm2-135m-instruct")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(0)
    responses = []
    for prompt in tqdm(prompts, desc="Sampling candidates"):
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]
        with torch.no_grad():
            outputs = model.generate(ids.repeat(opts.candidates, 1), do_sample=True, temperature=1.0, top_p=0.9,
                                     max_new_tokens=opts.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(outputs[:, ids.shape[1]:], skip_special_tokens=True)
        responses.append([t.strip() or "..." for t in texts])
    cache.write_text(json.dumps({"n": opts.candidates, "prompts": prompts, "responses": responses}))
    return responses


def features(model, items: list[dict], cache: Path, batch_size: int = 16):
    """(head params (N, K), pooled features (N, H)) of {prompt, response} items, cached by file name."""
    from discorm.data.tokenize import Encoder
    from discorm.model.inference import score_ids

    if cache.is_file():
        saved = torch.load(cache)
        if saved["count"] == len(items):
            return saved["params"], saved["pooled"]
    encoder = Encoder.for_model(model)
    sequences = [encoder.encode_item(item, f"item {i}") for i, item in enumerate(items)]
    params, pooled = score_ids(model, sequences, batch_size, show_progress=True, features=True)
    torch.save({"count": len(items), "params": params, "pooled": pooled}, cache)
    return params, pooled


def train_head(head, fc: torch.Tensor, fr: torch.Tensor, keys: list[str], epochs: int, seed: int,
               lr: float = 3e-3, batch: int = 32):
    """A head on fixed features with DiscoRM's loss (an ensemble's bootstrap weights come from ``keys``)."""
    from discorm.train.loss import PairwiseLoss

    loss_fn = PairwiseLoss(head)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(fc), generator=generator).split(batch):
            optimizer.zero_grad()
            loss_fn(head(fc[index]), head(fr[index]), keys=[keys[i] for i in index]).backward()
            optimizer.step()
    return head.eval()


def proxies(fc, fr, keys, seed: int, hidden: int, epochs: int) -> dict:
    """The proxy heads of one seed, trained on the same pairs."""
    from discorm.model.heads import GaussianHead, LaplaceHead, ScalarHead, with_uncertainty
    from discorm.model.heads.uncertainty import laplace_posterior, mean_readout

    torch.manual_seed(seed)
    scalar = train_head(ScalarHead(hidden), fc, fr, keys, epochs, seed)
    gaussian = train_head(GaussianHead(hidden), fc, fr, keys, epochs, seed)
    ensemble = train_head(with_uncertainty(lambda: ScalarHead(hidden), hidden, "ensemble", 5), fc, fr, keys, epochs,
                          seed)
    laplace = LaplaceHead(scalar, hidden)
    with torch.no_grad():
        prob = scalar.prob_pair(scalar(fc), scalar(fr))
    covariance, prior = laplace_posterior(fc, fr, prob, mean_readout(scalar, torch.cat([fc, fr])))
    laplace.set_posterior(covariance, prior)
    return {"scalar": scalar, "gaussian": gaussian, "ensemble": ensemble, "laplace": laplace}


# ----------------------------------------------------------------------------- best of n
def best_of_n(proxy: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Unbiased E[gold of the proxy's pick among n of the N candidates drawn without replacement] for one prompt:
    the i-th lowest proxy score (1-based) is the maximum of a random n-subset with probability
    C(i - 1, n - 1) / C(N, n)."""
    order = np.argsort(proxy, kind="stable")
    total = len(proxy)
    weights = np.array([math.comb(i - 1, n - 1) for i in range(1, total + 1)], dtype=float) / math.comb(total, n)
    return float(weights @ gold[order])


def kl_bon(n: int) -> float:
    return math.log(n) - (n - 1) / n


def curve(rewards: np.ndarray, gold: np.ndarray, ns: list[int], prompts: list[int]) -> list[float]:
    """Mean over prompts of the best-of-n gold score, for each n. rewards, gold: (P, N)."""
    return [float(np.mean([best_of_n(rewards[p], gold[p], n) for p in prompts])) for n in ns]


def rule_rewards(heads: dict, pooled: torch.Tensor, lengths: np.ndarray, shape: tuple, coefficients: dict) -> dict:
    """Each selection rule's reward for every candidate, (P, N)."""
    with torch.no_grad():
        params = {name: head(pooled) for name, head in heads.items()}

    def reward(name, mode="mean", **options):
        return heads[name].reward(params[name], mode, **options).numpy().reshape(shape)

    scalar = reward("scalar")
    return {
        "scalar proxy": scalar,
        "scalar - c log(length)": scalar - coefficients["length"] * np.log(lengths).reshape(shape),
        "Gaussian mean": reward("gaussian"),
        "Gaussian lower quantile (0.1)": reward("gaussian", "lower_quantile", alpha=0.1),
        "ensemble mean": reward("ensemble"),
        "ensemble min": reward("ensemble", "min"),
        "ensemble uwo": reward("ensemble", "uwo", k=coefficients["uwo"]),
        "Laplace lcb": reward("laplace", "lcb", k=coefficients["lcb"]),
    }


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/overoptimization",
                        help="results, plot and caches (reused by a later run)")
    parser.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--prompts", type=int, default=48, help="benchmark prompts (a third tunes coefficients)")
    parser.add_argument("--candidates", type=int, default=32, help="N responses sampled per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=300, help="HH pairs held out to report the gold accuracy")
    parser.add_argument("--proxy-pairs", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.25])
    parser.add_argument("--gold-blocks", type=int, default=4)
    parser.add_argument("--gold-epochs", type=float, default=1.0)
    parser.add_argument("--proxy-epochs", type=int, default=30)
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--ood", type=int, default=120, help="held-out responses per OOD check")
    parser.add_argument("--fast", action="store_true", help="smoke test: 6 prompts, 8 candidates, small sets")
    opts = parser.parse_args()
    if opts.fast:
        opts.prompts, opts.candidates, opts.heldout, opts.proxy_pairs = 6, 8, 40, 60
        opts.seeds, opts.gold_blocks, opts.gold_epochs, opts.ood, opts.max_new_tokens = 1, 1, 0.25, 24, 24
        opts.out = opts.out if opts.out != "outputs/overoptimization" else "outputs/overoptimization-fast"
    try:  # before any work: an earlier run's results are replaced only when asked (the caches are reused)
        check_destination(Path(opts.out, "results.json"), opts.force, option=f"--out {opts.out} (its results.json)")
    except DestinationError as err:
        parser.error(str(err))
    import transformers

    transformers.logging.set_verbosity_error()
    from dataclasses import replace

    from discorm.files import write_json
    from discorm.model.reward_model import RewardModel

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"fp32 matmul peak (2048x2048, {torch.get_num_threads()} threads): "
          f"{matmul_peak(torch.get_num_threads()):.0f} GFLOP/s", flush=True)
    data = split(hh_items(), opts.prompts, opts.heldout)
    gold_model = RewardModel.from_pretrained(train_gold(out, data, opts)).eval()
    responses = generate(out, data["bench"], opts)
    shape = (len(responses), opts.candidates)
    candidates = [{"prompt": prompt, "response": r} for prompt, rs in zip(data["bench"], responses) for r in rs]
    gold_raw = gold_model.head.mean(features(gold_model, candidates, out / "gold_candidates.pt")[0]).numpy()
    gold = ((gold_raw - gold_raw.mean()) / gold_raw.std()).reshape(shape)  # in gold standard deviations
    lengths = np.array([len(c["response"]) + 1 for c in candidates], dtype=float)

    base = RewardModel.from_pretrained("smollm2-135m-instruct").eval()  # the proxies' frozen features
    base.rm_config = replace(base.rm_config, cutoff_len=opts.cutoff)
    pool = data["train"][: opts.proxy_pairs]
    chosen = [{"prompt": it["prompt"], "response": it["chosen"]} for it in pool]
    rejected = [{"prompt": it["prompt"], "response": it["rejected"]} for it in pool]
    gold_c = gold_model.head.mean(features(gold_model, chosen, out / "gold_pool_chosen.pt")[0])
    gold_r = gold_model.head.mean(features(gold_model, rejected, out / "gold_pool_rejected.pt")[0])
    fc_all = features(base, chosen, out / "pool_chosen.pt")[1]
    fr_all = features(base, rejected, out / "pool_rejected.pt")[1]
    cand_pooled = features(base, candidates, out / "candidates_features.pt")[1]
    prefers_first = (gold_c > gold_r).numpy()
    print(f"proxy pool: {len(pool)} HH pairs; the gold RM agrees with the HH label on {prefers_first.mean():.3f}",
          flush=True)

    ns = [2**i for i in range(int(math.log2(opts.candidates)) + 1)]
    tune = list(range(len(responses) // 3))
    report = list(range(len(responses) // 3, len(responses)))
    hidden = fc_all.shape[1]
    results = {"settings": vars(opts), "n": ns, "kl": [kl_bon(n) for n in ns], "noise": {}}
    flip_checks = []
    for noise in opts.noise:
        runs = []
        for seed in range(opts.seeds):
            rng = np.random.default_rng(1000 + seed)
            index = rng.choice(len(pool), size=int(0.9 * len(pool)), replace=False)
            flipped = rng.random(len(index)) < noise
            first = prefers_first[index] ^ flipped  # the proxy's label: chosen is the first response
            fc = torch.where(torch.tensor(first)[:, None], fc_all[index], fr_all[index])
            fr = torch.where(torch.tensor(first)[:, None], fr_all[index], fc_all[index])
            keys = [f"pool:{i}" for i in index]
            heads = proxies(fc, fr, keys, seed, hidden, opts.proxy_epochs)
            if noise > 0:
                flip_checks.append(flip_auroc(heads["gaussian"], fc, fr, flipped))
            coefficients = tune_coefficients(heads, cand_pooled, lengths, shape, gold, ns, tune)
            rewards = rule_rewards(heads, cand_pooled, lengths, shape, coefficients)
            runs.append({"coefficients": coefficients,
                         "gold": {name: curve(r, gold, ns, report) for name, r in rewards.items()},
                         "proxy": {name: curve(r, (r - r.mean()) / r.std(), ns, report)
                                   for name, r in rewards.items()}})
        results["noise"][str(noise)] = runs
    results["label_flips"] = {key: [c[key] for c in flip_checks] for key in ("sigma", "pair_nll")}
    results["ood"] = ood_checks(base, heads, data["heldout"], opts, out)
    results["gold_accuracy"] = json.loads((out / "gold" / "eval" / "eval_results.json").read_text())["sets"][
        "heldout"]["accuracy"]
    write_json(out / "results.json", results)
    print_tables(results, len(report))
    plot(results, out / "overoptimization.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'overoptimization.png'}")


def tune_coefficients(heads, pooled, lengths, shape, gold, ns, prompts) -> dict:
    """The length penalty c, lcb's k and uwo's lambda maximising the gold score at the largest n on ``prompts``."""
    grid = {"length": [0.0, 0.1, 0.25, 0.5, 1.0, 2.0], "lcb": [0.5, 1.0, 2.0, 4.0], "uwo": [0.5, 1.0, 4.0, 16.0]}
    rule = {"length": "scalar - c log(length)", "lcb": "Laplace lcb", "uwo": "ensemble uwo"}
    chosen = {"length": 0.0, "lcb": 1.0, "uwo": 1.0}
    for key, values in grid.items():
        scores = []
        for value in values:
            rewards = rule_rewards(heads, pooled, lengths, shape, {**chosen, key: value})[rule[key]]
            scores.append(curve(rewards, gold, ns[-1:], prompts)[0])
        chosen[key] = values[int(np.argmax(scores))]
    return chosen


def flip_auroc(gaussian, fc, fr, flipped) -> dict:
    with torch.no_grad():
        pc, pr = gaussian(fc), gaussian(fr)
        sigma = (gaussian.std(pc).square() + gaussian.std(pr).square()).sqrt().numpy()
        nll = -gaussian.log_prob_pair(pc, pr)[0].numpy()
    return {"sigma": auroc(sigma, flipped), "pair_nll": auroc(nll, flipped)}


def ood_checks(base, heads: dict, heldout: list[dict], opts, out: Path) -> dict:
    """AUROC of sigma_epistemic (Laplace, ensemble) for held-out HH responses vs four kinds of odd ones."""
    rng = random.Random(7)
    items = heldout[: opts.ood]
    sets = {
        "in-distribution": [{"prompt": it["prompt"], "response": it["chosen"]} for it in items],
        "mismatched": [{"prompt": it["prompt"], "response": items[(i + 1) % len(items)]["chosen"]}
                       for i, it in enumerate(items)],
        "truncated": [{"prompt": it["prompt"], "response": " ".join(it["chosen"].split()[:3])} for it in items],
        "repeated": [{"prompt": it["prompt"], "response": " ".join([it["chosen"]] * 4)} for it in items],
        "non-English": [{"prompt": it["prompt"], "response": rng.choice(NON_ENGLISH)} for it in items],
    }
    sigma = {}
    for name, rows in sets.items():
        pooled = features(base, rows, out / f"ood_{name}.pt")[1]
        with torch.no_grad():
            sigma[name] = {h: heads[h].epistemic_std(heads[h](pooled)).numpy() for h in ("laplace", "ensemble")}
    results = {}
    for name in sets:
        if name == "in-distribution":
            continue
        results[name] = {}
        for h in ("laplace", "ensemble"):
            scores = np.concatenate([sigma["in-distribution"][h], sigma[name][h]])
            positive = np.r_[np.zeros(len(items)), np.ones(len(items))].astype(bool)
            results[name][h] = auroc(scores, positive)
    return results


def print_tables(results: dict, prompts: int) -> None:
    ns = results["n"]
    print(f"\nGold RM held-out accuracy: {results['gold_accuracy']:.3f}")
    for noise, runs in results["noise"].items():
        print(f"\n### Label noise {float(noise):.0%}: gold score of the best-of-n pick (gold std units, "
              f"{prompts} report prompts, {len(runs)} proxy seeds, mean ± half the spread)\n")
        print("| rule | " + " | ".join(f"n={n}" for n in ns) + " | gain at n=max | peak n | drop from peak |")
        print("| --- |" + " --- |" * (len(ns) + 3))
        for name in runs[0]["gold"]:
            curves = np.array([run["gold"][name] for run in runs])
            mean, spread = curves.mean(0), (curves.max(0) - curves.min(0)) / 2
            gain = mean[-1] - mean[0]
            cells = [f"{m:+.3f}" + (f" ± {s:.3f}" if len(runs) > 1 else "") for m, s in zip(mean, spread)]
            print(f"| {name} | " + " | ".join(cells) + f" | {gain:+.3f} | {ns[int(np.argmax(mean))]} | "
                  f"{mean.max() - mean[-1]:.3f} |")
        coefficients = [run["coefficients"] for run in runs]
        print(f"\ncoefficients tuned per seed on the other prompts: {coefficients}")
    flips = results["label_flips"]
    if flips["sigma"]:
        print(f"\nLabel flips (25%): AUROC of the Gaussian proxy's pair sigma "
              f"{statistics.mean(flips['sigma']):.3f}, of its pair NLL {statistics.mean(flips['pair_nll']):.3f}")
    print("\nOut of distribution: AUROC of sigma_epistemic, held-out HH responses vs")
    print("| kind | Laplace | ensemble |\n| --- | --- | --- |")
    for name, values in results["ood"].items():
        print(f"| {name} | {values['laplace']:.3f} | {values['ensemble']:.3f} |")


def plot(results: dict, path: Path) -> None:
    from discorm.plots import plt, save

    noises = list(results["noise"])
    fig, axes = plt.subplots(1, len(noises), figsize=(6.5 * len(noises), 4.8), squeeze=False)
    kl = results["kl"]
    for ax, noise in zip(axes[0], noises):
        runs = results["noise"][noise]
        for name in runs[0]["gold"]:
            mean = np.array([run["gold"][name] for run in runs]).mean(0)
            line, = ax.plot(kl, mean - mean[0], marker="o", ms=3, label=name)
            if name == "scalar proxy":
                proxy = np.array([run["proxy"][name] for run in runs]).mean(0)
                ax.plot(kl, proxy - proxy[0], ls="--", color=line.get_color(), label="scalar proxy (its own score)")
        ax.set_xlabel("KL(best-of-n || base) = log n - (n-1)/n")
        ax.set_ylabel("gold score gain (gold std)")
        ax.set_title(f"label noise {float(noise):.0%}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    save(fig, path, dpi=110)


if __name__ == "__main__":
    main()
