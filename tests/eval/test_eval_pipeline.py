"""`discorm eval` end to end on tiny models: the tokens training saw, the fast scoring path against the plain one,
the command-line forms, models trained elsewhere, per-run reward modes and comparisons."""

import json

import numpy as np
import pytest
import torch

from discorm.config import DataArguments
from discorm.data.loader import ReadOptions
from discorm.data.tokenize import Encoder
from discorm.eval.runner import EvalOptions, run_evaluation
from discorm.eval.scoring import score_items
from discorm.eval.sets import load_eval_set, parse_set_specs
from discorm.model.inference import score_ids
from discorm.model.reward_model import RewardModel
from tests.conftest import build_datasets
from tests.eval.helpers import run_dir, write_jsonl

WORDS = ["fox", "dog", "moon", "bees", "tea", "chess", "owls", "bread"]


def _pairs(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [{"prompt": " ".join(rng.choice(WORDS, 3)), "chosen": "yes " + " ".join(rng.choice(WORDS, 1 + i % 3)),
             "rejected": "no " + str(rng.choice(WORDS))} for i in range(n)]


def _bon_rows(n=5):
    return [{"id": str(i), "prompt": f"name {WORDS[i]}", "subset": "Focus", "chosen": [f"the {WORDS[i]}"],
             "rejected": [f"a {w}" for w in WORDS[: 2 + i % 3]]} for i in range(n)]  # 3 to 5 responses


def test_eval_items_are_the_tokens_training_sees(tiny_llama, tmp_path):
    model = RewardModel.from_pretrained(run_dir(tiny_llama, tmp_path))
    data = write_jsonl(tmp_path / "p.jsonl", _pairs())
    items = load_eval_set("p", data, Encoder.for_model(model, 48), ReadOptions()).items
    train, _, _ = build_datasets(DataArguments(dataset=data, cutoff_len=48), model.tokenizer)
    assert len(items) == len(train) == 12
    for item, example in zip(items, train):
        assert item.prompt_ids == example["prompt_ids"]
        assert item.response_ids == [example["chosen_ids"], example["rejected_ids"]]


def test_packed_scoring_of_pairs_and_best_of_n_equals_plain_scoring(tiny_llama, tmp_path):
    """The fast path (prompt shared, packed, odd K with an empty partner) against each sequence run alone."""
    model = RewardModel.from_pretrained(run_dir(tiny_llama, tmp_path, head="gaussian")).eval()
    encoder = Encoder.for_model(model)
    for rows in (_pairs(), _bon_rows()):
        eval_set = load_eval_set("s", write_jsonl(tmp_path / "s.jsonl", rows), encoder, ReadOptions())
        params, _ = score_items(model, eval_set, batch_size=3, show_progress=False)
        for item, got in zip(eval_set.items, params):
            plain = score_ids(model, [item.prompt_ids + r for r in item.response_ids], batch_size=1)
            torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)


