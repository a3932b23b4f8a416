"""Reward over-optimisation on real text at real selection pressure: does a reward that knows its uncertainty
protect the gold reward under best-of-n selection with N = 512 candidates (KL 5.2 nats)? The protocol of Gao et
al. (2022) and Coste et al. (ICLR 2024), on a CPU scale.

1. Gold RM: the default model with its top ``--gold-blocks`` blocks (4) and head trained on HH-RLHF harmless pairs
   (human labels), none of whose prompts is a benchmark prompt; its accuracy on 300 held-out HH pairs is printed.
2. Policy samples (on-policy proxy data, as in Coste et al.): the default model samples 3 responses to each of
   ``--policy-prompts`` (2,000) HH prompts that are not benchmark prompts (every dialogue prefix ending with a user
   turn). Each proxy seed takes 2 of the 3 pairs per prompt (4,000 pairs), labelled by the gold RM, with 25% (and
   0%) of the labels flipped.
3. Candidates: N = ``--candidates`` (512) samples per benchmark prompt (40 prompts: 8 tune the coefficients, 32
   report), temperature 1 over the top 50 tokens, at most 32 new tokens, batched with a KV cache and the prompt
   computed once (benchmarks/sampling.py).
4. One pass of the shared frozen trunk (DiscoRM's frozen-trunk cache, train/trunk_cache.py) scores every response:
   the gold RM's top blocks read the trunk's states, and the frozen default model's blocks above it are run once
   from the same states to the input of its last block, where the proxies start. Every prompt's responses are
   packed as groups that share the prompt (computed once).
5. Proxies, per seed, on the same pairs:
   - block proxies: the default model's last block (its own copy) with a scalar or a Gaussian head, trained from
     the cached table (only the block and the head run per step); a Laplace posterior on the scalar one's features;
   - an ensemble of 5 MLP heads (576 -> 256 -> 1, their own initialisations, Poisson bootstrap) on the frozen
     default model's features: non-convex members that differ by more than a bootstrap of one convex problem;
   - references: a linear scalar head and the old ensemble of 5 linear heads on the same features.
6. Best-of-n for n = 1, 2, 4, ..., N with the unbiased estimator (the i-th lowest of N proxy scores is the pick of a
   random n-subset with probability C(i-1, n-1) / C(N, n)); KL_bon = log n - (n - 1) / n; the pick's gold score in
   gold standard deviations. Rules: scalar, scalar - c log(tokens), Gaussian mean, lower quantile and entropic
   (-(1/k) log E exp(-k r) = mu - k sigma^2 / 2), ensemble mean, min and uwo, Laplace lcb. c, k and lambda are
   tuned on the tuning prompts at n = N.
7. Checks of the uncertainty: AUROC of the Gaussian proxy's pair sigma (and pair NLL) for flipped labels; AUROC of
   sigma_epistemic of the new ensemble and of the old one for held-out HH responses vs mismatched, truncated,
   repeated and non-English ones.

    python benchmarks/bench_overoptimization.py          # cold: ~2.2 h on 2 CPU cores; warm: ~25 min
    python benchmarks/bench_overoptimization.py --fast   # smoke test: a few minutes
Writes ``--out`` (default outputs/overoptimization): results.json, overoptimization.png, and the caches (the gold
RM, candidates.json and pool.json with their sampling cost, the scoring tables *_tables.pt); a re-run, with
``--force`` to replace the results, costs only the proxies and the tables. The cost per 1,000 candidates of
sampling and of scoring is printed.
"""

from __future__ import annotations

import argparse
import functools
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
from discorm.files import check_destination, write_json  # noqa: E402
from discorm.model.heads import ScalarHead  # noqa: E402

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
def hh_rows() -> list[dict]:
    return [json.loads(line) for line in HH_FILE.read_text().splitlines()]


