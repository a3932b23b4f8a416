"""Scoring, export to AutoModelForSequenceClassification, LlamaFactory/TRL checkpoint import, the reward server."""

import json

import httpx
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

from discorm.data.tokenize import Encoder
from discorm.errors import ModelError
from discorm.model.inference import score_ids
from discorm.model.reward_model import RewardModel
from discorm.serve.export import export_sequence_classification
from tests.conftest import build_model
from tests.serve.server_helpers import CHATS, running


def _trained_run(tiny_llama, tmp_path, finetuning_type="full", head="scalar"):
    model = build_model(tiny_llama, finetuning_type, head=head, lora_rank=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "run")
    return RewardModel.from_pretrained(tmp_path / "run").eval()


def _classifier_rewards(export_dir, model, items):
    classifier = AutoModelForSequenceClassification.from_pretrained(export_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    encoder = Encoder.for_model(model)
    rewards = []
    for item in items:  # one at a time and padded in a batch
        ids = torch.tensor([encoder.encode_item(item)])
        with torch.no_grad():
            rewards.append(classifier(input_ids=ids).logits[0])
    seqs = [encoder.encode_item(item) for item in items]
    length = max(map(len, seqs))
    batch = torch.tensor([s + [tokenizer.pad_token_id] * (length - len(s)) for s in seqs])
    with torch.no_grad():
        batched = classifier(input_ids=batch, attention_mask=(batch != tokenizer.pad_token_id).long()).logits
    return torch.stack(rewards), batched


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_score_then_export_gives_identical_rewards(tiny_llama, tmp_path, finetuning_type):
    model = _trained_run(tiny_llama, tmp_path, finetuning_type)
    scores = torch.tensor([r["reward"] for r in model.score(CHATS)])
    if finetuning_type == "lora":
        with pytest.raises(ModelError, match="--merge-lora"):
            export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"))
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"), merge_lora=True)
    single, batched = _classifier_rewards(tmp_path / "export", model, CHATS)
    torch.testing.assert_close(single[:, 0], scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(batched[:, 0], scores, atol=1e-4, rtol=0)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    assert config["pad_token_id"] != AutoTokenizer.from_pretrained(tmp_path / "export").eos_token_id


def test_gaussian_export_carries_the_variance(tiny_llama, tmp_path):
    model = _trained_run(tiny_llama, tmp_path, head="gaussian")
    records = model.score(CHATS)
    export_sequence_classification(str(tmp_path / "run"), str(tmp_path / "export"), num_labels=2,
                                   multi_label=True)
    single, _ = _classifier_rewards(tmp_path / "export", model, CHATS)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    var = torch.nn.functional.softplus(single[:, 1] + config["discorm_variance_bias"]) + 1e-4
    torch.testing.assert_close(single[:, 0], torch.tensor([r["mean"] for r in records]), atol=1e-4, rtol=0)
    torch.testing.assert_close(var.sqrt(), torch.tensor([r["sigma"] for r in records]), atol=1e-4, rtol=0)
    assert (tmp_path / "export" / "discorm_head.safetensors").is_file()


def test_import_llamafactory_full_and_lora(tiny_llama, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    w, b = torch.randn(1, 32), torch.randn(1)

    causal = LlamaForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for p in causal.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    full_dir = tmp_path / "lf_full"
    causal.save_pretrained(full_dir)
    tokenizer.save_pretrained(full_dir)
    save_file({"v_head.summary.weight": w, "v_head.summary.bias": b}, str(full_dir / "value_head.safetensors"))
    with torch.no_grad():
        expected = causal.model(ids).last_hidden_state[0, -1] @ w[0] + b[0]
        got = RewardModel.from_pretrained(full_dir).eval()(ids).scores[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    base = LlamaForCausalLM.from_pretrained(tiny_llama)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora_dir = tmp_path / "lf_lora"
    peft_model.save_pretrained(lora_dir)
    tokenizer.save_pretrained(lora_dir)
    torch.save({"v_head.summary.weight": w, "v_head.summary.bias": b}, lora_dir / "value_head.bin")
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama)
    with torch.no_grad():
        expected = peft_model.base_model.model.model(ids).last_hidden_state[0, -1] @ w[0] + b[0]
        got = RewardModel.from_pretrained(lora_dir).eval()(ids).scores[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_import_trl_sequence_classification(tiny_llama, tmp_path):
    torch.manual_seed(4)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    classifier.config.pad_token_id = 0
    classifier.save_pretrained(tmp_path / "trl")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path / "trl")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = classifier(input_ids=ids, attention_mask=mask).logits[:, 0]
        model = RewardModel.from_pretrained(tmp_path / "trl").eval()
        got = model(ids, attention_mask=mask).scores
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert model.rm_config.imported_from == "sequence_classification"


def test_score_cli(tiny_llama, tmp_path):
    from discorm.cli import main

    model = _trained_run(tiny_llama, tmp_path)
    rows = [{"prompt": "Q", "chosen": "good answer", "rejected": "bad"},
            {"prompt": "R", "chosen": "x", "rejected": "y"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "pairs.jsonl"),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    direct = model.score([{"prompt": "Q", "response": "good answer"}, {"prompt": "Q", "response": "bad"}])
    assert out[0]["chosen"]["reward"] == pytest.approx(direct[0]["reward"], abs=1e-5)
    assert out[0]["rejected"]["reward"] == pytest.approx(direct[1]["reward"], abs=1e-5)
    assert 0 < out[0]["p_chosen"] < 1


def test_score_cli_scores_ranked_lists_one_block_each(tiny_llama, tmp_path):
    from discorm.cli import main

    model = _trained_run(tiny_llama, tmp_path)
    rows = [{"prompt": "Q", "responses": ["good answer", "bad", "meh"], "ranking": [0, 2, 1]},
            {"prompt": "R", "responses": ["x", "y"]}]
    (tmp_path / "lists.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "lists.jsonl"),
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    direct = model.score([{"prompt": "Q", "response": r} for r in rows[0]["responses"]])
    assert [r["reward"] for r in out[0]["responses"]] == pytest.approx([d["reward"] for d in direct], abs=1e-5)
    assert len(out[1]["responses"]) == 2


@pytest.mark.parametrize("head", ["gaussian", "categorical"])
def test_score_cli_takes_the_reward_mode_and_its_level_per_call(tiny_llama, tmp_path, head, capsys):
    from discorm.cli import main

    model = _trained_run(tiny_llama, tmp_path, head=head)
    rows = [{"prompt": "Q", "response": "good answer"}, {"prompt": "Q", "response": "bad"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def score(*options):
        assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "rows.jsonl"),
                     "--output", str(tmp_path / "out.jsonl"), "--force", *options]) == 0
        return [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]

    plain = score()
    low = score("--reward-mode", "lower_quantile", "--reward-alpha", "0.05")
    std = score("--reward-mode", "mean_minus_std", "--reward-k", "2")
    params = score_ids(model, [Encoder.for_model(model).encode_item(r) for r in rows])
    for i in range(2):
        assert plain[i]["reward"] == pytest.approx(plain[i]["mean"], abs=1e-6)
        assert low[i]["reward_mode"] == "lower_quantile"
        assert low[i]["reward"] == pytest.approx(float(model.head.quantile(params[i : i + 1], 0.05)), abs=1e-5)
        assert low[i]["reward"] < plain[i]["mean"]
        assert std[i]["reward"] == pytest.approx(plain[i]["mean"] - 2 * plain[i]["sigma"], abs=1e-5)
    capsys.readouterr()
    assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "rows.jsonl"), "--output",
                 str(tmp_path / "bad.jsonl"), "--reward-alpha", "1.5"]) != 0  # the server's check, shared
    assert "reward_alpha=1.5 is out of range" in capsys.readouterr().err and not (tmp_path / "bad.jsonl").exists()


def test_score_cli_refuses_a_risk_mode_for_a_scalar_head(tiny_llama, tmp_path, capsys):
    from discorm.cli import main

    _trained_run(tiny_llama, tmp_path, head="scalar")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "Q", "response": "A"}) + "\n")
    assert main(["score", str(tmp_path / "run"), "--input", str(tmp_path / "rows.jsonl"), "--output",
                 str(tmp_path / "out.jsonl"), "--reward-mode", "lower_quantile"]) != 0
    assert "needs a distributional head" in capsys.readouterr().err


