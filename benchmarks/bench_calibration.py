"""Calibration of reward heads on synthetic preferences with a known ground truth (tiny models on a CPU; the
default run trains 18 models for 2,250 steps each: about 20 minutes of training at the 35 steps/s of 2 idle cores).

Items are short token sequences ("qa3 nb1 w7 w2 ...") read by a tiny randomly initialised Llama through the real
pipeline (chatml template, packed prefix-shared batches, PairwiseTrainer).

(A) Per-item noise: item type (a, b) has true mean quality MU[a] and true noise SIGMA[b], independent of each
    other. Labels follow the Thurstone model: P*(i > j) = Phi((mu_i - mu_j) / sqrt(sigma_i^2 + sigma_j^2)).
    The constant-noise control gives every item the same sigma: there no head should win.
(B) Hidden annotator groups: each label comes from one of K groups with different utilities; the true soft label
    is the share of groups preferring the chosen item, and pairs on which groups disagree should get more spread.

Scalar + temperature scaling fits T on a separate validation split; every number is on a held-out test split.

    python benchmarks/bench_calibration.py            # all settings, 2 seeds
    python benchmarks/bench_calibration.py --settings A --seeds 1
    python benchmarks/bench_calibration.py --settings A --seeds 1 --epochs 1 --train 640 --val 200 --test 300  # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.uncertainty`

MU = [0.5 * a for a in range(8)]
SIGMA = [0.2, 0.5, 1.0, 2.0, 3.0]
GROUPS = [lambda a, c: a, lambda a, c: c]  # two groups: one values a, the other c
FILLER = [f"w{i}" for i in range(30)]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_model(folder: Path, seed: int) -> Path:
    words = ["user", "assistant", "system", "compare", "these"] + FILLER
    words += [f"qa{a}" for a in range(8)] + [f"nb{b}" for b in range(5)] + [f"qc{c}" for c in range(8)]
    return make_word_model(folder, words, seed)


def make_word_model(folder: Path, words: list[str], seed: int) -> Path:
    """A tiny randomly initialised Llama with a word-level tokenizer over ``words`` (plus chatml's specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|im_end|>", additional_special_tokens=specials[2:])
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def item_text(rng: random.Random, tokens: list[str]) -> str:
    return " ".join(tokens + rng.sample(FILLER, 3))


def generate(setting: str, count: int, rng: random.Random) -> list[dict]:
    """Rows with the observed winner as `chosen`, plus the ground truth needed for the metrics."""
    rows = []
    for _ in range(count):
        prompt = "compare these " + " ".join(rng.sample(FILLER, 2))
        if setting in ("A", "A-const"):
            (a1, b1), (a2, b2) = [(rng.randrange(8), rng.randrange(5)) for _ in range(2)]
            s1, s2 = (SIGMA[b1], SIGMA[b2]) if setting == "A" else (1.0, 1.0)
            p_first = float(norm.cdf((MU[a1] - MU[a2]) / math.hypot(s1, s2)))
            first, second = item_text(rng, [f"qa{a1}", f"nb{b1}"]), item_text(rng, [f"qa{a2}", f"nb{b2}"])
            truth = [(s1, f"{a1},{b1}"), (s2, f"{a2},{b2}")]
        else:
            (a1, c1), (a2, c2) = [(rng.randrange(8), rng.randrange(8)) for _ in range(2)]
            votes = [1.0 if g(a1, c1) > g(a2, c2) else 0.5 if g(a1, c1) == g(a2, c2) else 0.0 for g in GROUPS]
            p_first = float(np.mean(votes))
            first, second = item_text(rng, [f"qa{a1}", f"qc{c1}"]), item_text(rng, [f"qa{a2}", f"qc{c2}"])
            truth = [(0.0, f"{a1},{c1}"), (0.0, f"{a2},{c2}")]
        first_wins = rng.random() < p_first
        order = (0, 1) if first_wins else (1, 0)
        texts, p_star = (first, second), p_first if first_wins else 1 - p_first
        rows.append({
            "prompt": prompt, "chosen": texts[order[0]], "rejected": texts[order[1]],
            "p_star": p_star, "sigma_chosen": truth[order[0]][0], "sigma_rejected": truth[order[1]][0],
            "noise": math.hypot(truth[0][0], truth[1][0]),
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train(model_dir: Path, data: Path, head: str, out: Path, seed: int, epochs: int, lr: float):
    """One model through ``run_rm``. Nothing is passed that the benchmark never reads: no eval_dataset (the
    temperature and every reported number come from ``predict`` on the validation and test rows, so run_rm's own
    held-out evaluation, its report and its files would only cost time), no checkpoints, no loggers."""
    from discorm.config import load_args
    from discorm.train.workflow import run_rm

    config = {"model_name_or_path": str(model_dir), "dataset": str(data), "output_dir": str(out),
              "finetuning_type": "full", "head": head, "cutoff_len": 64, "per_device_train_batch_size": 32,
              "per_device_eval_batch_size": 256, "learning_rate": lr, "num_train_epochs": epochs,
              "lr_scheduler_type": "constant_with_warmup", "warmup_steps": 20, "weight_decay": 0.0,
              "save_strategy": "no", "logging_steps": 50, "report_to": "none", "disable_tqdm": True, "seed": seed,
              "use_cpu": True, "noise_column": "noise"}
    run_rm(*load_args(config))


def predict(run: Path, rows: list[dict]):
    """-> P(chosen > rejected) (N,), scalar score difference (N,), per-response sigma (N, 2)."""
    from discorm.data.pairs import Pair
    from discorm.data.tokenize import Encoder
    from discorm.model.inference import score_pairs
    from discorm.model.reward_model import RewardModel

    model = RewardModel.from_pretrained(run).eval()
    encoder = Encoder.for_model(model)
    examples = []
    for r in rows:
        pair = Pair([{"role": "user", "content": r["prompt"]}], [{"role": "assistant", "content": r["chosen"]}],
                    [{"role": "assistant", "content": r["rejected"]}])
        encoded = encoder.encode(pair.prompt, [pair.chosen, pair.rejected])
        examples.append({"prompt_ids": encoded.prompt_ids, "chosen_ids": encoded.response_ids[0],
                         "rejected_ids": encoded.response_ids[1]})
    params = score_pairs(model, examples, batch_size=256)
    pc, pr = params[:, 0], params[:, 1]
    with torch.no_grad():
        prob = model.head.prob_pair(pc, pr).double().numpy()
        diff = (model.head.mean(pc) - model.head.mean(pr)).double().numpy()
        sigma = torch.stack([model.head.std(pc), model.head.std(pr)], 1).double().numpy()
    return prob, diff, sigma


def metrics(setting: str, rows: list[dict], prob: np.ndarray, sigma: np.ndarray | None) -> dict:
    from benchmarks.uncertainty import auroc
    from discorm.metrics import expected_calibration_error

    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    p_star = np.array([r["p_star"] for r in rows])
    ones = np.ones_like(prob)
    out = {"accuracy": float(np.mean((prob > 0.5) + 0.5 * (prob == 0.5))),
           "nll": float(-np.mean(np.log(prob))), "brier": float(np.mean((1 - prob) ** 2)),
           "ece": expected_calibration_error(prob, ones), "abs_p_err": float(np.mean(np.abs(prob - p_star)))}
    if setting.startswith("A"):
        noise = np.array([r["noise"] for r in rows])
        low, high = noise <= np.quantile(noise, 0.2), noise >= np.quantile(noise, 0.8)
        out["ece_low_noise"] = expected_calibration_error(prob[low], ones[low])
        out["ece_high_noise"] = expected_calibration_error(prob[high], ones[high])
        if sigma is not None and setting == "A":
            true_sigma = np.array([[r["sigma_chosen"], r["sigma_rejected"]] for r in rows]).ravel()
            out["spearman_sigma"] = float(spearmanr(sigma.ravel(), true_sigma).statistic)
    else:
        out["soft_ce"] = float(-np.mean(p_star * np.log(prob) + (1 - p_star) * np.log(1 - prob)))
        disagreement = 4 * p_star * (1 - p_star)
        uncertain = 1 - np.abs(2 * prob - 1)  # how undecided the predicted P is, for every head
        out["auroc_disagree_p"] = auroc(uncertain, disagreement > 0)
        if sigma is not None:  # the predicted spread of the two rewards
            spread = np.hypot(sigma[:, 0], sigma[:, 1])
            out["auroc_disagree_sigma"] = auroc(spread, disagreement > 0)
            out["spearman_disagree_sigma"] = float(spearmanr(spread, disagreement).statistic)
    return out


def run_setting(setting: str, seed: int, work: Path, epochs: int, lr: float, sizes: tuple[int, int, int]) -> dict:
    rng = random.Random(1000 * seed + zlib.crc32(setting.encode()) % 997)  # not hash(): salted per process
    folder = work / f"{setting}-{seed}"
    folder.mkdir(parents=True)
    model_dir = make_model(folder / "model", seed)
    train_rows, val_rows, test_rows = (generate(setting, n, rng) for n in sizes)
    data = write_jsonl(folder / "train.jsonl", train_rows)
    results = {}
    for head in ("scalar", "gaussian", "categorical"):
        run = folder / head
        train(model_dir, data, head, run, seed, epochs, lr)
        prob, diff, sigma = predict(run, test_rows)
        results[head] = metrics(setting, test_rows, prob, None if head == "scalar" else sigma)
        if head == "scalar":
            from discorm.metrics import fit_temperature

            _, val_diff, _ = predict(run, val_rows)
            temperature = fit_temperature(val_diff, np.ones_like(val_diff))
            results["scalar + TS"] = metrics(setting, test_rows, 1 / (1 + np.exp(-diff / temperature)), None)
            results["scalar + TS"]["temperature"] = temperature
    return results


COLUMNS = {
    "A": ["accuracy", "nll", "brier", "ece", "ece_low_noise", "ece_high_noise", "abs_p_err", "spearman_sigma"],
    "A-const": ["accuracy", "nll", "brier", "ece", "abs_p_err"],
    "B": ["accuracy", "nll", "soft_ce", "ece", "abs_p_err", "auroc_disagree_p", "auroc_disagree_sigma",
          "spearman_disagree_sigma"],
}
TITLES = {"A": "(A) per-item noise, varying", "A-const": "(A) constant-noise control",
          "B": "(B) hidden annotator groups"}


def set_threads(requested: int | None) -> None:
    """``requested`` threads, else every core (on a machine shared with other jobs, ``--threads 1``: a contended
    second thread makes each step of these tiny models many times slower)."""
    threads = requested or os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"torch threads: {threads} (load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["A", "A-const", "B"], choices=list(COLUMNS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads (default: every core; 1 on a machine shared with other jobs, where a "
                             "contended second thread makes every step of these tiny models many times slower; the "
                             "numbers do not depend on it)")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    set_threads(opts.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_calibration_"))
    os.environ["DISCORM_HOME"] = str(work / "discorm_home")  # the tokenized synthetic data: used by this run only
    for setting in opts.settings:
        runs = [run_setting(setting, seed, work, opts.epochs, opts.lr, (opts.train, opts.val, opts.test))
                for seed in range(opts.seeds)]
        cols = COLUMNS[setting]
        print(f"\n{TITLES[setting]}: {opts.train} training pairs, {opts.test} test pairs, mean over "
              f"{opts.seeds} seed(s) (± spread)\n")
        print("| head | " + " | ".join(cols) + " |")
        print("| --- |" + " --- |" * len(cols))
        for head in runs[0]:
            cells = []
            for col in cols:
                values = [r[head].get(col) for r in runs if r[head].get(col) is not None]
                values = [v for v in values if not math.isnan(v)]
                if not values:
                    cells.append("-")
                    continue
                spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.3f}" + (f" ± {spread:.3f}" if spread else ""))
            print(f"| {head} | " + " | ".join(cells) + " |", flush=True)
    shutil.rmtree(work)  # the models, runs and data of this run: everything the benchmark reads is printed


if __name__ == "__main__":
    main()
