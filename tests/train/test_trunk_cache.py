import json
import random

import pytest
import torch

from discorm.config import FinetuningArguments, load_args
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding, model_inputs
from discorm.errors import ConfigError, ModelError
from discorm.model.reward_model import RewardModel
from discorm.train.loss import PairwiseLoss
from discorm.train.trunk_cache import build_trunk_cache, first_trainable_block
from discorm.train.workflow import run_rm
from tests.conftest import build_model

PAIRS = [
    {"prompt_ids": [5, 6, 7, 8], "chosen_ids": [9, 10, 11], "rejected_ids": [12, 13], "soft_label": 0.5},
    {"prompt_ids": [14, 15], "chosen_ids": [16], "rejected_ids": [17, 18, 19, 20], "soft_label": 1.0},
    {"prompt_ids": [21, 22, 23], "chosen_ids": [24, 25], "rejected_ids": [26], "soft_label": 1.0},
]
LISTS = [
    {"prompt_ids": [30, 31, 32], "responses_ids": [[33, 34], [35], [36, 37, 38]], "levels": [0, 1, 2]},
    {"prompt_ids": [40], "responses_ids": [[41, 42, 43], [44, 45]], "levels": [1, 0]},
]


def _loss_and_grads(model, loss_fn, batch):
    model.zero_grad()
    params = model(**model_inputs(batch)).head_params
    loss = loss_fn.batch_loss(params, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), params.detach(), grads


@pytest.mark.parametrize("head", ["scalar", "gaussian"])
@pytest.mark.parametrize("collator", [PackedPairCollator(), PackedPairCollator(prefix_sharing=False),
                                      PairwiseDataCollatorWithPadding(0), PairwiseDataCollatorWithPadding(-1)],
                         ids=["packed", "packed-unshared", "padded", "padded-last-pad-id"])
@pytest.mark.parametrize("examples", [PAIRS, LISTS], ids=["pairs", "lists"])
def test_cached_trunk_gives_the_full_models_losses_and_gradients(tiny_llama, head, collator, examples):
    model = build_model(tiny_llama, "freeze", head=head, freeze_trainable_layers=1)
    if getattr(collator, "pad_token_id", 0) < 0:  # a pad id past the cache's rows reads row 0, masked
        collator = PairwiseDataCollatorWithPadding(model.config.vocab_size - 1)
    loss_fn = PairwiseLoss.from_args(model.head, FinetuningArguments(finetuning_type="freeze", head=head))
    cache, remapped = build_trunk_cache(model, examples, batch_size=2)
    rows = sum(len(e["prompt_ids"]) + len(e.get("chosen_ids", [])) + len(e.get("rejected_ids", []))
               + sum(map(len, e.get("responses_ids", []))) for e in examples)
    assert cache.states.shape == (rows, model.config.hidden_size) and cache.first == 1
    assert model.config.vocab_size > rows
    reduced = cache.model
    assert len(reduced.backbone.layers) == 1 and len(model.backbone.layers) == 2  # the full model is untouched
    assert reduced.backbone.layers[0] is model.backbone.layers[1] and reduced.head is model.head
    order = list(range(len(examples)))[::-1]  # another batch composition than the cache pass's
    full_loss, full_params, full_grads = _loss_and_grads(model, loss_fn, collator([examples[i] for i in order]))
    part_loss, part_params, part_grads = _loss_and_grads(reduced, loss_fn, collator([remapped[i] for i in order]))
    assert abs(part_loss - full_loss) < 1e-5
    torch.testing.assert_close(part_params, full_params, atol=1e-5, rtol=1e-5)
    shared = {name.replace("layers.1.", "layers.0."): grad for name, grad in full_grads.items()}
    assert set(part_grads) == set(shared) and any("layers.0" in name for name in part_grads)
    assert any(name.startswith("head.") for name in part_grads)
    for name, grad in part_grads.items():
        torch.testing.assert_close(grad, shared[name], atol=1e-5, rtol=1e-4, msg=name)


def test_an_example_scores_the_same_alone_and_in_any_batch(tiny_llama):
    model = build_model(tiny_llama, "freeze", head="gaussian", freeze_trainable_layers=1).eval()
    examples = PAIRS + LISTS
    cache, remapped = build_trunk_cache(model, examples, batch_size=3)
    collate = PackedPairCollator()
    with torch.no_grad():
        alone = [model(**model_inputs(collate([example]))).head_params for example in examples]
        for seed in range(3):
            order = random.Random(seed).sample(range(len(examples)), len(examples))
            batch = collate([remapped[i] for i in order])
            params = cache.model(**model_inputs(batch)).head_params
            pairs = [i for i in order if i < len(PAIRS)]
            lists = [i for i in order if i >= len(PAIRS)]
            expected = torch.cat([alone[i][:1] for i in pairs] + [alone[i][1:] for i in pairs]
                                 + [alone[i] for i in lists])
            torch.testing.assert_close(params, expected, atol=1e-5, rtol=1e-5)