@pytest.fixture
def server(tiny_llama, tmp_path):
    from discorm.serve.server import create_app

    model = _trained_run(tiny_llama, tmp_path, head="gaussian")
    with running(create_app(model, max_batch_size=4, max_items=8, max_body_bytes=20_000)) as (url, _):
        yield url, model


def test_server_endpoints_and_bad_requests(server):
    url, model = server
    expected = [r["reward"] for r in model.score(CHATS)]
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
        body = client.post("/score", json=CHATS).json()
        assert body["rewards"] == pytest.approx(expected, abs=1e-5) and len(body["sigmas"]) == 4
        assert client.post("/score", json={"inputs": CHATS[:1]}).json()["rewards"] == pytest.approx(expected[:1],
                                                                                                    abs=1e-5)
        encoder = Encoder.for_model(model)
        text = model.tokenizer.decode(encoder.encode_item(CHATS[0]))
        reward = client.post("/get_reward", json={"query": [text]}).json()["rewards"][0]
        assert reward == pytest.approx(expected[0], abs=1e-4)

        bad = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
        assert client.post("/score", json=[{"nope": 1}]).status_code == 422
        assert client.post("/get_reward", json={"queries": ["x"]}).status_code == 422
        assert client.post("/score", json=[]).status_code == 422
        assert client.post("/score", json=CHATS * 3).status_code == 413  # 12 items > 8
        assert client.post("/score", json=[{"prompt": "x" * 30_000, "response": "y"}]).status_code == 413
        # still serving, and concurrent requests are micro-batched to the same answers
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda chat: client.post("/score", json=[chat]).json()["rewards"][0], CHATS))
        assert results == pytest.approx(expected, abs=1e-5)


