"""`discorm serve`: rewards over HTTP for RL loops (FastAPI + uvicorn).

- ``POST /score``: ``[{"messages": [...]}, {"prompt": ..., "response": ...}, ...]``, or ``{"inputs": [...],
  "reward_mode": ..., "reward_alpha": ..., "reward_k": ...}`` (the reward options apply to that request only)
  -> ``{"rewards": [...], "reward_mode": ...}`` plus ``"means"``/``"sigmas"`` for distributional heads and, for
  heads that predict rated attributes, ``"attributes"`` (and ``"attribute_sigmas"``): one ``{name: value}`` per
  input. Rewards, means and sigmas are normalised when the model stores normalisation constants.
- ``POST /get_reward``: OpenRLHF's remote reward-model protocol, ``{"query": [full texts]}`` ->
  ``{"rewards": [...]}``; the texts are scored as given (already rendered with the chat template).
- ``GET /health`` (model, head, reward mode, queue depth) and ``GET /metrics`` (Prometheus text format).

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations at run time.)

Isolation: every item is validated and tokenized before it is queued (a bad item: 422 naming its index); a
micro-batch that fails is retried item by item, so only the requests holding a bad item fail (422); the queue is
bounded (503 + ``Retry-After`` when full); each request has a deadline (408 while its body is still arriving, 503
once queued); malformed JSON is 400, too large 413, a missing or wrong API key 401. Shutdown (SIGTERM / Ctrl-C)
stops accepting connections and finishes the requests in flight.
"""


import asyncio
import hmac
import ipaddress
import logging
import math
import os
import time
from contextlib import asynccontextmanager

from discorm.data.tokenize import Encoder
from discorm.errors import ConfigError, DiscoRMError
from discorm.serve.batching import ItemsFailed, MicroBatcher, QueueFull
from discorm.serve.metrics import CONTENT_TYPE, ServerMetrics
from discorm.serve.scoring import describe
from discorm.serve.validation import RequestError, encode_items, read_json, reward_request, score_request

logger = logging.getLogger(__name__)

