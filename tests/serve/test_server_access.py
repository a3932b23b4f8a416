"""Who may use the reward server and what it scores: JSON bodies only (415), the Host check of a loopback server
(421), conversations that end with the assistant's response (422 otherwise, with the right advice), no paths in
/health, no blank API key, and no scoring for clients that went away."""

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

import discorm.serve.batching as batching
import discorm.serve.server as server_module
from discorm.cli import main
from discorm.errors import ConfigError
from discorm.serve.server import create_app, serve
from tests.serve.server_helpers import CHATS, running, served_model

SYSTEM_ONLY = [{"role": "system", "content": "Be brief."}]
USER_LAST = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("access") / "tiny-run"
    return run_dir, served_model(tiny_llama, run_dir)


@pytest.fixture(scope="module")
def client(run):
    with running(create_app(run[1], max_items=8)) as (url, _), httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture
def recorded_scoring(monkeypatch):
    """Scoring that records the size of every micro-batch and takes `delay["s"]` seconds for it (a loaded server,
    in the test only)."""
    sizes, delay, real = [], {"s": 0.0}, batching.score_sequences

    def recording(model, sequences, batch_size=8):
        sizes.append(len(sequences))
        time.sleep(delay["s"])
        return real(model, sequences, batch_size)

    monkeypatch.setattr(batching, "score_sequences", recording)
    return sizes, delay


POSTS = [("/score", CHATS[:1]), ("/get_reward", {"query": ["some text"]}), ("/classify", {"model": "rm", "input": "t"})]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_every_post_route_needs_a_json_content_type(client, content_type):
    for route, body in POSTS:
        headers = {"content-type": content_type} if content_type else {}
        refused = client.post(route, content=json.dumps(body).encode(), headers=headers)
        assert refused.status_code == 415, (route, refused.text)
        assert "Content-Type: application/json" in refused.json()["error"]
        assert repr(content_type or "none") in refused.json()["error"]
        charset = client.post(route, content=json.dumps(body).encode(),
                              headers={"content-type": "Application/JSON; charset=utf-8"})
        assert charset.status_code == 200, (route, charset.text)
    assert client.get("/health").json()["queue_depth"] == 0


def test_a_loopback_server_checks_the_host_header(client):
    port = int(str(client.base_url).rstrip("/").rsplit(":", 1)[1])
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert client.post("/score", json=CHATS[:1], headers={"host": host}).status_code == 200, host
    for host in ("rebound.example", f"rebound.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}",
                 f"localhost:{port}x", f"[::1]{port}", "127.0.0.1.nip.io", ""):
        for method, route in (("POST", "/score"), ("GET", "/health"), ("GET", "/metrics")):
            refused = client.request(method, route, json=CHATS[:1], headers={"host": host})
            assert refused.status_code == 421, (host, route, refused.text)
            assert f"connect to http://127.0.0.1:{port}" in refused.json()["error"]
    assert client.get("/health").json()["queue_depth"] == 0


def test_a_server_on_another_address_relies_on_its_api_key_not_on_the_host(run):
    with pytest.raises(ConfigError, match="--host 0.0.0.0 exposes the reward server"):
        create_app(run[1], host="0.0.0.0")
    with running(create_app(run[1], host="0.0.0.0", api_key="k")) as (url, _):
        keyed = {"host": "rm.cluster.internal:8000", "X-API-Key": "k"}
        assert httpx.post(f"{url}/score", json=CHATS[:1], headers=keyed, timeout=30).status_code == 200
        assert httpx.post(f"{url}/score", json=CHATS[:1], headers={"host": "rm.cluster.internal"},
                          timeout=30).status_code == 401


@pytest.mark.parametrize("shape", ["list", "messages", "prompt-response", "trl", "classify"])
def test_a_conversation_without_an_assistant_response_is_refused(client, shape):
    for chat, roles, last in ((SYSTEM_ONLY, "['system']", "system"),
                              (USER_LAST, "['user', 'assistant', 'user']", "user")):
        route, body = {
            "list": ("/score", [CHATS[0], chat]),
            "messages": ("/score", {"inputs": [CHATS[0], {"messages": chat}]}),
            "prompt-response": ("/score", [CHATS[0], {"prompt": chat[:-1], "response": chat[-1:]}]),
            "trl": ("/score", {"prompts": [CHATS[0][:1], chat[:-1]], "completions": [CHATS[0][1:], chat[-1:]]}),
            "classify": ("/classify", {"model": "rm", "messages": chat}),
        }[shape]
        refused = client.post(route, json=body)
        index = 0 if shape == "classify" else 1
        assert refused.status_code == 422 and refused.json()["items"] == [index], refused.text
        error = refused.json()["error"]
        assert f"item {index}: the conversation (roles {roles if shape != 'trl' else [last]})" in error
        assert f"ends with a {last} turn, not with the assistant's response" in error
        assert "end it with the assistant message to be scored" in error and "chatml" not in error
    assert client.get("/health").json()["queue_depth"] == 0
    assert client.post("/score", json=[SYSTEM_ONLY + CHATS[0]]).status_code == 200  # a system turn in a good chat


