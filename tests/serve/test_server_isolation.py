"""The reward server isolates bad requests: validation before batching, item-by-item retry, a bounded queue,
deadlines, graceful shutdown, API keys, per-request reward options, /health and /metrics."""

import concurrent.futures
import socket
import threading
import time

import httpx
import pytest
import torch

import discorm.serve.batching as batching
import discorm.serve.server as server_module
from discorm.errors import ConfigError
from discorm.serve.server import create_app, serve
from tests.serve.server_helpers import CHATS, running, served_model


@pytest.fixture(scope="module")
def model(tiny_llama, tmp_path_factory):
    return served_model(tiny_llama, tmp_path_factory.mktemp("served") / "run")


@pytest.fixture
def slow_scoring(monkeypatch):
    """Scoring that takes `delay["s"]` seconds per micro-batch (a loaded server, in the test only)."""
    delay = {"s": 1.0}
    real = batching.score_sequences

    def slow(model, sequences, batch_size=8):
        time.sleep(delay["s"])
        return real(model, sequences, batch_size)

    monkeypatch.setattr(batching, "score_sequences", slow)
    return delay


def _poisoned(monkeypatch, model):
    """Scoring fails for any micro-batch holding the word 'poison' and gives nan for 'nanify' (test injection)."""
    real = batching.score_sequences

    def scorer(m, sequences, batch_size=8):
        texts = [model.tokenizer.decode(s) for s in sequences]
        if any("poison" in t for t in texts):
            raise RuntimeError("poisoned batch")
        params = real(m, sequences, batch_size)
        for row, text in enumerate(texts):
            if "nanify" in text:
                params[row] = float("nan")
        return params

    monkeypatch.setattr(batching, "score_sequences", scorer)


def test_a_failing_micro_batch_is_retried_item_by_item(model, monkeypatch):
    _poisoned(monkeypatch, model)
    batcher = batching.MicroBatcher(model, max_batch_size=8)
    ids = [model.tokenizer.encode(t) for t in ("a good text", "a poison text", "nanify me", "another good one")]
    results = batcher.score_isolated(ids)
    assert isinstance(results[1], str) and "poisoned batch" in results[1]
    assert isinstance(results[2], str) and "non-finite" in results[2]
    alone = [r["reward"] for r in model.score(["a good text", "another good one"])]
    assert [float(model.reward(results[i][None])) for i in (0, 3)] == pytest.approx(alone, abs=1e-5)
    counted = batcher.metrics.registry.get_sample_value
    assert counted("discorm_batch_retries_total") == 1 and counted("discorm_item_failures_total") == 2


def test_only_the_requests_with_bad_items_fail(model, monkeypatch):
    _poisoned(monkeypatch, model)
    app = create_app(model, max_batch_size=16, max_wait_ms=300)
    expected = [r["reward"] for r in model.score(CHATS)]
    bad = [CHATS[0], {"prompt": "Hi", "response": "poison"}, CHATS[1]]
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            good = [pool.submit(client.post, "/score", json=[chat]) for chat in CHATS]
            failing = pool.submit(client.post, "/score", json=bad)
            empty = pool.submit(client.post, "/get_reward", json={"query": [""]})
        assert [g.result().json()["rewards"][0] for g in good] == pytest.approx(expected, abs=1e-5)
        assert failing.result().status_code == 422
        assert failing.result().json()["items"] == [1] and "item 1" in failing.result().json()["error"]
        assert empty.result().status_code == 422 and empty.result().json()["items"] == [0]
        metrics = client.get("/metrics").text
    assert "discorm_batch_retries_total 1" in metrics


