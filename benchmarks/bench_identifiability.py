"""Is a Gaussian head's spread identifiable? Setting (A) of ``bench_calibration.py`` -- item types with a known true
mean and a known true noise sigma*, labels from the Thurstone model -- with the same number of responses seen in
training given three ways:

- pairs: N pairs, one label each (P(first wins) = Phi((mu_1 - mu_2) / sqrt(sigma_1^2 + sigma_2^2)));
- rankings: N / 2 lists of K = 4, each ranked by one draw X_i ~ N(mu_i, sigma_i^2) per response (Thurstone);
- votes: N pairs, three independent annotator labels each (a binomial count).

Binary pairs identify only (mu_c - mu_r) / sqrt(sigma_c^2 + sigma_r^2); a ranking of four and repeated votes carry
the spread. Every number is on held-out pairs: Spearman(sigma-hat, sigma*) over their responses, and the NLL and
ECE of P(chosen > rejected) against the observed labels (tiny models, the real pipeline: ``run_rm``, packed
batches, the head's all-pairs Thurstone likelihood for rankings, the binomial for votes).

    python benchmarks/bench_identifiability.py                 # the table in docs/benchmarks.md
    python benchmarks/bench_identifiability.py --responses 1600 --seeds 1   # quick
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_calibration import (  # noqa: E402
    FILLER,
    MU,
    SIGMA,
    generate,
    item_text,
    make_model,
    metrics,
    predict,
    set_threads,
    write_jsonl,
)

K = 4


def _item(rng: random.Random) -> tuple[str, float, float]:
    a, b = rng.randrange(len(MU)), rng.randrange(len(SIGMA))
    return item_text(rng, [f"qa{a}", f"nb{b}"]), MU[a], SIGMA[b]


def _prompt(rng: random.Random) -> str:
    return "compare these " + " ".join(rng.sample(FILLER, 2))


def training_rows(kind: str, responses: int, rng: random.Random) -> list[dict]:
    if kind == "rankings":
        rows = []
        for _ in range(responses // K):
            items = [_item(rng) for _ in range(K)]
            draws = [rng.gauss(mu, sigma) for _, mu, sigma in items]
            rows.append({"prompt": _prompt(rng), "responses": [text for text, _, _ in items],
                         "ranking": sorted(range(K), key=lambda i: -draws[i])})
        return rows
    rows = []
    for _ in range(responses // 2):
        (first, mu1, s1), (second, mu2, s2) = _item(rng), _item(rng)
        p_first = float(norm.cdf((mu1 - mu2) / math.hypot(s1, s2)))
        if kind == "pairs":
            wins = rng.random() < p_first
            rows.append({"prompt": _prompt(rng), "chosen": first if wins else second,
                         "rejected": second if wins else first})
        else:
            votes = sum(rng.random() < p_first for _ in range(3))
            rows.append({"prompt": _prompt(rng), "chosen": first, "rejected": second,
                         "votes": {"chosen": votes, "rejected": 3 - votes}})
    return rows


def train(model_dir: Path, data: Path, out: Path, seed: int, epochs: int, lr: float, batch: int) -> None:
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    run_rm(*load_args({
        "model_name_or_path": str(model_dir), "dataset": str(data), "output_dir": str(out), "finetuning_type": "full",
        "head": "gaussian", "ranking_loss": "all_pairs", "cutoff_len": 64, "per_device_train_batch_size": batch,
        "learning_rate": lr, "num_train_epochs": epochs, "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 20, "weight_decay": 0.0, "save_strategy": "no", "logging_steps": 50, "report_to": "none",
        "disable_tqdm": True, "seed": seed, "use_cpu": True}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=6000, help="responses seen in training, every kind")
    parser.add_argument("--test", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    opts = parser.parse_args()
    set_threads(opts.threads)
    kinds = ("pairs", "rankings", "votes")
    found: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(opts.seeds):
            rng = random.Random(seed)
            folder = Path(tmp, f"seed{seed}")
            model_dir = make_model(folder / "model", seed)
            test_rows = generate("A", opts.test, random.Random(10_000 + seed))
            for kind in kinds:
                begin = time.perf_counter()
                data = write_jsonl(folder / f"{kind}.jsonl", training_rows(kind, opts.responses, rng))
                # the same optimizer steps for every kind: a batch holds 2 * 16 responses
                batch = 16 // 2 if kind == "rankings" else 16
                train(model_dir, data, folder / kind, seed, opts.epochs, opts.lr, batch)
                prob, _, sigma = predict(folder / kind, test_rows)
                found[kind].append(metrics("A", test_rows, prob, sigma))
                print(f"seed {seed} {kind}: {found[kind][-1]} ({time.perf_counter() - begin:.0f} s)", flush=True)
    print(f"\n{opts.responses} training responses per kind ({opts.responses // 2} pairs, {opts.responses // K} "
          f"rankings of {K}, {opts.responses // 2} pairs x 3 votes), {opts.test} held-out pairs, {opts.seeds} "
          "seed(s): mean (min-max)\n")
    print("| trained on | Spearman(σ̂, σ*) | NLL | ECE | accuracy |")
    print("|---|---:|---:|---:|---:|")
    for kind, runs in found.items():
        cells = []
        for key in ("spearman_sigma", "nll", "ece", "accuracy"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {kind} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
