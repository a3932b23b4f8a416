"""The routes RL loops call, in their own shapes: vLLM's /classify (verl), OpenRLHF's /get_reward with prompts,
labels and extra_logs, TRL's prompts + completions on /score; re-templating from a policy tokenizer on the server
and in `discorm score`; malformed inputs answered 422 or a CLI error naming the item."""

import json
import logging

import httpx
import pytest

import discorm.data.retemplate as retemplate
from discorm.cli import main
from discorm.serve.server import create_app
from tests.policies import CONVERSATIONS, policy_tokenizer, rollout
from tests.serve.server_helpers import running, served_model


@pytest.fixture(scope="module")
def gaussian(tiny_llama, tmp_path_factory):
    run = tmp_path_factory.mktemp("rl_routes") / "run"
    return run, served_model(tiny_llama, run, head="gaussian")


@pytest.fixture(scope="module")
def llama3(tiny_llama):
    return policy_tokenizer(tiny_llama, "llama3")


@pytest.fixture(scope="module")
def client(gaussian):
    with running(create_app(gaussian[1], max_items=16)) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def policy_client(gaussian, llama3):
    app = create_app(gaussian[1], max_items=16, policy_tokenizer=llama3)
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _own_texts(model):
    """The conversations rendered with the reward model's own template, as verl and OpenRLHF send them."""
    return [model.tokenizer.apply_chat_template(chat, tokenize=False).rstrip() for chat in CONVERSATIONS]


def test_classify_answers_in_vllms_shape_with_the_reward_last(client, gaussian):
    model = gaussian[1]
    texts = _own_texts(model)
    for options in ({}, {"reward_mode": "lower_quantile", "reward_alpha": 0.05}):
        expected = model.score(texts, **options)
        body = client.post("/classify", json={"model": "rm", "input": texts, "use_activation": False, **options})
        assert body.status_code == 200
        answer = body.json()
        assert answer["object"] == "list" and answer["model"] == "rm"
        assert [d["index"] for d in answer["data"]] == [0, 1, 2]
        assert [d["probs"][-1] for d in answer["data"]] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
        assert [p for d in answer["data"] for p in d["probs"][:2]] == pytest.approx(
            [v for r in expected for v in (r["mean"], r["sigma"])], abs=1e-5)
    one = client.post("/classify", json={"model": "rm", "input": texts[0]}).json()  # verl: one text per call
    assert len(one["data"]) == 1 and one["data"][-1]["probs"][-1] == pytest.approx(
        model.score(texts[:1])[0]["reward"], abs=1e-5)
    chat = client.post("/classify", json={"model": "rm", "messages": CONVERSATIONS[1]}).json()  # vLLM's chat form
    assert chat["data"][-1]["probs"][-1] == pytest.approx(model.score(CONVERSATIONS[1:2])[0]["reward"], abs=1e-5)
    assert client.post("/classify", json={"model": "rm", "input": []}).status_code == 422
    assert client.post("/classify", json={"model": "rm", "input": "t", "messages": CONVERSATIONS[0]}).status_code == 422
    bad = client.post("/classify", json={"model": "rm", "input": ["fine", ""]})
    assert bad.status_code == 422 and bad.json()["items"] == [1]


def test_get_reward_takes_prompts_and_labels_and_logs_sigma_and_the_quantile(client, gaussian):
    model = gaussian[1]
    texts = _own_texts(model)
    body = {"query": texts, "prompts": ["p"] * 3, "labels": [None, "x", 1], "reward_alpha": 0.05}
    answer = client.post("/get_reward", json=body).json()
    expected = model.score(texts)
    quantiles = model.score(texts, reward_mode="lower_quantile", reward_alpha=0.05)
    assert answer["rewards"] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
    logs = answer["extra_logs"]
    assert logs["sigma"] == pytest.approx([r["sigma"] for r in expected], abs=1e-5)
    assert logs["quantile_0.05"] == pytest.approx([r["reward"] for r in quantiles], abs=1e-5)
    assert all(q < m for q, m in zip(logs["quantile_0.05"], logs["mean"]))
    unpaired = client.post("/get_reward", json={"query": texts, "prompts": ["p"]})
    assert unpaired.status_code == 422 and "1 prompts for 3 queries" in unpaired.json()["error"]