def test_head_only_training_caches_the_last_block(tiny_llama):
    model = build_model(tiny_llama, "freeze", head="scalar", freeze_trainable_layers=0).eval()
    cache, remapped = build_trunk_cache(model, PAIRS)
    assert cache.first == 2 and len(cache.model.backbone.layers) == 0
    with torch.no_grad():
        full = model(**model_inputs(PackedPairCollator()(PAIRS))).head_params
        part = cache.model(**model_inputs(PackedPairCollator()(remapped))).head_params
    torch.testing.assert_close(part, full, atol=1e-5, rtol=1e-5)


def test_what_the_cache_cannot_reproduce_is_refused(tiny_llama, tiny_gpt2):
    with pytest.raises(ConfigError, match="trains but lies below"):
        first_trainable_block(build_model(tiny_llama, "full").backbone)
    gpt2 = build_model(tiny_gpt2, "freeze", freeze_trainable_layers=1)
    with pytest.raises(ConfigError, match=r"dropout \(drop \(rate 0.1\)\)"):  # GPT-2's default embedding dropout
        build_trunk_cache(gpt2, PAIRS)
    for module in gpt2.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with pytest.raises(ModelError, match="position embeddings"):  # GPT-2 adds them to its input
        build_trunk_cache(gpt2, PAIRS)
    with pytest.raises(ConfigError, match="cache_frozen_trunk_max_gb=1e-09") as err:
        build_trunk_cache(build_model(tiny_llama, "freeze", freeze_trainable_layers=1), PAIRS, max_gb=1e-9)
    assert "22 tokens x 32 values = 2.82e-06 GB" in str(err.value)  # 22 * 32 float32 values
    dropping = build_model(tiny_llama, "freeze", freeze_trainable_layers=1)
    dropping.backbone.layers[0].self_attn.attention_dropout = 0.1
    with pytest.raises(ConfigError, match=r"dropout \(layers.0.self_attn \(rate 0.1\)\)"):
        build_trunk_cache(dropping, PAIRS)
    with pytest.raises(ConfigError, match=r"training row 1 \(pairs.jsonl:2\) has images"):
        build_trunk_cache(build_model(tiny_llama, "freeze", freeze_trainable_layers=1),
                          [PAIRS[0], {**PAIRS[1], "images": ["a.png"], "source": "pairs.jsonl:2"}])
    with pytest.raises(ConfigError, match="finetuning_type: freeze"):
        FinetuningArguments(finetuning_type="full", cache_frozen_trunk=True)


def _pairs_file(path, n=24, seed=0):
    rng = random.Random(seed)
    words = ["fox", "dog", "moon", "bees", "tea", "chess", "owls", "bread"]
    rows = [{"prompt": " ".join(rng.sample(words, 3)), "chosen": "yes " + rng.choice(words),
             "rejected": "no " + rng.choice(words)} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("head", ["scalar", "gaussian"])
def test_training_with_the_cache_equals_training_without(tiny_llama, tmp_path, head):
    data = _pairs_file(tmp_path / "pairs.jsonl")
    common = {"model_name_or_path": str(tiny_llama), "dataset": str(data), "do_train": True, "head": head,
              "finetuning_type": "freeze", "freeze_trainable_layers": 1, "learning_rate": 3e-3,
              "per_device_train_batch_size": 4, "num_train_epochs": 3, "cutoff_len": 64, "logging_steps": 1,
              "save_strategy": "no", "disable_tqdm": True, "seed": 1, "use_cpu": True}
    run_rm(*load_args({**common, "output_dir": str(tmp_path / "plain")}))
    run_rm(*load_args({**common, "output_dir": str(tmp_path / "cached"), "cache_frozen_trunk": True}))

    def losses(run):
        history = json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    assert len(losses("plain")) == 18
    for plain, cached in zip(losses("plain"), losses("cached"), strict=True):
        assert abs(plain - cached) < 1e-5
    plain, cached = (RewardModel.from_pretrained(tmp_path / run).eval() for run in ("plain", "cached"))
    batch = model_inputs(PackedPairCollator()(PAIRS))
    with torch.no_grad():
        torch.testing.assert_close(cached(**batch).head_params, plain(**batch).head_params, atol=1e-5, rtol=1e-5)
