"""Multi-objective reward heads on synthetic rated data with a known ground truth (tiny models, CPU, minutes).

Every response carries K = 3 hidden attribute qualities t_k in [0, 4] (8 levels each), written as tokens
("a0_5 a1_2 a2_7 w3 ...") that a tiny randomly initialised Llama reads through the real pipeline (chatml
template, packed batches, PairwiseTrainer). Each prompt has two responses. Raters give each response a noisy
integer rating per attribute, round(t_k + N(0, RATING_NOISE)) clipped to [0, 4], and leave an attribute unrated
with probability MISSING. The true utility is U = w* . t with w* = TRUE_WEIGHTS.

From the same ratings:
- the multi-objective head trains on the rated responses (unrated attributes masked), combined by the fixed
  weights w* (`combination: fixed`), or by weights fitted in stage 2 on the pairs below (`combination: learned`);
- the scalar pairwise head trains on the pairs made from them: per prompt, the response with the higher rated
  utility w* . r (over the attributes both responses have ratings for) is `chosen`; ties are dropped.

Reported on held-out responses and pairs (true labels): per-attribute Spearman correlation of the predicted
attribute with t_k, Spearman of the combined reward with U, and the accuracy on held-out pairs of two responses
(of one prompt) ordered by U.

    python benchmarks/bench_multi_objective.py             # 2 seeds
    python benchmarks/bench_multi_objective.py --seeds 1 --prompts 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_calibration import make_word_model, set_threads  # noqa: E402

ATTRIBUTES = ("helpfulness", "correctness", "verbosity")
TRUE_WEIGHTS = (0.6, 0.3, 0.1)
LEVELS = 8
RATING_NOISE = 0.7
MISSING = 0.2
FILLER = [f"w{i}" for i in range(30)]


def make_model(folder: Path, seed: int) -> Path:
    words = ["user", "assistant", "system", "answer", "this"] + FILLER
    words += [f"a{k}_{level}" for k in range(len(ATTRIBUTES)) for level in range(LEVELS)]
    return make_word_model(folder, words, seed)


def item(rng: random.Random) -> tuple[str, np.ndarray]:
    """A response: its text and its true qualities t (K,) in [0, 4]."""
    levels = [rng.randrange(LEVELS) for _ in ATTRIBUTES]
    tokens = [f"a{k}_{level}" for k, level in enumerate(levels)] + rng.sample(FILLER, 3)
    rng.shuffle(tokens)
    return " ".join(tokens), np.array(levels) * 4 / (LEVELS - 1)


def generate(prompts: int, rng: random.Random) -> list[dict]:
    """Per prompt two responses with true qualities and noisy, partly missing ratings."""
    out = []
    for _ in range(prompts):
        prompt = "answer this " + " ".join(rng.sample(FILLER, 2))
        for _ in range(2):
            text, truth = item(rng)
            ratings = {name: int(np.clip(round(t + rng.gauss(0, RATING_NOISE)), 0, 4))
                       for name, t in zip(ATTRIBUTES, truth) if rng.random() > MISSING}
            out.append({"prompt": prompt, "response": text, "truth": truth.tolist(), "ratings": ratings})
    return out


def rated_rows(responses: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "response": r["response"], "scores": r["ratings"]} for r in responses]


def pair_rows(responses: list[dict]) -> list[dict]:
    """Per prompt: chosen = the response with the higher rated utility (attributes both rate); ties dropped."""
    rows = []
    for first, second in zip(responses[::2], responses[1::2]):
        shared = [(name, w) for name, w in zip(ATTRIBUTES, TRUE_WEIGHTS)
                  if name in first["ratings"] and name in second["ratings"]]
        u1 = sum(w * first["ratings"][n] for n, w in shared)
        u2 = sum(w * second["ratings"][n] for n, w in shared)
        if shared and u1 != u2:
            chosen, rejected = (first, second) if u1 > u2 else (second, first)
            rows.append({"prompt": first["prompt"], "chosen": chosen["response"], "rejected": rejected["response"]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def train(model_dir: Path, dataset: str, out: Path, seed: int, epochs: int, lr: float, **head) -> Path:
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    config = {"model_name_or_path": str(model_dir), "dataset": dataset, "output_dir": str(out),
              "finetuning_type": "full", "cutoff_len": 64, "per_device_train_batch_size": 32,
              "per_device_eval_batch_size": 256, "learning_rate": lr, "num_train_epochs": epochs,
              "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 20, "weight_decay": 0.0,
              "save_strategy": "no", "logging_steps": 50, "report_to": "none", "disable_tqdm": True, "seed": seed,
              "use_cpu": True, **head}
    run_rm(*load_args(config))
    return out


def evaluate(run: Path, test: list[dict]) -> dict:
    from discorm.model.reward_model import RewardModel

    model = RewardModel.from_pretrained(run).eval()
    records = model.score([{"prompt": r["prompt"], "response": r["response"]} for r in test], batch_size=256)
    reward = np.array([r["reward"] for r in records])
    truth = np.array([r["truth"] for r in test])
    utility = truth @ np.array(TRUE_WEIGHTS)
    out = {"spearman_U": float(spearmanr(reward, utility).statistic)}
    for k, name in enumerate(ATTRIBUTES):
        predicted = np.array([r["attributes"][name] for r in records]) if "attributes" in records[0] else reward
        out[f"spearman_{name}"] = float(spearmanr(predicted, truth[:, k]).statistic)
    first, second = slice(0, None, 2), slice(1, None, 2)
    decided = utility[first] != utility[second]
    agree = (reward[first] > reward[second]) == (utility[first] > utility[second])
    out["pair_accuracy"] = float(agree[decided].mean())
    return out


HEADS = {
    "scalar (pairs)": ("pairs", {"head": "scalar"}),
    "multi_objective, fixed w*": ("rated", {"head": "multi_objective", "attribute_weights": list(TRUE_WEIGHTS)}),
    "multi_objective gaussian, fixed w*": ("rated", {"head": "multi_objective", "output": "gaussian",
                                                     "attribute_weights": list(TRUE_WEIGHTS)}),
    "multi_objective, learned w": ("rated+pairs", {"head": "multi_objective", "combination": "learned"}),
}


def run_seed(seed: int, work: Path, prompts: int, test_prompts: int, epochs: int, lr: float) -> dict:
    rng = random.Random(seed)
    folder = work / f"seed-{seed}"
    folder.mkdir(parents=True)
    model_dir = make_model(folder / "model", seed)
    train_set, test = generate(prompts, rng), generate(test_prompts, rng)
    rated = write_jsonl(folder / "rated.jsonl", rated_rows(train_set))
    pairs = write_jsonl(folder / "pairs.jsonl", pair_rows(train_set))
    data = {"pairs": pairs, "rated": rated, "rated+pairs": f"{rated},{pairs}"}
    common = {"attributes": list(ATTRIBUTES), "score_range": [0, 4]}
    results = {}
    for label, (source, head) in HEADS.items():
        options = head if head["head"] == "scalar" else {**common, **head}
        run = train(model_dir, data[source], folder / label.replace(" ", "_"), seed, epochs, lr, **options)
        results[label] = evaluate(run, test)
        print(f"seed {seed} {label}: {results[label]}", flush=True)
    results["_pairs"] = sum(1 for _ in open(pairs))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=2000, help="training prompts (two rated responses each)")
    parser.add_argument("--test-prompts", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads (default: every core on an idle machine, 1 when the load average is "
                             "above 0.5: while anything else uses the CPU a second thread makes every step of these "
                             "tiny models 10x or more slower; the numbers do not depend on it)")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    set_threads(opts.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_multi_objective_"))
    os.environ["DISCORM_HOME"] = str(work / "discorm_home")  # the tokenized synthetic data: used by this run only
    runs = [run_seed(seed, work, opts.prompts, opts.test_prompts, opts.epochs, opts.lr) for seed in range(opts.seeds)]
    cols = [f"spearman_{name}" for name in ATTRIBUTES] + ["spearman_U", "pair_accuracy"]
    print(f"\n{opts.prompts} training prompts x 2 rated responses ({statistics.mean(r['_pairs'] for r in runs):.0f} "
          f"pairs made from the ratings), {opts.test_prompts} test prompts x 2; rating noise sd {RATING_NOISE}, "
          f"{MISSING:.0%} of ratings missing; mean over {opts.seeds} seed(s) (± half the spread)\n")
    print("| head | " + " | ".join(cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for label in HEADS:
        cells = []
        for col in cols:
            values = [r[label][col] for r in runs]
            spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f}" + (f" ± {spread:.3f}" if spread else ""))
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    shutil.rmtree(work)  # the models, runs and data of this run: everything the benchmark reads is printed


if __name__ == "__main__":
    main()