def hh_items(rows: list[dict]) -> list[dict]:
    """Every HH pair as {prompt (messages), chosen, rejected (texts)}, in file order."""
    from discorm.data.pairs import parse_hh, split_shared_prompt

    items = []
    for row in rows:
        prompt, chosen, rejected = split_shared_prompt(parse_hh(row["chosen"]), parse_hh(row["rejected"]))
        if len(chosen) == 1 and len(rejected) == 1 and chosen[0]["content"] and rejected[0]["content"]:
            items.append({"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]})
    return items


def split(rows: list[dict], prompts: int, heldout: int, policy_prompts: int, seed: int = 0) -> dict:
    """Benchmark prompts (single-turn, short); the gold RM's training and held-out HH pairs (no benchmark
    prompt); the policy's training prompts for the proxies' on-policy pairs: every conversation prefix of an HH
    dialogue that ends with a user turn (at most 600 characters), none from a dialogue that opens with a
    benchmark prompt."""
    from discorm.data.pairs import parse_hh

    items = hh_items(rows)
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
    opening = {p[0]["content"] for p in bench}
    policy = {}
    for row in rows:
        dialogue = parse_hh(row["chosen"])
        if not dialogue or dialogue[0]["content"] in opening:
            continue
        for end, message in enumerate(dialogue):
            prefix = dialogue[: end + 1]
            if message["role"] == "user" and sum(len(m["content"]) for m in prefix) <= 600:
                policy.setdefault(json.dumps(prefix), prefix)
    policy = list(policy.values())
    random.Random(seed + 1).shuffle(policy)
    if len(policy) < policy_prompts:
        raise SystemExit(f"--policy-prompts {policy_prompts}: the HH file has {len(policy)} distinct prompts")
    return {"bench": bench, "heldout": rest[:heldout], "train": rest[heldout:], "policy": policy[:policy_prompts]}


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


_POLICY: list = []


def policy():
    """The policy: the default model as a causal LM (loaded once)."""
    if not _POLICY:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from discorm.model.loading import resolve_model_path

        path = resolve_model_path("smollm2-135m-instruct")
        _POLICY.extend([AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)])
    return _POLICY


def sampled(out: Path, name: str, prompts: list, k: int, opts, seed: int) -> list[list[dict]]:
    """k responses per prompt from the policy ({"text", "tokens"}), cached in ``name``.json with their cost."""
    from benchmarks.sampling import sample

    cache = out / f"{name}.json"
    settings = {"k": k, "max_new_tokens": opts.max_new_tokens, "temperature": 1.0, "top_k": opts.top_k,
                "seed": seed, "prompts": prompts}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["settings"] == settings:
            return cached["responses"]
    model, tokenizer = policy()
    start = time.perf_counter()
    responses = sample(model, tokenizer, prompts, k, opts.max_new_tokens, top_k=opts.top_k, seed=seed,
                       batch_sequences=max(k, 384), desc=f"Sampling {name}")
    seconds = time.perf_counter() - start
    for rs in responses:
        for r in rs:
            r["text"] = r["text"] or "..."
    count = len(prompts) * k
    print(f"sampled {count} {name} ({len(prompts)} prompts x {k}) in {seconds:.0f} s: "
          f"{1000 * seconds / count:.1f} s per 1,000", flush=True)
    write_json(cache, {"settings": settings, "responses": responses, "seconds": seconds})
    return responses


def features(model, items: list[dict], cache: Path, batch_size: int = 16):
    """(head params (N, K), pooled features (N, H)) of {prompt, response} items through the whole model, cached."""
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


# ----------------------------------------------------------------------------- the shared trunk
def encode_groups(model, prompts: list, responses: list[list[dict]], chunk: int, cutoff: int) -> list[dict]:
    """Each prompt's responses as groups of at most ``chunk`` (prompt_ids, responses_ids), in order."""
    from discorm.data.tokenize import Encoder

    encoder, groups = Encoder.for_model(model, cutoff), []
    for p, (prompt, rs) in enumerate(zip(prompts, responses)):
        for start in range(0, len(rs), chunk):
            encoded = encoder.encode(prompt, [[{"role": "assistant", "content": r["text"]}]
                                              for r in rs[start : start + chunk]], f"prompt {p}")
            groups.append({"prompt_ids": encoded.prompt_ids, "responses_ids": encoded.response_ids})
    return groups


def same_trunk(gold, base, first: int) -> None:
    """The gold RM was freeze-tuned from the default model: its blocks below ``first`` are the default model's."""
    from discorm.model.loading import transformer_blocks

    pairs = [(gold.backbone.get_input_embeddings(), base.backbone.get_input_embeddings())]
    pairs += list(zip(transformer_blocks(gold.backbone)[:first], transformer_blocks(base.backbone)[:first]))
    for ours, theirs in pairs:
        for x, y in zip(ours.parameters(), theirs.parameters()):
            if not torch.equal(x, y):
                raise SystemExit("the gold RM's frozen blocks differ from the default model's: delete its run "
                                 "directory (--out/gold) and train it again")


def tables(out: Path, name: str, prompts: list, responses: list[list[dict]], gold, base, opts) -> dict:
    """One pass of the shared frozen trunk over every response, cached in ``name``_tables.pt:
    - ``gold``: the gold RM's mean reward per response (its trained top blocks read the trunk's states);
    - ``states``, ``rows``: the table of hidden states entering the default model's last block (the frozen
      default model's other blocks above the gold's trunk, run once from the same states), and each group's rows
      of it: the block proxies train and score from it (DiscoRM's frozen-trunk cache);
    - ``pooled``: the frozen default model's features (its last block), for the heads-only proxies.
    Every group is one packed block whose responses share the prompt, computed once."""
    from discorm.model.inference import score_groups
    from discorm.model.loading import transformer_blocks
    from discorm.train.trunk_cache import build_trunk_cache, trainable_part

    cache = out / f"{name}_tables.pt"
    count = sum(map(len, responses))
    if cache.is_file():
        saved = torch.load(cache)
        if saved["count"] == count:
            return saved
    groups = encode_groups(base, prompts, responses, opts.group, opts.cutoff)
    start = time.perf_counter()
    gold.requires_grad_(False)  # the cache is taken below the gold's trained blocks
    for block in list(transformer_blocks(gold.backbone))[-opts.gold_blocks :]:
        block.requires_grad_(True)
    trunk, rows = build_trunk_cache(gold, groups, batch_size=opts.score_batch, max_gb=opts.max_gb)
    same_trunk(gold, base, trunk.first)
    params = score_groups(trunk.model, rows, opts.score_batch, True, f"Gold RM on {name}")
    gold_mean = gold.head.mean(torch.cat(params)).float()
    above = trainable_part(base, trunk.states, trunk.first)  # the frozen default model above the gold's trunk
    above.requires_grad_(False)
    transformer_blocks(above.backbone)[-1].requires_grad_(True)  # marks where the table is taken: its last block
    top, top_rows = build_trunk_cache(above, rows, batch_size=opts.score_batch, max_gb=opts.max_gb)
    transformer_blocks(above.backbone)[-1].requires_grad_(False)
    del trunk, above
    pooled = torch.cat(score_groups(top.model, top_rows, opts.score_batch, True, f"Frozen features on {name}",
                                    features=True)[1])
    seconds = time.perf_counter() - start
    tokens = [len(ids) for g in groups for ids in g["responses_ids"]]
    print(f"scored {count} {name} with the gold RM and the frozen default model in {seconds:.0f} s: "
          f"{1000 * seconds / count:.1f} s per 1,000 (table {top.nbytes / 1e9:.2f} GB)", flush=True)
    saved = {"count": count, "gold": gold_mean, "pooled": pooled, "states": top.states, "rows": list(top_rows),
             "tokens": tokens, "seconds": seconds}
    torch.save(saved, cache)
    return saved


# ----------------------------------------------------------------------------- proxies
class MLPMember(ScalarHead):
    """An ensemble member with its own hidden layer: H -> width -> DiscoRM's scalar head (the members are
    non-convex problems from their own initialisations, so they differ by more than a bootstrap of one convex
    problem)."""

    def __init__(self, hidden: int, width: int = 256):
        super().__init__(width)
        self.hidden_layer = torch.nn.Sequential(torch.nn.Linear(hidden, width), torch.nn.GELU())

    def forward(self, pooled):
        return super().forward(self.hidden_layer(pooled))


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


def block_proxy(base, table: dict, head, pairs: list[tuple], seed: int, opts):
    """The default model's last block (a copy) and ``head`` trained on ``pairs`` (group, chosen, rejected) of
    the pool's table rows: freeze tuning of the top block from DiscoRM's frozen-trunk cache, so only the block and
    the head run per step."""
    import copy

    from discorm.data.collator import PackedPairCollator, model_inputs
    from discorm.model.loading import transformer_blocks
    from discorm.train.loss import PairwiseLoss
    from discorm.train.trunk_cache import trainable_part

    torch.manual_seed(seed)
    model = trainable_part(base, table["states"], len(transformer_blocks(base.backbone)) - 1)
    blocks = transformer_blocks(model.backbone)
    blocks[0] = copy.deepcopy(blocks[0]).requires_grad_(True)
    model.head = head.requires_grad_(True)
    rows = table["rows"]
    examples = [{"prompt_ids": rows[g]["prompt_ids"], "chosen_ids": rows[g]["responses_ids"][a],
                 "rejected_ids": rows[g]["responses_ids"][b]} for g, a, b in pairs]
    optimizer = torch.optim.AdamW([{"params": blocks[0].parameters(), "lr": opts.block_lr},
                                   {"params": head.parameters(), "lr": opts.head_lr}], weight_decay=0.0)
    loss_fn, collate = PairwiseLoss(head), PackedPairCollator(prefix_sharing=True)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(opts.proxy_block_epochs):
        for index in torch.randperm(len(examples), generator=generator).split(opts.proxy_batch):
            params = model(**model_inputs(collate([examples[i] for i in index]))).head_params
            optimizer.zero_grad()
            loss_fn(params[: len(index)], params[len(index) :]).backward()
            optimizer.step()
    return model.eval()


def block_scores(model, table: dict, opts, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(head params, pooled features) of every response of a table through a block proxy."""
    from discorm.model.inference import score_groups

    params, pooled = score_groups(model, table["rows"], opts.score_batch, False, desc, features=True)
    return torch.cat(params), torch.cat(pooled)


def proxy_pairs(gold: torch.Tensor, groups: int, noise: float, seed: int) -> tuple[list[tuple], np.ndarray]:
    """Two of the three pairs of each pool prompt's three samples (drawn per seed), labelled by the gold RM with a
    ``noise`` share flipped -> ([(group, chosen, rejected)], flipped)."""
    rng = np.random.default_rng(1000 + seed)
    gold = gold.numpy().reshape(groups, 3)
    pairs, flipped = [], []
    for g in range(groups):
        for i in rng.choice(3, size=2, replace=False):
            a, b = ((0, 1), (0, 2), (1, 2))[i]
            flip = bool(rng.random() < noise)
            first = (gold[g, a] > gold[g, b]) ^ flip
            pairs.append((g, a, b) if first else (g, b, a))
            flipped.append(flip)
    return pairs, np.array(flipped)


def proxies(base, pool: dict, cand: dict, noise: float, seed: int, opts) -> dict:
    """Every proxy of one seed, trained on the same on-policy pairs -> {name: (head, its params on the
    candidates)}, and the label-flip AUROCs of the Gaussian block proxy."""
    from discorm.model.heads import GaussianHead, LaplaceHead, ScalarHead, with_uncertainty
    from discorm.model.heads.uncertainty import laplace_posterior, mean_readout

    groups = len(pool["rows"])
    pairs, flipped = proxy_pairs(pool["gold"], groups, noise, seed)
    index_c = torch.tensor([g * 3 + a for g, a, _ in pairs])
    index_r = torch.tensor([g * 3 + b for g, _, b in pairs])
    keys = [f"pool:{g}:{a}:{b}" for g, a, b in pairs]
    hidden = pool["pooled"].shape[1]
    found, start = {}, time.perf_counter()
    for name, head in (("scalar", ScalarHead(hidden)), ("gaussian", GaussianHead(hidden))):
        model = block_proxy(base, pool, head, pairs, seed, opts)
        _swap_table(model, cand["states"])
        found[name] = (model.head, *block_scores(model, cand, opts, f"{name} proxy on candidates"))
        _swap_table(model, pool["states"])
        pool_params, pool_pooled = block_scores(model, pool, opts, f"{name} proxy on its pairs")
        if name == "scalar":
            fc, fr = pool_pooled[index_c], pool_pooled[index_r]
            with torch.no_grad():
                prob = head.prob_pair(head(fc), head(fr))
            laplace = LaplaceHead(head, hidden)
            laplace.set_posterior(*laplace_posterior(fc, fr, prob, mean_readout(head, torch.cat([fc, fr]))))
            with torch.no_grad():
                found["laplace"] = (laplace, laplace(found["scalar"][2]), None)
        else:
            flips = flip_auroc(head, pool_params[index_c], pool_params[index_r], flipped) if noise > 0 else None
    block_seconds = time.perf_counter() - start
    fc, fr = pool["pooled"][index_c], pool["pooled"][index_r]
    torch.manual_seed(seed)
    heads = {"ensemble": with_uncertainty(lambda: MLPMember(hidden), hidden, "ensemble", opts.members),
             "linear scalar": ScalarHead(hidden),
             "linear ensemble": with_uncertainty(lambda: ScalarHead(hidden), hidden, "ensemble", opts.members)}
    for name, head in heads.items():
        train_head(head, fc, fr, keys, opts.proxy_epochs, seed)
        with torch.no_grad():
            found[name] = (head, head(cand["pooled"]), None)
    print(f"  noise {noise:.0%} seed {seed}: block proxies {block_seconds:.0f} s, heads "
          f"{time.perf_counter() - start - block_seconds:.0f} s", flush=True)
    return {"proxies": found, "flips": flips if noise > 0 else None}


def _swap_table(model, states: torch.Tensor) -> None:
    """Point a block proxy's cached-trunk embedding at another table (the pool's or the candidates')."""
    model.backbone.get_input_embeddings().states = states


# ----------------------------------------------------------------------------- best of n
@functools.cache
def _pick_weights(total: int, n: int) -> np.ndarray:
    """P(the i-th lowest of ``total`` scores is the maximum of a random n-subset) = C(i-1, n-1) / C(total, n),
    in log space (the binomials overflow a float from N of about 1,030)."""
    from scipy.special import gammaln

    i = np.arange(1, total + 1, dtype=float)
    log_total = gammaln(total + 1) - gammaln(n + 1) - gammaln(total - n + 1)
    with np.errstate(invalid="ignore"):
        log_ways = gammaln(i) - gammaln(n) - gammaln(np.maximum(i - n + 1, 1))
    return np.where(i >= n, np.exp(log_ways - log_total), 0.0)


def best_of_n(proxy: np.ndarray, gold: np.ndarray, n: int) -> float:
    """Unbiased E[gold of the proxy's pick among n of the N candidates drawn without replacement] for one prompt:
    the i-th lowest proxy score (1-based) is the maximum of a random n-subset with probability
    C(i - 1, n - 1) / C(N, n)."""
    order = np.argsort(proxy, kind="stable")
    return float(_pick_weights(len(proxy), n) @ gold[order])


def kl_bon(n: int) -> float:
    return math.log(n) - (n - 1) / n


def curve(rewards: np.ndarray, gold: np.ndarray, ns: list[int], prompts: list[int]) -> list[float]:
    """Mean over prompts of the best-of-n gold score, for each n. rewards, gold: (P, N)."""
    return [float(np.mean([best_of_n(rewards[p], gold[p], n) for p in prompts])) for n in ns]


UNCERTAINTY_AWARE = ("Gaussian lower quantile (0.1)", "Gaussian entropic", "ensemble mean", "ensemble min",
                     "ensemble uwo", "Laplace lcb")


def rule_rewards(found: dict, lengths: np.ndarray, shape: tuple, coefficients: dict) -> dict:
    """Each selection rule's reward for every candidate, (P, N)."""

    def reward(name, mode="mean", **options):
        head, params = found[name][0], found[name][1]
        return head.reward(params, mode, **options).numpy().reshape(shape)

    scalar = reward("scalar")
    return {
        "scalar proxy": scalar,
        "scalar - c log(length)": scalar - coefficients["length"] * np.log(lengths).reshape(shape),
        "Gaussian mean": reward("gaussian"),
        "Gaussian lower quantile (0.1)": reward("gaussian", "lower_quantile", alpha=0.1),
        "Gaussian entropic": reward("gaussian", "entropic", k=coefficients["entropic"]),
        "ensemble mean": reward("ensemble"),
        "ensemble min": reward("ensemble", "min"),
        "ensemble uwo": reward("ensemble", "uwo", k=coefficients["uwo"]),
        "Laplace lcb": reward("laplace", "lcb", k=coefficients["lcb"]),
        "linear scalar (reference)": reward("linear scalar"),
        "linear ensemble mean (reference)": reward("linear ensemble"),
    }


def tune_coefficients(found, lengths, shape, gold, n: int, prompts) -> dict:
    """The length penalty c, the entropic k = 1/beta, lcb's k and uwo's lambda maximising the gold score of
    best-of-n at the largest n on ``prompts`` (never the reported ones)."""
    grid = {"length": [0.0, 0.1, 0.25, 0.5, 1.0, 2.0], "entropic": [0.25, 0.5, 1.0, 2.0, 4.0],
            "lcb": [0.5, 1.0, 2.0, 4.0], "uwo": [0.5, 1.0, 4.0, 16.0]}
    rule = {"length": "scalar - c log(length)", "entropic": "Gaussian entropic", "lcb": "Laplace lcb",
            "uwo": "ensemble uwo"}
    chosen = {"length": 0.0, "entropic": 1.0, "lcb": 1.0, "uwo": 1.0}
    for key, values in grid.items():
        scores = [curve(rule_rewards(found, lengths, shape, {**chosen, key: v})[rule[key]], gold, [n], prompts)[0]
                  for v in values]
        chosen[key] = values[int(np.argmax(scores))]
    return chosen


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/overoptimization",
                        help="results, plot and caches (reused by a later run)")
    parser.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--prompts", type=int, default=40, help="benchmark prompts, --tune-prompts of them tune")
    parser.add_argument("--tune-prompts", type=int, default=8, help="prompts the coefficients are tuned on")
    parser.add_argument("--candidates", type=int, default=512, help="N responses sampled per benchmark prompt")
    parser.add_argument("--policy-prompts", type=int, default=2000,
                        help="HH prompts the policy samples 3 responses to: the proxies' 2 pairs per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=50, help="sampling: temperature 1, the top k tokens")
    parser.add_argument("--heldout", type=int, default=300, help="HH pairs held out to report the gold accuracy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.25, 0.0],
                        help="label noise levels; the first gets --seeds proxy seeds, the others --other-seeds")
    parser.add_argument("--other-seeds", type=int, default=1)
    parser.add_argument("--gold-blocks", type=int, default=4, help="the gold RM's trained top blocks")
    parser.add_argument("--gold-epochs", type=float, default=1.0)
    parser.add_argument("--proxy-block-epochs", type=int, default=1, help="epochs of the block proxies")
    parser.add_argument("--proxy-epochs", type=int, default=30, help="epochs of the heads on frozen features")
    parser.add_argument("--proxy-batch", type=int, default=16)
    parser.add_argument("--block-lr", type=float, default=1e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--members", type=int, default=5, help="ensemble members")
    parser.add_argument("--cutoff", type=int, default=256)
    parser.add_argument("--group", type=int, default=64, help="responses scored as one packed group")
    parser.add_argument("--score-batch", type=int, default=4, help="groups per forward pass")
    parser.add_argument("--max-gb", type=float, default=8.0, help="largest frozen-trunk table")
    parser.add_argument("--ood", type=int, default=120, help="held-out responses per OOD check")
    parser.add_argument("--fast", action="store_true", help="smoke test: 6 prompts, 16 candidates, small sets")
    opts = parser.parse_args()
    if opts.fast:
        opts.prompts, opts.tune_prompts, opts.candidates, opts.heldout, opts.policy_prompts = 6, 2, 16, 40, 40
        opts.seeds, opts.gold_blocks, opts.gold_epochs, opts.ood, opts.max_new_tokens = 1, 2, 0.1, 24, 12
        opts.proxy_epochs, opts.group = 5, 8
        opts.out = opts.out if opts.out != "outputs/overoptimization" else "outputs/overoptimization-fast"
    try:  # before any work: an earlier run's results are replaced only when asked (the caches are reused)
        check_destination(Path(opts.out, "results.json"), opts.force, option=f"--out {opts.out} (its results.json)")
    except DestinationError as err:
        parser.error(str(err))
    if opts.gold_blocks < 2:
        parser.error("--gold-blocks must be at least 2: the gold trains more blocks than the proxies' one")
    import transformers

    transformers.logging.set_verbosity_error()
    from dataclasses import replace

    from discorm.model.reward_model import RewardModel

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"fp32 matmul peak (2048x2048, {torch.get_num_threads()} threads): "
          f"{matmul_peak(torch.get_num_threads()):.0f} GFLOP/s", flush=True)
    data = split(hh_rows(), opts.prompts, opts.heldout, opts.policy_prompts)
    gold_model = RewardModel.from_pretrained(train_gold(out, data, opts)).eval()
    base = RewardModel.from_pretrained("smollm2-135m-instruct").eval()  # the proxies' frozen part
    base.rm_config = replace(base.rm_config, cutoff_len=opts.cutoff)
    responses = sampled(out, "candidates", data["bench"], opts.candidates, opts, seed=0)
    pool_responses = sampled(out, "pool", data["policy"], 3, opts, seed=1)
    cand = tables(out, "candidates", data["bench"], responses, gold_model, base, opts)
    pool = tables(out, "pool", data["policy"], pool_responses, gold_model, base, opts)
    shape = (len(responses), opts.candidates)
    gold = ((cand["gold"] - cand["gold"].mean()) / cand["gold"].std()).numpy().reshape(shape)  # in gold std
    lengths = np.array(cand["tokens"], dtype=float)
    generation = json.loads((out / "candidates.json").read_text())["seconds"]
    cost = {"generation_s_per_1000": 1000 * generation / cand["count"],
            "scoring_s_per_1000": 1000 * cand["seconds"] / cand["count"]}
    print(f"cost per 1,000 candidates: generation {cost['generation_s_per_1000']:.1f} s, scoring (gold RM and "
          f"frozen features, one trunk pass) {cost['scoring_s_per_1000']:.1f} s", flush=True)
    with torch.no_grad():
        agree = float(((pool["gold"].reshape(-1, 3)[:, 0] > pool["gold"].reshape(-1, 3)[:, 1]).float()).mean())
    print(f"proxy pool: {len(pool['rows'])} policy prompts x 3 samples; the gold prefers the first of two samples "
          f"in {agree:.3f} of prompts", flush=True)

    ns = [2**i for i in range(int(math.log2(opts.candidates)) + 1)]
    tune = list(range(opts.tune_prompts))
    report = list(range(opts.tune_prompts, len(responses)))
    results = {"settings": vars(opts), "n": ns, "kl": [kl_bon(n) for n in ns], "noise": {}, "cost": cost}
    flip_checks, ood = [], []
    for noise in opts.noise:
        runs = []
        for seed in range(opts.seeds if noise == opts.noise[0] else opts.other_seeds):
            trained = proxies(base, pool, cand, noise, seed, opts)
            found = trained["proxies"]
            if trained["flips"]:
                flip_checks.append(trained["flips"])
            coefficients = tune_coefficients(found, lengths, shape, gold, ns[-1], tune)
            rewards = rule_rewards(found, lengths, shape, coefficients)
            runs.append({"coefficients": coefficients,
                         "gold": {name: curve(r, gold, ns, report) for name, r in rewards.items()},
                         "proxy": {name: curve(r, (r - r.mean()) / r.std(), ns, report)
                                   for name, r in rewards.items()}})
            if noise == opts.noise[0]:
                ood.append(ood_checks(base, {k: found[k][0] for k in ("ensemble", "linear ensemble")},
                                      data["heldout"], opts, out))
        results["noise"][str(noise)] = runs
    results["label_flips"] = {key: [c[key] for c in flip_checks] for key in ("sigma", "pair_nll")}
    results["ood"] = {kind: {h: float(np.mean([o[kind][h] for o in ood])) for h in ood[0][kind]} for kind in ood[0]}
    results["gold_accuracy"] = json.loads((out / "gold" / "eval" / "eval_results.json").read_text())["sets"][
        "heldout"]["accuracy"]
    results["seconds"] = time.perf_counter() - started
    write_json(out / "results.json", results)
    print_tables(results, len(report))
    plot(results, out / "overoptimization.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'overoptimization.png'} ({results['seconds'] / 60:.1f} min)")


def flip_auroc(gaussian, pc: torch.Tensor, pr: torch.Tensor, flipped) -> dict:
    """AUROC of the Gaussian proxy's pair sigma and pair NLL for the flipped labels (its params on the pairs)."""
    with torch.no_grad():
        sigma = (gaussian.std(pc).square() + gaussian.std(pr).square()).sqrt().numpy()
        nll = -gaussian.log_prob_pair(pc, pr)[0].numpy()
    return {"sigma": auroc(sigma, flipped), "pair_nll": auroc(nll, flipped)}


def ood_checks(base, heads: dict, heldout: list[dict], opts, out: Path) -> dict:
    """AUROC of sigma_epistemic (the MLP ensemble, the linear one) for held-out HH responses vs four kinds of odd
    ones, on the frozen default model's features."""
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
            sigma[name] = {h: head.epistemic_std(head(pooled)).numpy() for h, head in heads.items()}
    results = {}
    positive = np.r_[np.zeros(len(items)), np.ones(len(items))].astype(bool)
    for name in sets:
        if name != "in-distribution":
            results[name] = {h: auroc(np.concatenate([sigma["in-distribution"][h], sigma[name][h]]), positive)
                             for h in heads}
    return results


def summary(mean: np.ndarray, ns: list[int]) -> dict:
    """Gain over n = 1 at its peak and at the largest n, and the fall from the peak as a share of the peak gain."""
    gain = mean - mean[0]
    peak = int(np.argmax(gain))
    return {"peak_n": ns[peak], "peak_gain": float(gain[peak]), "final_gain": float(gain[-1]),
            "drop": float((gain[peak] - gain[-1]) / gain[peak]) if gain[peak] > 0 else 0.0}


def print_tables(results: dict, prompts: int) -> None:
    ns = results["n"]
    print(f"\nGold RM held-out accuracy: {results['gold_accuracy']:.3f}")
    for noise, runs in results["noise"].items():
        print(f"\n### Label noise {float(noise):.0%}: gold score of the best-of-n pick (gold std units, "
              f"{prompts} report prompts, {len(runs)} proxy seeds, mean ± half the spread)\n")
        print("| rule | " + " | ".join(f"n={n}" for n in ns) + " | peak gain (n) | final gain | fall from peak |")
        print("| --- |" + " --- |" * (len(ns) + 3))
        table = {}
        for name in runs[0]["gold"]:
            curves = np.array([run["gold"][name] for run in runs])
            mean, spread = curves.mean(0), (curves.max(0) - curves.min(0)) / 2
            table[name] = row = summary(mean, ns)
            cells = [f"{m:+.3f}" + (f" ± {s:.3f}" if len(runs) > 1 else "") for m, s in zip(mean, spread)]
            print(f"| {name} | " + " | ".join(cells) + f" | {row['peak_gain']:+.3f} ({row['peak_n']}) | "
                  f"{row['final_gain']:+.3f} | {row['drop']:.1%} |")
        scalar, length = table["scalar proxy"], table["scalar - c log(length)"]
        best = max(UNCERTAINTY_AWARE, key=lambda name: table[name]["final_gain"])
        ratio = (f"{table[best]['final_gain'] / scalar['final_gain']:.2f}x the scalar's" if scalar["final_gain"] > 0
                 else "the scalar's final gain is not positive")
        print(f"\nscalar proxy: peak gain {scalar['peak_gain']:+.3f} at n={scalar['peak_n']}, final "
              f"{scalar['final_gain']:+.3f} ({'falls' if scalar['drop'] > 0 else 'does not fall'}: "
              f"{scalar['peak_gain'] - scalar['final_gain']:.3f} below its peak); best uncertainty-aware rule at "
              f"the largest n: {best}, final {table[best]['final_gain']:+.3f} ({ratio}), "
              f"{table[best]['drop']:.1%} below its own peak; length-penalised scalar final "
              f"{length['final_gain']:+.3f}")
        print(f"coefficients tuned per seed on the other prompts: {[run['coefficients'] for run in runs]}")
    flips = results["label_flips"]
    if flips["sigma"]:
        print(f"\nLabel flips: AUROC of the Gaussian block proxy's pair sigma "
              f"{statistics.mean(flips['sigma']):.3f}, of its pair NLL {statistics.mean(flips['pair_nll']):.3f}")
    print("\nOut of distribution: AUROC of sigma_epistemic, held-out HH responses vs (mean over seeds)")
    print("| kind | MLP ensemble (new) | linear ensemble (old) |\n| --- | --- | --- |")
    for name, values in results["ood"].items():
        print(f"| {name} | {values['ensemble']:.3f} | {values['linear ensemble']:.3f} |")
    cost = results["cost"]
    print(f"\ncost per 1,000 candidates: generation {cost['generation_s_per_1000']:.1f} s, scoring "
          f"{cost['scoring_s_per_1000']:.1f} s")


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