def test_items_are_validated_before_batching(model):
    app = create_app(model)
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        alone = client.post("/get_reward", json={"query": [""]})
        assert alone.status_code == 422 and "item 0" in alone.json()["error"] and "empty" in alone.json()["error"]
        spaces = client.post("/get_reward", json={"query": ["fine text", "   "]})
        assert spaces.status_code == 422 and spaces.json()["items"] == [1]
        several = client.post("/score", json=[CHATS[0], "", [{"role": "bot", "content": "x"}], 5])
        body = several.json()
        assert several.status_code == 422 and body["items"] == [1, 2, 3]
        assert "item 2" in body["error"] and "role 'bot'" in body["error"]
        assert client.get("/health").json()["queue_depth"] == 0  # nothing was queued


def test_full_queue_answers_503_with_retry_after(model, slow_scoring):
    app = create_app(model, max_batch_size=4, max_items=4, max_queue_items=4)
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/score", json=CHATS)  # 4 items fill the queue
            deadline = time.time() + 10
            while client.get("/health").json()["queue_depth"] < 4 and time.time() < deadline:
                time.sleep(0.02)
            refused = client.post("/score", json=CHATS[:1])
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "busy" in refused.json()["error"]
            assert first.result().status_code == 200
        assert client.post("/score", json=CHATS[:1]).status_code == 200  # room again


def test_request_deadline(model, slow_scoring):
    slow_scoring["s"] = 4.0
    app = create_app(model, request_timeout_s=2.0)
    with running(app) as (url, _):
        late = httpx.post(f"{url}/score", json=CHATS[:1], timeout=30)
        assert late.status_code == 503 and "not scored within 2.0 s" in late.json()["error"]
        assert late.headers["retry-after"] == "1"
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:  # a client that stops sending its body
            sock.sendall(f"POST /score HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                         "Content-Length: 100\r\n\r\n[{\"prompt\"".encode())
            sock.settimeout(10)
            reply = b""
            while b"}" not in reply and (chunk := sock.recv(4096)):
                reply += chunk
            reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "did not arrive" in reply
        slow_scoring["s"] = 0.0
        while httpx.get(f"{url}/health").json()["queue_depth"]:  # the late request's batch is still running
            time.sleep(0.05)
        assert httpx.post(f"{url}/score", json=CHATS[:1], timeout=30).status_code == 200


def test_graceful_shutdown_finishes_requests_in_flight(model, slow_scoring):
    app = create_app(model)
    expected = model.score(CHATS[:2])
    with running(app, graceful_s=10) as (url, server):
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=httpx.post(f"{url}/score", json=CHATS[:2],
                                                                              timeout=30)))
        thread.start()
        while httpx.get(f"{url}/health").json()["queue_depth"] == 0:
            time.sleep(0.02)
        server.should_exit = True  # what uvicorn's SIGTERM / SIGINT handler does
        thread.join(20)
        assert result["r"].status_code == 200
        assert result["r"].json()["rewards"] == pytest.approx([r["reward"] for r in expected], abs=1e-5)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)