def test_cli_model_form_with_several_sets_and_a_yaml_list(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    run = run_dir(tiny_llama, tmp_path)
    pairs, bon = write_jsonl(tmp_path / "pairs.jsonl", _pairs()), write_jsonl(tmp_path / "bon.jsonl", _bon_rows())
    assert main(["eval", str(run), "--data", f"mine={pairs}", "--data", f"bon={bon}", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "mine: 12 items  accuracy:" in out and "ece:" in out and "bon: 5 items" in out
    out_dir = run / "eval-mine-bon"  # the default: a folder of its own, never training's run/eval
    results = json.loads((out_dir / "eval_results.json").read_text())
    assert list(results["sets"]) == ["mine", "bon"] and (out_dir / "report.html").is_file()
    records = [json.loads(x) for x in (out_dir / "predictions" / "mine.jsonl").read_text().splitlines()]
    assert np.mean([r["credit"] for r in records]) == pytest.approx(results["sets"]["mine"]["accuracy"])
    assert [len(r["scores"]) for r in json.loads(json.dumps(records))] == [2] * 12

    listing = tmp_path / "sets.yaml"
    listing.write_text(f"- name: first\n  path: {pairs}\n- name: second\n  path: {bon}\n")
    assert parse_set_specs([str(listing)]) == {"first": pairs, "second": bon}
    assert main(["eval", str(run), "--data", str(listing), "--out", str(tmp_path / "o2"), "--no-report",
                 "--bootstrap", "200"]) == 0
    again = json.loads((tmp_path / "o2" / "eval_results.json").read_text())
    assert again["sets"]["first"]["accuracy"] == results["sets"]["mine"]["accuracy"]
    assert not (tmp_path / "o2" / "report.html").exists()


def test_cli_errors_are_one_paragraph(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    run = run_dir(tiny_llama, tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--data NAME=PATH" in err and "Traceback" not in err and err.count("\n") == 1
    pairs = write_jsonl(tmp_path / "p.jsonl", _pairs())
    assert main(["eval", str(run), "--data", f"a={pairs}", "--data", f"a={pairs}"]) == 2
    assert "used twice" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", f"a={pairs}", "--reward-alpha", "2"]) == 2
    assert "--reward-alpha" in capsys.readouterr().err


def test_config_form_still_evaluates_a_run(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    run = run_dir(tiny_llama, tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", _pairs())
    config = tmp_path / "eval.yaml"
    config.write_text(f"model_name_or_path: {run}\ndataset: {data}\noutput_dir: {tmp_path / 'ev'}\nuse_cpu: true\n")
    assert main(["eval", str(config), "max_samples=5"]) == 0
    assert "d: 5 items  accuracy:" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "eval-d" / "eval_results.json").read_text())["sets"]["d"]["items"] == 5


def test_reward_mode_applies_to_one_run_and_leaves_the_model_unchanged(tiny_llama, tmp_path):
    run = run_dir(tiny_llama, tmp_path, head="gaussian")
    saved = (run / "discorm_config.json").read_text()
    data = write_jsonl(tmp_path / "p.jsonl", _pairs())
    from discorm.eval.results import RewardOptions

    options = EvalOptions(reward=RewardOptions("lower_quantile", 0.05), show_progress=False, resamples=200)
    results = run_evaluation(str(run), {"p": data}, tmp_path / "q", options, report=False)
    assert results["model"]["reward_mode"] == "lower_quantile" and results["model"]["reward_alpha"] == 0.05
    assert (run / "discorm_config.json").read_text() == saved
    model = RewardModel.from_pretrained(run).eval()
    eval_set = load_eval_set("p", data, Encoder.for_model(model), ReadOptions())
    params, _ = score_items(model, eval_set, show_progress=False)
    records = [json.loads(x) for x in (tmp_path / "q" / "predictions" / "p.jsonl").read_text().splitlines()]
    for record, p in zip(records, params):
        want = model.reward(p, "lower_quantile", 0.05).tolist()
        assert record["scores"] == pytest.approx(want, abs=1e-6)
        assert want != pytest.approx(model.reward(p).tolist(), abs=1e-6)  # the mode changed the reward
        assert record["sigmas"] == pytest.approx(model.head.std(p).tolist(), abs=1e-6)
    assert model.rm_config.reward_mode == "mean"


def test_exported_and_foreign_sequence_classifiers_are_evaluated_like_the_run(tiny_llama, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from discorm.serve.export import export_sequence_classification

    run = run_dir(tiny_llama, tmp_path)
    data = write_jsonl(tmp_path / "p.jsonl", _pairs())
    options = EvalOptions(show_progress=False, resamples=200)
    ours = run_evaluation(str(run), {"p": data}, tmp_path / "a", options, report=False)
    export_sequence_classification(str(run), str(tmp_path / "exported"))
    theirs = run_evaluation(str(tmp_path / "exported"), {"p": data}, tmp_path / "b", options, report=False)
    assert theirs["model"]["imported_from"] == "sequence_classification"

    def scores(folder):
        return [json.loads(x)["scores"] for x in (folder / "predictions" / "p.jsonl").read_text().splitlines()]

    assert np.allclose(scores(tmp_path / "a"), scores(tmp_path / "b"), atol=1e-4)
    assert theirs["sets"]["p"]["accuracy"] == ours["sets"]["p"]["accuracy"]

    # a classifier made elsewhere (not by `discorm export`), with its own chat template
    foreign = tmp_path / "foreign"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}" \
                              "{% if add_generation_prompt %}[assistant] {% endif %}"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(foreign)
    tokenizer.save_pretrained(foreign)
    results = run_evaluation(str(foreign), {"p": data}, tmp_path / "c", options, report=False)
    assert results["model"]["template"] == "tokenizer" and results["sets"]["p"]["items"] == 12
    model = RewardModel.from_pretrained(foreign)
    item = load_eval_set("p", data, Encoder.for_model(model), ReadOptions()).items[0]
    assert "[assistant]" in model.tokenizer.decode(item.prompt_ids)


def test_compare_with_a_model_and_with_earlier_results(tiny_llama, tmp_path, capsys):
    from discorm.cli import main
    from tests.conftest import build_model

    first = run_dir(tiny_llama, tmp_path, name="first")
    torch.manual_seed(7)
    other = build_model(tiny_llama, "full")
    other.save_pretrained(tmp_path / "second")
    data = write_jsonl(tmp_path / "p.jsonl", _pairs(30))
    assert main(["eval", str(first), "--data", f"p={data}", "--compare", str(tmp_path / "second"),
                 "--bootstrap", "300"]) == 0
    results = json.loads((first / "eval-p" / "eval_results.json").read_text())
    c = results["compare"]["sets"]["p"]
    assert c["paired_items"] == 30 and c["accuracy"] == pytest.approx(results["sets"]["p"]["accuracy"])
    assert (first / "eval-p" / "compare" / "eval_results.json").is_file()
    assert "compare p:" in capsys.readouterr().out
    # the same model's earlier results: no difference at all
    assert main(["eval", str(first), "--data", f"p={data}", "--out", str(tmp_path / "again"), "--compare",
                 str(first / "eval-p"), "--bootstrap", "300"]) == 0
    same = json.loads((tmp_path / "again" / "eval_results.json").read_text())["compare"]["sets"]["p"]
    assert same["difference"] == 0.0 and same["p_value"] == 1.0 and same["paired_items"] == 30