API_KEY_ENV = "DISCORM_API_KEY"
RETRY_AFTER_S = 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(model, max_batch_size: int = 16, max_items: int = 256, max_body_bytes: int = 4_000_000,
               api_key: str | None = None, max_queue_items: int = 1024, request_timeout_s: float = 30.0,
               name: str | None = None, max_wait_ms: float = 5.0):
    """The ASGI app. ``api_key``: when set, every scoring route and /metrics need it (``Authorization: Bearer
    KEY``, ``X-API-Key: KEY`` or ``?api_key=KEY``); /health stays open for liveness probes."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse
    except ImportError:
        raise DiscoRMError("the reward server needs FastAPI and uvicorn: pip install 'discorm[serve]'.") from None

    if max_queue_items < max_items:
        raise ConfigError(f"the queue ({max_queue_items} items) must hold at least one full request ({max_items} items).")
    model.eval()
    encoder = Encoder.for_model(model)
    metrics = ServerMetrics()
    batcher = MicroBatcher(model, max_batch_size, max_wait_ms, max_queue_items, metrics)
    name = name or model.rm_config.base_model

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="DiscoRM reward server", lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        bearer = request.headers.get("authorization", "")
        supplied = (bearer[7:] if bearer.lower().startswith("bearer ") else None) or request.headers.get(
            "x-api-key") or request.query_params.get("api_key") or ""
        if not hmac.compare_digest(supplied.encode(), api_key.encode()):
            raise RequestError(401, "missing or wrong API key; send the header `Authorization: Bearer <key>` (or "
                                    "`X-API-Key: <key>`)", headers={"WWW-Authenticate": "Bearer"})

    async def answer(route: str, request: Request, work, deadline: bool = True, needs_key: bool = True):
        """Run one request: API key, deadline, and every refusal as JSON with its status; counted."""
        start, stage = time.perf_counter(), {"body_read": False}
        try:
            if needs_key:
                check_key(request)
            body = await asyncio.wait_for(work(stage), request_timeout_s) if deadline else await work(stage)
            response = body if not isinstance(body, dict) else JSONResponse(body)
        except RequestError as err:
            response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        except asyncio.TimeoutError:
            if stage["body_read"]:
                response = JSONResponse({"error": f"not scored within {request_timeout_s} s; the server is busy"},
                                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
            else:
                response = JSONResponse({"error": f"the request body did not arrive within {request_timeout_s} s"},
                                        status_code=408)
        except Exception:  # a server bug: logged and answered 500, the server keeps serving
            logger.exception("unexpected error on %s", route)
            response = JSONResponse({"error": "internal server error (logged)"}, status_code=500)
        metrics.request(route, response.status_code, time.perf_counter() - start)
        return response

    async def score(sequences: list[list[int]], options: dict) -> list[dict]:
        try:
            future = batcher.submit(sequences)
        except QueueFull as err:
            raise RequestError(503, f"the server is busy ({err}); retry in {RETRY_AFTER_S} s",
                               headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        try:
            params = await future
        except ItemsFailed as err:
            raise RequestError(422, str(err), items=sorted(err.failures)) from None
        records = describe(model, params, **options)
        bad = [i for i, r in enumerate(records) if not math.isfinite(r["reward"])]
        if bad:
            raise RequestError(422, f"the reward of item(s) {bad} is not finite with these reward options",
                               items=bad)
        return records

    @app.get("/health")
    async def health(request: Request):
        async def work(_stage):
            return {"status": "ok", "model": name, "head": model.head.kind,
                    "reward_mode": model.rm_config.reward_mode, "queue_depth": batcher.pending_items,
                    "max_queue_items": max_queue_items}

        return await answer("/health", request, work, deadline=False, needs_key=False)

    @app.get("/metrics")
    async def prometheus(request: Request):
        async def work(_stage):
            gauges = {"queue_depth": ("Items queued or being scored.", batcher.pending_items)}
            return PlainTextResponse(metrics.render(gauges), media_type=CONTENT_TYPE)

        return await answer("/metrics", request, work, deadline=False)

    async def read_and_score(request: Request, stage: dict, parse, encode) -> list[dict]:
        payload = await read_json(request, max_body_bytes)
        stage["body_read"] = True
        items, options = parse(payload, max_items, model.head)
        return await score(encode_items(items, encode), options)

    @app.post("/score")
    async def score_route(request: Request):
        async def work(stage):
            records = await read_and_score(request, stage, score_request, encoder.encode_item)
            body = {"rewards": [r["reward"] for r in records], "reward_mode": records[0]["reward_mode"]}
            for key in records[0].keys() - {"reward", "reward_mode"}:  # "means", "sigmas", "attributes", ...
                body[key if key.endswith("s") else f"{key}s"] = [r[key] for r in records]
            return body

        return await answer("/score", request, work)

    @app.post("/get_reward")
    async def get_reward(request: Request):
        async def work(stage):
            rewards = [r["reward"] for r in await read_and_score(request, stage, reward_request, encoder.encode_text)]
            return {"rewards": rewards, "scores": rewards}

        return await answer("/get_reward", request, work)

    return app


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, max_batch_size: int = 16,
          api_key: str | None = None, max_items: int = 256, max_queue_items: int = 1024,
          request_timeout_s: float = 30.0, max_body_bytes: int = 4_000_000) -> None:
    """Load a model and serve it until SIGTERM / Ctrl-C (in-flight requests are finished first). A host other
    than a loopback address needs an API key (``api_key`` or the DISCORM_API_KEY environment variable)."""
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if api_key is None and not is_loopback(host):
        raise ConfigError(f"--host {host} exposes the reward server beyond this machine, so it needs an API key: "
                          f"pass --api-key KEY or set {API_KEY_ENV}, or bind to 127.0.0.1.")
    for key, value in (("--batch-size", max_batch_size), ("--max-items", max_items), ("--max-queue", max_queue_items),
                       ("--timeout", request_timeout_s), ("--max-body-bytes", max_body_bytes)):
        if value <= 0:
            raise ConfigError(f"{key} {value} must be positive.")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; use a number from 1 to 65535 (0: any free port).")
    from discorm.model.reward_model import RewardModel

    model = RewardModel.from_pretrained(model_dir)
    app = create_app(model, max_batch_size, max_items, max_body_bytes, api_key=api_key,
                     max_queue_items=max_queue_items, request_timeout_s=request_timeout_s, name=str(model_dir))
    import uvicorn

    logger.info("serving %s (%s head) on http://%s:%d%s", model_dir, model.head.kind, host, port,
                " (API key required)" if api_key else "")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=request_timeout_s + 5)