def test_health_shows_the_models_folder_name_not_its_path(run, client, monkeypatch):
    run_dir, model = run
    assert client.get("/health").json()["model"] == Path(model.rm_config.base_model).name
    served = {}
    monkeypatch.setattr(server_module.uvicorn, "run", lambda app, **options: served.update(app=app))
    monkeypatch.chdir(run_dir)
    serve(".")  # the folder as `discorm serve .` names it
    with running(served["app"]) as (url, _):
        health = httpx.get(f"{url}/health", timeout=30)
        classified = httpx.post(f"{url}/classify", json={"input": "t"}, timeout=30).json()
    assert health.json()["model"] == "tiny-run" == classified["model"]
    assert str(run_dir.parent) not in health.text and "/" not in health.text


@pytest.mark.parametrize("key", [" ", "", "\t\n", " padded "])
def test_a_blank_api_key_is_refused(run, monkeypatch, tmp_path, capsys, key):
    monkeypatch.delenv("DISCORM_API_KEY", raising=False)
    what = "is blank" if not key.strip() else "begins or ends with whitespace"
    for host in ("0.0.0.0", "127.0.0.1"):
        with pytest.raises(ConfigError, match=f"--api-key {what}, so no client could send it in a header"):
            serve(str(tmp_path / "never-loaded"), host=host, api_key=key)
    assert main(["serve", str(tmp_path / "never-loaded"), "--host", "0.0.0.0", "--api-key", key]) == 2
    err = capsys.readouterr().err
    assert f"--api-key {what}" in err and "padded" not in err  # the key itself is not shown
    with pytest.raises(ConfigError, match=f"api_key {what}"):
        create_app(run[1], api_key=key)
    if key:  # an empty variable is an unset one
        monkeypatch.setenv("DISCORM_API_KEY", key)
        with pytest.raises(ConfigError, match=f"DISCORM_API_KEY {what}"):
            serve(str(tmp_path / "never-loaded"), host="0.0.0.0")


def test_a_cancelled_request_leaves_the_queue_at_once_and_is_never_scored(run, recorded_scoring):
    sizes, _ = recorded_scoring
    model = run[1]
    tokens = [model.tokenizer.encode(text) for text in ("one", "two", "three", "four", "five")]

    async def scenario():
        batcher = batching.MicroBatcher(model, max_batch_size=8, max_wait_ms=1, max_queue_items=5)
        kept = batcher.submit(tokens[:2])
        dropped = batcher.submit(tokens[2:])
        with pytest.raises(batching.QueueFull):  # the queue is full
            batcher.submit(tokens[:1])
        with pytest.raises(asyncio.TimeoutError):  # a request that stops waiting (its deadline, or a disconnect)
            await asyncio.wait_for(dropped, 0.01)
        assert dropped.cancelled() and batcher.pending_items == 2
        late = batcher.submit(tokens[:3])  # its room is free again
        batcher.start()
        try:
            return await kept, await late, batcher.pending_items
        finally:
            await batcher.stop()

    kept, late, pending = asyncio.run(scenario())
    assert sizes == [5] and pending == 0  # the kept and the late request, micro-batched; never the dropped one
    assert [float(model.reward(p[None])) for p in (*kept, *late)] == pytest.approx(
        [r["reward"] for r in model.score(["one", "two", "one", "two", "three"])], abs=1e-5)


def test_a_client_that_disconnects_leaves_the_queue_unscored(run, recorded_scoring):
    sizes, delay = recorded_scoring
    delay["s"] = 4.0
    with running(create_app(run[1], max_items=8)) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        first = {}
        busy = threading.Thread(target=lambda: first.update(r=client.post("/score", json=CHATS[:1])))
        busy.start()  # holds the model for 4 s
        while not sizes:
            time.sleep(0.01)
        body = json.dumps(CHATS * 2).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"POST /score HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.time() + 1.5
            while client.get("/health").json()["queue_depth"] < 9 and time.time() < deadline:
                time.sleep(0.01)
            assert client.get("/health").json()["queue_depth"] == 9  # 1 being scored + 8 queued
        deadline = time.time() + 1.5  # well before the first batch ends
        while client.get("/health").json()["queue_depth"] > 1 and time.time() < deadline:
            time.sleep(0.01)
        assert client.get("/health").json()["queue_depth"] == 1 and busy.is_alive()
        busy.join(30)
        assert first["r"].status_code == 200
        delay["s"] = 0.0
        assert client.post("/score", json=CHATS[:1]).status_code == 200
        metrics = client.get("/metrics").text
    assert sizes == [1, 1]  # the disconnected client's 8 items were never scored
    assert 'discorm_requests_total{route="/score",status="499"} 1.0' in metrics
