"""One model description, one encoder, one loss, keys that do what they say, no hidden state changes."""

import copy
import json
import logging
import shutil

import pytest
import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from discorm.config import DataArguments, load_args
from discorm.data.collator import PackedPairCollator, PairwiseDataCollatorWithPadding
from discorm.data.formats import Pair
from discorm.data.templates import Renderer
from discorm.data.tokenize import DataStats, PairTokenizer
from discorm.model.heads import CategoricalHead
from discorm.model.reward_model import RewardModel
from discorm.model.rm_config import VERSION
from discorm.train.trainer import PairwiseTrainer
from discorm.train.workflow import make_collator, run_rm
from tests.conftest import REPO, build_model

FIXTURES = REPO / "tests" / "fixtures"


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize("name", ["v1_run_gaussian", "v1_run_categorical"])
def test_run_directory_from_version_1_loads_and_scores_identically(name, tmp_path):
    run = shutil.copytree(FIXTURES / name, tmp_path / name)
    expected = json.loads((run / "expected_scores.json").read_text())
    model = RewardModel.from_pretrained(run).eval()
    assert model.rm_config.version == VERSION and model.rm_config.template == "chatml"
    assert "variance_penalty" not in model.rm_config.head_options  # a loss option, no longer stored
    records = model.score(expected["chats"])
    for got, want in zip(records, expected["records"]):
        assert got == pytest.approx(want, abs=1e-6)
    from discorm.data.collator import pad_sequences

    ids, mask = pad_sequences(expected["ids"], 0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask).head_params, torch.tensor(expected["head_params"]),
                                   atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path / "resaved")  # written in the current version, loads again
    assert json.loads((tmp_path / "resaved" / "discorm_config.json").read_text())["version"] == VERSION
    assert RewardModel.from_pretrained(tmp_path / "resaved").score(expected["chats"]) == records


def test_model_config_rejects_unknown_and_missing_fields(tmp_path):
    from discorm.errors import ModelError
    from discorm.model.rm_config import RewardModelConfig

    (tmp_path / "discorm_config.json").write_text(json.dumps({"version": 2, "head": "scalar", "colour": "red"}))
    with pytest.raises(ModelError, match=r"unknown field\(s\) \['colour'\]"):
        RewardModelConfig.load(tmp_path)
    (tmp_path / "discorm_config.json").write_text(json.dumps({"version": 2, "pooling": "last"}))
    with pytest.raises(ModelError, match=r"missing field\(s\) \['head', 'finetuning_type'\]"):
        RewardModelConfig.load(tmp_path)
    (tmp_path / "discorm_config.json").write_text(json.dumps({"version": 99, "head": "scalar"}))
    with pytest.raises(ModelError, match="newer DiscoRM"):
        RewardModelConfig.load(tmp_path)


def test_long_pair_is_truncated_identically_by_training_and_by_score(tiny_llama, tmp_path):
    """A multi-turn pair longer than cutoff_len: `discorm score` scores the tokens training saw."""
    model = build_model(tiny_llama, "full").eval()
    from dataclasses import replace

    model.rm_config = replace(model.rm_config, cutoff_len=40)
    model.save_pretrained(tmp_path / "run")
    prompt = [_user("Tell me about volcanoes and bees " * 3), _assistant("Volcanoes erupt. " * 4),
              _user("And the moon, the heart and glaciers?")]
    chosen, rejected = [_assistant("The moon orbits the Earth " * 3)], [_assistant("no")]
    example = PairTokenizer(model.tokenizer, Renderer(model.tokenizer), 40)(
        Pair(prompt, chosen, rejected), stats := DataStats())
    assert stats.truncated == 1 and len(example["prompt_ids"]) + len(example["chosen_ids"]) <= 40
    rows = [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    (tmp_path / "pairs.jsonl").write_text(json.dumps(rows[0]) + "\n")
    from discorm.cli import main

    assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "pairs.jsonl"),
                 "--output", str(tmp_path / "scored.jsonl")]) == 0
    scored = json.loads((tmp_path / "scored.jsonl").read_text())
    batch = PairwiseDataCollatorWithPadding(0)([example])
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).scores
    assert scored["chosen"]["reward"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert scored["rejected"]["reward"] == pytest.approx(float(expected[1]), abs=1e-5)
    # a single response scored alone follows the same rule (with itself as the longest response)
    loaded = RewardModel.from_pretrained(tmp_path / "run")
    single = PairTokenizer(loaded.tokenizer, Renderer(loaded.tokenizer), 40).encode(prompt, [chosen])
    from discorm.data.tokenize import Encoder

    assert Encoder.for_model(loaded).encode_item({"prompt": prompt, "response": chosen}) == (
        single.prompt_ids + single.response_ids[0])


def test_packing_false_alone_gives_padded_batches(tiny_llama):
    model = build_model(tiny_llama)
    assert isinstance(make_collator(model, DataArguments(packing=False), model.tokenizer),
                      PairwiseDataCollatorWithPadding)
    collator = make_collator(model, DataArguments(prefix_sharing=False), model.tokenizer)
    assert isinstance(collator, PackedPairCollator) and not collator.prefix_sharing
    assert make_collator(model, DataArguments(), model.tokenizer).prefix_sharing


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_mean_and_first_pooling_choose_padded_batches_with_the_real_reason(tiny_llama, pooling, caplog):
    model = build_model(tiny_llama, pooling=pooling)
    with caplog.at_level(logging.INFO, logger="discorm"):
        collator = make_collator(model, DataArguments(), model.tokenizer)
    assert isinstance(collator, PairwiseDataCollatorWithPadding)
    assert f"pooling: {pooling}" in caplog.text and "bidirectional" not in caplog.text
    assert not model._packing_checked  # no self-check was needed to decide


def test_group_by_length_applies_to_training_and_keeps_evaluation_order(tiny_llama, tmp_path):
    rows = [{"prompt": "q", "chosen": "yes " * (i % 7 + 1), "rejected": "no"} for i in range(16)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": str(tmp_path / "d.jsonl"),
                      "group_by_length": True, "output_dir": str(tmp_path / "o"), "use_cpu": True})
    from discorm.data.loader import build_datasets

    model = build_model(tiny_llama)
    train, _, _ = build_datasets(args[1], model.tokenizer)
    training_args = copy.deepcopy(args[2])
    training_args.train_sampling_strategy = "group_by_length"
    trainer = PairwiseTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=train,
                              data_collator=PackedPairCollator())
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    assert list(trainer._get_eval_sampler(train)) == list(range(16))