def test_api_key(model):
    app = create_app(model, api_key="s3cret")
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        for route, body in (("/score", CHATS[:1]), ("/get_reward", {"query": ["hello"]})):
            missing = client.post(route, json=body)
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            assert client.post(route, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.post(route, json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert client.post(route, json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
            assert client.post(f"{route}?api_key=s3cret", json=body).status_code == 200  # OpenRLHF: URL only
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # liveness probes need no key


def test_a_non_loopback_host_needs_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("DISCORM_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="--host 0.0.0.0 exposes the reward server.*--api-key"):
        serve(str(tmp_path / "never-loaded"), host="0.0.0.0")
    monkeypatch.setenv("DISCORM_API_KEY", "k")  # the key check passes; loading the (missing) model fails next
    with pytest.raises(Exception, match="does not exist"):
        serve(str(tmp_path / "never-loaded"), host="0.0.0.0")


def test_per_request_reward_options_leave_the_model_alone(model):
    app = create_app(model)
    mean = [r["reward"] for r in model.score(CHATS)]
    quantile = [r["reward"] for r in model.score(CHATS, reward_mode="lower_quantile", reward_alpha=0.05)]
    cautious = [r["reward"] for r in model.score(CHATS, reward_mode="mean_minus_std", reward_k=2.0)]
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        body = client.post("/score", json={"inputs": CHATS, "reward_mode": "lower_quantile",
                                           "reward_alpha": 0.05}).json()
        assert body["rewards"] == pytest.approx(quantile, abs=1e-5) and body["reward_mode"] == "lower_quantile"
        assert body["means"] == pytest.approx(mean, abs=1e-5)
        body = client.post("/score", json={"inputs": CHATS, "reward_mode": "mean_minus_std", "reward_k": 2}).json()
        assert body["rewards"] == pytest.approx(cautious, abs=1e-5)
        assert client.post("/score", json=CHATS).json()["rewards"] == pytest.approx(mean, abs=1e-5)
        assert client.get("/health").json()["reward_mode"] == "mean" == model.rm_config.reward_mode
        assert max(abs(a - b) for a, b in zip(quantile, mean)) > 1e-3  # the options did change the rewards
        for bad, words in (({"reward_mode": "max"}, "reward_mode"), ({"reward_alpha": 0}, "out of range"),
                           ({"reward_alpha": 1.5}, "out of range"), ({"reward_alpha": "low"}, "finite number"),
                           ({"reward_k": True}, "finite number"), ({"reward_mod": "mean"}, "unknown key")):
            response = client.post("/score", json={"inputs": CHATS[:1], **bad})
            assert response.status_code == 422 and words in response.json()["error"], (bad, response.text)


def test_health_and_prometheus_metrics(model):
    app = create_app(model, name="tiny-run")
    with running(app) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health == {"status": "ok", "model": "tiny-run", "head": "gaussian", "reward_mode": "mean",
                          "queue_depth": 0, "max_queue_items": 1024, "max_items": 256}
        for _ in range(3):
            client.post("/score", json=CHATS[:2])
        client.post("/score", content=b"{oops", headers={"content-type": "application/json"})
        client.post("/get_reward", json={"query": [""]})
        response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    series = {}
    for line in response.text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    assert series['discorm_requests_total{route="/score",status="200"}'] == 3
    assert series['discorm_requests_total{route="/score",status="400"}'] == 1
    assert series['discorm_requests_total{route="/get_reward",status="422"}'] == 1
    assert series["discorm_items_scored_total"] == 6 and series["discorm_queue_depth"] == 0
    assert series['discorm_request_seconds_count{route="/score"}'] == 4
    assert "# TYPE discorm_requests_total counter" in response.text


def test_a_server_bug_is_logged_answered_500_and_counted_and_serving_goes_on(model, monkeypatch, caplog):
    real, calls = server_module.describe, []

    def broken_once(*args, **kwargs):  # a bug after scoring, on the first request only (test injection)
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("an injected bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "describe", broken_once)
    with running(create_app(model)) as (url, _):
        broken = httpx.post(f"{url}/score", json=CHATS[:1], timeout=30)  # uvicorn closes its connection afterwards
        assert broken.status_code == 500 and broken.json() == {"error": "internal server error (logged)"}
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/score", json=CHATS[:1]).status_code == 200
            metrics = client.get("/metrics").text
            openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert "unexpected error on POST /score: RuntimeError: an injected bug" in caplog.text
    assert 'discorm_requests_total{route="/score",status="500"} 1.0' in metrics
    assert 'discorm_requests_total{route="/score",status="200"} 1.0' in metrics
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


def test_scores_are_unchanged_by_the_isolation(model):
    """The batched answers equal scoring each input alone."""
    app = create_app(model, max_batch_size=3)
    with running(app) as (url, _):
        rewards = httpx.post(f"{url}/score", json=CHATS * 2, timeout=30).json()["rewards"]
    alone = [model.score([chat])[0]["reward"] for chat in CHATS * 2]
    assert rewards == pytest.approx(alone, abs=1e-5)
    assert torch.isfinite(torch.tensor(rewards)).all()