def test_score_takes_trls_prompts_and_completions(client, gaussian):
    model = gaussian[1]
    expected = [r["reward"] for r in model.score(CONVERSATIONS)]
    conversational = {"prompts": [c[:-1] for c in CONVERSATIONS], "completions": [c[-1:] for c in CONVERSATIONS]}
    assert client.post("/score", json=conversational).json()["rewards"] == pytest.approx(expected, abs=1e-5)
    text = {"prompts": ["What is 12 + 7?"], "completions": ["The answer is 19."]}
    assert client.post("/score", json=text).json()["rewards"] == pytest.approx(expected[:1], abs=1e-5)
    for body, status, words in [
        ({"prompts": ["a"], "completions": ["x", "y", "z"]}, 422, "item(s) [1, 2]: the completion(s) have no prompt"),
        ({"completions": ["x"]}, 422, "item(s) [0]: the completion(s) have no prompt"),
        ({"prompts": [], "completions": []}, 422, '"completions" must be a non-empty list'),
        ({"prompts": ["a", "b"], "completions": ["x", []]}, 422, "item 1: the completion is empty"),
        ({"inputs": ["t"], "prompts": ["a"], "completions": ["x"]}, 422, 'give "inputs", or "prompts"'),
        ({"prompts": ["a"] * 17, "completions": ["x"] * 17}, 413, "over the limit"),
    ]:
        answer = client.post("/score", json=body)
        assert answer.status_code == status and words in answer.json()["error"], (body, answer.text)


def test_the_server_re_templates_policy_texts(policy_client, gaussian, llama3):
    model = gaussian[1]
    expected = [r["reward"] for r in model.score(CONVERSATIONS)]
    texts = [rollout(llama3, c, extra_bos=True) for c in CONVERSATIONS]
    answer = policy_client.post("/get_reward", json={"query": texts, "prompts": ["p"] * 3}).json()
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5)
    classified = policy_client.post("/classify", json={"model": "rm", "input": texts}).json()
    assert [d["probs"][-1] for d in classified["data"]] == pytest.approx(expected, abs=1e-5)
    prompts = [llama3.apply_chat_template(c[:-1], add_generation_prompt=True, tokenize=False) for c in CONVERSATIONS]
    completions = [c[-1]["content"] + "<|eot_id|>" for c in CONVERSATIONS]
    joined = policy_client.post("/score", json={"prompts": prompts, "completions": completions}).json()
    assert joined["rewards"] == pytest.approx(expected, abs=1e-5)
    bad = policy_client.post("/get_reward", json={"query": [texts[0], "not a policy rendering"]})
    assert bad.status_code == 422 and bad.json()["items"] == [1]
    assert "item 1: the text does not begin like a conversation" in bad.json()["error"]


def test_a_foreign_query_without_a_policy_tokenizer_warns_once_naming_the_fix(client, llama3, monkeypatch, caplog):
    monkeypatch.setitem(retemplate._warned, "foreign", False)
    foreign = rollout(llama3, CONVERSATIONS[0])
    with caplog.at_level(logging.WARNING, logger="discorm.data.retemplate"):
        for _ in range(2):
            assert client.post("/get_reward", json={"query": [foreign]}).status_code == 200
    warnings = [r for r in caplog.records if r.name == "discorm.data.retemplate"]
    assert len(warnings) == 1
    assert "item 0 does not look like" in warnings[0].getMessage() and "--policy-tokenizer" in warnings[0].getMessage()


def test_score_cli_re_templates_and_names_bad_rows(gaussian, llama3, tmp_path, capsys):
    run, model = gaussian
    llama3.save_pretrained(tmp_path / "policy")
    rows = [{"text": rollout(llama3, CONVERSATIONS[0])},
            {"prompt": llama3.apply_chat_template(CONVERSATIONS[1][:-1], add_generation_prompt=True, tokenize=False),
             "completion": CONVERSATIONS[1][-1]["content"]}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["score", str(run), "--input", str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "out.jsonl")]
    assert main([*args, "--policy-tokenizer", str(tmp_path / "policy")]) == 0
    scored = [json.loads(line)["reward"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert scored == pytest.approx([r["reward"] for r in model.score(CONVERSATIONS[:2])], abs=1e-5)
    capsys.readouterr()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "plain words"}) + "\n")
    bad = ["score", str(run), "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "bad_out.jsonl")]
    assert main([*bad, "--policy-tokenizer", str(tmp_path / "policy")]) == 2
    assert "bad.jsonl:1: the text does not begin like a conversation" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "Hi", "completion": "a"}) + "\n"
                                        + json.dumps({"completion": "no prompt"}) + "\n")
    assert main(bad) == 2
    assert "bad.jsonl:2: the completion has no prompt" in capsys.readouterr().err
    assert main([*args, "--force", "--policy-tokenizer", str(tmp_path / "no-such-policy")]) == 2
    assert "--policy-tokenizer / policy_tokenizer" in capsys.readouterr().err
    assert main(["serve", str(run), "--policy-tokenizer", str(tmp_path / "no-such-policy")]) == 2
    assert "does not exist" in capsys.readouterr().err
