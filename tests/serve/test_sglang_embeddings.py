"""SGLang's ``POST /v1/embeddings`` as verl reads a reward from it (``data[i].embedding[-1]``), under the server's
rules (API key, JSON content type, item limit, 422 naming the item); and the bad inputs of traces, tools and
template options answered 422 on every scoring route."""

import base64
import json
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from discorm.data.tokenize import Encoder
from discorm.serve.server import create_app
from tests.data.test_reasoning import QWEN3_LIKE
from tests.policies import CONVERSATIONS
from tests.serve.server_helpers import served_model

KEY = "test-key-123"
BAD_CALL = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}
BAD_INPUTS = {  # name -> (route, body, the item the 422 names, words of the message)
    "empty input": ("/v1/embeddings", {"model": "rm", "input": []}, None, "non-empty list"),
    "not a text or ids": ("/v1/embeddings", {"model": "rm", "input": ["fine", {"a": 1}]}, 1,
                          "expected a text or a list of token ids"),
    "id beyond the vocabulary": ("/v1/embeddings", {"model": "rm", "input": [[5, 99999]]}, 0,
                                 "token id 99999 is not an id"),
    "negative id": ("/v1/embeddings", {"model": "rm", "input": [[3], [-1, 4]]}, 1, "token id -1 is not an id"),
    "empty id list": ("/v1/embeddings", {"model": "rm", "input": ["fine", []]}, 1, "token id list is empty"),
    "unknown encoding": ("/v1/embeddings", {"model": "rm", "input": "fine", "encoding_format": "int8"}, None,
                         '"encoding_format" Input should be'),
    "tool arguments not JSON": ("/score", [[CONVERSATIONS[0][0], BAD_CALL]], 0, "arguments of tool call 0 (f) is "
                                "not valid JSON"),
    "tool call without a name": ("/score", {"inputs": [CONVERSATIONS[0], [CONVERSATIONS[0][0], {
        "role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}]]}, 1, "no function name"),
    "tool turn without a call": ("/score", [[CONVERSATIONS[0][0], {"role": "tool", "content": "18 C"},
                                            CONVERSATIONS[0][1]]], 0, "message 1 is a tool turn"),
    "tools not a list": ("/score", [{"messages": CONVERSATIONS[0], "tools": {"name": "f"}}], 0,
                         "should be a list of tool schemas"),
    "template kwargs not an object": ("/score", [{"messages": CONVERSATIONS[0], "chat_template_kwargs": 3}], 0,
                                      "should be an object of template variables"),
    "reserved template kwarg": ("/score", [{"messages": CONVERSATIONS[0], "chat_template_kwargs": {
        "add_generation_prompt": True}}], 0, "name arguments of the template call"),
    "image content part": ("/score", [[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,AAAA"}}]}, CONVERSATIONS[0][1]]], 0, "this model reads text only"),
    "trace not a text": ("/score", [[CONVERSATIONS[0][0], {**CONVERSATIONS[0][1], "reasoning_content": ["x"]}]], 0,
                         "reasoning_content' should be str"),
}


@pytest.fixture(scope="module")
def models(tiny_llama, tmp_path_factory):
    base = tmp_path_factory.mktemp("sglang")
    return {head: served_model(tiny_llama, base / head, head=head) for head in ("scalar", "gaussian")}


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models["scalar"], max_items=4), base_url="http://127.0.0.1") as c:
        yield c


def texts(model) -> list[str]:
    return [model.tokenizer.apply_chat_template(chat, tokenize=False).rstrip() for chat in CONVERSATIONS]


@pytest.mark.parametrize("head", ["scalar", "gaussian"])
def test_the_reward_is_the_last_element_of_each_embedding(models, head):
    model = models[head]
    expected = model.score(texts(model))
    with TestClient(create_app(model), base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/embeddings", json={"model": "my-rm", "input": texts(model)})
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "list" and body["model"] == "my-rm"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(3)]
    assert [d["embedding"][-1] for d in body["data"]] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
    width = 3 if head == "gaussian" else 1
    assert {len(d["embedding"]) for d in body["data"]} == {width}
    if head == "gaussian":
        assert [v for d in body["data"] for v in d["embedding"][:2]] == pytest.approx(
            [v for r in expected for v in (r["mean"], r["sigma"])], abs=1e-5)
    encoder = Encoder.for_model(model)
    tokens = sum(len(encoder.encode_text(t)) for t in texts(model))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_one_text_token_ids_and_base64(client, models):
    model = models["scalar"]
    text = texts(model)[1]
    reward = model.score([text])[0]["reward"]
    ids = Encoder.for_model(model).encode_text(text)
    for given in (text, [text], ids, [ids, ids]):
        data = client.post("/v1/embeddings", json={"model": "rm", "input": given}).json()["data"]
        assert [d["embedding"][-1] for d in data] == pytest.approx([reward] * len(data), abs=1e-5)
    packed = client.post("/v1/embeddings", json={"input": text, "encoding_format": "base64"}).json()["data"][0]
    assert np.frombuffer(base64.b64decode(packed["embedding"]), dtype="<f4")[-1] == pytest.approx(reward, abs=1e-5)


def test_the_servers_rules_hold_on_the_new_route(models):
    app = create_app(models["scalar"], max_items=2, api_key=KEY)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        body = {"model": "rm", "input": "hello"}
        assert client.post("/v1/embeddings", json=body).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert client.post("/v1/embeddings", json=body, headers=auth).status_code == 200
        plain = client.post("/v1/embeddings", content=json.dumps(body), headers={**auth, "Content-Type": "text/plain"})
        assert plain.status_code == 415
        many = client.post("/v1/embeddings", json={"input": ["a", "b", "c"]}, headers=auth)
        assert many.status_code == 413 and "3 inputs is over the limit of 2" in many.json()["error"]
        assert client.post("/v1/embeddings", content=b"{", headers=auth | {"Content-Type": "application/json"}
                           ).status_code == 400


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_are_refused_naming_the_item(client, name):
    route, body, item, words = BAD_INPUTS[name]
    answer = client.post(route, json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert words in error["error"]
    if item is not None:
        assert error["items"] == [item] and f"item {item}" in error["error"]


def test_a_model_trained_without_traces_strips_a_policys_traces(models, tiny_llama):
    model = models["scalar"]
    stripping = replace(model.rm_config, reasoning="strip")
    model.rm_config, kept = stripping, model.rm_config
    try:
        policy = AutoTokenizer.from_pretrained(tiny_llama)
        policy.chat_template = QWEN3_LIKE
        chat = [CONVERSATIONS[0][0], {"role": "assistant", "content": "<think>\n12 + 7 = 19\n</think>\n\nIt is 19."}]
        text = policy.apply_chat_template(chat, tokenize=False)
        expected = model.score([[chat[0], {"role": "assistant", "content": "It is 19."}]])[0]["reward"]
        with TestClient(create_app(model, policy_tokenizer=policy), base_url="http://127.0.0.1") as client:
            got = client.post("/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"][-1]
            scored = client.post("/score", json=[chat]).json()["rewards"][0]
        assert got == pytest.approx(expected, abs=1e-5) and scored == pytest.approx(expected, abs=1e-5)
    finally:
        model.rm_config = kept