def test_cli_score_matches_server_and_api(server, tmp_path):
    url, model = server
    rows = [{"prompt": c["prompt"], "response": c["response"]} for c in CHATS if isinstance(c, dict) and "prompt" in c]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from discorm.serve.scoring import score_file

    score_file(str(tmp_path / "run"), str(tmp_path / "rows.jsonl"), str(tmp_path / "scored.jsonl"))
    scored = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    served = httpx.post(f"{url}/score", json=rows, timeout=30).json()
    assert [s["reward"] for s in scored] == pytest.approx(served["rewards"], abs=1e-5)
    assert [s["sigma"] for s in scored] == pytest.approx(served["sigmas"], abs=1e-5)


def test_score_pairs_takes_training_examples_as_they_are(tiny_llama, tmp_path):
    """Tokenized training examples carry where they were read (`source`); scoring them packed equals scoring each
    sequence alone."""
    from discorm.config import DataArguments
    from discorm.model.inference import score_ids, score_pairs
    from tests.conftest import build_datasets

    model = build_model(tiny_llama, "full").eval()
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": "no"} for i in range(5)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data, _, _ = build_datasets(DataArguments(dataset=str(tmp_path / "pairs.jsonl"), cutoff_len=64), model.tokenizer)
    examples = list(data)
    assert all("source" in example for example in examples)
    packed = score_pairs(model, examples, batch_size=2)
    for i, example in enumerate(examples):
        alone = score_ids(model, [example["prompt_ids"] + example[key] for key in ("chosen_ids", "rejected_ids")])
        torch.testing.assert_close(packed[i], alone, atol=1e-5, rtol=0)