def test_run_rm_leaves_its_arguments_unchanged(tiny_llama, tmp_path):
    rows = [{"prompt": "q", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(8)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = load_args({"model_name_or_path": str(tiny_llama), "dataset": str(tmp_path / "d.jsonl"),
                      "eval_dataset": str(tmp_path / "d.jsonl"), "group_by_length": True, "do_train": True,
                      "max_steps": 1, "output_dir": str(tmp_path / "o"), "use_cpu": True, "save_strategy": "no",
                      "disable_tqdm": True, "finetuning_type": "full", "report_to": "none"})
    before = copy.deepcopy(args)
    run_rm(*args)
    for got, want in zip(args, before):
        assert got == want, type(got).__name__


def test_continuing_a_run_uses_the_current_loss_options(tiny_llama, tmp_path):
    trained = build_model(tiny_llama, "full", head="gaussian").eval()
    trained.save_pretrained(tmp_path / "run")
    _, _, training_args, ft = load_args({"output_dir": str(tmp_path / "o"), "use_cpu": True, "head": "gaussian",
                                         "variance_penalty": 2.5, "finetuning_type": "full"})
    from discorm.config import ModelArguments

    model = RewardModel.for_training(ModelArguments(model_name_or_path=str(tmp_path / "run")), ft).eval()
    trainer = PairwiseTrainer(model=model, args=training_args, finetuning_args=ft,
                              data_collator=PairwiseDataCollatorWithPadding(0))
    assert trainer.loss_fn.loss_options == {"variance_penalty": 2.5}
    batch = PairwiseDataCollatorWithPadding(0)([{"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]}])
    with torch.no_grad():
        params = model(**batch).head_params
        loss = trainer.compute_loss(model, batch)
    expected = model.head.pair_loss(params[:1], params[1:]).mean() + 2.5 * (params[0, 1] + params[1, 1])
    torch.testing.assert_close(loss, expected)


def test_categorical_head_honours_margins():
    """P(c > r + m) = sum_ij p_c(i) p_r(j) [1(a_i - a_j > m) + 1/2 1(a_i - a_j = m)], by a double loop."""
    torch.manual_seed(2)
    head = CategoricalHead(4, num_atoms=5, atom_range=2.0)  # atoms -2, -1, 0, 1, 2
    pc, pr = torch.randn(4, 5), torch.randn(4, 5)
    margin = torch.tensor([0.0, 1.0, 0.5, -1.0])
    p_c, p_r, atoms = pc.softmax(-1), pr.softmax(-1), torch.linspace(-2, 2, 5)
    log_p, _ = head.log_prob_pair(pc, pr, margin)
    for b in range(4):
        brute = sum(float(p_c[b, i] * p_r[b, j]) * (1.0 if atoms[i] - atoms[j] > margin[b] + 1e-6 else
                                                    0.5 if abs(atoms[i] - atoms[j] - margin[b]) < 1e-6 else 0.0)
                    for i in range(5) for j in range(5))
        assert float(log_p[b].exp()) == pytest.approx(brute, abs=1e-6)
    torch.testing.assert_close(log_p[:1], head.log_prob_pair(pc[:1], pr[:1])[0])  # margin 0 = no margin
    assert float(log_p[1]) < float(head.log_prob_pair(pc[1:2], pr[1:2])[0])  # a margin makes winning harder


def test_score_with_a_reward_mode_leaves_the_model_unchanged(tiny_llama):
    model = build_model(tiny_llama, head="gaussian").eval()
    config = copy.deepcopy(model.rm_config)
    chats = [[_user("hi"), _assistant("hello there")]]
    mean = model.score(chats)[0]
    risk = model.score(chats, reward_mode="lower_quantile", reward_alpha=0.05)[0]
    assert risk["reward_mode"] == "lower_quantile" and risk["reward"] < mean["reward"]
    assert risk["reward"] == pytest.approx(mean["mean"] - 1.6448536 * mean["sigma"], abs=1e-4)
    assert model.rm_config == config and model.score(chats)[0] == mean
